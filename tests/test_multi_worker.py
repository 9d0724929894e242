"""Multi-worker training (issue 8): strategy selection from TF_CONFIG and Slurm, input sharding,
the Keras fixes that make several replicas compute what one device computes, and real
two-worker runs of the AGN and FNet studies on 127.0.0.1 (free ports, bounded time, process groups
killed on failure).

Commands the two-worker tests run (documented in docs/scaling.md)::

    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:P0", "127.0.0.1:P1"]}, "task": {"type": "worker", "index": 0}}' \\
        python tests/mw_worker.py --out OUT0 --record REC0.json
    TF_CONFIG='{... "index": 1}}' python tests/mw_worker.py --out OUT1 --record REC1.json

``tests/mw_worker.py`` calls ``agn.run_cv`` and ``fnet.train_fnet`` exactly as the CLI does.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from keras_astro import distribute

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("mw_worker", HERE / "mw_worker.py")
mw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mw)

PHASE_TIMEOUT = 240  # s: bound on every multi-worker phase
STOP_TIMEOUT = 60  # s: a surviving worker must give up this soon after its peer is killed
WORKER = [sys.executable, str(HERE / "mw_worker.py")]


# ------------------------------------------------------------------------- configuration
def _config(index=1, **cluster):
    return json.dumps({"cluster": cluster or {"worker": ["127.0.0.1:2222", "127.0.0.1:2223"]}, "task": {"type": "worker", "index": index}})


@pytest.mark.parametrize(
    "raw, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps({"cluster": ["a:1"]}), r"TF_CONFIG\['cluster'\] must map job names"),
        (json.dumps({"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}), r"TF_CONFIG\['cluster'\]\['worker'\] must be a non-empty list"),
        (json.dumps({"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}), r"TF_CONFIG\['cluster'\]\['worker'\]\[1\] = 'b' is not 'host:port'"),
        (json.dumps({"cluster": {"worker": ["a:1", "b:x"]}, "task": {"type": "worker", "index": 0}}), r"\[1\] = 'b:x' is not 'host:port'"),
        (json.dumps({"cluster": {"wrker": ["a:1"]}, "task": {"type": "wrker", "index": 0}}), "unknown job 'wrker'"),
        (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}), "parameter servers"),
        (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}}), r"no task .* \(key 'task'\)"),
        (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "chief", "index": 0}}), r"TF_CONFIG\['task'\]\['type'\] = 'chief' is not a job"),
        (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}), r"TF_CONFIG\['task'\]\['index'\] = 2 is not an index"),
        (json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": "1"}}), r"\['index'\] = '1'"),
    ],
)
def test_multi_worker_malformed_tf_config_names_the_key(monkeypatch, raw, message):
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ValueError, match=message):
        distribute.cluster_from_env()


def test_multi_worker_kind_from_tf_config_and_slurm(monkeypatch):
    for name in ("TF_CONFIG", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", distribute.SLURM_ENV):
        monkeypatch.delenv(name, raising=False)
    assert distribute.select_kind() == "default"
    monkeypatch.setenv("TF_CONFIG", _config(0, worker=["127.0.0.1:2222"]))
    assert distribute.select_kind() == "default"  # a one-task cluster is one process
    monkeypatch.setenv("TF_CONFIG", _config(1))
    assert distribute.select_kind() == "multi_worker"
    monkeypatch.delenv("TF_CONFIG")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    assert distribute.select_kind() == "default"  # Slurm only when asked for
    monkeypatch.setenv(distribute.SLURM_ENV, "1")
    assert distribute.select_kind() == "multi_worker"
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "1")
    assert distribute.select_kind() == "default"
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "four")
    with pytest.raises(ValueError, match="SLURM_STEP_NUM_TASKS='four'"):
        distribute.select_kind()
    monkeypatch.setenv(distribute.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="KERAS_ASTRO_COLLECTIVE_TIMEOUT='soon'"):
        distribute.collective_timeout()
    monkeypatch.setenv(distribute.TIMEOUT_ENV, "0")
    assert distribute.collective_timeout() is None
    monkeypatch.delenv(distribute.TIMEOUT_ENV)
    assert distribute.collective_timeout() == distribute.DEFAULT_COLLECTIVE_TIMEOUT


def test_multi_worker_info_describes_the_cluster_without_joining_it(monkeypatch, capsys):
    """`keras-astro info` on one worker of a two-worker TF_CONFIG returns at once (creating the
    strategy would wait for the other worker) and says which task this is."""
    from keras_astro import cli

    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", distribute.SLURM_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TF_CONFIG", _config(1))
    assert cli.main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["strategy"] == {"strategy": "MultiWorkerMirroredStrategy", "workers": 2, "worker_index": 1,
                                "task": "worker:1", "chief": False, "source": "TF_CONFIG", "joined": False}
    assert distribute._MULTI_WORKER is None  # noqa: SLF001 - nothing was created
    chief = json.dumps({"cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}, "task": {"type": "chief", "index": 0}})
    monkeypatch.setenv("TF_CONFIG", chief)
    assert distribute.planned_strategy()["chief"] and distribute.planned_strategy()["worker_index"] == 0
    monkeypatch.setenv("TF_CONFIG", "{not json")
    assert cli.main(["info"]) == 2
    assert "TF_CONFIG" in capsys.readouterr().err
    monkeypatch.delenv("TF_CONFIG")
    assert distribute.planned_strategy()["joined"] is True


def test_multi_worker_slurm_resolver_on_cpu_nodes(monkeypatch):
    """Two nodes, two tasks each, no GPUs: four CPU workers on ports 9000/9001 of each node."""
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_GPUS_ON_NODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node[07-08]")
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "2(x2)")
    monkeypatch.setenv(distribute.SLURM_PORT_ENV, "9000")
    resolver = distribute.slurm_cluster_resolver()
    spec = resolver.cluster_spec().as_dict()
    assert spec == {"worker": ["node07:9000", "node07:9001", "node08:9000", "node08:9001"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 3)
    monkeypatch.delenv("SLURM_STEP_NODELIST")
    with pytest.raises(ValueError, match="SLURM_STEP_NODELIST is not set"):
        distribute.slurm_cluster_resolver()


def test_multi_worker_file_level_sharding_of_a_shard_folder(tmp_path):
    """A store split into 5 shard files over 2 workers: worker i reads files i, i+2, ...; both make
    the same number of full steps; a single-file store is sharded by data instead."""
    from keras_astro.io.spectra_store import append_shard, meta_schema, read_meta, required_meta_columns

    wl = np.linspace(3600.0, 10000.0, 8)
    n_per = [7, 5, 9, 3, 6]
    schema = meta_schema()
    for k, n in enumerate(n_per):
        ids = np.arange(100 * k, 100 * k + n) + 1
        meta = {}
        for name in required_meta_columns():  # a minimal row of the store's layout
            dtype = schema[name]
            meta[name] = np.array(["QSO"] * n) if dtype.kind == "S" else np.ones(n, dtype)
        meta["specObjID"] = ids
        append_shard(tmp_path / "store", fluxes=np.ones((n, 8), "float32"), ivar=np.ones((n, 8), "float32"), wavelengths=wl, meta=meta)
    n = int(sum(n_per))
    assert len(read_meta(tmp_path / "store")) == n
    selected = np.ones(n, bool)
    selected[[0, 10]] = False  # one row of shard 0 and one of shard 1 are not in the split
    plans = [distribute.plan_input_sharding(tmp_path / "store", selected, global_batch=4, num_workers=2, worker_index=i) for i in (0, 1)]
    offsets = np.cumsum([0, *n_per])
    files_of = [set(np.searchsorted(offsets, p.rows, side="right") - 1) for p in plans]
    assert files_of == [{0, 2, 4}, {1, 3}]
    assert sorted(np.concatenate([p.rows for p in plans]).tolist()) == np.flatnonzero(selected).tolist()
    assert [p.policy for p in plans] == ["file", "file"] and plans[0].steps == plans[1].steps == (5 + 3 - 1) // 2
    assert plans[0].per_worker_batch == 2
    one = distribute.plan_input_sharding(tmp_path / "store" / "shard-00000.h5", np.ones(n_per[0], bool), global_batch=4, num_workers=2, worker_index=1)
    assert one.policy == "data" and one.rows is None
    assert distribute.plan_input_sharding(tmp_path / "store", selected, global_batch=4, num_workers=1, worker_index=0).policy == "none"
    with pytest.raises(ValueError, match="does not split evenly"):
        distribute.plan_input_sharding(tmp_path / "store", selected, global_batch=3, num_workers=2, worker_index=0)
    with pytest.raises(ValueError, match="fewer than one per-worker batch"):
        distribute.plan_input_sharding(tmp_path / "store", selected, global_batch=40, num_workers=2, worker_index=0)


def test_multi_worker_sharding_policies_reach_tf_data():
    ds = tf.data.Dataset.range(8).batch(4)
    policy = tf.data.experimental.AutoShardPolicy
    assert distribute.shard_dataset(ds, "data").options().experimental_distribute.auto_shard_policy == policy.DATA
    assert distribute.shard_dataset(ds, "file").options().experimental_distribute.auto_shard_policy == policy.OFF
    with pytest.raises(ValueError, match="unknown sharding policy"):
        distribute.shard_dataset(ds, "rows")
    # per-worker input through distribute_datasets_from_function (here one worker, one replica)
    dist = distribute.distribute_per_worker(tf.distribute.get_strategy(), lambda b: tf.data.Dataset.range(6).batch(b), per_worker_batch=3)
    assert [x.numpy().tolist() for x in dist] == [[0, 1, 2], [3, 4, 5]]


def test_multi_worker_output_and_backup_folders(tmp_path):
    """One process is the chief: it writes the run folder and keeps its backup at the top."""
    s = tf.distribute.get_strategy()
    assert distribute.is_chief(s) and distribute.worker_info(s) == (1, 0)
    assert distribute.output_dir(tmp_path / "out", s) == tmp_path / "out"
    assert distribute.worker_backup_dir(tmp_path / "b", s) == tmp_path / "b"
    (tmp_path / "b" / "fold-0").mkdir(parents=True)
    distribute.remove_backup(tmp_path / "b", s)
    assert not (tmp_path / "b").exists()
    err = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: the following tasks are unhealthy")
    assert distribute.is_worker_failure(err) and not distribute.is_worker_failure(ValueError("x"))
    with pytest.raises(distribute.WorkerLostError, match="Restart every worker with the same command to resume from the backup in B"):
        with distribute.worker_failures("B"):
            raise err


REPLICAS = textwrap.dedent(
    """
    import json, sys, numpy as np, keras, tensorflow as tf
    from keras_astro import distribute
    distribute.split_cpu(2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for dtype in sys.argv[1:]:  # one dtype per process: Keras keeps dtype state once used
        keras.config.set_floatx(dtype)
        rng = np.random.default_rng(0)
        # a 'magnitude-like' feature (mean 17, spread 1) next to a small one, as in the AGN input
        x = np.concatenate([rng.normal(17, 1, (64, 3, 1)), rng.normal(0, 0.05, (64, 3, 1))], axis=1).astype(dtype)
        y = (x[:, :3, 0].mean(1, keepdims=True) - 17 + 0.1 * rng.normal(size=(64, 1))).astype(dtype)
        def build():
            keras.utils.set_random_seed(0)
            m = keras.Sequential([keras.Input((6, 1)), keras.layers.Conv1D(4, 2, padding="same"),
                                  keras.layers.BatchNormalization(), keras.layers.ReLU(), keras.layers.Flatten(),
                                  keras.layers.Dense(1)])
            m.compile(keras.optimizers.SGD(0.05, global_clipnorm=0.5), "mse")
            return m
        one = build()
        w0 = one.get_weights()
        one.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        with strategy.scope():
            two = build()
            distribute.synchronize_batch_norm(two, strategy)
        two.set_weights(w0)
        two.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(32), epochs=2, verbose=0)
        flat = lambda ws: np.concatenate([w.ravel() for w in ws])
        w1, w2, start = flat(one.get_weights()), flat(two.get_weights()), flat(w0)
        scale = float(np.abs(w1).max())
        out[dtype] = {"diff": float(np.abs(w1 - w2).max()) / scale, "change": float(np.abs(w1 - start).max()) / scale}
    print(json.dumps(out))
    """
)


def test_multi_worker_replicas_compute_what_one_device_computes(tmp_path):
    """Two replicas with synchronised batch statistics and clipping of the all-reduced gradient
    (the package's fixes of Keras 3.15) train a Conv1D + BatchNorm + clipped-SGD model exactly like
    one device: in float64 the weights after 4 steps agree to 1e-12 (only the order of sums
    differs); in float32 to 1e-4 of the weights' scale."""
    env = mw.quiet_env(TF_CPP_MIN_LOG_LEVEL="3")
    procs = {dt: subprocess.Popen([sys.executable, "-c", REPLICAS, dt], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for dt in ("float64", "float32")}
    res = {}
    for proc in procs.values():
        try:
            out, err = proc.communicate(timeout=PHASE_TIMEOUT)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-3000:]
        res.update(json.loads(out.strip().splitlines()[-1]))
    assert res["float64"]["change"] > 1e-2 and res["float32"]["change"] > 1e-2  # training moved the weights
    assert res["float64"]["diff"] < 1e-12, res
    assert res["float32"]["diff"] < 1e-4, res


# ---------------------------------------------------------------------- two real workers
def _npz(path: Path) -> list[np.ndarray]:
    with np.load(path) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def _start_workers(procs: mw.Procs, tmp: Path, tag: str, extra=(), timeout: str = "30") -> list[int]:
    ports = mw.free_ports(2)
    for i in (0, 1):
        env = mw.quiet_env(TF_CONFIG=mw.tf_config(ports, i), KERAS_ASTRO_COLLECTIVE_TIMEOUT=timeout)
        procs.start(f"{tag}{i}", [*WORKER, "--out", str(tmp / f"out{i}"), "--record", str(tmp / f"rec{i}.json"), *extra], env)
    return ports


def test_multi_worker_two_workers_kill_resume_and_match_one_process(tmp_path):
    """Two workers (TF_CONFIG, one CPU replica each) run ``tests/mw_worker.py``: AGN through
    ``agn.run_cv`` (1 fold, 10 full-batch epochs, a backup every epoch), then a tiny FNet through
    ``fnet.train_fnet`` (2 epochs x 7 steps of 16 spectra). Meanwhile this process trains the same
    models on one replica with the same global batches (the reference).

    1. Worker 1 is SIGKILLed once it has backed up AGN epoch 3: worker 0 stops within 60 s with a
       message that says to restart every worker (exit code 3 of ``mw_worker.py`` for
       ``WorkerLostError``).
    2. Both are started again with the same commands: they agree on their newest common backup,
       finish AGN with the planned 10 epochs / 10 optimiser steps (having run fewer here), then
       train FNet (14 steps). Both end with bit-identical weights; only the chief wrote the run
       folders; every backup is deleted.
    3. Against the one-process run, with these tolerances and reasons:

       * the first training loss (initial weights, first global batch) agrees to 1e-4 relative
         (measured 1e-6 for FNet, 1.3e-5 for AGN): same batch, same function; only float32
         rounding differs (the all-reduce adds the workers' partial sums in another order, and
         one-replica AGN uses the fused batch-norm kernel of its in-memory loop);
       * the trained models' outputs on 256 inputs differ by at most 0.05 (AGN P(AGN)) and 0.06
         (FNet scaled z), and by less than half of how far training moved them (about 0.2 and
         0.1). Several replicas compute the same sums as one device (float64: 1e-12, test above),
         but in float32 these batch-normalised networks with Adam turn different rounding of the
         all-reduced sums into visible weight changes within a few steps: Adam normalises each
         parameter's step, so a parameter whose true gradient is ~0 (a conv bias before batch
         normalisation) moves by ±lr either way (docs/scaling.md, "How close is a multi-worker run
         to one process?"). AGN's resume is exact (full batch, weights and Adam state restored),
         so the kill does not loosen this comparison.
    4. In the restarted job the workers also train the thesis CNN (``spectra.train``, 2 epochs of
       10 global batches of 16 spectra) and CLARAN (``claran.train``, small preset, 4 steps of one
       image per worker) through the same strategy: both make the planned optimiser steps, end
       with bit-identical weights, and only the chief writes their run folders.
    """
    planned_agn = 10
    args = ("--agn-epochs", str(planned_agn))
    ref: dict = {}

    def reference():
        try:
            ref.update(mw.run(tmp_path / "ref", tmp_path / "ref.json", agn_epochs=planned_agn,
                              strategy=tf.distribute.OneDeviceStrategy("/cpu:0")))
        except BaseException as exc:  # re-raised in the test's thread
            ref["error"] = exc

    with mw.Procs(tmp_path / "logs") as procs:
        _start_workers(procs, tmp_path, "first", args)
        thread = threading.Thread(target=reference, daemon=True)
        thread.start()
        mine = tmp_path / "out1" / "agn" / "backup" / "worker-1"
        mw.wait_for(lambda: (lambda st: st and st["epoch"] >= 3 and not st["done"])(mw.latest_backup(mine)),
                    PHASE_TIMEOUT, "worker 1's backup of AGN epoch 3", procs, poll=0.05)
        procs.kill("first1")
        t_kill = time.monotonic()
        code = procs.wait("first0", STOP_TIMEOUT)
        stopped_after = time.monotonic() - t_kill
        log0 = procs.log("first0", tail=20000)
        assert code == 3, log0
        assert "multi-worker training stopped: another worker died or stopped answering" in log0, log0
        assert "Restart every worker with the same command to resume from the backup in" in log0, log0
        assert stopped_after < STOP_TIMEOUT
        backed_up = mw.latest_backup(tmp_path / "out0" / "agn" / "backup")
        assert backed_up and 3 <= backed_up["epoch"] < planned_agn

        mw.prepare_caches()  # embedded data of the studies the restarted job adds
        _start_workers(procs, tmp_path, "again", (*args, "--studies", "agn,fnet,spectra,claran"))
        for i in (0, 1):
            assert procs.wait(f"again{i}", PHASE_TIMEOUT) == 0, procs.log(f"again{i}")
            assert "resuming from the backup" in procs.log(f"again{i}", tail=200000)
        thread.join(PHASE_TIMEOUT)
    assert not thread.is_alive(), "the one-process reference did not finish"
    if "error" in ref:
        raise ref["error"]
    print(f"surviving worker stopped {stopped_after:.1f} s after its peer was killed")

    recs = [json.loads((tmp_path / f"rec{i}.json").read_text()) for i in (0, 1)]
    assert [r["strategy"]["workers"] for r in recs] == [2, 2] and [r["strategy"]["replicas"] for r in recs] == [2, 2]
    assert [r["strategy"]["chief"] for r in recs] == [True, False]
    for r in recs:  # AGN resumed from the backup, not from scratch, and made exactly the planned steps
        assert r["agn"]["iterations"] == planned_agn and r["agn"]["fold_epochs"] == planned_agn
        assert 0 < r["agn"]["epochs_run"] <= planned_agn - 3
        assert len(r["agn"]["history_loss"]) == planned_agn
    for study, planned in (("agn", planned_agn), ("fnet", 2 * 7), ("spectra", mw.SPECTRA_EPOCHS * 10), ("claran", mw.CLARAN_STEPS)):
        assert [r[study]["iterations"] for r in recs] == [planned, planned]
        assert study not in ref or ref[study]["iterations"] == planned
        w0, w1 = (_npz(tmp_path / f"rec{i}.json.{study}.npz") for i in (0, 1))
        for a, b in zip(w0, w1):
            np.testing.assert_array_equal(a, b)  # synchronous training: identical on every worker
    # only the chief writes the run folders; every backup was deleted on success
    assert (tmp_path / "out0" / "agn" / "metrics.json").is_file() and (tmp_path / "out0" / "fnet" / "history.csv").is_file()
    assert recs[0]["spectra"]["n_train"] == 153 and (tmp_path / "out0" / "spectra" / "metrics.json").is_file()
    assert (tmp_path / "out0" / "claran" / "model.keras").is_file() and recs[1]["claran"]["steps"] == mw.CLARAN_STEPS
    assert [p for p in (tmp_path / "out1").rglob("*") if p.is_file()] == []
    assert not list(tmp_path.rglob("backup"))

    # against the one-process run
    assert recs[0]["agn"]["history_loss"][0] == pytest.approx(ref["agn"]["history_loss"][0], rel=1e-4)
    assert recs[0]["fnet"]["first_loss"] == pytest.approx(ref["fnet"]["first_loss"], rel=1e-4)
    outs = _outputs(tmp_path)
    for study, tol in (("agn", 0.05), ("fnet", 0.06)):
        moved = np.abs(outs[study]["ref"] - outs[study]["init"]).max()
        diff = np.abs(outs[study]["mw"] - outs[study]["ref"]).max()
        print(f"{study}: outputs moved {moved:.4f} by training; two workers vs one process differ by {diff:.4f}")
        assert diff <= tol and diff < 0.5 * moved, (study, diff, moved)


def _outputs(tmp: Path) -> dict:
    """Outputs of the initial (same seeds everywhere), two-worker and one-process models on 256
    inputs of each study."""
    from keras_astro.models.agn import AGNConfig, build_agn_cnn
    from keras_astro.models.fnet import FNetConfig, build_fnet
    from keras_astro.pipelines.spectra import load_arrays
    from keras_astro.preprocess.photometry import MissingBandFiller
    from keras_astro.studies import agn, fnet

    phot = agn.load_labelled(None, quick=True)
    x_agn = agn.prepare_inputs(phot.values[:256], MissingBandFiller("zero").fit(phot.values))
    d = fnet.prepare_data(n=mw.FNET_N)
    x_fnet = load_arrays(d.path)[0]["fluxes"][:256]
    builds = {"agn": (build_agn_cnn(AGNConfig.preset("B", dropout=0.0)), x_agn),
              "fnet": (build_fnet(FNetConfig.preset("tiny", input_length=x_fnet.shape[1])), x_fnet)}
    out = {}
    for study, (model, x) in builds.items():
        out[study] = {}
        for tag, path in (("init", f"ref.json.{study}.init.npz"), ("mw", f"rec0.json.{study}.npz"), ("ref", f"ref.json.{study}.npz")):
            model.set_weights(_npz(tmp / path))
            out[study][tag] = np.asarray(model(x, training=False)).ravel()
    return out


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_multi_worker_free_ports_are_distinct():
    ports = mw.free_ports(4)
    assert len(set(ports)) == 4 and all(1024 < p < 65536 for p in ports)
