"""FNet on the CPU: direct Conv1D against the FFT long-kernel convolution, same weights.

Builds the full 4,618-pixel FNet (Rastegar Nia et al., code's 8 blocks, kernels 500/200/15) four
ways — ``conv_impl="direct"`` (keras.layers.Conv1D), ``"fft"`` (every main-path convolution through
keras_astro.layers.fft_conv.FFTConv1D), the same with ``data_format="channels_first"``
(``fft_cf``), and ``"auto"`` (FFT for kernels ≥ 64 taps, direct for the 15-tap ones) — gives them
the same weights (batch-norm statistics set from one training-mode pass, so that the output
really depends on the input) and measures, in one process:

* inference, milliseconds per spectrum at batch 16: ``model(x, training=False)`` in a
  ``tf.function``; for the FFT models also with XLA (``_jit``) and with the kernel spectra
  computed once (``_frozen``, :func:`keras_astro.layers.fft_conv.frozen_kernel_spectra`; with
  XLA as well under ``--frozen-jit``). One warm-up call each, then the median of ``--runs``
  calls, the variants interleaved so that load from other processes hits all of them alike;
* one training step at batch 16 (MSE + Adam as ``compile_fnet`` sets them up, L2 in the kernels'
  regularisers), traced first, then timed ``--train-runs`` times;
* ``max_abs_diff``: the largest |difference| between the direct and the FFT models' outputs on
  the same zero-mean, unit-norm spectra (must be < 1e-3), and the same for block 8's
  pre-activation features.

``fft_ms_per_spectrum`` / ``inference_speedup_ratio`` are for the fastest ``conv_impl="fft"``
variant (either layout, with or without XLA, with or without frozen spectra), ``auto_*``
likewise for ``"auto"``; ``plain_fft_speedup_ratio`` is for ``"fft"`` (channels-last) with
per-call spectra and no XLA;
``ms_per_spectrum`` lists every variant. Prints one JSON line; takes about 4 minutes on 2 cores.
Usage:
``python benchmarks/fnet_conv.py [--runs 5] [--direct-runs 3] [--train-runs 1] [--threads N] [--no-jit] [--frozen-jit]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _train_step(model, cfg, x, z, keras, tf):
    """One MSE + Adam step as compile_fnet sets it up (L2 in the kernels' regularisers), traced, not run."""
    from keras_astro.models.fnet import fnet_optimizer

    opt = fnet_optimizer(cfg)
    opt.build(model.trainable_variables)
    mse = keras.losses.MeanSquaredError()

    @tf.function
    def step(xb, zb):
        with tf.GradientTape() as tape:
            loss = mse(zb, model(xb, training=True)) + tf.add_n(model.losses)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step.get_concrete_function(x, z)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16, help="spectra per call (default 16)")
    ap.add_argument("--runs", type=int, default=5, help="timed inference calls per FFT variant (median reported)")
    ap.add_argument("--direct-runs", type=int, default=3, help="timed inference calls of the direct model")
    ap.add_argument("--train-runs", type=int, default=1, help="timed training steps per variant (0: skip training)")
    ap.add_argument("--threads", type=int, default=0, help="TF intra-op threads (0: TensorFlow's default, all cores)")
    ap.add_argument("--no-jit", action="store_true", help="skip the XLA-compiled inference variants")
    ap.add_argument(
        "--frozen-jit", action="store_true", help="also time XLA with frozen spectra (slower than without here)"
    )
    args = ap.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    from keras_astro.layers.fft_conv import frozen_kernel_spectra
    from keras_astro.models.fnet import FNetConfig, build_fnet
    from keras_astro.preprocess.spectra import fnet_normalise

    load_before = os.getloadavg()[0]
    cfg = FNetConfig(seed=0, lr_schedule="constant")
    rng = np.random.default_rng(0)
    # Spectra: a smooth continuum, a few emission lines and noise, then FNet's Sec 3.1 normalisation.
    pix = np.arange(cfg.input_length)
    flux = 1.0 + 0.5 * np.sin(pix[None, :] / rng.uniform(300, 900, (args.batch, 1)))
    for _ in range(5):
        c = rng.uniform(0, cfg.input_length, (args.batch, 1))
        flux = flux + rng.uniform(0.5, 3.0, (args.batch, 1)) * np.exp(
            -0.5 * ((pix - c) / rng.uniform(5, 30, (args.batch, 1))) ** 2
        )
    x = tf.constant(fnet_normalise(flux + 0.2 * rng.normal(size=flux.shape)))
    z = tf.constant(rng.uniform(0, 1, (args.batch, 1)).astype("float32"))

    t_start = t0 = time.perf_counter()
    models = {impl: build_fnet(cfg, conv_impl=impl, name=f"fnet_{impl}") for impl in ("direct", "fft", "auto")}
    models["fft_cf"] = build_fnet(cfg, conv_impl="fft", name="fnet_fft_cf", data_format="channels_first")
    # Batch-norm statistics of a trained network: one training-mode pass with momentum 0 sets each
    # layer's moving mean/variance to the batch's, so inference-mode activations are normalised
    # and the output really depends on the input (with the initial statistics the one-channel
    # last block is almost all below zero and the output nearly constant).
    bns = [layer for layer in models["fft"].layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    models["fft"](x, training=True)
    for layer in bns:
        layer.momentum = cfg.bn_momentum
    weights = models["fft"].get_weights()
    for m in models.values():
        m.set_weights(weights)
    build_s = time.perf_counter() - t0

    def infer(model, jit):
        return tf.function(lambda t: model(t, training=False), jit_compile=jit)

    fns = {"direct": infer(models["direct"], False)}
    for impl in ("fft", "fft_cf", "auto"):
        fns[impl] = infer(models[impl], False)
        if not args.no_jit:
            fns[f"{impl}_jit"] = infer(models[impl], True)
    # Frozen kernel spectra: the same models, spectra computed once (captured when traced).
    frozen = {}
    for impl in ("fft", "fft_cf", "auto"):
        with frozen_kernel_spectra(models[impl]):
            for jit in (False, True) if args.frozen_jit else (False,):
                name = f"{impl}_frozen" + ("_jit" if jit else "")
                frozen[name] = infer(models[impl], jit)
                frozen[name](x)  # trace inside the block
    fns.update(frozen)

    outputs, times, warm = {}, {name: [] for name in fns}, {}
    for name, fn in fns.items():  # warm-up: tracing, XLA compilation, oneDNN primitive caches
        t = time.perf_counter()
        outputs[name] = fn(x).numpy()
        warm[name] = round(time.perf_counter() - t, 2)
    for r in range(max(args.runs, args.direct_runs)):
        for name, fn in fns.items():  # interleaved, so that load from other processes hits all alike
            if r >= (args.direct_runs if name == "direct" else args.runs):
                continue
            t = time.perf_counter()
            fn(x).numpy()
            times[name].append(time.perf_counter() - t)
    ms = {name: 1e3 * _median(ts) / args.batch for name, ts in times.items()}
    diffs = {name: float(np.max(np.abs(out - outputs["direct"]))) for name, out in outputs.items() if name != "direct"}
    fast = min((n for n in ms if n != "direct"), key=ms.get)
    fft_best = min((n for n in ms if n.startswith("fft")), key=ms.get)
    auto_best = min((n for n in ms if n.startswith("auto")), key=ms.get)
    # The conv stack itself: block 8's pre-activation sum (4,618 values per spectrum), 4 spectra.
    feats = {
        impl: keras.Model(models[impl].input, models[impl].get_layer("block8_add").output)(x[:4], training=False)
        .numpy()
        .reshape(4, -1)  # block 8 has one channel: the same order in either layout
        for impl in models
    }
    feat_diff = max(float(np.max(np.abs(feats[i] - feats["direct"]))) for i in models if i != "direct")
    inference_s = time.perf_counter() - t0 - build_s

    result = {
        "benchmark": "fnet_conv",
        "input_length": cfg.input_length,
        "batch": args.batch,
        "n_conv_layers": cfg.n_conv_layers,
        "direct_ms_per_spectrum": round(ms["direct"], 3),
        "fft_ms_per_spectrum": round(ms[fft_best], 3),
        "fft_variant": fft_best,
        "inference_speedup_ratio": round(ms["direct"] / ms[fft_best], 2),
        "auto_ms_per_spectrum": round(ms[auto_best], 3),
        "auto_variant": auto_best,
        "auto_inference_speedup_ratio": round(ms["direct"] / ms[auto_best], 2),
        "fastest_variant": fast,
        "plain_fft_speedup_ratio": round(ms["direct"] / ms["fft"], 2),
        "ms_per_spectrum": {name: round(v, 3) for name, v in ms.items()},
        "speedup_vs_direct": {name: round(ms["direct"] / v, 2) for name, v in ms.items() if name != "direct"},
        "max_abs_diff": max(diffs.values()),
        "max_abs_diff_by_variant": diffs,
        "output_range": [float(outputs["direct"].min()), float(outputs["direct"].max())],
        "output_std_over_batch": float(outputs["direct"].std()),
        "max_abs_diff_block8_features": feat_diff,
        "block8_features_max_abs": float(np.max(np.abs(feats["direct"]))),
        "warmup_s": warm,
    }

    if args.train_runs > 0:
        t1 = time.perf_counter()
        steps = {}
        for impl in ("direct", "fft", "fft_cf", "auto"):
            step = _train_step(models[impl], cfg, x, z, keras, tf)
            ts = []
            for _ in range(args.train_runs):
                t = time.perf_counter()
                step(x, z).numpy()
                ts.append(time.perf_counter() - t)
            steps[impl] = ts
        med = {impl: _median(ts) for impl, ts in steps.items()}
        result.update(
            {
                "direct_train_step_s": round(med["direct"], 3),
                "fft_train_step_s": round(min(med["fft"], med["fft_cf"]), 3),
                "fft_cl_train_step_s": round(med["fft"], 3),
                "fft_cf_train_step_s": round(med["fft_cf"], 3),
                "auto_train_step_s": round(med["auto"], 3),
                "train_step_speedup_ratio": round(med["direct"] / min(med["fft"], med["fft_cf"]), 2),
                "auto_train_step_speedup_ratio": round(med["direct"] / med["auto"], 2),
                "train_step_s_runs": {impl: [round(t, 3) for t in ts] for impl, ts in steps.items()},
                "train_s": round(time.perf_counter() - t1, 1),
            }
        )
    result["inference_s"] = round(inference_s, 1)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)

    result.update(
        {
            "runs": args.runs,
            "direct_runs": args.direct_runs,
            "train_runs": args.train_runs,
            "threads_intra_op": tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count(),
            "threads_inter_op": tf.config.threading.get_inter_op_parallelism_threads() or os.cpu_count(),
            "cpu_count": os.cpu_count(),
            "load_avg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "build_s": round(build_s, 2),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "machine": platform.machine(),
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
