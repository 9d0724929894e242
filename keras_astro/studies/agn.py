"""Chen et al. 2021 — AGN recognition from 44-band photometry: the paper's protocol.

* :func:`cross_validate` — stratified, seeded K-fold CV (Sec 2.2, K = 10) of one configuration;
  each fold trains the Sec 2.3 network with the focal loss (Eq. 2) until the Eq. 3 condition.
* :func:`run_cv` — CV of preset A, B or C of Table 1 with metrics.json, per-fold table, ROC (Fig. 8)
  and training-history (Fig. 7) figures, and the SavedModel of one fold (Sec 4.1 uses one fold).
* :func:`run_ablation` — the band-group removal experiment of Sec 4.3 with its ROC figure (Fig. 12).
* :func:`predict_catalogue` — inference on a catalogue with several models and their vote
  (Sec 4.1, Table 2, Figs 9–10).
* :func:`reproduce` — all of the above on the embedded data, for ``keras-astro reproduce``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from keras_astro import specs
from keras_astro.io.nepw import CatalogueError, Photometry, load_photometry, read_catalogue, write_catalogue
from keras_astro.metrics import classification_report, roc_curve
from keras_astro.models.agn import PRESETS, AGNConfig
from keras_astro.preprocess.photometry import MissingBandFiller, neighbour_index
from keras_astro.studies import plots
from keras_astro.studies.common import Timer, cache_dir, markdown_table, versions, write_json, write_text

log = logging.getLogger(__name__)

STUDY = specs.load_spec("agn_study")
REPORTED = STUDY["reported"]
METRICS = ("agn_completeness", "sfg_completeness", "accuracy", "roc_auc")

#: Overrides of ``--quick`` runs: a short schedule that fits the 10-minute budget of
#: ``keras-astro reproduce --quick`` on two CPU cores (docs/fidelity.md). Full runs use the paper's.
QUICK = {"max_epochs": 60, "batch_size": 128, "start_from_epoch": 20}


# --------------------------------------------------------------------------------------- data
def embedded_catalogues(*, quick: bool = False, seed: int = 0) -> dict[str, Path]:
    """Paths of the simulated labelled/unlabelled catalogues, generated on first use."""
    from keras_astro.simulate.photometry import ensure_embedded_catalogues

    return ensure_embedded_catalogues(cache_dir("agn"), quick=quick, seed=seed)


def load_labelled(data: str | os.PathLike | None = None, *, quick: bool = False, column_map: Mapping[str, str] | None = None) -> Photometry:
    """The labelled set (AGN/SFG) from ``data`` or, by default, the embedded simulation."""
    path = Path(data) if data else embedded_catalogues(quick=quick)["labelled"]
    phot = load_photometry(path, column_map=column_map, require_labels=True)
    phot = phot.subset(np.flatnonzero(phot.labelled))
    n_agn = int((phot.labels == 1).sum())
    if n_agn < 2 or n_agn > len(phot) - 2:
        raise CatalogueError(f"{path}: need both AGN and SFG labels for training, got {n_agn} AGN of {len(phot)}")
    return phot


# --------------------------------------------------------------------------------- training
@dataclass
class FoldResult:
    """One fold of the cross-validation."""

    fold: int
    metrics: dict
    epochs: int
    best_epoch: int
    stopped_epoch: int
    val_index: np.ndarray
    scores: np.ndarray
    history: dict
    seconds: float


@dataclass
class CVResult:
    """Result of :func:`cross_validate`."""

    config: AGNConfig
    labels: np.ndarray
    folds: list[FoldResult] = field(default_factory=list)
    models: list = field(default_factory=list)
    fillers: list = field(default_factory=list)

    @property
    def oof_scores(self) -> np.ndarray:
        """Out-of-fold scores (NaN for objects whose fold was not run)."""
        s = np.full(len(self.labels), np.nan)
        for f in self.folds:
            s[f.val_index] = f.scores
        return s

    def summary(self) -> dict:
        """Mean and standard deviation over folds of the four Table 1 metrics."""
        out: dict = {}
        for k in METRICS:
            vals = np.array([f.metrics[k] for f in self.folds], float)
            out[k] = float(np.nanmean(vals))
            out[f"{k}_std"] = float(np.nanstd(vals))
        return out


def prepare_inputs(x_raw: np.ndarray, filler: MissingBandFiller, removed_bands: Sequence[int] = ()) -> np.ndarray:
    """Raw (N, 44, 2) photometry (NaN = missing) → filled network input (N, 44, 2, 1)."""
    x = np.array(x_raw, np.float32, copy=True)
    if len(removed_bands):
        x[:, list(removed_bands), :] = np.nan
    return filler.transform(x)[..., None]


def _digest(*arrays: np.ndarray) -> str:
    """SHA-1 of arrays' bytes: identifies a fold's data in its training backup."""
    import hashlib

    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def cross_validate(
    phot: Photometry,
    config: AGNConfig,
    *,
    n_folds: int | None = None,
    folds_to_run: Sequence[int] | None = None,
    removed_bands: Sequence[int] = (),
    strategy=None,
    keep_models: bool = False,
    progress: bool = True,
    backup_dir: str | os.PathLike | None = None,
    backup_every: int = 50,
    callbacks: Sequence = (),
) -> CVResult:
    """Stratified K-fold cross-validation of the Sec 2.3 network (Sec 2.2).

    Parameters
    ----------
    phot
        Labelled photometry (see :func:`load_labelled`).
    config
        Network, focal-loss and stopping hyper-parameters.
    n_folds
        K (default 10, Sec 2.2).
    folds_to_run
        Run only these folds (e.g. ``[0]`` for the single-fold models of Sec 4.1).
    removed_bands
        Band indices removed from training and validation (Sec 4.3); they are treated as
        unobserved and filled like missing bands.
    strategy
        ``tf.distribute`` strategy; default from :func:`keras_astro.distribute.get_strategy`.
    keep_models
        Keep each fold's trained model (and its missing-band filler) in the result.
    backup_dir
        Make the CV resumable: each fold backs up its training every ``backup_every`` epochs in
        ``backup_dir/fold-<k>`` (this worker's part, :func:`keras_astro.distribute.worker_backup_dir`)
        and records its end there, so a killed CV restarted with the same arguments skips finished
        folds and continues the interrupted one (:class:`keras_astro.callbacks.BackupAndResume`).
        The caller deletes the folder when it no longer needs it.
    callbacks
        Extra Keras callbacks for every fold's training (e.g. TensorBoard).
    """
    import keras
    from sklearn.model_selection import StratifiedKFold
    from tqdm.auto import tqdm

    from keras_astro.callbacks import BackupAndResume
    from keras_astro.distribute import (
        get_strategy,
        local_copy,
        synchronize_batch_norm,
        worker_backup_dir,
        worker_failures,
    )
    from keras_astro.models.agn import build_agn_cnn, compile_agn_cnn, stopping_callback
    from keras_astro.training import fit_in_memory

    strategy = strategy or get_strategy()
    k = int(n_folds or STUDY["n_folds"])
    y = phot.labels.astype(np.int64)
    if k < 2 or np.bincount(y, minlength=2).min() < k:
        raise ValueError(f"cannot make {k} stratified folds from {np.bincount(y, minlength=2).tolist()} SFG/AGN objects")
    splits = list(StratifiedKFold(n_splits=k, shuffle=True, random_state=config.seed).split(np.zeros(len(y)), y))
    run = list(range(k)) if folds_to_run is None else [int(f) for f in folds_to_run]
    result = CVResult(config=config, labels=y)
    for fold in tqdm(run, desc=f"{k}-fold CV", disable=not progress):
        tr, va = splits[fold]
        filler = MissingBandFiller(config.missing_strategy).fit(phot.values[tr])
        x_tr = prepare_inputs(phot.values[tr], filler, removed_bands)
        x_va = prepare_inputs(phot.values[va], filler, removed_bands)
        keras.utils.set_random_seed(config.seed * 1000 + fold)
        with strategy.scope():
            model = compile_agn_cnn(build_agn_cnn(config), config)
            synchronize_batch_norm(model, strategy)
        stop = stopping_callback(config)
        batch = config.batch_size or len(tr)
        fold_callbacks = [stop, *callbacks]
        backup = None
        if backup_dir is not None:
            fingerprint = {"study": "agn", "config": config.to_dict(), "n_folds": k, "fold": fold, "removed_bands": [int(b) for b in removed_bands], "replicas": strategy.num_replicas_in_sync, "data_sha1": _digest(x_tr, y[tr], x_va, y[va])}
            backup = BackupAndResume(worker_backup_dir(backup_dir, strategy) / f"fold-{fold}", epoch_freq=backup_every, fingerprint=fingerprint, track=[stop])
            fold_callbacks.insert(0, backup)
        with Timer() as t, worker_failures(backup_dir):
            hist = fit_in_memory(
                model, x_tr, y[tr], validation_data=(x_va, y[va]), epochs=config.max_epochs,
                batch_size=batch, callbacks=fold_callbacks, seed=config.seed + fold, strategy=strategy,
                progress=progress, description=f"fold {fold + 1}/{k}",
            )
        model = local_copy(model, strategy)  # multi-worker: predict and keep a plain copy on each worker
        scores = model.predict(x_va, batch_size=4096, verbose=0).ravel()
        metrics = classification_report(y[va], scores)
        n_epochs = len(hist.history.get("loss", []))
        result.folds.append(
            FoldResult(fold, metrics, n_epochs, stop.best_epoch, stop.stopped_epoch, va, scores, dict(hist.history), backup.total_seconds if backup else t.seconds)
        )
        log.info("fold %d: %s after %d epochs", fold + 1, {m: round(v, 4) for m, v in metrics.items()}, n_epochs)
        if keep_models:
            result.models.append(model)
            result.fillers.append(filler)
    return result


# ------------------------------------------------------------------------------- outputs
def serving_model_for(model, filler: MissingBandFiller):
    """The trained network with missing-band filling in front: raw (N, 44, 2) → P(AGN)."""
    from keras_astro.export import serving_model
    from keras_astro.layers import PhotometryImputer

    imputer = PhotometryImputer(
        filler.strategy,
        fill_values=None if filler.strategy == "zero" else filler.medians,
        neighbours=neighbour_index(filler.k) if filler.strategy == "neighbour_median" else None,
        missing_value=float(specs.load_spec("nepw_catalogue")["missing_value"]),
        name="impute_missing_bands",
    )
    n_bands = len(specs.agn_bands())
    return serving_model(model, [imputer], (n_bands, 2), input_name="photometry", output_name="p_agn")


def export_agn_model(model, filler: MissingBandFiller, out: str | os.PathLike, *, name: str, extra: dict | None = None) -> Path:
    """Export a trained fold model as a SavedModel taking raw photometry (NaN = missing band)."""
    import tensorflow as tf

    from keras_astro.export import export_savedmodel

    served = serving_model_for(model, filler)
    n_bands = len(specs.agn_bands())
    meta = {"study": "agn", "name": name, "bands": specs.band_names(), "input": "photometry (N, 44, 2): AB magnitude, error; NaN or -99 = missing", "output": "p_agn"}
    meta.update(extra or {})
    return export_savedmodel(
        served, out, input_spec=tf.TensorSpec((None, n_bands, 2), tf.float32, name="photometry"),
        output_name="p_agn", metadata=meta,
    )


def _fold_table(res: CVResult) -> list[list]:
    return [[f.fold + 1, *(f.metrics[m] for m in METRICS), f.epochs, f.best_epoch + 1, f.stopped_epoch + 1 if f.stopped_epoch >= 0 else None, round(f.seconds, 1)] for f in res.folds]


def run_cv(
    preset: str = "B",
    *,
    out: str | os.PathLike,
    quick: bool = False,
    data: str | os.PathLike | None = None,
    n_folds: int | None = None,
    folds_to_run: Sequence[int] | None = None,
    overrides: Mapping | None = None,
    export: bool = True,
    strategy=None,
    progress: bool = True,
    backup_dir: str | os.PathLike | None = None,
    backup_every: int = 50,
    callbacks: Sequence = (),
) -> dict:
    """Cross-validate preset A/B/C and write the run folder.

    Writes ``metrics.json`` (means over folds of ``agn_completeness``, ``sfg_completeness``,
    ``accuracy``, ``roc_auc`` as fractions, plus ``folds``), ``folds.csv``/``folds.md``,
    ``config.json``, ``figures/roc.png`` (Fig. 8), ``figures/history.png`` (Fig. 7), and — as in
    Sec 4.1, where one fold's model classifies the field — the first fold's model as
    ``savedmodel/`` (raw photometry in) and ``model.keras``.

    Training is resumable: folds back up to ``backup_dir`` (default ``out/backup``) every
    ``backup_every`` epochs; the same call after a kill continues there, and the folder is deleted
    when the run completes. Under a multi-worker strategy every worker runs this function; only
    the chief writes ``out`` (docs/scaling.md).
    """
    from keras_astro.distribute import discard_output_dir, get_strategy, output_dir, remove_backup

    strategy = strategy or get_strategy()  # first: a multi-worker strategy must precede other TF ops
    final_out = Path(out)
    out = output_dir(final_out, strategy)
    backup_root = Path(backup_dir) if backup_dir else final_out / "backup"
    cfg = AGNConfig.preset(preset, **{**(QUICK if quick else {}), **dict(overrides or {})})
    phot = load_labelled(data, quick=quick)
    with Timer() as t:
        res = cross_validate(phot, cfg, n_folds=n_folds, folds_to_run=folds_to_run, keep_models=export, strategy=strategy, progress=progress, backup_dir=backup_root, backup_every=backup_every, callbacks=callbacks)
    summary = res.summary()
    folds = [{"fold": f.fold + 1, **f.metrics, "epochs": f.epochs, "best_epoch": f.best_epoch + 1, "stopped_epoch": f.stopped_epoch + 1 if f.stopped_epoch >= 0 else None, "seconds": f.seconds} for f in res.folds]
    oof = res.oof_scores
    done = ~np.isnan(oof)
    pooled = classification_report(res.labels[done], oof[done])
    metrics = {
        **{k: summary[k] for k in METRICS},
        "std": {k: summary[f"{k}_std"] for k in METRICS},
        "pooled": pooled,
        "paper": REPORTED.get(preset.upper()),
        "preset": preset.upper(),
        "quick": quick,
        "n_objects": len(phot),
        "n_agn": int((phot.labels == 1).sum()),
        "data": str(data) if data else "embedded simulation",
        "seconds": t.seconds,
        "folds": folds,
    }
    write_json(out / "metrics.json", metrics)
    write_json(out / "config.json", {"config": cfg.to_dict(), "versions": versions(), "data": metrics["data"]})
    header = ["fold", "AGN compl.", "SFG compl.", "accuracy", "ROC AUC", "epochs", "best epoch", "stopped at", "s"]
    rows = _fold_table(res)
    write_text(out / "folds.csv", ",".join(h.replace(" ", "_") for h in header) + "\n" + "\n".join(",".join("" if v is None else str(v) for v in r) for r in rows) + "\n")
    write_text(out / "folds.md", markdown_table(header, rows + [["mean", *(summary[m] for m in METRICS), "", "", "", ""]]))
    # Fig. 8: per-fold ROC curves and the pooled out-of-fold curve.
    faint = [roc_curve(res.labels[f.val_index], f.scores)[:2] for f in res.folds]
    fpr, tpr, _ = roc_curve(res.labels[done], oof[done])
    plots.roc_figure(
        [(fpr, tpr, f"model {preset.upper()}: pooled out-of-fold scores (AUC {pooled['roc_auc']:.3f})")],
        out / "figures" / "roc.png",
        title=f"{len(res.folds)}-fold CV ROC, model {preset.upper()} (grey: single folds, mean AUC {summary['roc_auc']:.3f})",
        faint=faint,
    )
    f0 = res.folds[0]
    plots.history_figure(f0.history, out / "figures" / "history.png", title=f"model {preset.upper()}, fold {f0.fold + 1}", stopped=f0.stopped_epoch, best=f0.best_epoch)
    if export and res.models:
        model, filler = res.models[0], res.fillers[0]
        model.save(out / "model.keras")
        export_agn_model(model, filler, out / "savedmodel", name=preset.upper(), extra={"fold": res.folds[0].fold + 1, "config": cfg.to_dict()})
    remove_backup(backup_root, strategy)
    discard_output_dir(out, final_out)
    return metrics


def run_ablation(
    preset: str = "B",
    *,
    out: str | os.PathLike,
    quick: bool = False,
    data: str | os.PathLike | None = None,
    n_folds: int | None = None,
    folds_to_run: Sequence[int] | None = None,
    groups: Sequence[str] | None = None,
    overrides: Mapping | None = None,
    strategy=None,
    progress: bool = True,
    backup_dir: str | os.PathLike | None = None,
    backup_every: int = 50,
) -> dict:
    """Sec 4.3: cross-validate with each wavelength group removed; ROC figure like Fig. 12.

    Writes ``metrics.json`` (the four metrics per experiment), ``ablation.md`` and
    ``figures/ablation_roc.png``. Resumable like :func:`run_cv` (``backup_dir``, default
    ``out/backup``, one sub-folder per experiment).
    """
    from keras_astro.distribute import discard_output_dir, get_strategy, output_dir, remove_backup

    strategy = strategy or get_strategy()
    final_out = Path(out)
    out = output_dir(final_out, strategy)
    backup_root = Path(backup_dir) if backup_dir else final_out / "backup"
    cfg = AGNConfig.preset(preset, **{**(QUICK if quick else {}), **dict(overrides or {})})
    phot = load_labelled(data, quick=quick)
    all_groups = specs.band_groups()
    names = list(groups or all_groups)
    unknown = set(names) - set(all_groups)
    if unknown:
        raise ValueError(f"unknown band groups {sorted(unknown)}; expected {list(all_groups)}")
    results, curves, rows = {}, [], []
    for name in ["none", *names]:
        removed = [] if name == "none" else all_groups[name]
        res = cross_validate(phot, cfg, n_folds=n_folds, folds_to_run=folds_to_run, removed_bands=removed, strategy=strategy, progress=progress, backup_dir=backup_root / name, backup_every=backup_every)
        s = res.summary()
        oof = res.oof_scores
        done = ~np.isnan(oof)
        fpr, tpr, _ = roc_curve(res.labels[done], oof[done])
        label = "all 44 bands" if name == "none" else f"without {name} ({len(removed)} bands)"
        curves.append((fpr, tpr, f"{label}: AUC {s['roc_auc']:.3f}"))
        results[name] = {**{k: s[k] for k in METRICS}, "removed_bands": [specs.band_names()[i] for i in removed]}
        rows.append([label, *(s[k] for k in METRICS)])
    plots.roc_figure(curves, out / "figures" / "ablation_roc.png", title="Band-group removal (Sec 4.3, Fig. 12)")
    write_text(out / "ablation.md", markdown_table(["training data", "AGN compl.", "SFG compl.", "accuracy", "ROC AUC"], rows))
    metrics = {"preset": preset.upper(), "quick": quick, "groups": results, "group_counts": {g: len(v) for g, v in all_groups.items()}}
    write_json(out / "metrics.json", metrics)
    remove_backup(backup_root, strategy)
    discard_output_dir(out, final_out)
    return metrics


# ------------------------------------------------------------------------------ inference
def _resolve_savedmodel(path: Path) -> Path:
    if (path / "saved_model.pb").is_file():
        return path
    if (path / "savedmodel" / "saved_model.pb").is_file():
        return path / "savedmodel"
    raise FileNotFoundError(f"{path}: no SavedModel here or in {path / 'savedmodel'} (run `keras-astro agn cv --out DIR` first)")


def _model_name(sm: Path, fallback: str) -> str:
    import json

    meta = sm / "keras_astro.json"
    if meta.is_file():
        name = json.loads(meta.read_text()).get("name")
        if name:
            return str(name)
    return fallback


def predict_catalogue(
    catalog: str | os.PathLike,
    models: Sequence[str | os.PathLike],
    *,
    out: str | os.PathLike,
    threshold: float = 0.5,
    column_map: Mapping[str, str] | None = None,
) -> dict:
    """Classify every object of a catalogue with each model and vote (Sec 4.1, Table 2).

    Writes ``out`` (CSV or FITS by suffix) with the id, redshift, each model's P(AGN)
    (``p_agn_<name>``), the number of AGN votes, the majority class and whether the vote is
    unanimous, plus ``<out>.summary.json`` and a bar chart of the vote split (Fig. 10).
    """
    from astropy.table import Table

    from keras_astro.export import predict_savedmodel

    if not models:
        raise ValueError("predict_catalogue needs at least one model folder")
    phot = load_photometry(catalog, column_map=column_map)
    paths = [_resolve_savedmodel(Path(m)) for m in models]
    names: list[str] = []
    for i, sm in enumerate(paths):
        name = _model_name(sm, Path(models[i]).name or f"m{i}")
        while name in names:
            name = f"{name}_{i}"
        names.append(name)
    table = Table()
    table["ID"] = phot.ids
    table["z"] = phot.redshift
    votes = np.zeros(len(phot), dtype=np.int16)
    per_model = {}
    for name, sm in zip(names, paths):
        p = predict_savedmodel(sm, phot.values).reshape(-1)
        table[f"p_agn_{name}"] = p.astype(np.float32)
        is_agn = p > threshold
        votes += is_agn
        per_model[name] = {"agn": int(is_agn.sum()), "sfg": int((~is_agn).sum()), "agn_fraction": float(is_agn.mean()) if len(p) else float("nan")}
    n_models = len(paths)
    table["n_agn_votes"] = votes
    table["vote"] = np.where(votes * 2 > n_models, "AGN", "SFG")
    table["unanimous"] = (votes == 0) | (votes == n_models)
    out = Path(out)
    write_catalogue(table, out)
    split = {str(v): int((votes == v).sum()) for v in range(n_models + 1)}
    summary = {
        "catalog": str(catalog),
        "n_objects": len(phot),
        "models": dict(zip(names, map(str, paths))),
        "per_model": per_model,
        "vote_split": split,
        "agreement": float(np.mean(table["unanimous"])) if len(phot) else float("nan"),
        "majority_agn_fraction": float(np.mean(votes * 2 > n_models)) if len(phot) else float("nan"),
        "threshold": threshold,
    }
    write_json(out.with_name(out.name + ".summary.json"), summary)
    labels = [f"{v} of {n_models} say AGN" for v in range(n_models + 1)]
    plots.bar_figure(labels, [split[str(v)] / max(1, len(phot)) for v in range(n_models + 1)], out.with_name(out.stem + "_votes.png"), ylabel="fraction of objects", title="Agreement of the models (cf. Fig. 10)")
    return summary


# ------------------------------------------------------------------------------- reproduce
def reproduce(out: str | os.PathLike, *, quick: bool = False, strategy=None, progress: bool = True) -> dict:
    """The study on the embedded data: CV of A, B, C, inference with their vote, band ablation.

    ``quick`` runs the full 10-fold CV of preset B, only the first fold of A and C (the fold whose
    model classifies the field, Sec 4.1), skips the ablation and uses the :data:`QUICK` schedule.
    Returns ``metrics`` with a ``report`` list of (metric, paper, ours) rows.
    """
    out = Path(out)
    cats = embedded_catalogues(quick=quick)
    runs = {}
    for preset in PRESETS:
        folds = None if (not quick or preset == "B") else [0]
        runs[preset] = run_cv(preset, out=out / f"model_{preset}", quick=quick, folds_to_run=folds, strategy=strategy, progress=progress)
    inference = predict_catalogue(cats["unlabelled"], [out / f"model_{p}" for p in PRESETS], out=out / "inference" / "nepw_unlabelled_votes.csv")
    ablation = None if quick else run_ablation("B", out=out / "ablation", strategy=strategy, progress=progress)
    report = []
    for preset in PRESETS:
        if quick and preset != "B":
            continue
        paper = REPORTED[preset]
        for k in METRICS:
            report.append((f"model {preset} {k.replace('_', ' ')} (10-fold CV)", paper[k], runs[preset][k]))
    report.append(("inference: identical votes of A, B, C", REPORTED["inference_agreement"], inference["agreement"]))
    for preset in PRESETS:
        report.append((f"inference: AGN fraction, model {preset}", REPORTED["inference_agn_fraction"][preset], inference["per_model"][preset]["agn_fraction"]))
    if ablation:
        for g, v in ablation["groups"].items():
            report.append((f"ablation: ROC AUC without {g}", None, v["roc_auc"]))
    metrics = {
        "study": "agn",
        "paper": "Chen et al. 2021",
        "quick": quick,
        "cv": {p: {k: runs[p][k] for k in METRICS} | {"folds_run": len(runs[p]["folds"])} for p in PRESETS},
        "inference": inference,
        "ablation": ablation,
        "report": [{"metric": m, "paper": p, "ours": o} for m, p, o in report],
    }
    write_json(out / "metrics.json", metrics)
    return metrics


__all__ = [
    "AGNConfig",
    "CVResult",
    "FoldResult",
    "QUICK",
    "cross_validate",
    "embedded_catalogues",
    "export_agn_model",
    "load_labelled",
    "predict_catalogue",
    "prepare_inputs",
    "read_catalogue",
    "reproduce",
    "run_ablation",
    "run_cv",
    "serving_model_for",
]

