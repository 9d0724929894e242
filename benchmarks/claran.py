"""CLARAN on the CPU: inference latency at 600 x 600, training-step time, XLA, bfloat16.

Builds the paper's CLARAN (VGG-16, 600 x 600 input, 4096-wide head; Table 4) and measures, in one
process:

* ``inference_ms_per_subject``: the inference model (backbone → RPN → 5 proposals → ST-RoI →
  head → per-class NMS) on one fused subject, float32, the median of ``--runs`` calls after a
  warm-up (paper: 220 ms on a K40c, 45 ms on a P100);
* ``bf16_inference_ms_per_subject``: the same weights under Keras' ``mixed_bfloat16`` policy
  (this CPU has AVX512-BF16), with the largest score and box differences from float32 on the same
  input; with ``--model DIR`` (a ``keras-astro claran train`` folder) also the test-set mAP in both
  precisions and their difference;
* ``train_step_ms``: one training step (the four losses, SGD) of the paper preset at 600 x 600;
* ``train_step_xla_compiled``: whether the training step compiles with XLA (on the small preset,
  or the paper preset with ``--xla-paper``), and its time.

Variants are interleaved call by call so that load from other processes hits them alike. Prints
one JSON line. Takes about 2–4 minutes on 2 cores.
Usage: ``python benchmarks/claran.py [--runs 5] [--train-runs 2] [--model DIR] [--xla-paper]``.
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


def _subject(size, seed=0):
    """A fused-looking input: the quick D4 build's first test image if cached, else noise blobs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    img = rng.normal(0, 20, (size, size, 3)).astype("float32")
    yy, xx = np.mgrid[:size, :size]
    for _ in range(3):
        cx, cy, r = rng.uniform(0.2, 0.8) * size, rng.uniform(0.2, 0.8) * size, rng.uniform(0.02, 0.08) * size
        img[..., 2] += 120 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    return img[None]


def _train_batch(cfg, seed=0):
    import numpy as np

    s = cfg.input_size
    x = _subject(s, seed)
    boxes = np.array([[[0.3 * s, 0.3 * s, 0.5 * s, 0.5 * s], [0.6 * s, 0.55 * s, 0.8 * s, 0.75 * s]]], "float32")
    classes = np.array([[1, 4]], "int32")
    return x, boxes, classes


def _time_train_step(cfg, runs, jit):
    import tensorflow as tf

    from keras_astro.models.claran import build_claran, compile_claran

    det = build_claran(cfg)
    compile_claran(det, jit_compile=jit)
    x, b, c = _train_batch(cfg)
    step = tf.function(det.train_step, jit_compile=jit, reduce_retracing=True)
    data = (tf.constant(x), tf.constant(b), tf.constant(c))
    t = time.perf_counter()
    step(data)
    first = time.perf_counter() - t
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = step(data)
        float(out["loss"])
        times.append(time.perf_counter() - t)
    return 1e3 * _median(times), first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--train-runs", type=int, default=2)
    ap.add_argument("--model", default=None, help="a `claran train` folder: also compare test mAP float32 vs bfloat16")
    ap.add_argument("--xla-paper", action="store_true", help="try XLA on the paper preset's training step (slow to compile)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import keras
    import numpy as np
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    from keras_astro.models.claran import ClaranConfig, build_claran, inference_model

    t_start = time.perf_counter()
    cfg = ClaranConfig.paper()
    det32 = build_claran(cfg)
    inf32 = inference_model(det32)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        det16 = build_claran(cfg)
        det16.set_weights(det32.get_weights())
        inf16 = inference_model(det16)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    build_s = time.perf_counter() - t_start
    x = tf.constant(_subject(cfg.input_size))
    f32 = tf.function(lambda v: inf32(v, training=False))
    f16 = tf.function(lambda v: inf16(v, training=False))
    o32, o16 = f32(x), f16(x)  # warm-up / trace
    t32, t16 = [], []
    for _ in range(args.runs):
        for fn, acc in ((f32, t32), (f16, t16)):
            t = time.perf_counter()
            o = fn(x)
            o["scores"].numpy()
            acc.append(time.perf_counter() - t)
    o32, o16 = f32(x), f16(x)
    n = int(min(o32["num_detections"][0], o16["num_detections"][0]))
    score_diff = float(np.max(np.abs(o32["scores"].numpy()[0, :n] - o16["scores"].numpy()[0, :n]))) if n else 0.0
    box_diff = float(np.max(np.abs(o32["boxes"].numpy()[0, :n] - o16["boxes"].numpy()[0, :n]))) if n else 0.0

    result = {
        "benchmark": "claran",
        "input_size": cfg.input_size,
        "inference_ms_per_subject": round(1e3 * _median(t32), 1),
        "bf16_inference_ms_per_subject": round(1e3 * _median(t16), 1),
        "bf16_speedup_ratio": round(_median(t32) / _median(t16), 2),
        "bf16_max_score_diff": score_diff,
        "bf16_max_box_diff_px": box_diff,
        "paper_inference_ms": {"K40c": 220, "P100": 45},
    }
    det16 = inf16 = f16 = None  # free the bfloat16 copy before the optional evaluation

    if args.model:
        from keras_astro.studies import claran

        m32 = claran.evaluate(args.model, out=os.path.join(args.model, "bench_eval_f32"), progress=False)
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
        try:
            trained = claran.load_detector(args.model)
            m16 = claran.evaluate(args.model, out=os.path.join(args.model, "bench_eval_bf16"), progress=False, detector=trained)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        result.update({"map_float32": m32["map"], "map_bf16": m16["map"], "bf16_map_change": None if m32["map"] is None or m16["map"] is None else round(m16["map"] - m32["map"], 4)})

    ms, first = _time_train_step(cfg, args.train_runs, jit=False)
    result["train_step_ms"] = round(ms, 1)
    result["train_step_first_call_s"] = round(first, 1)
    result["paper_train_s_per_step"] = {"K40c": 0.52, "P100": 0.11}
    xla_cfg = cfg if args.xla_paper else ClaranConfig.small()
    try:
        xla_ms, xla_first = _time_train_step(xla_cfg, args.train_runs, jit=True)
        plain_ms, _ = _time_train_step(xla_cfg, args.train_runs, jit=False)
        result.update(
            {
                "train_step_xla_compiled": True,
                "xla_preset": "paper" if args.xla_paper else "small",
                "xla_train_step_ms": round(xla_ms, 1),
                "xla_compile_s": round(xla_first, 1),
                "no_xla_train_step_ms_same_preset": round(plain_ms, 1),
            }
        )
    except Exception as exc:  # report, don't crash: the line is the result
        result.update({"train_step_xla_compiled": False, "xla_error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
    result.update(
        {
            "build_s": round(build_s, 1),
            "wall_s": round(time.perf_counter() - t_start, 1),
            "threads": args.threads or "default",
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
