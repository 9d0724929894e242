"""One worker of the multi-worker and resume tests: trains the AGN model and a tiny FNet through
the studies' own entry points (``agn.run_cv`` and ``fnet.train_fnet``), and on request the
thesis CNN (``spectra.train``) and CLARAN (``claran.train``), and records what it did.

Run as ``python tests/mw_worker.py --out DIR --record FILE.json [options]`` with ``TF_CONFIG`` set
for a multi-worker run (see docs/scaling.md), or without it for the single-process reference. The
record holds, per study, the final trained weights (``FILE.<study>.npz``: after the last epoch,
before the Eq. 3 rule restores its best epoch), the optimiser's step count, the steps and epochs
this process ran, the epoch and step it resumed from, and the strategy it used.

Kept importable (``run(...)``) so the tests can make the reference run in their own process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

# The data sizes below make every global batch split evenly over two workers.
AGN_FOLDS = 5  # 1,870 objects -> 1,496 training (748 per worker), 374 validation
FNET_N = 176  # simulated quasars -> 112 training spectra, 7 steps of 16 (cached in KERAS_ASTRO_CACHE)
SPECTRA_EPOCHS = 2  # thesis CNN on the tiny embedded store (153 training spectra), global batch 16
CLARAN_STEPS = 4  # CLARAN small preset on the quick D4 build, one image per replica, 2 epochs of 2


def prepare_caches() -> None:
    """Build the embedded data the optional studies read, once, before workers start (two
    workers generating the same cache files at once would race)."""
    from keras_astro.studies import claran, spectra

    spectra.prepare_data("main", quick="tiny")
    claran.prepare_dataset("D4", quick=True, progress=False)


def _recorder(name: str):
    import keras

    class Recorder(keras.callbacks.Callback):
        """Counts the steps and epochs run here and keeps the weights after the last epoch."""

        def __init__(self):
            super().__init__()
            self.info = {"steps_run": 0, "epochs_run": 0, "weights": None, "initial": None, "iterations": None,
                         "first_loss": None, "losses": []}

        def on_train_begin(self, logs=None):
            self.info["initial"] = [np.asarray(w) for w in self.model.get_weights()]

        def on_train_batch_end(self, batch, logs=None):
            self.info["steps_run"] += 1
            if self.info["first_loss"] is None and logs and "loss" in logs:
                self.info["first_loss"] = float(np.asarray(logs["loss"]))  # the first batch, initial weights

        def on_epoch_end(self, epoch, logs=None):
            self.info["epochs_run"] += 1
            self.info["losses"].append(float(np.asarray((logs or {}).get("loss", np.nan))))
            self.info["weights"] = [np.asarray(w) for w in self.model.get_weights()]

        def on_train_end(self, logs=None):
            if self.info["weights"] is None:  # nothing left to train: the restored final state
                self.info["weights"] = [np.asarray(w) for w in self.model.get_weights()]
            self.info["iterations"] = int(np.asarray(self.model.optimizer.iterations))
            # the whole history, restored epochs included (BackupAndResume merged it before us)
            self.info["history_loss"] = [float(v) for v in self.model.history.history.get("loss", [])]

    rec = Recorder()
    rec.name = name
    return rec


def run(out: Path, record: Path, *, studies=("agn", "fnet"), agn_epochs: int = 4, fnet_epochs: int = 2,
        fnet_global_batch: int = 16, agn_backup_every: int = 1, fnet_backup_every: int = 2, strategy=None) -> dict:
    """Train the requested studies and write ``record`` (JSON) and its weight files."""
    from keras_astro import distribute

    strategy = strategy or distribute.get_strategy()  # before any other TensorFlow op
    from keras_astro.studies import agn, fnet

    replicas = strategy.num_replicas_in_sync
    result: dict = {"strategy": distribute.describe_strategy(strategy), "pid": os.getpid()}
    if "agn" in studies:
        rec = _recorder("agn")
        # Full batch (the paper's reading), no dropout (per-replica masks cannot match one
        # replica's), no early stop: the run is a fixed number of identical global steps.
        overrides = {"max_epochs": agn_epochs, "dropout": 0.0, "delta": -1e9, "batch_size": None}
        m = agn.run_cv("B", out=out / "agn", quick=True, n_folds=AGN_FOLDS, folds_to_run=[0], overrides=overrides,
                       export=False, strategy=strategy, progress=False, backup_every=agn_backup_every, callbacks=[rec])
        result["agn"] = {"steps_run": rec.info["steps_run"], "epochs_run": rec.info["epochs_run"],
                         "iterations": rec.info["iterations"], "fold_epochs": m["folds"][0]["epochs"],
                         "accuracy": m["accuracy"], "first_loss": rec.info["first_loss"], "losses": rec.info["losses"],
                         "history_loss": rec.info["history_loss"]}
        np.savez(f"{record}.agn.npz", *rec.info["weights"])
        np.savez(f"{record}.agn.init.npz", *rec.info["initial"])
    if "fnet" in studies:
        rec = _recorder("fnet")
        m = fnet.train_fnet(out / "fnet", n=FNET_N, preset="tiny", epochs=fnet_epochs,
                            batch_size=fnet_global_batch // replicas, baseline=False, export=False, strategy=strategy,
                            progress=False, backup_every=fnet_backup_every, callbacks=[rec])
        result["fnet"] = {"steps_run": rec.info["steps_run"], "epochs_run": rec.info["epochs_run"],
                          "iterations": rec.info["iterations"], "history_epochs": len(m["history"]["loss"]),
                          "n_train": m["splits"]["train"], "global_batch": m["global_batch_size"],
                          "first_loss": rec.info["first_loss"], "losses": rec.info["losses"],
                          "history_loss": rec.info["history_loss"]}
        np.savez(f"{record}.fnet.npz", *rec.info["weights"])
        np.savez(f"{record}.fnet.init.npz", *rec.info["initial"])
    if "spectra" in studies:
        from keras_astro.studies import spectra

        rec = _recorder("spectra")
        m = spectra.train(out / "spectra", model="cnn", task="main", quick="tiny", epochs=SPECTRA_EPOCHS,
                          batch_size=16 // replicas, export=False, strategy=strategy, progress=False, callbacks=[rec])
        result["spectra"] = {"steps_run": rec.info["steps_run"], "epochs_run": rec.info["epochs_run"],
                             "iterations": rec.info["iterations"], "n_train": m["splits"]["train"],
                             "accuracy": m["accuracy"], "history_epochs": len(m["history"]["loss"])}
        np.savez(f"{record}.spectra.npz", *rec.info["weights"])
    if "claran" in studies:
        from keras_astro.studies import claran

        rec = _recorder("claran")
        m = claran.train(out / "claran", dataset="D4", quick=True, steps=CLARAN_STEPS, steps_per_epoch=CLARAN_STEPS // 2,
                         evaluate_after=False, export=False, strategy=strategy, progress=False, callbacks=[rec])
        result["claran"] = {"steps_run": rec.info["steps_run"], "epochs_run": rec.info["epochs_run"],
                            "iterations": rec.info["iterations"], "steps": m["steps"],
                            "final_loss": m["final_losses"]["loss"]}
        np.savez(f"{record}.claran.npz", *rec.info["weights"])
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, record)
    return result


# ------------------------------------------------------------------ helpers for the tests
def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (sockets bound to port 0, closed together)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_config(ports: list[int], index: int) -> str:
    """The ``TF_CONFIG`` of worker ``index`` of a cluster of local workers on ``ports``."""
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})


def quiet_env(**extra: str) -> dict:
    """Environment of a test subprocess: quiet TensorFlow, no GPU, one thread, the tests' cache."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               TF_NUM_INTEROP_THREADS="1", TF_NUM_INTRAOP_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class Procs:
    """Subprocesses in their own process groups, killed (whole group) on exit or failure."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, object] = {}

    def start(self, name: str, cmd: list[str], env: dict):
        import subprocess

        out = open(self.log_dir / f"{name}.out", "w")
        err = open(self.log_dir / f"{name}.err", "w")
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, start_new_session=True, cwd=os.getcwd())
        proc._logs = (out, err)  # closed in wait/kill
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 4000) -> str:
        text = ""
        for ext in ("out", "err"):
            p = self.log_dir / f"{name}.{ext}"
            if p.exists():
                text += f"--- {name}.{ext} ---\n" + p.read_text()[-tail:]
        return text

    def kill(self, name: str) -> None:
        import signal

        proc = self.procs[name]
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        for fh in proc._logs:
            fh.close()

    def wait(self, name: str, timeout: float) -> int:
        import subprocess

        proc = self.procs[name]
        try:
            code = proc.wait(timeout=max(0.1, timeout))
        except subprocess.TimeoutExpired:
            self.kill(name)
            raise TimeoutError(f"{name} did not finish within {timeout:.0f} s\n" + self.log(name)) from None
        for fh in proc._logs:
            fh.close()
        return code

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name)

    def __enter__(self) -> "Procs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for(predicate, timeout: float, what: str, procs: "Procs | None" = None, poll: float = 0.2):
    """Poll ``predicate()`` until it returns something truthy; fail after ``timeout`` seconds or
    when one of ``procs`` exits early."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if procs is not None:
            for name, proc in procs.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited with {proc.returncode} while waiting for {what}\n" + procs.log(name))
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def latest_backup(folder: Path) -> dict | None:
    """The newest committed backup state (``ckpt-*.json``) under ``folder``, or ``None``."""
    best = None
    for p in Path(folder).rglob("ckpt-*.json"):
        try:
            state = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if best is None or state["index"] > best["index"]:
            best = state
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--record", type=Path, required=True)
    p.add_argument("--studies", default="agn,fnet")
    p.add_argument("--agn-epochs", type=int, default=4)
    p.add_argument("--fnet-epochs", type=int, default=2)
    p.add_argument("--fnet-global-batch", type=int, default=16)
    p.add_argument("--fnet-backup-every", type=int, default=2)
    args = p.parse_args(argv)
    import tensorflow as tf

    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from keras_astro.distribute import WorkerLostError

    try:
        run(args.out, args.record, studies=tuple(args.studies.split(",")), agn_epochs=args.agn_epochs,
            fnet_epochs=args.fnet_epochs, fnet_global_batch=args.fnet_global_batch,
            fnet_backup_every=args.fnet_backup_every)
    except WorkerLostError as exc:
        sys.stderr.write(f"mw_worker: error: {exc}\n")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
