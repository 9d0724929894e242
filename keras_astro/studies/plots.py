"""Figures shared by the studies (matplotlib, Agg backend, PNG files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def roc_figure(
    curves: Sequence[tuple[np.ndarray, np.ndarray, str]],
    path: str | os.PathLike,
    *,
    title: str = "ROC",
    faint: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> Path:
    """ROC curves (false- vs true-positive rate) with the chance diagonal.

    ``curves`` are drawn in colour with their labels; ``faint`` curves (e.g. single folds) in grey.
    """
    fig, ax = plt.subplots(figsize=(5.2, 5))
    for fpr, tpr in faint:
        ax.plot(fpr, tpr, color="0.75", lw=0.8)
    for fpr, tpr, label in curves:
        ax.plot(fpr, tpr, lw=1.8, label=label)
    ax.plot([0, 1], [0, 1], ls=":", color="k", lw=0.8)
    ax.set(xlabel="false positive rate (SFGs called AGN)", ylabel="true positive rate (AGN completeness)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def history_figure(history: Mapping[str, Sequence[float]], path: str | os.PathLike, *, title: str = "", stopped: int | None = None, best: int | None = None) -> Path:
    """Four panels like Chen et al. Fig. 7: AGN completeness, SFG completeness, accuracy, focal loss."""
    panels = [
        ("val_agn_completeness", "AGN completeness"),
        ("val_sfg_completeness", "SFG completeness"),
        ("val_accuracy", "accuracy"),
        ("loss", "focal loss"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), sharex=True)
    for ax, (key, label) in zip(axes.ravel(), panels):
        vals = history.get(key)
        if vals is not None:
            ax.plot(np.arange(1, len(vals) + 1), vals, lw=1.2, label="train" if key == "loss" else "validation fold")
        if key == "loss" and "val_loss" in history:
            ax.plot(np.arange(1, len(history["val_loss"]) + 1), history["val_loss"], lw=1.2, label="validation fold")
            ax.legend(fontsize=8)
        if best is not None:
            ax.axvline(best + 1, color="g", ls="--", lw=0.8)
        if stopped is not None and stopped >= 0:
            ax.axvline(stopped + 1, color="r", ls=":", lw=0.8)
        ax.set_ylabel(label)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def bar_figure(labels: Sequence[str], values: Sequence[float], path: str | os.PathLike, *, ylabel: str, title: str = "") -> Path:
    """A labelled bar chart (values shown on the bars)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(labels, values, color="tab:blue")
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{v:.3g}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    return _save(fig, path)
