"""CLARAN (Wu et al. 2019): train and evaluate the Faster R-CNN detector on F / D1–D4 (Secs 4–6).

* :func:`prepare_dataset` — a CLARAN data set folder (``keras-astro rgz build``), built on the
  embedded FIRST/WISE simulation and cached, or a user's folder.
* :func:`train` — momentum SGD (0.9, lr 1e-3 × 0.1 every 50,000 steps, seed 3, horizontal flips),
  checkpoints and resume (``BackupAndRestore``), the four losses of Eqs 4, 6, 9, 10 logged for
  TensorBoard and drawn like Fig. 9, ``model.keras`` and the inference SavedModel.
* :func:`evaluate` — AP per class (Eq. 12) and mAP (Eq. 14) at IoU > 0.5, the components-only
  scheme (Table 6), the multi-source subset (Table 7), box-size correlation (Table 8), PR curves
  (Fig. 10) and the Sec 6.1.1 user filter.
* :func:`detect` — boxes, classes and probabilities for PNG images or RGZ subjects, drawn like Fig. 1.
* :func:`summary` — the Table 4 layer list and the paper-style parameter count.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_astro import specs
from keras_astro.studies.common import cache_dir, markdown_table, versions, write_json, write_text

log = logging.getLogger(__name__)

__all__ = [
    "QUICK",
    "prepare_dataset",
    "train",
    "load_detector",
    "evaluate",
    "detect",
    "summary",
    "reproduce",
]

#: ``--quick``: the small preset (VGG widths ÷ 8) on the quick RGZ build (8 training and 4 test
#: subjects per class), 1,000 steps: about a minute on two CPU cores.
QUICK = {
    "preset": "small",
    "steps": 1000,
    "steps_per_epoch": 100,
    # RGZ subjects are 132 px. At the small preset's 128 px a 1C_1P box (~13 px) is smaller than one
    # stride-16 cell, so the quick run upsamples to 256 px (the paper: 600 px, x 4.56); anchors in
    # steps of sqrt(2) from 16 to 256 px and positives at IoU >= 0.5 give the RPN positives for boxes
    # of 25-60 px whose centres sit up to 8 px off the anchor grid (docs/fidelity.md).
    "config": {
        "input_size": 256,
        "anchor_sizes": (16.0, 24.0, 32.0, 48.0, 64.0, 96.0, 128.0, 192.0, 256.0),
        "rpn_positive_iou": 0.5,
        "learning_rate": 1e-3,
    },
}
LOSSES = ("rpn_cls_loss", "rpn_reg_loss", "rcnn_cls_loss", "rcnn_reg_loss")


def _classes() -> list[str]:
    return list(specs.load_spec("rgz")["classes"])


def _reported() -> dict:
    return {**specs.load_spec("claran")["reported"], **specs.load_spec("rgz")["reported"]}


# ---------------------------------------------------------------------------------------- data
def prepare_dataset(
    dataset: str = "D4",
    *,
    data_dir: str | os.PathLike | None = None,
    quick: bool = False,
    images: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """The data set folder to train on: ``data_dir`` if given (must hold ``train.txt``), else the
    embedded simulation fused into ``dataset`` (F, D1–D4), built once and cached."""
    from keras_astro.studies.rgz_data import build_dataset

    if data_dir is not None:
        d = Path(data_dir)
        if not (d / "train.txt").is_file():
            raise FileNotFoundError(f"{d}: not a CLARAN data set (no train.txt); build one with `keras-astro rgz build`")
        return d
    from keras_astro.simulate.radio import SIM_VERSION

    d = cache_dir("rgz") / f"{dataset.upper()}-{'quick' if quick else 'full'}-seed{seed}-sim{SIM_VERSION}"
    if not (d / "dataset.json").is_file():
        build_dataset(dataset, d, quick=quick, images=images, seed=seed, progress=progress)
    return d


def _config(preset: str, **overrides):
    from keras_astro.models.claran import ClaranConfig

    if preset == "paper":
        return ClaranConfig.paper(**overrides)
    if preset == "small":
        return ClaranConfig.small(**overrides)
    raise ValueError(f"unknown CLARAN preset {preset!r}; choose 'paper' or 'small'")


# ------------------------------------------------------------------------------------ training
def _loss_figure(history: dict[str, list[float]], steps_per_epoch: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LOSSES) + 1, figsize=(16, 3.2))
    for ax, key in zip(axes, (*LOSSES, "loss")):
        v = history.get(key, [])
        steps = steps_per_epoch * (np.arange(len(v)) + 1)
        ax.plot(steps, v, marker="o", ms=3)
        ax.set(title=key, xlabel="step")
    fig.suptitle("CLARAN training losses (cf. Fig. 9)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train(
    out: str | os.PathLike,
    *,
    dataset: str = "D4",
    quick: bool = False,
    data_dir: str | os.PathLike | None = None,
    preset: str | None = None,
    steps: int | None = None,
    steps_per_epoch: int | None = None,
    vgg_weights: str | os.PathLike | None = None,
    seed: int | None = None,
    config_overrides: dict | None = None,
    jit_compile: bool = False,
    evaluate_after: bool = True,
    export: bool = True,
    strategy=None,
    progress: bool = True,
    backup_dir: str | os.PathLike | None = None,
    backup_every: int | None = None,
    callbacks: Sequence = (),
) -> dict[str, Any]:
    """Train CLARAN on ``dataset`` and write ``out/model.keras``, ``out/savedmodel``, losses and
    (with ``evaluate_after``) the test-set metrics in ``out/metrics.json``.

    Training is resumable: it backs up at every epoch end and, with ``backup_every``, every that
    many steps to ``backup_dir`` (default ``out/backup``); the same command after a kill continues
    from the newest backup (weights, momentum, step count) and the folder is deleted when the run
    completes. Under a multi-worker strategy every worker runs this function with one image per
    replica per step (the paper's batch of one per GPU), the input is sharded by element, and only
    the chief writes ``out``, evaluates and exports (docs/scaling.md).
    Without ``vgg_weights`` (a local Keras VGG-16 weights file) the backbone starts from random
    weights — the paper fine-tunes ImageNet weights, which cannot be downloaded here.
    """
    import keras

    from keras_astro.callbacks import BackupAndResume, ResumableCSVLogger
    from keras_astro.distribute import (
        describe_strategy,
        discard_output_dir,
        get_strategy,
        is_chief,
        local_copy,
        output_dir,
        remove_backup,
        worker_backup_dir,
        worker_failures,
    )
    from keras_astro.models.claran import build_claran, compile_claran, load_vgg16_weights
    from keras_astro.pipelines.rgz import read_split, rgz_dataset

    if backup_every is not None and (isinstance(backup_every, bool) or int(backup_every) < 1):
        raise ValueError(f"backup_every must be a positive number of steps, got {backup_every!r}")
    strategy = strategy or get_strategy()  # first: a multi-worker strategy must precede other TF ops
    final_out = Path(out)
    out = output_dir(final_out, strategy)
    chief = is_chief(strategy)
    backup_root = Path(backup_dir) if backup_dir else final_out / "backup"
    t0 = time.perf_counter()
    preset = preset or (QUICK["preset"] if quick else "paper")
    overrides = dict(QUICK["config"]) if quick and preset == QUICK["preset"] else {}
    overrides.update(config_overrides or {})
    if seed is not None:
        overrides["seed"] = seed
    cfg = _config(preset, **overrides)
    keras.utils.set_random_seed(cfg.seed)
    root = prepare_dataset(dataset, data_dir=data_dir, quick=quick, seed=0, progress=progress)
    n_train = len(read_split(root, "train")["paths"])
    total = int(steps or (QUICK["steps"] if quick else cfg.steps))
    spe = int(steps_per_epoch or (QUICK["steps_per_epoch"] if quick else 1000))
    spe = max(1, min(spe, total))
    epochs = int(np.ceil(total / spe))
    replicas = strategy.num_replicas_in_sync
    ds = rgz_dataset(root, "train", image_size=cfg.input_size, batch_size=replicas, seed=cfg.seed, repeat=True)
    with strategy.scope():
        detector = build_claran(cfg)
        loaded = []
        if vgg_weights is not None:
            loaded = load_vgg16_weights(detector.backbone, vgg_weights)
        else:
            log.warning(
                "no VGG-16 weights given (--vgg-weights): the backbone trains from random initialisation; "
                "the paper fine-tunes ImageNet weights, which cannot be downloaded here"
            )
        compile_claran(detector, jit_compile=jit_compile)
    log.info(
        "CLARAN %s on %s (%d training subjects): %d steps (%d epochs of %d), %s",
        preset,
        root.name,
        n_train,
        epochs * spe,
        epochs,
        spe,
        describe_strategy(strategy)["strategy"],
    )
    fingerprint = {
        "study": "claran", "dataset": dataset.upper(), "data": str(root), "n_train": n_train, "preset": preset,
        "config": cfg.to_dict(), "steps": epochs * spe, "steps_per_epoch": spe, "replicas": replicas,
        "vgg_weights": str(vgg_weights) if vgg_weights else None,
    }
    backup = BackupAndResume(worker_backup_dir(backup_root, strategy) / "fit", save_freq=backup_every or "epoch", fingerprint=fingerprint)
    cbs = [
        backup,
        ResumableCSVLogger(out / "history.csv"),
        keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, update_freq="epoch"),
        *callbacks,
    ]
    with worker_failures(backup_root):
        hist = detector.fit(ds, epochs=epochs, steps_per_epoch=spe, callbacks=cbs, verbose=1 if progress else 2, shuffle=False)
    history = {k: [float(x) for x in v] for k, v in hist.history.items()} or _read_history(out / "history.csv")
    detector = local_copy(detector, strategy)  # multi-worker: a plain copy to save, export and evaluate
    if not chief:  # the other workers' outputs would be discarded: skip the saving and the evaluation
        remove_backup(backup_root, strategy)
        discard_output_dir(out, final_out)
        return {"study": "claran", "dataset": dataset.upper(), "steps": epochs * spe, "chief": False, "final_losses": {k: (history.get(k) or [None])[-1] for k in (*LOSSES, "loss")}}
    _loss_figure(history, spe, out / "figures" / "losses.png")
    detector.save(out / "model.keras")
    write_json(
        out / "train.json",
        {
            "study": "claran",
            "dataset": dataset.upper(),
            "data": str(root),
            "preset": preset,
            "config": cfg.to_dict(),
            "steps": epochs * spe,
            "vgg_weights": str(vgg_weights) if vgg_weights else None,
            "vgg_layers_loaded": loaded,
            "seconds": round(time.perf_counter() - t0, 1),
            "versions": versions(),
        },
    )
    if export:
        export_detector(detector, out / "savedmodel", metadata={"dataset": dataset.upper(), "preset": preset})
    metrics: dict[str, Any] = {
        "study": "claran",
        "quick": quick,
        "dataset": dataset.upper(),
        "preset": preset,
        "steps": epochs * spe,
        "final_losses": {k: (history.get(k) or [None])[-1] for k in (*LOSSES, "loss")},
        "train_seconds": round(time.perf_counter() - t0, 1),
    }
    if evaluate_after:
        ev = evaluate(out, out=out / "eval", data_dir=root, progress=progress, detector=detector)
        metrics.update({k: ev[k] for k in ("ap", "map", "components_only", "multi_source", "box_size", "user_filter")})
    metrics["reported"] = _reported()
    metrics["versions"] = versions()
    write_json(out / "metrics.json", metrics)
    remove_backup(backup_root, strategy)
    return metrics


def _read_history(path: Path) -> dict[str, list[float]]:
    if not path.is_file():
        return {}
    import pandas as pd

    df = pd.read_csv(path)
    return {c: df[c].astype(float).tolist() for c in df.columns if c != "epoch"}


def export_detector(detector, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """SavedModel of the inference model: ``image`` (N, S, S, 3) float32 BGR zero-centred (as the
    pipeline makes it) → ``boxes``, ``classes``, ``scores``, ``num_detections``."""
    import tensorflow as tf

    from keras_astro.export import export_savedmodel
    from keras_astro.models.claran import inference_model

    cfg = detector.config
    model = inference_model(detector)
    pre = specs.load_spec("rgz")["preprocess"]
    meta = {
        "study": "claran",
        "input": f"fused image resized to {cfg.input_size} px, BGR, minus the channel means {pre['pixel_means_bgr']}",
        "classes": ["__background__", *_classes()],
        **(metadata or {}),
    }
    return export_savedmodel(
        model,
        path,
        input_spec=tf.TensorSpec((None, cfg.input_size, cfg.input_size, 3), tf.float32, name="image"),
        metadata=meta,
    )


def load_detector(model_dir: str | os.PathLike):
    """The trained detector from a ``train`` folder (``model.keras``)."""
    from keras_astro.safety import load_model_safely

    model_dir = Path(model_dir)
    path = model_dir / "model.keras" if model_dir.is_dir() else model_dir
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained CLARAN model (run `keras-astro claran train --out {model_dir}` first)")
    return load_model_safely(path)  # Keras safe mode; refuses Lambda layers and unregistered classes


# ---------------------------------------------------------------------------------- evaluation
def _run_inference(model, ds, progress: bool):
    from keras_astro.detection_metrics import unbatch_detections, unbatch_ground_truth

    dets, gts = [], []
    it = ds
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(ds, desc="claran evaluate", unit="batch")
    t = time.perf_counter()
    n = 0
    for images, boxes, classes in it:
        o = model(images, training=False)
        dets += unbatch_detections(o["boxes"].numpy(), o["classes"].numpy(), o["scores"].numpy(), o["num_detections"].numpy())
        gts += unbatch_ground_truth(boxes.numpy(), classes.numpy())
        n += int(images.shape[0])
    return dets, gts, (time.perf_counter() - t) / max(n, 1)


def evaluate(
    model_dir: str | os.PathLike,
    *,
    out: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    dataset: str | None = None,
    split: str = "test",
    batch_size: int = 4,
    progress: bool = True,
    detector=None,
) -> dict[str, Any]:
    """Per-class AP (Eq. 12) and mAP (Eq. 14) of a trained model on ``split``; writes
    ``out/metrics.json`` (``ap``, ``map``, Tables 6–8, the user filter) and ``out/pr_curves.png``."""
    from keras_astro import detection_metrics as dm
    from keras_astro.models.claran import inference_model
    from keras_astro.pipelines.rgz import rgz_dataset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(model_dir)
    info = json.loads((model_dir / "train.json").read_text()) if (model_dir / "train.json").is_file() else {}
    if detector is None:
        detector = load_detector(model_dir)
    cfg = detector.config
    if data_dir is None:
        if info.get("data") and Path(info["data"]).is_dir():
            data_dir = info["data"]
        else:
            data_dir = prepare_dataset(dataset or info.get("dataset", "D4"), quick=True, progress=progress)
    ds = rgz_dataset(data_dir, split, image_size=cfg.input_size, batch_size=batch_size, flip=False, shuffle=False)
    model = inference_model(detector)
    dets, gts, sec = _run_inference(model, ds, progress)
    names = _classes()
    res = dm.evaluate_detections(dets, gts, names)
    comp = dm.evaluate_detections(*dm.components_only(dets, gts, names))
    ms_d, ms_g = dm.multi_source_subset(dets, gts, class_names=names)
    multi = dm.evaluate_detections(*dm.components_only(ms_d, ms_g, names)) if len(ms_g) else None
    size = dm.box_size_correlation(dets, gts, names)
    filt = dm.user_filter_accuracy(dm.user_filter(dets), gts, names)
    dm.plot_pr_curves(res, out / "pr_curves.png", title=f"CLARAN PR curves ({split}; cf. Fig. 10)")

    def clean(x):
        return None if x is None or (isinstance(x, float) and not np.isfinite(x)) else float(x)

    metrics = {
        "study": "claran",
        "model": str(model_dir),
        "data": str(data_dir),
        "split": split,
        "n_images": len(gts),
        "ap": {k: clean(v) for k, v in res["ap"].items()},
        "map": clean(res["map"]),
        "n_gt": res["n_gt"],
        "components_only": {"ap": {k: clean(v) for k, v in comp["ap"].items()}, "map": clean(comp["map"])},
        "multi_source": None
        if multi is None
        else {"n_images": len(ms_g), "ap": {k: clean(v) for k, v in multi["ap"].items()}, "map": clean(multi["map"])},
        "box_size": {"overall": clean(size["overall"]), "r": {k: clean(v) for k, v in size["r"].items()}},
        "user_filter": {"accuracy": clean(filt["accuracy"]), "n_fields": filt["n_fields"]},
        "ms_per_subject": round(1e3 * sec, 2),
        "reported": _reported(),
    }
    write_json(out / "metrics.json", metrics)
    rows = [(c, metrics["ap"].get(c), _reported()["d4_ap"].get(c)) for c in names] + [("mAP", metrics["map"], _reported()["map"]["D4"])]
    write_text(out / "ap.md", markdown_table(["class", "AP (ours)", "AP (paper, D4)"], rows))
    return metrics


# ---------------------------------------------------------------------------------- detection
def _load_image(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(network input (size, size, 3) BGR zero-centred, the RGB image as read) for a PNG/JPEG."""
    import tensorflow as tf

    try:
        raw = tf.io.decode_image(tf.io.read_file(str(path)), channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:
        raise ValueError(f"{path}: not a readable PNG/JPEG image ({exc.message.splitlines()[0]})") from None
    rgb = raw.numpy()
    img = tf.image.resize(tf.cast(raw, tf.float32), (size, size), method="bilinear")[..., ::-1]
    means = np.asarray(specs.load_spec("rgz")["preprocess"]["pixel_means_bgr"], np.float32)
    return img.numpy() - means, rgb


def detect(
    inputs: Sequence[str | os.PathLike],
    *,
    model_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    dataset: str = "D4",
    threshold: float = 0.0,
    user_filter: bool = False,
) -> list[dict[str, Any]]:
    """Detections for PNG/JPEG images or RGZ subject names (fused into ``dataset`` from the
    embedded simulation); with ``out`` each is drawn like Fig. 1 into ``out/<name>.png``.

    Boxes are returned in pixels of the input image (top-left origin)."""
    from keras_astro import detection_metrics as dm
    from keras_astro.models.claran import inference_model

    detector = load_detector(model_dir)
    size = detector.config.input_size
    model = inference_model(detector)
    names = _classes()
    results = []
    for item in inputs:
        p = Path(item)
        if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such image")
            x, rgb = _load_image(p, size)
            name = p.stem
        else:
            from keras_astro.io import rgz
            from keras_astro.preprocess import radio as R
            from keras_astro.studies.rgz_data import _image_paths, _read_pair

            cat = rgz.load_catalogue()
            try:
                s = cat[str(item)]
            except (KeyError, ValueError):
                raise ValueError(
                    f"{item}: neither a PNG/JPEG image nor an RGZ subject name (e.g. {next(iter(cat)).name})"
                ) from None
            paths, _ = _image_paths([s], None, 0, False)
            rgb = R.fuse(*_read_pair(s, paths[s.name]), dataset.upper(), subject=s.name)
            tmp = cache_dir("rgz") / "detect"
            tmp.mkdir(parents=True, exist_ok=True)
            from keras_astro.studies.rgz_data import _write_png

            _write_png(tmp / f"{s.name}.png", rgb)
            x, rgb = _load_image(tmp / f"{s.name}.png", size)
            name = s.name
        o = model(x[None], training=False)
        det = dm.unbatch_detections(o["boxes"].numpy(), o["classes"].numpy(), o["scores"].numpy(), o["num_detections"].numpy())[0]
        if user_filter:
            det = dm.user_filter([det])[0]
        keep = det["scores"] >= threshold
        scale = np.array([rgb.shape[1] / size, rgb.shape[0] / size] * 2)
        boxes = det["boxes"][keep] * scale
        found = [
            {"box": [round(float(v), 2) for v in b], "class": names[int(c) - 1], "probability": round(float(s), 4)}
            for b, c, s in zip(boxes, det["classes"][keep], det["scores"][keep])
        ]
        results.append({"input": str(item), "detections": found})
        if out is not None:
            _draw(rgb, found, Path(out) / f"{name}.png", title=name)
    return results


def _draw(rgb: np.ndarray, found: list[dict], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.imshow(rgb, origin="upper")
    for i, d in enumerate(found):
        x1, y1, x2, y2 = d["box"]
        colour = f"C{i % 10}"
        ax.add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.5))
        ax.text(x1, max(y1 - 2, 4), f"{d['class']} {d['probability']:.2f}", color=colour, fontsize=8, backgroundcolor=(0, 0, 0, 0.4))
    ax.set(xticks=[], yticks=[], title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------- summary
def summary(preset: str = "paper") -> str:
    """Table 4 as a Markdown table for ``preset``, with the paper-style parameter count."""
    from keras_astro.models.claran import build_claran, layer_table, paper_parameter_count

    detector = build_claran(_config(preset))
    rows = layer_table(detector)

    def fmt(v):
        if v is None:
            return "–"
        if isinstance(v, tuple):
            return " × ".join(str(x) for x in v)
        return v

    table = markdown_table(
        ["layer", "function", "filter / input", "activation", "stride", "output", "parameters"],
        [(r["layer"], r["function"], fmt(r["filter"]), fmt(r["activation"]), fmt(r["stride"]), fmt(r["output"]), f"{r['params']:,}") for r in rows],
    )
    n = paper_parameter_count(detector)
    paper = int(specs.load_spec("claran")["reported"]["parameter_count"])
    lines = [
        f"CLARAN ({preset} preset, {detector.config.input_size} x {detector.config.input_size} input) — cf. Table 4 of Wu et al. 2019",
        "",
        table,
        "",
        f"Parameters counted the paper's way (conv kernels without biases + FC layers with biases): {n:,}",
        f"Paper (Table 4): {paper:,}" + (" — reproduced" if n == paper else ""),
        f"Keras count_params() (all weights incl. conv biases): {detector.count_params():,}",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- reproduce
def reproduce(out: str | os.PathLike, *, quick: bool = False, strategy=None, progress: bool = True) -> dict:
    """CLARAN on D4 for ``keras-astro reproduce`` (small preset in ``--quick``, the paper's otherwise)."""
    out = Path(out)
    m = train(out, dataset="D4", quick=quick, strategy=strategy, progress=progress)
    rep = _reported()
    report = [("D4 mAP (Eq. 14)", rep["map"]["D4"], m.get("map"))]
    report += [(f"D4 AP {c}", rep["d4_ap"].get(c), (m.get("ap") or {}).get(c)) for c in _classes()]
    report.append(("D4 components-only mAP (Table 6)", rep["components_only_map"]["D4"], (m.get("components_only") or {}).get("map")))
    from keras_astro.models.claran import build_claran, paper_parameter_count

    report.append(("parameters, paper preset (Table 4)", rep["parameter_count"], paper_parameter_count(build_claran(_config("paper")))))
    m["report"] = [{"metric": a, "paper": b, "ours": c} for a, b, c in report]
    write_json(out / "metrics.json", m)
    if not quick:
        shutil.rmtree(out / "backup", ignore_errors=True)
    return m
