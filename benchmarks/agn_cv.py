"""Seconds per 1,000 training epochs of one AGN cross-validation fold (Chen et al. 2021).

Trains fold 1 of the 10-fold split of the labelled set (1,683 training / 187 validation objects)
with the full-batch schedule (one Adam step on the whole fold per epoch) and the Eq. 3 monitor
evaluated on the validation fold every epoch, side by side in one run:

* ``in_memory``: keras_astro.training.fit_in_memory on ``build_agn_cnn()`` (the default:
  ToeplitzConv2D + FusedBatchNormalization layers);
* ``baseline_conv2d``: the same loop on ``build_agn_cnn(fast_layers=False)`` (stock
  ``keras.layers.Conv2D`` + ``BatchNormalization``, the previous path);
* ``keras_fit``: ``model.fit`` of the stock-layer model on a cached tf.data pipeline with
  per-epoch validation;
* with ``--xla``, also ``in_memory_xla``: the default model with the full-batch step
  XLA-compiled (``fit_in_memory(jit_compile=True)``).

The machine is often shared, so the in-memory variants run interleaved in ``--rounds`` chunks
of ``--epochs`` epochs (same contention for all); each chunk's time is taken from the end of its
first epoch (which includes tracing) to the end of its last. ``*_s_per_1000_epochs`` is the
median over the chunks, ``*_best_s_per_1000_epochs`` the fastest chunk (the least disturbed).

With ``--quick`` it instead times whole folds of the ``--quick`` schedule (mini-batches of 128,
at most 60 epochs, Eq. 3 after 20; compilation included, as a user pays it once per fold) with
the training step XLA-compiled and not, interleaved, and prints their ratio.

Prints one JSON line. Usage: ``python benchmarks/agn_cv.py [--epochs 100] [--rounds 3] [--xla]``
or ``python benchmarks/agn_cv.py --quick [--rounds 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100, help="epochs per timed chunk of the in-memory loops")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved chunks per in-memory variant")
    ap.add_argument("--fit-epochs", type=int, default=40, help="epochs timed for keras fit (0 skips it)")
    ap.add_argument("--xla", action="store_true", help="also time the XLA-compiled full-batch step")
    ap.add_argument("--quick", action="store_true", help="time quick-schedule folds with and without XLA instead")
    args = ap.parse_args()
    if args.quick:
        return quick_folds(args.rounds)

    import keras
    import numpy as np
    import tensorflow as tf
    from sklearn.model_selection import StratifiedKFold

    from keras_astro.models.agn import AGNConfig, build_agn_cnn, compile_agn_cnn, stopping_callback
    from keras_astro.pipelines.photometry import photometry_dataset
    from keras_astro.preprocess.photometry import MissingBandFiller
    from keras_astro.studies.agn import load_labelled, prepare_inputs
    from keras_astro.training import fit_in_memory

    phot = load_labelled()
    y = phot.labels.astype(int)
    tr, va = next(StratifiedKFold(10, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    filler = MissingBandFiller("zero").fit(phot.values[tr])
    xtr, xva = prepare_inputs(phot.values[tr], filler), prepare_inputs(phot.values[va], filler)
    cfg = AGNConfig.preset("B", delta=-1e9)  # never stop: time a fixed number of epochs

    class EpochClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.ends = []

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.perf_counter())

    def in_memory(fast_layers: bool, jit_compile="auto"):
        keras.utils.set_random_seed(0)
        m = compile_agn_cnn(build_agn_cnn(cfg, fast_layers=fast_layers))

        def chunk(epochs: int) -> float:
            clock = EpochClock()
            fit_in_memory(m, xtr, y[tr], validation_data=(xva, y[va]), epochs=epochs, batch_size=len(tr),
                          callbacks=[stopping_callback(cfg), clock], jit_compile=jit_compile)
            return (clock.ends[-1] - clock.ends[0]) / (epochs - 1) * 1000

        return chunk

    variants = {"in_memory": in_memory(True), "baseline_conv2d": in_memory(False)}
    if args.xla:
        variants["in_memory_xla"] = in_memory(True, jit_compile=True)
    for run in variants.values():  # warm-up: tracing, oneDNN primitive caches
        run(4)
    chunks: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name, run in variants.items():
            chunks[name].append(run(args.epochs + 1))

    def timed_fit(epochs: int) -> float:
        keras.utils.set_random_seed(0)
        m = compile_agn_cnn(build_agn_cnn(cfg, fast_layers=False))
        train = photometry_dataset(xtr, y[tr], batch_size=len(tr), shuffle=True)
        val = photometry_dataset(xva, y[va], batch_size=len(va))
        m.fit(train, validation_data=val, epochs=3, verbose=0, callbacks=[stopping_callback(cfg)])
        t = time.perf_counter()
        m.fit(train, validation_data=val, epochs=epochs, verbose=0, callbacks=[stopping_callback(cfg)])
        return (time.perf_counter() - t) / epochs * 1000

    out = {"benchmark": "agn_cv_fold", "train_objects": int(len(tr)), "val_objects": int(len(va))}
    for name, times in chunks.items():
        out[f"{name}_s_per_1000_epochs"] = round(statistics.median(times), 2)
        out[f"{name}_best_s_per_1000_epochs"] = round(min(times), 2)
    fast = out["in_memory_s_per_1000_epochs"]
    out["speedup_vs_baseline_conv2d"] = round(out["baseline_conv2d_s_per_1000_epochs"] / fast, 2)
    if args.fit_epochs > 0:
        out["keras_fit_s_per_1000_epochs"] = round(timed_fit(args.fit_epochs), 2)
        out["speedup_vs_keras_fit"] = round(out["keras_fit_s_per_1000_epochs"] / fast, 2)
    out.update({
        "epochs_per_chunk": args.epochs,
        "rounds": args.rounds,
        "cpu_threads": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "tensorflow": tf.__version__,
        "machine": platform.machine(),
    })
    print(json.dumps(out))


def quick_folds(rounds: int) -> None:
    """Seconds per fold of the quick schedule, XLA-compiled step vs TensorFlow's kernels."""
    import tensorflow as tf

    import keras_astro.training as training
    from keras_astro.studies import agn
    from keras_astro.training import fit_in_memory

    times: dict[str, list[float]] = {"no_xla": [], "xla": []}
    epochs: dict[str, list[int]] = {"no_xla": [], "xla": []}
    for r in range(rounds):
        for name, jit in (("no_xla", False), ("xla", True)):
            training.fit_in_memory = lambda *a, _jit=jit, **k: fit_in_memory(*a, **{**k, "jit_compile": _jit})
            try:
                t = time.perf_counter()
                m = agn.run_cv("B", out=f"/tmp/agn_quick_bench_{name}", quick=True, folds_to_run=[r], export=False, progress=False)
                times[name].append(time.perf_counter() - t)
                epochs[name].append(m["folds"][0]["epochs"])
            finally:
                training.fit_in_memory = fit_in_memory
    out = {"benchmark": "agn_cv_quick_fold", "folds": rounds}
    for name in times:
        out[f"{name}_s_per_fold"] = round(statistics.median(times[name]), 2)
        out[f"{name}_epochs"] = epochs[name]
    out["xla_slowdown"] = round(out["xla_s_per_fold"] / out["no_xla_s_per_fold"], 2)
    out.update({"cpu_threads": os.cpu_count(), "load_average_1min": round(os.getloadavg()[0], 2), "tensorflow": tf.__version__})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
