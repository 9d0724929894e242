"""A keras-tuner search killed mid-trial (issue 8, "Faults": tuning).

``keras-astro spectra tune`` is started as a subprocess planning three trials, SIGKILLed while its
second trial is training (the first one finished), and started again with the same command. The
second run must resume the project in ``DIR/tuner_logs``: keep the finished trial as it is, re-run
the interrupted trial with the same hyperparameters, run the last one and stop at the planned count,
with no trial left RUNNING or run twice, and write the study's outputs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("mw_worker", HERE.parent / "mw_worker.py")
mw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mw)

TRIALS = 3
# Epochs per trial: EarlyStopping (patience 4) lets a trial run at least five, so the second trial
# trains for several seconds after its first epoch, the window in which it is killed.
EPOCHS = 6
PHASE_TIMEOUT = 180  # s: bound on every wait (two loaded cores)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONUNBUFFERED="1",
        # the tests' private cache (tests/conftest.py sets it for this process)
        KERAS_ASTRO_CACHE=os.environ["KERAS_ASTRO_CACHE"],
    )
    return env


def _trial_json(project: Path, trial_id: str) -> dict | None:
    """``trial_<id>/trial.json`` of the project, or ``None`` while it is missing or half-written."""
    try:
        return json.loads((project / f"trial_{trial_id}" / "trial.json").read_text())
    except (OSError, ValueError):
        return None


def _status(project: Path, trial_id: str) -> str | None:
    t = _trial_json(project, trial_id)
    return None if t is None else t["status"]


def test_tune_killed_mid_trial_resumes_to_the_planned_trial_count(tmp_path):
    from keras_astro.studies import spectra

    # The tiny main store (240 simulated spectra, cached in KERAS_ASTRO_CACHE); `--quick` gives the
    # quick search space (Conv1D widths / 16). No retraining: only the search is under test.
    store = spectra.embedded_store("main", quick="tiny")
    out = tmp_path / "tune"
    cmd = [
        sys.executable,
        "-m",
        "keras_astro.cli",
        "--no-progress",
        "spectra",
        "tune",
        "--quick",
        "--data",
        str(store),
        "--trials",
        str(TRIALS),
        "--epochs",
        str(EPOCHS),
        "--retrain-epochs",
        "0",
        "--out",
        str(out),
    ]
    project = out / "tuner_logs" / "cnn_main_random"
    env = _env()

    def second_trial_training():
        # Trial "0" finished, trial "1" RUNNING and past its first epoch (its best-epoch checkpoint
        # exists): the oracle has recorded it as ongoing and it is inside `fit`.
        return (
            _status(project, "0") == "COMPLETED"
            and _status(project, "1") == "RUNNING"
            and (project / "trial_1" / "checkpoint.weights.h5").is_file()
        )

    with mw.Procs(tmp_path / "logs") as procs:
        procs.start("first", cmd, env)
        mw.wait_for(
            second_trial_training, PHASE_TIMEOUT, "trial 1 to be training (trial 0 completed)", procs, poll=0.05
        )
        procs.kill("first")  # SIGKILL to the whole process group
        assert _status(project, "1") == "RUNNING", "trial 1 finished before the kill: not a mid-trial kill"
        assert not (project / "trial_2").exists()
        done_before = (project / "trial_0" / "trial.json").read_bytes()
        ckpt_before = (project / "trial_0" / "checkpoint.weights.h5").stat().st_mtime_ns
        killed_hp = _trial_json(project, "1")["hyperparameters"]["values"]
        assert not (out / "trials.csv").exists() and not (out / "best_hparams.json").exists()

        procs.start("second", cmd, env)  # the same command: resumes the project
        rc = procs.wait("second", PHASE_TIMEOUT)
        assert rc == 0, procs.log("second")
        text = (tmp_path / "logs" / "second.out").read_text()
        printed = json.loads(text[text.find("\n{") + 1 :])  # the CLI's summary, after keras-tuner's notes

    # The planned count, each trial once, all finished; nothing left running or queued for retry.
    ids = [str(i) for i in range(TRIALS)]
    assert sorted(p.name for p in project.glob("trial_*")) == [f"trial_{i}" for i in ids]
    trials = {i: _trial_json(project, i) for i in ids}
    assert {i: t["status"] for i, t in trials.items()} == {i: "COMPLETED" for i in ids}
    assert all(0.0 <= t["score"] <= 1.0 for t in trials.values())
    oracle = json.loads((project / "oracle.json").read_text())
    assert oracle["ongoing_trials"] == {} and oracle["retry_queue"] == []
    assert oracle["start_order"] == ids and sorted(oracle["end_order"]) == ids
    assert oracle["run_times"] == {i: 1 for i in ids}  # the killed run of trial 1 never ended

    # The trial finished before the kill was kept, not re-run; the killed one was re-run on the
    # same point (keras-tuner's retry), not replaced by a fresh draw.
    assert (project / "trial_0" / "trial.json").read_bytes() == done_before
    assert (project / "trial_0" / "checkpoint.weights.h5").stat().st_mtime_ns == ckpt_before
    assert trials["1"]["hyperparameters"]["values"] == killed_hp
    assert printed["n_trials"] == TRIALS and printed["n_new_trials"] == TRIALS - 1  # trials 1 and 2

    # The study's outputs cover every trial.
    table = pd.read_csv(out / "trials.csv", dtype={"trial_id": str})
    assert list(table["trial"]) == [1, 2, 3] and list(table["trial_id"]) == ids
    assert set(table["status"]) == {"COMPLETED"}
    assert list(table["val_accuracy"]) == pytest.approx([trials[i]["score"] for i in ids], rel=1e-12)
    best = json.loads((out / "best_hparams.json").read_text())
    assert best["trial_id"] in ids and best["val_accuracy"] == trials[best["trial_id"]]["score"]
    assert best["val_accuracy"] == max(t["score"] for t in trials.values())
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_trials"] == TRIALS and metrics["max_trials"] == TRIALS


# ------------------------------------------------- kills between keras-tuner's two state files
def _tiny_search(folder: Path, built: list, max_trials: int = 2):
    """A RandomSearch of a one-unit model on 32 points; ``built`` counts model builds (trial runs)."""
    import keras
    import keras_tuner as kt

    def build(hp):
        units = hp.Int("units", 1, 8)
        built.append(units)
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(units), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        return model

    return kt.RandomSearch(build, objective="val_loss", max_trials=max_trials, seed=0, directory=str(folder),
                           project_name="p", overwrite=False)


def _fit_args():
    import numpy as np

    x = np.random.default_rng(0).normal(size=(32, 2)).astype("float32")
    return dict(x=x, y=x.sum(1), validation_data=(x, x.sum(1)), epochs=1, verbose=0)


def _statuses(folder: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text())["status"] for p in sorted((folder / "p").glob("trial_*/trial.json"))}


def test_kill_between_trial_file_and_oracle_file_is_repaired(tmp_path):
    """keras-tuner saves ``trial.json`` before ``oracle.json``; these states are what a SIGKILL
    between the two leaves behind, and ``spectra._repair_interrupted_search`` must make the
    reloaded search run the started trial (else the search ends a trial short) and not re-run a
    finished one."""
    from keras_astro.studies.spectra import _repair_interrupted_search

    built: list = []
    tuner = _tiny_search(tmp_path, built, max_trials=1)
    tuner.search(**_fit_args())
    oracle_file = tmp_path / "p" / "oracle.json"
    after_first = oracle_file.read_bytes()
    # 1. killed while starting trial 1: its trial.json says RUNNING, oracle.json knows nothing of it
    tuner = _tiny_search(tmp_path, built)
    tuner.oracle.create_trial("tuner0")
    oracle_file.write_bytes(after_first)
    assert _statuses(tmp_path) == {"trial_0": "COMPLETED", "trial_1": "RUNNING"}
    built.clear()
    tuner = _tiny_search(tmp_path, built)
    assert _repair_interrupted_search(tuner.oracle) == ["trial 1 was interrupted while starting: it will run"]
    tuner.search(**_fit_args())
    assert len(built) == 1 and _statuses(tmp_path) == {"trial_0": "COMPLETED", "trial_1": "COMPLETED"}
    # without the repair the same state ends the search with trial 1 never run
    tuner = _tiny_search(tmp_path / "unrepaired", [], max_trials=1)
    tuner.search(**_fit_args())
    unrepaired = tmp_path / "unrepaired" / "p" / "oracle.json"
    saved = unrepaired.read_bytes()
    tuner = _tiny_search(tmp_path / "unrepaired", [])
    tuner.oracle.create_trial("tuner0")
    unrepaired.write_bytes(saved)
    skipped: list = []
    _tiny_search(tmp_path / "unrepaired", skipped).search(**_fit_args())
    assert skipped == [] and _statuses(tmp_path / "unrepaired")["trial_1"] == "RUNNING"

    # 2. killed while ending a trial: trial.json says COMPLETED, oracle.json still lists it as running
    state = json.loads(oracle_file.read_text())
    state["ongoing_trials"] = {"tuner0": "1"}
    state["end_order"] = [t for t in state["end_order"] if t != "1"]
    oracle_file.write_text(json.dumps(state))
    built.clear()
    tuner = _tiny_search(tmp_path, built)
    assert tuner.oracle._retry_queue == ["1"]  # noqa: SLF001 - what keras-tuner's reload did
    assert _repair_interrupted_search(tuner.oracle) == ["trial 1 had finished: it will not run again"]
    tuner.search(**_fit_args())
    assert built == [] and _statuses(tmp_path) == {"trial_0": "COMPLETED", "trial_1": "COMPLETED"}
    assert json.loads(oracle_file.read_text())["end_order"] == ["0", "1"]
