"""Training that survives being killed (issue 8, "Faults"): ``BackupAndResume`` in the AGN custom
loop and in ``Model.fit``, and the real CLI commands killed with SIGKILL and restarted.

In-process tests interrupt training with an exception at a chosen step; the ``kill`` tests start
``keras-astro agn cv`` / ``fnet train`` / ``spectra train`` / ``claran train`` as subprocesses, SIGKILL them once a backup
exists, run the same command again and check it finishes the planned epochs and steps from the
backup rather than from scratch.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_astro.callbacks import BackupAndResume, MonitorStopping, ResumableCSVLogger
from keras_astro.models.agn import AGNConfig, build_agn_cnn, compile_agn_cnn, stopping_callback
from keras_astro.training import fit_in_memory

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("mw_worker", HERE / "mw_worker.py")
mw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mw)

PHASE_TIMEOUT = 240  # s: bound on every subprocess phase


class Interrupt(Exception):
    """Stands in for a kill inside one process."""


class StopAt(keras.callbacks.Callback):
    """Raises :class:`Interrupt` after ``steps`` training batches (or ``epochs`` epochs)."""

    def __init__(self, steps: int | None = None, epochs: int | None = None):
        super().__init__()
        self.steps, self.epochs, self.n_steps, self.n_epochs = steps, epochs, 0, 0

    def on_train_batch_end(self, batch, logs=None):
        self.n_steps += 1
        if self.steps is not None and self.n_steps >= self.steps:
            raise Interrupt

    def on_epoch_end(self, epoch, logs=None):
        self.n_epochs += 1
        if self.epochs is not None and self.n_epochs >= self.epochs:
            raise Interrupt


# ----------------------------------------------------------------- AGN: the custom epoch loop
@pytest.fixture(scope="module")
def fold():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 44, 2, 1)).astype("float32")
    y = (rng.random(120) < 0.3).astype("float32")
    x[y == 1, :, 0, 0] += 1.0
    return x[:100], y[:100], x[100:], y[100:]


def _agn_fit(fold, backup_dir, epochs, *extra, batch=32):
    x, y, xv, yv = fold
    cfg = AGNConfig.preset("B", M=3, delta=-0.05)
    keras.utils.set_random_seed(0)
    model = compile_agn_cnn(build_agn_cnn(cfg), cfg)
    stop = stopping_callback(cfg)
    cbs = [stop, *extra]
    if backup_dir is not None:
        cbs.insert(0, BackupAndResume(backup_dir, epoch_freq=2, fingerprint={"test": "agn"}, track=[stop]))
    hist = fit_in_memory(model, x, y, validation_data=(xv, yv), epochs=epochs, batch_size=batch, callbacks=cbs, jit_compile=False)
    return model, hist, stop, cbs[0]


def test_resume_fit_in_memory_is_exact(fold, tmp_path):
    """Killed at epoch 5 of 12 (backups every 2 epochs), the restarted AGN loop ends with the same
    weights, history and Eq. 3 state as an uninterrupted run: weights, optimiser, dropout seeds,
    the stopping rule and the (seed, epoch) batch order all come back."""
    ref, ref_hist, ref_stop, _ = _agn_fit(fold, None, 12)
    with pytest.raises(Interrupt):
        _agn_fit(fold, tmp_path / "b", 12, StopAt(epochs=5))
    model, hist, stop, backup = _agn_fit(fold, tmp_path / "b", 12)
    assert backup.restored == {"epoch": 4, "step": 0, "done": False, "iterations": 4 * 4}
    assert hist.epoch == list(range(len(ref_hist.epoch)))
    np.testing.assert_array_equal(hist.history["loss"], ref_hist.history["loss"])
    assert stop.history == ref_stop.history and stop.best_epoch == ref_stop.best_epoch
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Run again: the recorded end is restored without training.
    again, hist2, _, backup2 = _agn_fit(fold, tmp_path / "b", 12, StopAt(steps=1, epochs=1))
    assert backup2.restored["done"] and len(hist2.history["loss"]) == len(ref_hist.history["loss"])
    for a, b in zip(again.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_resume_refuses_another_runs_backup(fold, tmp_path):
    with pytest.raises(Interrupt):
        _agn_fit(fold, tmp_path / "b", 6, StopAt(epochs=3))
    x, y, xv, yv = fold
    cfg = AGNConfig.preset("B")
    model = compile_agn_cnn(build_agn_cnn(cfg), cfg)
    other = BackupAndResume(tmp_path / "b", fingerprint={"test": "something else"})
    with pytest.raises(ValueError, match=r"holds the backup of a different training run \(test: backup 'agn', now 'something else'\)"):
        fit_in_memory(model, x, y, validation_data=(xv, yv), epochs=6, batch_size=32, callbacks=[other], jit_compile=False)


def test_corrupt_latest_backup_falls_back_to_the_previous_one(fold, tmp_path):
    with pytest.raises(Interrupt):
        _agn_fit(fold, tmp_path / "b", 12, StopAt(epochs=7))
    states = sorted((tmp_path / "b").glob("ckpt-*.json"))
    assert len(states) == 2  # the two newest backups are kept
    newest = json.loads(states[-1].read_text())
    (tmp_path / "b" / f"ckpt-{newest['index']:06d}.weights.h5").write_bytes(b"truncated")
    _, _, _, backup = _agn_fit(fold, tmp_path / "b", 12)
    assert backup.restored["epoch"] == newest["epoch"] - 2


def test_resume_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="save_freq"):
        BackupAndResume(tmp_path, save_freq=0)
    with pytest.raises(ValueError, match="epoch_freq"):
        BackupAndResume(tmp_path, epoch_freq=0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    untracked = keras.callbacks.CSVLogger(str(tmp_path / "h.csv"))
    with pytest.raises(TypeError, match="cannot back up CSVLogger"):
        model.fit(np.ones((4, 1)), np.ones((4, 1)), epochs=1, verbose=0, callbacks=[BackupAndResume(tmp_path / "b", track=[untracked])])


# ----------------------------------------------------------------------- Model.fit, mid-epoch
def _dense_fit(tmp_path, *extra):
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(40, 5)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, x.sum(1, keepdims=True))).shuffle(40, seed=1).batch(4)  # 10 steps
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dropout(0.2), keras.layers.Dense(1)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    plateau = keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=1, factor=0.5)
    backup = BackupAndResume(tmp_path / "b", save_freq=3, fingerprint={"test": "dense"}, track=[plateau])
    cbs = [backup, ResumableCSVLogger(tmp_path / "history.csv"), plateau, *extra]
    hist = model.fit(ds, epochs=5, verbose=0, callbacks=cbs)
    return model, hist, backup, plateau


def test_resume_model_fit_mid_epoch_runs_exactly_the_planned_steps(tmp_path):
    """Killed at step 17 and again 8 steps after restarting (mid-epoch both times; backups every
    3 steps and at epoch ends), the third run ends with 5 epochs x 10 steps = 50 optimiser steps, each epoch once in
    the history and in history.csv, and the plateau rule's state restored."""
    for at in (17, 8):
        with pytest.raises(Interrupt):
            _dense_fit(tmp_path, StopAt(steps=at))
    counter = StopAt()
    model, hist, backup, plateau = _dense_fit(tmp_path, counter)
    assert backup.restored["step"] > 0  # resumed inside an epoch
    planned = 5 * 10
    assert int(model.optimizer.iterations) == planned
    assert counter.n_steps == planned - backup.restored["iterations"]
    assert hist.epoch == [0, 1, 2, 3, 4] and len(hist.history["loss"]) == 5
    with open(tmp_path / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    assert plateau.best < np.inf  # restored, not reset, when the resumed run started


# ------------------------------------------------------------- the CLI, killed with SIGKILL
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "keras_astro.cli", "--no-progress", *args]


def _resumed(log: str, stage: str) -> tuple[int, int] | str:
    """(epoch, step) the log says ``stage`` resumed from (1-based epoch), or ``"done"``."""
    m = re.search(rf"resuming from the backup in \S*{stage}: (training had finished|epoch (\d+), step (\d+))", log)
    assert m, f"no resume of {stage} in the log:\n{log[-3000:]}"
    return "done" if m.group(1).startswith("training") else (int(m.group(2)), int(m.group(3)))


def _kill_when_backed_up_then_restart(tmp_path: Path, runs: dict, done_files: list[Path]) -> tuple[dict, dict]:
    """Start every run's command, SIGKILL each once its backup state satisfies its condition,
    check none of ``done_files`` exists yet, start the same commands again and wait for them.
    ``runs``: name -> (command, backup folder, condition on the backup state). Returns the backup
    state each run was killed at and the restarted runs' logs."""
    env = mw.quiet_env()
    killed: dict[str, dict] = {}
    logs: dict[str, str] = {}
    with mw.Procs(tmp_path / "logs") as procs:
        for name, (cmd, _, _) in runs.items():
            procs.start(f"{name}-first", cmd, env)

        def kill_ready():  # kill each first run as soon as its backup is far enough
            for name, (_, folder, condition) in runs.items():
                state = mw.latest_backup(folder)
                if name not in killed and state and condition(state):
                    procs.kill(f"{name}-first")
                    killed[name] = state
            for name in runs:
                if name not in killed and procs.procs[f"{name}-first"].poll() is not None:
                    raise AssertionError(f"{name} ended before it could be killed\n" + procs.log(f"{name}-first"))
            return len(killed) == len(runs)

        mw.wait_for(kill_ready, PHASE_TIMEOUT, "every run to back up mid-training", poll=0.05)
        assert not [f for f in done_files if f.exists()]
        for name, (cmd, _, _) in runs.items():
            procs.start(f"{name}-again", cmd, env)
        for name in runs:
            assert procs.wait(f"{name}-again", PHASE_TIMEOUT) == 0, procs.log(f"{name}-again")
            logs[name] = procs.log(f"{name}-again", tail=200000)
    return killed, logs


def test_kill_agn_cv_and_fnet_train_then_resume(tmp_path):
    """The real commands, SIGKILLed mid-training and started again (both studies run side by side
    to halve the wall time):

    * ``keras-astro agn cv`` (2 folds x 40 full-batch epochs, backups every 4 epochs), killed
      during the second fold: the restart restores the finished first fold without training,
      continues the second from its backup, and both folds end with the planned 40 epochs;
    * ``keras-astro fnet train`` (2 epochs of 7 steps, backups every 2 steps), killed inside its
      second epoch: the restart resumes inside that epoch; history.csv lists epochs 0 and 1 once
      each and the saved model's optimiser made exactly 2 x 7 = 14 steps, not more (a restarted
      epoch) or fewer.
    """
    runs = {
        "agn": (_cli("agn", "cv", "--quick", "--folds", "2", "--epochs", "40", "--warmup", "1000", "--no-export",
                     "--backup-every", "4", "--out", str(tmp_path / "agn")),
                tmp_path / "agn" / "backup" / "fold-1", lambda s: s["epoch"] >= 8 and not s["done"]),
        "fnet": (_cli("fnet", "train", "--n", str(mw.FNET_N), "--preset", "tiny", "--epochs", "2", "--batch-size", "16",
                      "--no-baseline", "--no-export", "--backup-every", "2", "--out", str(tmp_path / "fnet")),
                 tmp_path / "fnet" / "backup", lambda s: s["epoch"] >= 1 and s["step"] > 0 and not s["done"]),
    }
    killed, logs = _kill_when_backed_up_then_restart(
        tmp_path, runs, [tmp_path / "agn" / "metrics.json", tmp_path / "fnet" / "metrics.json"]
    )

    # AGN: fold 1 restored, fold 2 continued, 40 epochs each
    assert _resumed(logs["agn"], "fold-0") == "done"
    epoch, step = _resumed(logs["agn"], "fold-1")
    assert killed["agn"]["epoch"] + 1 <= epoch <= 40 and step == 0
    metrics = json.loads((tmp_path / "agn" / "metrics.json").read_text())
    assert [f["epochs"] for f in metrics["folds"]] == [40, 40]
    # FNet: resumed inside epoch 2, exactly the planned steps
    resumed = _resumed(logs["fnet"], "fnet")
    assert resumed != "done" and resumed >= (killed["fnet"]["epoch"] + 1, killed["fnet"]["step"]), (resumed, killed["fnet"])
    with open(tmp_path / "fnet" / "history.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1]
    import keras_astro.models.fnet  # noqa: F401 - registers FNet's layers

    model = keras.saving.load_model(tmp_path / "fnet" / "model.keras")
    assert int(model.optimizer.iterations) == 2 * 7
    assert len(json.loads((tmp_path / "fnet" / "metrics.json").read_text())["history"]["loss"]) == 2
    # backups are deleted on success
    assert not (tmp_path / "agn" / "backup").exists() and not (tmp_path / "fnet" / "backup").exists()


def test_kill_spectra_train_and_claran_train_then_resume(tmp_path):
    """The other two studies' train commands, SIGKILLed mid-epoch and started again side by side:

    * ``keras-astro spectra train`` (thesis CNN on the tiny embedded store, 3 epochs of 10 global
      batches of 16, backups every 3 steps and at epoch ends), killed inside its second or third
      epoch: the restart resumes inside that epoch, the best-epoch checkpoint's ``val_loss``
      carries over, history.csv lists each epoch once and the optimiser made exactly 3 x 10 steps;
    * ``keras-astro claran train`` (small preset, 1 epoch of 8 steps, backups every 2 steps),
      killed after step 4: the restart continues from the backup and the saved detector's
      optimiser made exactly 8 steps.
    """
    from keras_astro.studies import claran, spectra

    store = spectra.embedded_store("main", quick="tiny")
    claran.prepare_dataset("D4", quick=True, progress=False)  # shared cache: built once, here
    runs = {
        "spectra": (_cli("spectra", "train", "--quick", "--data", str(store), "--model", "cnn", "--epochs", "3",
                         "--batch-size", "16", "--backup-every", "3", "--no-export", "--out", str(tmp_path / "spectra")),
                    tmp_path / "spectra" / "backup", lambda s: s["epoch"] >= 1 and s["step"] > 0 and not s["done"]),
        "claran": (_cli("claran", "train", "--quick", "--steps", "8", "--backup-every", "2", "--no-eval", "--no-export",
                        "--out", str(tmp_path / "claran")),
                   tmp_path / "claran" / "backup", lambda s: s["step"] >= 4 and not s["done"]),
    }
    killed, logs = _kill_when_backed_up_then_restart(
        tmp_path, runs, [tmp_path / "spectra" / "metrics.json", tmp_path / "claran" / "model.keras"]
    )

    for name in runs:  # resumed where the backup was, not from scratch
        resumed = _resumed(logs[name], "fit")
        assert resumed != "done" and resumed >= (killed[name]["epoch"] + 1, killed[name]["step"]), (name, resumed, killed[name])
    m = json.loads((tmp_path / "spectra" / "metrics.json").read_text())
    assert m["splits"]["train"] == 153 and len(m["history"]["loss"]) == 3
    with open(tmp_path / "spectra" / "history.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [0, 1, 2]
    assert m["history"]["val_loss"][: killed["spectra"]["epoch"]] == pytest.approx(killed["spectra"]["history"]["val_loss"])
    import keras_astro.models.claran  # noqa: F401 - registers ClaranDetector

    detector = keras.saving.load_model(tmp_path / "claran" / "model.keras")
    assert int(detector.optimizer.iterations) == 8
    assert json.loads((tmp_path / "claran" / "metrics.json").read_text())["steps"] == 8
    assert not (tmp_path / "spectra" / "backup").exists() and not (tmp_path / "claran" / "backup").exists()


def test_resume_monitor_stopping_state_round_trips():
    cb = MonitorStopping(N=3.0, M=4, delta=-0.15)
    cb.history, cb.best, cb.best_epoch, cb.stopped_epoch = [1.0, 2.0], 2.0, 1, -1
    cb.best_weights = [np.ones((2, 2), "float32")]
    state, arrays = cb.get_backup_state()
    other = MonitorStopping(N=3.0, M=4, delta=-0.15)
    other.set_backup_state(json.loads(json.dumps(state)), arrays)
    assert other.history == [1.0, 2.0] and other.best == 2.0 and other.best_epoch == 1
    np.testing.assert_array_equal(other.best_weights[0], np.ones((2, 2)))


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and process groups")
def test_kill_helpers_clean_up(tmp_path):
    """The subprocess helpers kill a whole process group when a phase times out."""
    with mw.Procs(tmp_path) as procs:
        procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], mw.quiet_env())
        with pytest.raises(TimeoutError, match="sleeper did not finish"):
            procs.wait("sleeper", 0.5)
        assert procs.procs["sleeper"].poll() is not None
