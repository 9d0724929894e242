"""Build CLARAN's data sets (F, D1–D4) from the RGZ catalogue and radio/IR cutouts.

``build_dataset`` writes, under ``out``::

    images/<subject>.png         132 × 132 RGB, top-left origin (fused as the data set asks)
    annotations/<subject>.json   {"subject", "width", "height", "boxes": [[x1, y1, x2, y2]...], "labels": [...], "split"}
    train.txt, test.txt          subject names per split (catalogue's `training` column)
    dataset.json                 data set, counts per class/split, D4 fill colour, image source, versions

Images come from real FITS cutouts in ``images=DIR`` (``<subject>_radio.fits`` /
``<subject>_ir.fits``, as ``keras_astro.io.skyview`` saves them) or, by default, from the
embedded FIRST/WISE simulator (cached under the keras_astro cache folder).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from keras_astro import specs
from keras_astro.io import rgz
from keras_astro.preprocess import radio as R
from keras_astro.studies.common import cache_dir, versions, write_json, write_text

log = logging.getLogger(__name__)

__all__ = ["QUICK_PER_CLASS", "select_subjects", "build_dataset", "show_subject"]

QUICK_PER_CLASS = {"train": 8, "test": 4}  # subjects per morphology class in --quick builds


def select_subjects(cat: rgz.RGZCatalogue, *, quick: bool, seed: int = 0) -> list[rgz.Subject]:
    """All subjects, or for ``quick`` a stratified subset per split and class (seeded)."""
    if not quick:
        return list(cat)
    out = []
    for split, n in QUICK_PER_CLASS.items():
        out.extend(cat.stratified_subset(n, split=split, seed=seed))
    return out


def _image_paths(subjects: list[rgz.Subject], images: str | os.PathLike | None, seed: int, progress: bool):
    """{subject: (radio_fits, ir_fits)} from a real cutout folder or the simulator's cache."""
    sv = specs.load_spec("rgz")["skyview"]
    if images is not None:
        d = Path(images)
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such image folder")
        return {
            s.name: (d / f"{s.name}{sv['radio_suffix']}", d / f"{s.name}{sv['ir_suffix']}") for s in subjects
        }, "real"
    from keras_astro.simulate import radio as sim

    d = cache_dir() / "rgz_images" / f"sim-{sim.SIM_VERSION}-seed{seed}"
    return sim.ensure_images(subjects, d, seed=seed, progress=progress), "simulated"


def _read_pair(subject: rgz.Subject, paths: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
    from keras_astro.io.skyview import read_cutout

    size = int(specs.load_spec("rgz")["subject"]["size_px"])
    radio, _ = read_cutout(paths[0], size=size, subject=subject.name)
    ir, _ = read_cutout(paths[1], size=size, subject=subject.name)
    return radio, ir


def _write_png(path: Path, rgb: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    if not cv2.imwrite(str(tmp), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"{path}: OpenCV could not write the PNG")
    os.replace(tmp, path)


def build_dataset(
    dataset: str,
    out: str | os.PathLike,
    *,
    quick: bool = False,
    images: str | os.PathLike | None = None,
    seed: int = 0,
    d4_fill: str = "train",
    progress: bool = True,
) -> dict[str, Any]:
    """Write data set ``dataset`` (F, D1, D2, D3 or D4) to ``out``; returns the summary.

    ``d4_fill="train"`` fills D4 with the channel mean of this build's D3 training images (the
    paper's definition); ``"code"`` uses the authors' constant (BGR 14, 45, 213).
    Subjects whose images are missing or unusable are skipped and listed with the reason.
    """
    dataset = dataset.upper()
    if dataset not in R.DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {R.DATASETS}")
    if d4_fill not in ("train", "code"):
        raise ValueError(f"d4_fill must be 'train' or 'code', got {d4_fill!r}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    cat = rgz.load_catalogue()
    subjects = select_subjects(cat, quick=quick, seed=seed)
    paths, source = _image_paths(subjects, images, seed, progress)
    skipped: dict[str, str] = {}
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    anns: dict[str, dict] = {}
    for s in subjects:
        try:
            pairs[s.name] = _read_pair(s, paths[s.name])
            anns[s.name] = rgz.subject_annotations(s)
        except (ValueError, OSError) as exc:  # CutoutError, CatalogueError, missing files
            skipped[s.name] = str(exc)
            log.warning("skipping %s: %s", s.name, exc)
    fill_rgb = None
    if dataset == "D4":
        if d4_fill == "train":
            train_d3 = [
                R.fuse(*pairs[s.name], "D3", subject=s.name) for s in subjects if s.training and s.name in pairs
            ]
            fill_rgb = tuple(float(v) for v in R.channel_mean(train_d3)) if train_d3 else None
        if fill_rgb is None:
            b, g, r = specs.load_spec("rgz")["preprocess"]["d4_fill_bgr"]
            fill_rgb = (float(r), float(g), float(b))
    it = subjects
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(subjects, desc=f"rgz {dataset}", unit="subject")
    lists: dict[str, list[str]] = {"train": [], "test": []}
    counts: Counter = Counter()
    for s in it:
        if s.name not in pairs:
            continue
        try:
            img = R.fuse(*pairs[s.name], dataset, subject=s.name, fill_rgb=fill_rgb)
        except R.FusionError as exc:
            skipped[s.name] = str(exc)
            log.warning("skipping %s: %s", s.name, exc)
            continue
        _write_png(out / "images" / f"{s.name}.png", img)
        a = anns[s.name]
        write_json(
            out / "annotations" / f"{s.name}.json",
            {
                "subject": s.name,
                "width": int(img.shape[1]),
                "height": int(img.shape[0]),
                "boxes": np.round(a["boxes"], 3).tolist(),
                "labels": a["labels"],
                "split": a["split"],
            },
        )
        lists[a["split"]].append(s.name)
        counts.update(f"{a['split']}/{lb}" for lb in a["labels"])
    for split, names in lists.items():
        write_text(out / f"{split}.txt", "".join(f"{n}\n" for n in names))
    summary = {
        "dataset": dataset,
        "quick": quick,
        "seed": seed,
        "image_source": source,
        "n_train": len(lists["train"]),
        "n_test": len(lists["test"]),
        "sources_per_class": dict(sorted(counts.items())),
        "d4_fill_rgb": fill_rgb,
        "skipped": skipped,
        "versions": versions(),
    }
    write_json(out / "dataset.json", summary)
    return summary


def show_subject(
    name: str,
    *,
    dataset: str = "D4",
    images: str | os.PathLike | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    boxes: list[dict] | None = None,
):
    """Fig. 1-style panels: radio (linear zscale) with RGZ boxes, the fused image, IR with 5σ contours.

    ``boxes`` may add detections ({"box": [x1, y1, x2, y2], "label", "score"}) drawn in colour.
    Returns the matplotlib figure (saved to ``out`` when given).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cat = rgz.load_catalogue()
    s = cat[name]
    paths, _ = _image_paths([s], images, seed, progress=False)
    radio, ir = _read_pair(s, paths[s.name])
    ann = rgz.subject_annotations(s)
    fused = R.fuse(radio, ir, dataset, subject=s.name)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    png_radio = radio[::-1] * 1e3
    lo, hi = np.percentile(png_radio, [1, 99.7])
    im = axes[0].imshow(png_radio, cmap="cool", vmin=lo, vmax=hi, origin="upper")
    fig.colorbar(im, ax=axes[0], fraction=0.046, label="mJy/beam")
    axes[0].set_title(f"{s.name}\nFIRST 1.4 GHz")
    axes[1].imshow(fused, origin="upper")
    axes[1].set_title(f"{dataset} with RGZ boxes")
    ir_png = ir[::-1]
    axes[2].imshow(R.zscale_linear(ir_png), cmap="hot", origin="upper")
    sigma = R.mad_sigma(png_radio)
    axes[2].contour(png_radio, levels=[np.median(png_radio) + 5 * sigma], colors="cyan", linewidths=0.8)
    axes[2].set_title("WISE 3.4 µm + 5σ radio contours")
    for ax in axes[:2]:
        for b, lb in zip(ann["boxes"], ann["labels"]):
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, ec="white", lw=1.5))
            ax.text(b[0], b[1] - 2, lb, color="white", fontsize=8)
        for det in boxes or []:
            b = det["box"]
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, ec="yellow", lw=1.2))
            ax.text(b[0], b[3] + 6, f"{det.get('label', '')} {det.get('score', 0):.2f}", color="yellow", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    if out is not None:
        fig.savefig(out, dpi=110)
    return fig
