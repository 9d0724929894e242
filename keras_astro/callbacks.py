"""Keras callbacks shared by the studies: the Eq. 3 stopping rule of Chen et al. 2021, and training
that survives being killed (:class:`BackupAndResume`, :class:`ResumableCSVLogger`)."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import keras
import numpy as np

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="keras_astro")
class MonitorStopping(keras.callbacks.Callback):
    """The termination condition of Chen et al. 2021, Eq. 3.

    After every epoch ``t`` the validation-fold monitor

    .. math::  \\mathrm{monitor}_t = N \\cdot \\mathrm{AGN\\ completeness} + \\mathrm{accuracy}

    is recorded; training stops when :math:`\\mathrm{monitor}_t - \\mathrm{monitor}_{t-M} < \\delta`
    (δ < 0 in Table 1: stop once the monitor has fallen by more than |δ| over M epochs). At the end
    of training the weights of the epoch with the highest monitor are restored
    (``restore_best_weights``); Algorithm 1 of the paper saves the weights of the last epoch, which
    ``restore_best_weights=False`` reproduces.

    Parameters
    ----------
    N
        Weight of the AGN completeness in the monitor.
    M
        Look-back, in epochs.
    delta
        Threshold of the monitor change (negative in Table 1).
    completeness_key, accuracy_key
        Names of the logged validation metrics.
    start_from_epoch
        Epochs before the rule (and best-weight tracking) starts; 0 follows the paper.
    restore_best_weights
        Restore the weights of the best-monitor epoch when training ends.
    """

    def __init__(
        self,
        N: float,
        M: int,
        delta: float,
        completeness_key: str = "val_agn_completeness",
        accuracy_key: str = "val_accuracy",
        start_from_epoch: int = 0,
        restore_best_weights: bool = True,
    ):
        super().__init__()
        if M < 1:
            raise ValueError(f"M must be a positive number of epochs, got {M}")
        self.N = float(N)
        self.M = int(M)
        self.delta = float(delta)
        self.completeness_key = completeness_key
        self.accuracy_key = accuracy_key
        self.start_from_epoch = int(start_from_epoch)
        self.restore_best_weights = bool(restore_best_weights)
        self.history: list[float] = []
        self.best = -math.inf
        self.best_epoch = -1
        self.stopped_epoch = -1
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self.history = []
        self.best = -math.inf
        self.best_epoch = -1
        self.stopped_epoch = -1
        self.best_weights = None

    def monitor_value(self, logs: dict) -> float:
        try:
            comp = float(logs[self.completeness_key])
            acc = float(logs[self.accuracy_key])
        except KeyError as exc:
            raise KeyError(
                f"MonitorStopping needs {self.completeness_key!r} and {self.accuracy_key!r} in the "
                f"epoch logs (validation data and the Completeness/accuracy metrics); got {sorted(logs)}"
            ) from exc
        return self.N * comp + acc

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        value = self.monitor_value(logs)
        self.history.append(value)
        logs["monitor"] = value
        if epoch < self.start_from_epoch:
            return
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
        t = len(self.history) - 1
        if t - self.M >= self.start_from_epoch and value - self.history[t - self.M] < self.delta:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch >= 0:
            log.info("Eq. 3 stopping at epoch %d (best monitor %.4f at epoch %d)", self.stopped_epoch + 1, self.best, self.best_epoch + 1)
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def get_backup_state(self) -> tuple[dict, list]:
        """The rule's state for :class:`BackupAndResume`: JSON-able values and the best weights."""
        state = {"history": list(self.history), "best": self.best, "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch}
        return state, list(self.best_weights or [])

    def set_backup_state(self, state: dict, arrays: list) -> None:
        """Restore what :meth:`get_backup_state` returned (after ``on_train_begin`` reset it)."""
        self.history = [float(v) for v in state["history"]]
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.stopped_epoch = int(state["stopped_epoch"])
        self.best_weights = list(arrays) if arrays else None

    def get_config(self):
        return {
            "N": self.N,
            "M": self.M,
            "delta": self.delta,
            "completeness_key": self.completeness_key,
            "accuracy_key": self.accuracy_key,
            "start_from_epoch": self.start_from_epoch,
            "restore_best_weights": self.restore_best_weights,
        }


# --------------------------------------------------------------------------- resumable training
_CKPT_RE = re.compile(r"^ckpt-(\d{6,})\.json$")
_FORMAT = 1
#: Attributes that make up the state of Keras' own stateful callbacks.
_KERAS_CALLBACK_STATE = {
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch", "stopped_epoch"),
    keras.callbacks.ModelCheckpoint: ("best",),  # save_best_only: the best monitored value so far
}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if hasattr(value, "numpy"):
        return _jsonable(np.asarray(value))
    return value


def _callback_state(cb: keras.callbacks.Callback) -> tuple[dict, list]:
    if hasattr(cb, "get_backup_state"):
        return cb.get_backup_state()
    for cls, attrs in _KERAS_CALLBACK_STATE.items():
        if isinstance(cb, cls):
            arrays = list(getattr(cb, "best_weights", None) or [])
            return {a: _jsonable(getattr(cb, a, None)) for a in attrs}, arrays
    raise TypeError(f"BackupAndResume cannot back up {type(cb).__name__}: it has no get_backup_state()/set_backup_state()")


def _set_callback_state(cb: keras.callbacks.Callback, state: dict, arrays: list) -> None:
    if hasattr(cb, "set_backup_state"):
        cb.set_backup_state(state, arrays)
        return
    for key, value in state.items():
        setattr(cb, key, value)
    if arrays and hasattr(cb, "best_weights"):
        cb.best_weights = list(arrays)


def _seed_states(model: keras.Model) -> list:
    """The state variables of the model's random seed generators (dropout masks), in layer order."""
    states = []
    for layer in model._flatten_layers(include_self=True):  # noqa: SLF001 - Keras' layer walk
        for sg in getattr(layer, "_seed_generators", []):
            states.append(sg.state)
    return states


class BackupAndResume(keras.callbacks.Callback):
    """Back up the training state while a model trains; resume from it when the same training runs again.

    The equivalent of ``keras.callbacks.BackupAndRestore`` for this package, which works with
    ``Model.fit`` and with :func:`keras_astro.training.fit_in_memory`, and adds what a killed
    multi-stage, multi-worker run needs:

    * **atomic, two-generation backups**: ``ckpt-NNNNNN.weights.h5`` (weights and optimizer),
      ``ckpt-NNNNNN.npz`` (dropout seed states, tracked callbacks' arrays) and ``ckpt-NNNNNN.json``
      (epoch, step within the epoch, history, tracked callbacks' state, run fingerprint) written
      to temporary names and renamed, the JSON last; the two newest are kept, so a kill while
      writing falls back to the previous one;
    * **exact step counts**: after a mid-epoch backup (``save_freq`` in steps) the interrupted
      epoch runs only its remaining steps (when the epoch length is known), so the optimiser makes
      exactly the planned number of steps;
    * **finished stages stay finished**: with ``keep_final`` the end of training is backed up
      too, and running the same training again restores the final weights without training
      (delete the folder when the whole run is done, :func:`keras_astro.distribute.remove_backup`);
    * **stateful callbacks**: ``track`` lists callbacks whose state is saved and restored
      (:class:`MonitorStopping`, ``ReduceLROnPlateau``, ``EarlyStopping`` or anything with
      ``get_backup_state()``/``set_backup_state()``);
    * **multi-worker**: every worker writes its own folder
      (:func:`keras_astro.distribute.worker_backup_dir`), and on restart the workers agree on the
      newest backup they all hold through one all-reduce;
    * **the same run only**: ``fingerprint`` (configuration, data) is stored and compared; a
      backup of a different run raises ``ValueError`` instead of silently continuing it.

    Put it **first** in the callback list: it must restore the epoch before the other callbacks
    start, and un-set the early end of a resumed epoch before they see it.

    Parameters
    ----------
    backup_dir
        Folder of this worker's backups (created on first save).
    save_freq
        ``"epoch"``, or a number of training steps between backups (also saved at epoch ends).
    epoch_freq
        With ``save_freq="epoch"``, back up after every ``epoch_freq``-th epoch.
    fingerprint
        JSON-able description of the run; a backup made with another fingerprint is refused.
    track
        Stateful callbacks of the same training to back up with the model.
    keep_final
        Back up the end of training (``True``) or delete the folder when training ends (``False``).

    Attributes
    ----------
    restored : dict | None
        ``{"epoch", "step", "done", "iterations"}`` of the backup training resumed from.
    total_seconds : float
        Training time in seconds over all runs (restored + this one).
    """

    def __init__(
        self,
        backup_dir: str | os.PathLike,
        *,
        save_freq: str | int = "epoch",
        epoch_freq: int = 1,
        fingerprint: Mapping[str, Any] | None = None,
        track: Sequence[keras.callbacks.Callback] = (),
        keep_final: bool = True,
    ):
        super().__init__()
        if not str(backup_dir):
            raise ValueError("BackupAndResume needs a backup_dir")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"save_freq must be 'epoch' or a positive number of steps, got {save_freq!r}")
        if int(epoch_freq) < 1:
            raise ValueError(f"epoch_freq must be >= 1, got {epoch_freq}")
        self.backup_dir = Path(backup_dir)
        self.save_freq = save_freq
        self.epoch_freq = int(epoch_freq)
        self.fingerprint = _jsonable(dict(fingerprint or {}))
        self.track = list(track)
        self.keep_final = bool(keep_final)
        self.keep = 2
        self.restored: dict | None = None
        self.total_seconds = 0.0

    # ------------------------------------------------------------------ files
    def _paths(self, index: int) -> dict[str, Path]:
        stem = f"ckpt-{index:06d}"
        return {
            "weights": self.backup_dir / f"{stem}.weights.h5",
            "arrays": self.backup_dir / f"{stem}.npz",
            "state": self.backup_dir / f"{stem}.json",
        }

    def _checkpoints(self) -> dict[int, dict]:
        """Valid backups in the folder, by index; raises if one belongs to another run."""
        import h5py

        found: dict[int, dict] = {}
        if not self.backup_dir.is_dir():
            return found
        for p in self.backup_dir.iterdir():
            m = _CKPT_RE.match(p.name)
            if not m:
                continue
            index = int(m.group(1))
            paths = self._paths(index)
            try:
                state = json.loads(p.read_text())
            except (OSError, ValueError):
                log.warning("ignoring the unreadable backup %s", p)
                continue
            if not paths["weights"].is_file() or not h5py.is_hdf5(paths["weights"]) or not paths["arrays"].is_file():
                log.warning("ignoring the incomplete backup %s", p)
                continue
            if state.get("format") != _FORMAT:
                raise ValueError(f"{p}: backup format {state.get('format')!r}, expected {_FORMAT}; delete {self.backup_dir}")
            theirs = state.get("fingerprint", {})
            if theirs != self.fingerprint:
                keys = sorted(k for k in set(theirs) | set(self.fingerprint) if theirs.get(k) != self.fingerprint.get(k))
                diffs = "; ".join(f"{k}: backup {theirs.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in keys[:4])
                raise ValueError(
                    f"{self.backup_dir} holds the backup of a different training run ({diffs}); "
                    f"delete that folder, or give this run another output/backup folder"
                )
            found[index] = state
        return found

    def _agree(self, available: list[int]) -> int | None:
        """The newest backup every worker holds (one all-reduce when there are several workers)."""
        from keras_astro.distribute import worker_info

        strategy = self._strategy
        n_workers, me = worker_info(strategy)
        mine = sorted(available)[-self.keep :]
        if n_workers <= 1:
            return mine[-1] if mine else None
        import tensorflow as tf

        table = np.zeros((n_workers, self.keep), np.float32)
        table[me, : len(mine)] = np.asarray(mine, np.float32) + 1.0  # 0 = nothing
        local = max(1, strategy.num_replicas_in_sync // n_workers)
        contribution = tf.constant(table / local)
        total = strategy.reduce("SUM", strategy.run(lambda: tf.identity(contribution)), axis=None)
        rows = np.rint(np.asarray(total)).astype(np.int64)
        common = set.intersection(*({int(v) - 1 for v in row if v > 0} for row in rows))
        chosen = max(common) if common else None
        log.info("workers hold backups %s; resuming from %s", [sorted(int(v) - 1 for v in r if v > 0) for r in rows], chosen)
        return chosen

    def _remove(self, keep: set[int]) -> None:
        if not self.backup_dir.is_dir():
            return
        for p in self.backup_dir.iterdir():
            m = re.match(r"^\.?(?:tmp-)?ckpt-(\d{6,})\.", p.name)
            if m and int(m.group(1)) not in keep:
                p.unlink(missing_ok=True)

    def _save(self, *, epoch: int, step: int, done: bool = False) -> None:
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        index = self._index + 1
        paths = self._paths(index)
        tmp_w = self.backup_dir / f"tmp-ckpt-{index:06d}.weights.h5"
        self.model.save_weights(str(tmp_w), overwrite=True)
        os.replace(tmp_w, paths["weights"])
        cb_states, arrays = [], {}
        for j, cb in enumerate(self.track):
            state, cb_arrays = _callback_state(cb)
            cb_states.append({"class": type(cb).__name__, "state": _jsonable(state), "n_arrays": len(cb_arrays)})
            for k, a in enumerate(cb_arrays):
                arrays[f"cb{j}_{k}"] = np.asarray(a)
        for k, v in enumerate(_seed_states(self.model)):
            arrays[f"seed{k}"] = np.asarray(v.numpy() if hasattr(v, "numpy") else v)
        tmp_a = self.backup_dir / f"tmp-ckpt-{index:06d}.npz"
        with open(tmp_a, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp_a, paths["arrays"])
        iterations = int(np.asarray(self.model.optimizer.iterations)) if self.model.optimizer is not None else None
        state = {
            "format": _FORMAT,
            "index": index,
            "epoch": int(epoch),
            "step": int(step),
            "done": bool(done),
            "iterations": iterations,
            "history": self._history,
            "epochs_logged": self._epochs_logged,
            "callbacks": cb_states,
            "seconds": self._prior_seconds + (time.perf_counter() - self._t0),
            "fingerprint": self.fingerprint,
        }
        tmp_s = self.backup_dir / f"tmp-ckpt-{index:06d}.json"
        tmp_s.write_text(json.dumps(state))
        os.replace(tmp_s, paths["state"])  # the commit point
        self._index = index
        self._since_save = 0
        self._remove({i for i in range(index - self.keep + 1, index + 1)})
        log.debug("backup %d: epoch %d step %d%s in %s", index, epoch, step, " (done)" if done else "", self.backup_dir)

    # ------------------------------------------------------------------ restore
    def _restore_callbacks(self) -> None:
        state, arrays = self._pending_restore
        self._pending_restore = None
        saved = state.get("callbacks", [])
        if len(saved) != len(self.track):
            raise ValueError(f"{self.backup_dir}: the backup tracks {len(saved)} callbacks, this training {len(self.track)}")
        for j, (cb, entry) in enumerate(zip(self.track, saved)):
            if entry["class"] != type(cb).__name__:
                raise ValueError(f"{self.backup_dir}: callback {j} was {entry['class']} in the backup, now {type(cb).__name__}")
            _set_callback_state(cb, entry["state"], [arrays[f"cb{j}_{k}"] for k in range(entry["n_arrays"])])

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self._t0 = time.perf_counter()
        self._strategy = getattr(self.model, "distribute_strategy", None) or tf.distribute.get_strategy()
        params = self.params or {}
        self._epochs = int(params.get("epochs") or 0)
        self._steps_per_epoch = params.get("steps")
        self._history: dict[str, list] = {}
        self._epochs_logged: list[int] = []
        self._prior_seconds = 0.0
        self._pending_restore = None
        self._pending_epoch: tuple[int, dict] | None = None
        self._save_due = False
        self._truncate_after: int | None = None
        self._truncating = False
        self._offset = 0
        self._step = 0
        self._current_epoch = 0
        self._since_save = 0
        self._last_epoch = -1
        self._index = 0
        self._changed = False
        self.restored = None
        ckpts = self._checkpoints()
        chosen = self._agree(list(ckpts))
        self._remove(set() if chosen is None else {i for i in ckpts if i <= chosen})
        if chosen is None:
            if ckpts:
                log.warning("%s: no backup common to all workers; training starts from scratch", self.backup_dir)
            return
        state = ckpts[chosen]
        paths = self._paths(chosen)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(paths["weights"]))
        with np.load(paths["arrays"]) as z:
            arrays = {k: z[k] for k in z.files}
        seeds = _seed_states(self.model)
        for k, v in enumerate(seeds):
            if f"seed{k}" in arrays:
                v.assign(arrays[f"seed{k}"])
        self._index = chosen
        self._history = {k: list(v) for k, v in state["history"].items()}
        self._epochs_logged = list(state["epochs_logged"])
        self._prior_seconds = float(state.get("seconds", 0.0))
        self._pending_restore = (state, arrays)
        epoch, step = int(state["epoch"]), int(state["step"])
        self.restored = {"epoch": epoch, "step": step, "done": bool(state["done"]), "iterations": state.get("iterations")}
        if state["done"]:
            start = max(self._epochs, epoch)
        else:
            start = epoch
            if step > 0:
                if self._steps_per_epoch:
                    self._truncate_after = int(self._steps_per_epoch) - step
                    self._offset = step
                else:
                    log.warning("epoch length unknown: epoch %d restarts from its first step with the backed-up weights", epoch + 1)
        self.model._initial_epoch = start or None
        log.info(
            "resuming from the backup in %s: %s", self.backup_dir,
            "training had finished" if state["done"] else f"epoch {epoch + 1}, step {step}",
        )

    # ------------------------------------------------------------------ hooks
    def _commit_epoch(self) -> None:
        """Record the last finished epoch's logs (after every callback has added its values)."""
        if self._pending_epoch is None:
            return
        epoch, logs = self._pending_epoch
        self._pending_epoch = None
        self._epochs_logged.append(int(epoch))
        for key, value in (logs or {}).items():
            try:
                self._history.setdefault(key, []).append(float(np.asarray(value)))
            except (TypeError, ValueError):
                continue
        if self._save_due:
            self._save_due = False
            self._save(epoch=epoch + 1, step=0)

    def on_epoch_begin(self, epoch, logs=None):
        if self._pending_restore is not None:
            self._restore_callbacks()
        self._commit_epoch()
        self._current_epoch = int(epoch)
        self._step = self._offset

    def on_train_batch_end(self, batch, logs=None):
        done_here = int(batch) + 1
        new_step = self._offset + done_here
        self._since_save += new_step - self._step
        self._step = new_step
        self._changed = True
        if self.save_freq != "epoch" and self._since_save >= self.save_freq:
            self._since_save = 0
            self._save(epoch=self._current_epoch, step=self._step)
        if self._truncate_after is not None and done_here >= self._truncate_after:
            self.model.stop_training = True
            self._truncating = True

    def on_epoch_end(self, epoch, logs=None):
        if self._truncating:  # the resumed epoch ended early on purpose: go on training
            self.model.stop_training = False
            self._truncating = False
        self._truncate_after = None
        self._offset = 0
        self._changed = True
        self._last_epoch = epoch
        self._pending_epoch = (epoch, logs if logs is not None else {})
        self._save_due = self.save_freq != "epoch" or (epoch + 1) % self.epoch_freq == 0

    def on_train_end(self, logs=None):
        if self._pending_restore is not None:  # nothing ran: restore before the others finish
            self._restore_callbacks()
        self._save_due = False
        self._commit_epoch()
        self.total_seconds = self._prior_seconds + (time.perf_counter() - self._t0)
        if self.keep_final:
            if self._changed or not (self.restored and self.restored["done"]):
                last = self._epochs_logged[-1] + 1 if self._epochs_logged else 0
                self._save(epoch=last, step=0, done=True)
        else:
            import shutil

            shutil.rmtree(self.backup_dir, ignore_errors=True)
        self.model._initial_epoch = None
        history = getattr(self.model, "history", None)
        if isinstance(history, keras.callbacks.History):
            history.epoch = list(self._epochs_logged)
            history.history = {k: list(v) for k, v in self._history.items()}


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """``CSVLogger`` that continues the file of an interrupted training.

    When a :class:`BackupAndResume` earlier in the callback list restored epoch ``e``, rows for
    epochs ≥ ``e`` (written after that backup) are dropped and new rows are appended, so the file
    lists every epoch once. Without a restored backup the file is rewritten from the start.
    """

    def __init__(self, filename: str | os.PathLike, separator: str = ","):
        super().__init__(os.fspath(filename), separator=separator, append=False)

    def on_train_begin(self, logs=None):
        start = getattr(self.model, "_initial_epoch", None) or 0
        path = Path(self.filename)
        self.append = bool(start) and path.is_file()
        if self.append:
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh, delimiter=self.sep))
            kept = rows[:1] + [r for r in rows[1:] if r and r[0].strip().isdigit() and int(r[0]) < start]
            tmp = path.with_name(f".{path.name}.tmp")
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh, delimiter=self.sep, lineterminator="\n").writerows(kept)
            os.replace(tmp, path)
        super().on_train_begin(logs)
