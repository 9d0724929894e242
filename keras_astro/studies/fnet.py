"""FNet (Rastegar Nia et al.): quasar redshifts from 4,618-pixel spectra — the paper's protocol.

* :func:`prepare_data` — the FNet-grid store (embedded simulation or a user's store) and the
  split of Sec 2 & 4: DR12Q-like objects for training/validation (90/10), objects new in DR16Q for
  testing, and the QuasarNET-failure subset (Z_QN = −1) held out as its own test set.
* :func:`train_fnet` — trains FNet (and the QuasarNET-style baseline), reports the Δv accuracies
  at 6,000 / 12,000 / 30,000 km/s per test set, draws Figs 4 and 8, exports a SavedModel that
  turns raw flux on the FNet grid into a redshift.
* :func:`line_mask_experiment` — Sec 5 / Fig. 7: 2.8 ≤ z ≤ 3, emission lines masked.
* :func:`predict` — redshifts for a store or spec-*.fits files with an exported model.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_astro import specs
from keras_astro.metrics import dv_accuracy, dv_accuracy_curve
from keras_astro.studies.common import cache_dir, versions, write_json

log = logging.getLogger(__name__)

__all__ = [
    "QUICK",
    "THRESHOLDS",
    "FNetData",
    "embedded_store",
    "prepare_data",
    "train_fnet",
    "line_mask_experiment",
    "predict",
    "reproduce",
]

THRESHOLDS = (6000, 12000, 30000)  # km/s, Sec 4
#: ``--quick``: a few hundred simulated quasars, a few epochs, and the paper's network with a quarter
#: of its channels (``FNetConfig.preset("narrow")``: same grid, kernels and 24 layers), so that the
#: run fits ``reproduce --quick`` on two CPU cores (about 1.5 minutes; docs/fidelity.md).
QUICK = {"n_spectra": 600, "epochs": 3, "batch_size": 16, "preset": "narrow"}
FULL = {"n_spectra": 20000, "epochs": None, "batch_size": None}


def _reported() -> dict:
    return specs.load_spec("fnet").get("reported", {})


# --------------------------------------------------------------------------------------- data
def embedded_store(n: int, *, seed: int = 0, progress: bool = False) -> Path:
    """Simulated quasars (DR16Q-like redshifts) preprocessed onto the FNet grid, cached."""
    from keras_astro.preprocess.spectra import preprocess_store
    from keras_astro.simulate.spectra import SIM_VERSION, write_simulated_store

    d = cache_dir("spectra")
    raw = d / f"qso-sim{SIM_VERSION}-n{n}-seed{seed}.h5"
    pre = d / f"qso-sim{SIM_VERSION}-n{n}-seed{seed}-fnet.h5"
    if not pre.exists():
        if not raw.exists():
            write_simulated_store(
                raw, n, seed=seed, class_shares={"GALAXY": 0.0, "QSO": 1.0, "STAR": 0.0}, progress=progress
            )
        preprocess_store(raw, pre, grid="fnet", normalise="fnet", with_equivalent_widths=False, progress=progress)
    return pre


@dataclass
class FNetData:
    """A preprocessed FNet-grid store and its splits (row indices into the store)."""

    path: Path
    splits: dict[str, np.ndarray]
    z: np.ndarray
    z_min: float
    z_max: float
    wavelengths: np.ndarray

    def scaled(self, rows: np.ndarray) -> np.ndarray:
        return ((self.z[rows] - self.z_min) / (self.z_max - self.z_min)).astype(np.float32)


def _splits_from_meta(meta, *, seed: int, val_fraction: float = 0.1) -> dict[str, np.ndarray]:
    n = len(meta)
    rng = np.random.default_rng(seed)
    cls = meta["class"].astype(str).to_numpy() if "class" in meta else np.full(n, "QSO")
    qso = cls == "QSO"
    if "split" in meta and meta["split"].astype(str).isin(["train", "val", "test"]).any():
        s = meta["split"].astype(str).to_numpy()
        out = {k: np.flatnonzero(qso & (s == k)) for k in ("train", "val", "test")}
        out["qn_fail"] = (
            np.flatnonzero(qso & (s == "test") & (meta["z_qn"].to_numpy() == -1))
            if "z_qn" in meta
            else np.zeros(0, int)
        )
        return out
    qn_fail = qso & (meta["z_qn"].to_numpy() == -1) if "z_qn" in meta else np.zeros(n, bool)
    if "in_dr12q" in meta:
        pool = np.flatnonzero(qso & meta["in_dr12q"].to_numpy().astype(bool) & ~qn_fail)
        test = np.flatnonzero(qso & ~meta["in_dr12q"].to_numpy().astype(bool) & ~qn_fail)
    else:
        log.warning("the store has no in_dr12q/split columns: using a random 80/20 split instead of DR12Q/DR16Q")
        idx = rng.permutation(np.flatnonzero(qso & ~qn_fail))
        pool, test = np.sort(idx[: int(0.8 * idx.size)]), np.sort(idx[int(0.8 * idx.size) :])
    perm = rng.permutation(pool)
    n_val = max(1, int(round(val_fraction * pool.size)))
    return {
        "train": np.sort(perm[n_val:]),
        "val": np.sort(perm[:n_val]),
        "test": test,
        "qn_fail": np.flatnonzero(qn_fail),
    }


def prepare_data(
    data: str | os.PathLike | None = None,
    *,
    n: int | None = None,
    quick: bool = False,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    progress: bool = False,
) -> FNetData:
    """The FNet-grid store and its splits.

    ``data`` may be a store on the FNet grid (``keras-astro spectra preprocess --grid fnet``) or a
    raw store (``sdss`` grid), which is preprocessed into ``out`` (or the cache) first.
    """
    from keras_astro.io.spectra_store import open_store
    from keras_astro.preprocess.spectra import preprocess_store

    if data is None:
        path = embedded_store(n or (QUICK["n_spectra"] if quick else FULL["n_spectra"]), seed=seed, progress=progress)
    else:
        path = Path(data)
        with open_store(path) as r:
            grid = str(r.attrs.get("grid", ""))
            normalised = str(r.attrs.get("normalise", "none")) == "fnet"
        if grid != "fnet" or not normalised:
            dst = Path(out or cache_dir("spectra")) / f"{path.stem}-fnet.h5"
            preprocess_store(path, dst, grid="fnet", normalise="fnet", with_equivalent_widths=False, progress=progress)
            path = dst
    with open_store(path) as r:
        meta = r.meta
        wl = r.wavelengths
    splits = _splits_from_meta(meta, seed=seed)
    if splits["train"].size < 2 or splits["test"].size < 1:
        raise ValueError(
            f"{path}: not enough quasars to train and test (train {splits['train'].size}, test {splits['test'].size})"
        )
    z = meta["z"].to_numpy(dtype=np.float64)
    ztr = z[splits["train"]]
    return FNetData(path=path, splits=splits, z=z, z_min=float(ztr.min()), z_max=float(ztr.max()), wavelengths=wl)


def _dataset(
    data: FNetData,
    rows: np.ndarray,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    labels: bool = True,
    transform=None,
    plan=None,
    strategy=None,
):
    """Batches of ``rows`` (``batch_size`` is global). With a file-level ``plan``
    (:func:`keras_astro.distribute.plan_input_sharding`) each worker reads only its shard files."""
    from keras_astro.pipelines.spectra import spectra_dataset

    keep = np.zeros(len(data.z), bool)
    keep[rows] = True
    label = (
        (lambda meta: ((meta["z"].to_numpy() - data.z_min) / (data.z_max - data.z_min)).astype(np.float32))
        if labels
        else None
    )
    if plan is not None and plan.policy == "file":
        from keras_astro.distribute import distribute_per_worker

        mine = np.zeros(len(data.z), bool)
        mine[plan.rows] = True
        local = max(1, strategy.num_replicas_in_sync // plan.num_workers)

        def per_worker(per_replica: int):
            ds = spectra_dataset(
                data.path, label=label, where=lambda meta: mine, batch_size=per_replica, shuffle=shuffle,
                seed=seed, chunk_rows=256, transform=transform, drop_remainder=True,
            )
            return ds.take(plan.steps * local)  # the same number of steps on every worker

        return distribute_per_worker(strategy, per_worker, per_worker_batch=plan.per_worker_batch)
    return spectra_dataset(
        data.path,
        label=label,
        where=lambda meta: keep,
        batch_size=batch_size,
        shuffle=shuffle,
        seed=seed,
        chunk_rows=256,
        transform=transform,
    )


def _predict_z(model, data: FNetData, rows: np.ndarray, batch_size: int, transform=None) -> np.ndarray:
    from keras_astro.layers.fft_conv import frozen_kernel_spectra

    ds = _dataset(data, rows, batch_size=batch_size, shuffle=False, seed=0, labels=False, transform=transform)
    with frozen_kernel_spectra(model):  # kernel transforms once, not per batch (no-op for direct convs)
        y = model.predict(ds, verbose=0).reshape(-1)
    return data.z_min + y.astype(np.float64) * (data.z_max - data.z_min)


def _accuracies(z_pred: np.ndarray, z_true: np.ndarray) -> dict[str, float]:
    out = {f"dv_acc_{t}": dv_accuracy(z_pred, z_true, t) for t in THRESHOLDS}
    out["n"] = int(z_true.size)
    return out


# ----------------------------------------------------------------------------------- figures
def _figures(out: Path, results: dict[str, dict[str, np.ndarray]], z_true: dict[str, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    # Fig. 4a/b: z_pred vs z_VI per test set and model
    sets = [s for s in ("test", "qn_fail") if s in z_true and z_true[s].size]
    fig, axes = plt.subplots(1, len(sets), figsize=(5.2 * len(sets), 4.6), squeeze=False)
    for ax, s in zip(axes[0], sets):
        for name, preds in results.items():
            if s in preds:
                ax.scatter(z_true[s], preds[s], s=6, alpha=0.6, label=name)
        lim = [0, max(6.0, float(np.max(z_true[s])) + 0.3)]
        ax.plot(lim, lim, "k--", lw=0.8)
        ax.set(
            xlim=lim,
            ylim=lim,
            xlabel="z (truth / VI)",
            ylabel="z predicted",
            title={"test": "DR16Q-new test set", "qn_fail": "QuasarNET failures (Z_QN = -1)"}[s],
        )
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(figs / "z_pred_vs_z_true.png", dpi=110)
    plt.close(fig)
    # Fig. 4c: accuracy vs |Δv|
    thr = np.logspace(2, 5.5, 200)
    fig, ax = plt.subplots(figsize=(6, 4.4))
    for name, preds in results.items():
        for s in sets:
            if s in preds:
                ax.plot(thr, dv_accuracy_curve(preds[s], z_true[s], thr), label=f"{name}, {s}")
    for t in THRESHOLDS:
        ax.axvline(t, color="grey", lw=0.6, ls=":")
    ax.set(
        xscale="log",
        xlabel="|Δv| threshold (km/s)",
        ylabel="accuracy",
        ylim=(0, 1.01),
        title="accuracy vs |Δv| (Fig. 4c)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figs / "accuracy_vs_dv.png", dpi=110)
    plt.close(fig)
    # Fig. 8: outliers (|Δv| > 6000 km/s) of each model on the test set
    fig, ax = plt.subplots(figsize=(6, 4.4))
    for name, preds in results.items():
        if "test" in preds:
            zt, zp = z_true["test"], preds["test"]
            bad = np.abs(299792.458 * (zp - zt) / (1 + zt)) > 6000
            ax.scatter(zt[bad], zp[bad], s=10, label=f"{name} ({bad.sum()} outliers)")
    ax.plot([0, 6], [0, 6], "k--", lw=0.8)
    ax.set(xlabel="z (truth / VI)", ylabel="z predicted", title="|Δv| > 6000 km/s (Fig. 8)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figs / "outliers.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------- training
def export_fnet(model, data: FNetData, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """SavedModel on raw flux (N, 4618) on the FNet grid → redshift (N, 1): normalisation and
    label un-scaling inside the graph (signature ``serving_default``, input ``flux``, output ``z``)."""
    import tensorflow as tf

    from keras_astro.export import export_savedmodel, serving_model
    from keras_astro.layers.spectra import Rescale, UnitNormSpectrum

    length = int(model.inputs[0].shape[1])
    serve = serving_model(
        model, [UnitNormSpectrum(name="fnet_normalise")], (length,), input_name="flux", output_name="z_scaled"
    )
    import keras

    inp = keras.Input((length,), name="flux")
    z = Rescale(data.z_min, data.z_max - data.z_min, name="z")(serve(inp))
    full = keras.Model(inp, z, name="fnet_serving")
    meta = {
        "study": "fnet",
        "grid": "fnet",
        "z_min": data.z_min,
        "z_max": data.z_max,
        "input": "raw flux on the FNet grid",
    }
    return export_savedmodel(
        full,
        path,
        input_spec=tf.TensorSpec((None, length), tf.float32, name="flux"),
        output_name="z",
        metadata={**meta, **(metadata or {})},
    )


def _fit(
    model,
    data: FNetData,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    callbacks: Sequence = (),
    progress: bool,
    transform=None,
    train_rows=None,
    val_rows=None,
    plan=None,
    strategy=None,
    backup_dir=None,
):
    from keras_astro.distribute import worker_failures

    train_rows = data.splits["train"] if train_rows is None else train_rows
    val_rows = data.splits["val"] if val_rows is None else val_rows
    train = _dataset(data, train_rows, batch_size=batch_size, shuffle=True, seed=seed, transform=transform, plan=plan, strategy=strategy)
    val = _dataset(data, val_rows, batch_size=batch_size, shuffle=False, seed=seed, transform=transform)
    with worker_failures(backup_dir):
        return model.fit(
            train,
            validation_data=val,
            epochs=epochs,
            verbose=1 if progress else 0,
            callbacks=list(callbacks),
            shuffle=False,
        )


def _backup(root: Path, name: str, fingerprint: dict, every: int | None, track=()):
    """A :class:`~keras_astro.callbacks.BackupAndResume` for one training stage of this worker."""
    from keras_astro.callbacks import BackupAndResume

    return BackupAndResume(root / name, save_freq=every or "epoch", fingerprint={**fingerprint, "stage": name}, track=list(track))


def train_fnet(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    data: str | os.PathLike | None = None,
    n: int | None = None,
    preset: str | None = None,
    conv_impl: str = "auto",
    epochs: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    baseline: bool = True,
    export: bool = True,
    strategy=None,
    progress: bool = True,
    backup_dir: str | os.PathLike | None = None,
    backup_every: int | None = 500,
    callbacks: Sequence = (),
) -> dict[str, Any]:
    """Train and evaluate FNet (and the QuasarNET-style baseline); writes ``out/metrics.json``.

    metrics.json holds, per model and test set (``test``: objects new in DR16Q; ``qn_fail``:
    Z_QN = −1), ``dv_acc_6000``, ``dv_acc_12000``, ``dv_acc_30000`` (fractions) and ``n``.

    Training is resumable: each model backs up every ``backup_every`` steps and at every epoch
    end to ``backup_dir`` (default ``out/backup``); the same call after a kill continues from
    there with exactly the planned number of steps, ``history.csv`` lists every epoch once, and
    the folder is deleted when the run completes. Under a multi-worker strategy every worker runs
    this function and only the chief writes ``out``; a store split into at least one shard file
    per worker is read file by file, any other store is sharded by batch (docs/scaling.md).
    ``callbacks`` are extra Keras callbacks for the FNet training (e.g. TensorBoard).
    """
    import keras

    from keras_astro.callbacks import ResumableCSVLogger
    from keras_astro.distribute import (
        describe_strategy,
        discard_output_dir,
        get_strategy,
        global_batch_size,
        local_copy,
        output_dir,
        plan_input_sharding,
        remove_backup,
        synchronize_batch_norm,
        worker_backup_dir,
        worker_info,
    )
    from keras_astro.metrics import DeltaVAccuracy
    from keras_astro.models.fnet import FNetConfig, build_fnet, compile_fnet, fnet_callbacks
    from keras_astro.models.quasarnet import build_quasarnet_baseline

    strategy = strategy or get_strategy()  # first: a multi-worker strategy must precede other TF ops
    final_out = Path(out)
    out = output_dir(final_out, strategy)
    backup_root = Path(backup_dir) if backup_dir else final_out / "backup"
    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    d = prepare_data(data, n=n, quick=quick, seed=seed, progress=progress)
    preset = preset or (QUICK["preset"] if quick else "paper")
    cfg = FNetConfig.preset(preset, seed=seed, input_length=int(d.wavelengths.size))
    epochs = epochs or (QUICK["epochs"] if quick else cfg.epochs)
    per_replica = batch_size or (QUICK["batch_size"] if quick else cfg.batch_size)
    gbs = global_batch_size(per_replica, strategy)
    n_workers, worker_index = worker_info(strategy)
    plan = None
    if n_workers > 1:
        in_train = np.zeros(len(d.z), bool)
        in_train[d.splits["train"]] = True
        plan = plan_input_sharding(d.path, in_train, global_batch=gbs, num_workers=n_workers, worker_index=worker_index)
        log.info("input sharding over %d workers: %s", n_workers, plan.policy)
    steps = plan.steps if plan is not None and plan.steps else int(np.ceil(d.splits["train"].size / gbs))
    if quick and cfg.lr_schedule == "step":
        cfg = cfg.replace(lr_schedule="constant")  # the 75/85/90-epoch drops never happen in 2 epochs
    metrics_in_graph = [DeltaVAccuracy(t, d.z_min, d.z_max) for t in THRESHOLDS]
    with strategy.scope():
        model = build_fnet(cfg, conv_impl=conv_impl)
        compile_fnet(model, cfg, steps_per_epoch=steps, metrics=metrics_in_graph)
        synchronize_batch_norm(model, strategy)
    log.info(
        "FNet: %d train / %d val / %d test / %d QN-failure spectra, %d epochs, global batch %d, %s",
        d.splits["train"].size,
        d.splits["val"].size,
        d.splits["test"].size,
        d.splits["qn_fail"].size,
        epochs,
        gbs,
        describe_strategy(strategy)["strategy"],
    )
    my_backup = worker_backup_dir(backup_root, strategy)
    fingerprint = {
        "study": "fnet", "config": cfg.to_dict(), "conv_impl": conv_impl, "epochs": epochs, "global_batch": gbs,
        "replicas": strategy.num_replicas_in_sync, "data": str(d.path), "seed": seed,
        "splits": {k: int(v.size) for k, v in d.splits.items()}, "z_range": [d.z_min, d.z_max],
    }
    schedule = fnet_callbacks(cfg)
    cbs = [_backup(my_backup, "fnet", fingerprint, backup_every, schedule), *schedule, ResumableCSVLogger(out / "history.csv"), *callbacks]
    hist = _fit(model, d, epochs=epochs, batch_size=gbs, seed=seed, callbacks=cbs, progress=progress, plan=plan, strategy=strategy, backup_dir=backup_root)
    sets = {k: d.splits[k] for k in ("test", "qn_fail") if d.splits[k].size}
    z_true = {k: d.z[rows] for k, rows in sets.items()}
    model = local_copy(model, strategy)  # multi-worker: every worker predicts and saves on its own
    preds = {"FNet": {k: _predict_z(model, d, rows, gbs) for k, rows in sets.items()}}
    if baseline:
        with strategy.scope():
            qn = build_quasarnet_baseline(int(model.inputs[0].shape[1]), seed=seed)
            qn.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate, global_clipnorm=cfg.clipnorm), loss="mse")
            synchronize_batch_norm(qn, strategy)
        qn_backup = _backup(my_backup, "baseline", fingerprint, backup_every)
        _fit(qn, d, epochs=epochs, batch_size=gbs, seed=seed, callbacks=[qn_backup], progress=progress, plan=plan, strategy=strategy, backup_dir=backup_root)
        qn = local_copy(qn, strategy)
        preds["QuasarNET-style baseline"] = {k: _predict_z(qn, d, rows, gbs) for k, rows in sets.items()}
    results = {name: {k: _accuracies(p[k], z_true[k]) for k in p} for name, p in preds.items()}
    _figures(out, preds, z_true)
    model.save(out / "model.keras")
    if export:
        export_fnet(model, d, out / "savedmodel", metadata={"preset": preset})
    rep = _reported()
    metrics = {
        "study": "fnet",
        "quick": quick,
        "data": str(d.path),
        "splits": {k: int(v.size) for k, v in d.splits.items()},
        "z_scaling": {"z_min": d.z_min, "z_max": d.z_max},
        "epochs": epochs,
        "global_batch_size": gbs,
        "conv_impl": conv_impl,
        "preset": preset,
        **{k: v for k, v in results["FNet"].get("test", {}).items()},
        "fnet": results["FNet"],
        "baseline": results.get("QuasarNET-style baseline"),
        "history": {k: [float(x) for x in v] for k, v in hist.history.items()},
        "reported": rep,
        "seconds": round(time.perf_counter() - t0, 1),
        "training_seconds": round(cbs[0].total_seconds, 1),
        "versions": versions(),
    }
    write_json(out / "metrics.json", metrics)
    remove_backup(backup_root, strategy)
    discard_output_dir(out, final_out)
    return metrics


def line_mask_experiment(
    out: str | os.PathLike,
    *,
    quick: bool = False,
    data=None,
    n: int | None = None,
    preset: str | None = None,
    conv_impl: str = "auto",
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    strategy=None,
    backup_dir: str | os.PathLike | None = None,
    backup_every: int | None = 500,
) -> dict:
    """Sec 5 / Fig. 7: quasars with 2.8 ≤ z ≤ 3, 90/10 train/test, emission lines masked.

    Resumable and multi-worker like :func:`train_fnet` (``backup_dir`` default ``out/backup``).
    """
    import keras

    from keras_astro.distribute import (
        discard_output_dir,
        get_strategy,
        global_batch_size,
        local_copy,
        output_dir,
        remove_backup,
        synchronize_batch_norm,
        worker_backup_dir,
    )
    from keras_astro.models.fnet import FNetConfig, build_fnet, compile_fnet
    from keras_astro.preprocess.spectra import mask_lines

    strategy = strategy or get_strategy()
    final_out = Path(out)
    out = output_dir(final_out, strategy)
    backup_root = Path(backup_dir) if backup_dir else final_out / "backup"
    keras.utils.set_random_seed(seed)
    d = prepare_data(data, n=n, quick=quick, seed=seed, progress=progress)
    rows = np.flatnonzero((d.z >= 2.8) & (d.z <= 3.0))
    if rows.size < 10:
        raise ValueError(f"only {rows.size} quasars with 2.8 <= z <= 3 in {d.path}: need more spectra (--n)")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(rows)
    n_test = max(1, rows.size // 10)
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    wl = d.wavelengths

    def masker(arrays, meta):
        f, _ = mask_lines(arrays["fluxes"], wl, meta["z"].to_numpy())
        return {"fluxes": f}

    preset = preset or (QUICK["preset"] if quick else "paper")
    cfg = FNetConfig.preset(preset, seed=seed, lr_schedule="constant", input_length=int(d.wavelengths.size))
    with strategy.scope():
        model = build_fnet(cfg, conv_impl=conv_impl)
        compile_fnet(model, cfg)
        synchronize_batch_norm(model, strategy)
    epochs = epochs or (QUICK["epochs"] if quick else cfg.epochs)
    gbs = global_batch_size(QUICK["batch_size"] if quick else cfg.batch_size, strategy)
    fingerprint = {"study": "fnet-line-mask", "config": cfg.to_dict(), "conv_impl": conv_impl, "epochs": epochs, "global_batch": gbs, "data": str(d.path), "seed": seed, "n_train": int(train.size)}
    _fit(
        model,
        d,
        epochs=epochs,
        batch_size=gbs,
        seed=seed,
        callbacks=[_backup(worker_backup_dir(backup_root, strategy), "line_mask", fingerprint, backup_every)],
        progress=progress,
        transform=masker,
        train_rows=train,
        val_rows=test,
        backup_dir=backup_root,
    )
    zp = _predict_z(local_copy(model, strategy), d, test, 32, transform=masker)
    res = _accuracies(zp, d.z[test]) | {"n_train": int(train.size)}
    write_json(out / "line_mask_metrics.json", res)
    remove_backup(backup_root, strategy)
    discard_output_dir(out, final_out)
    return res


def predict(
    model_path: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, batch_size: int = 64
) -> dict[str, Any]:
    """Redshifts from an exported FNet SavedModel for a store (.h5) or spec-*.fits files."""
    import tensorflow as tf

    from keras_astro.io.spectra_store import read_store
    from keras_astro.preprocess.spectra import resample
    from keras_astro.safety import load_savedmodel_safely

    fn = load_savedmodel_safely(model_path, signature="serving_default").signatures["serving_default"]
    grid = specs.spectral_grid("fnet")
    ids, fluxes = [], []
    for p in map(Path, inputs):
        if p.suffix in (".h5", ".hdf5") or p.is_dir():
            st = read_store(p)
            if st.fluxes.shape[1] == grid.size and str(st.attrs.get("grid")) == "fnet":
                f = st.fluxes
            else:
                res = resample(st.fluxes, st.wavelengths, grid, ivar=st.ivar, source=str(p))
                f = res.fluxes[res.good_rows]
                st.meta = st.meta[res.good_rows]
            ids.extend(int(i) for i in st.meta["specObjID"])
            fluxes.append(f)
        else:
            from keras_astro.io.sdss import read_spec_fits

            sp = read_spec_fits(p)
            res = resample(
                sp.flux, sp.wavelength, grid, ivar=sp.ivar, and_mask=sp.and_mask, on_bad="raise", source=str(p)
            )
            ids.append(int(sp.meta["specObjID"]))
            fluxes.append(res.fluxes)
    x = np.concatenate(fluxes).astype(np.float32)
    z = np.concatenate(
        [fn(flux=tf.constant(x[i : i + batch_size]))["z"].numpy().reshape(-1) for i in range(0, len(x), batch_size)]
    )
    return {"specObjID": ids, "z": z.tolist()}


def reproduce(out: str | os.PathLike, *, quick: bool = False, strategy=None, progress: bool = True) -> dict:
    """FNet on the embedded simulation for ``keras-astro reproduce``."""
    m = train_fnet(out, quick=quick, strategy=strategy, progress=progress)
    rep = _reported()
    paper = {
        "test": rep.get("fnet_dr16q_test"),
        "qn_fail": (rep.get("fnet_quasarnet_failures") or {}).get("accuracy"),
        "baseline": rep.get("quasarnet_dr16q_test"),
    }
    report = []
    for s in ("test", "qn_fail"):
        for i, t in enumerate(THRESHOLDS):
            ours = (m["fnet"].get(s) or {}).get(f"dv_acc_{t}")
            report.append(
                (
                    f"FNet {'DR16Q-new test' if s == 'test' else 'QuasarNET failures'}: |Δv| < {t} km/s",
                    paper[s][i] if paper[s] else None,
                    ours,
                )
            )
    if m.get("baseline"):
        for i, t in enumerate(THRESHOLDS):
            report.append(
                (
                    f"QuasarNET(-style baseline) test: |Δv| < {t} km/s",
                    paper["baseline"][i] if paper["baseline"] else None,
                    m["baseline"].get("test", {}).get(f"dv_acc_{t}"),
                )
            )
    m["report"] = [{"metric": a, "paper": b, "ours": c} for a, b, c in report]
    write_json(Path(out) / "metrics.json", m)
    return m
