"""Seconds per 1,000 training epochs of one AGN cross-validation fold (Chen et al. 2021).

Trains fold 1 of the 10-fold split of the labelled set (1,683 training / 187 validation objects)
with the full-batch schedule and the Eq. 3 monitor evaluated every epoch, twice, side by side:

* ``in_memory``: keras_astro.training.fit_in_memory (data on the device, compiled step,
  validation metrics in the graph);
* ``keras_fit``: ``model.fit`` on a cached tf.data pipeline with per-epoch validation.

Prints one JSON line. Usage: ``python benchmarks/agn_cv.py [--epochs 300]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=300, help="epochs timed for the in-memory loop")
    ap.add_argument("--fit-epochs", type=int, default=60, help="epochs timed for keras fit")
    args = ap.parse_args()

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

    def timed_in_memory(epochs: int) -> float:
        keras.utils.set_random_seed(0)
        m = compile_agn_cnn(build_agn_cnn(cfg))
        fit_in_memory(m, xtr, y[tr], validation_data=(xva, y[va]), epochs=3, batch_size=len(tr), callbacks=[stopping_callback(cfg)])
        t = time.perf_counter()
        fit_in_memory(m, xtr, y[tr], validation_data=(xva, y[va]), epochs=epochs, batch_size=len(tr), callbacks=[stopping_callback(cfg)])
        return time.perf_counter() - t

    def timed_fit(epochs: int) -> float:
        keras.utils.set_random_seed(0)
        m = compile_agn_cnn(build_agn_cnn(cfg))
        train = photometry_dataset(xtr, y[tr], batch_size=len(tr), shuffle=True)
        val = photometry_dataset(xva, y[va], batch_size=len(va))
        m.fit(train, validation_data=val, epochs=3, verbose=0, callbacks=[stopping_callback(cfg)])
        t = time.perf_counter()
        m.fit(train, validation_data=val, epochs=epochs, verbose=0, callbacks=[stopping_callback(cfg)])
        return time.perf_counter() - t

    fast = timed_in_memory(args.epochs) / args.epochs * 1000
    slow = timed_fit(args.fit_epochs) / args.fit_epochs * 1000
    print(json.dumps({
        "benchmark": "agn_cv_fold",
        "train_objects": int(len(tr)),
        "val_objects": int(len(va)),
        "in_memory_s_per_1000_epochs": round(fast, 2),
        "keras_fit_s_per_1000_epochs": round(slow, 2),
        "speedup": round(slow / fast, 2),
        "cpu_threads": os.cpu_count(),
        "tensorflow": tf.__version__,
        "machine": platform.machine(),
    }))


if __name__ == "__main__":
    main()
