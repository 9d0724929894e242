"""Choosing a ``tf.distribute`` strategy so that the same code trains on a laptop, a multi-GPU box
or a cluster, and the few rules a multi-worker job has to follow.

``get_strategy()`` picks, in order:

1. ``MultiWorkerMirroredStrategy`` when the ``TF_CONFIG`` environment variable names a cluster
   with more than one task (one process per machine, synchronous all-reduce), or when the process
   runs as one of several tasks of a Slurm job step and ``KERAS_ASTRO_SLURM=1`` (TensorFlow's
   ``SlurmClusterResolver`` then builds the cluster from ``SLURM_*`` variables);
2. ``MirroredStrategy`` over all local GPUs when there are two or more;
3. ``OneDeviceStrategy`` on the GPU when there is exactly one;
4. otherwise TensorFlow's default strategy (CPU).

Every training entry point of :mod:`keras_astro.studies` builds its model inside
``strategy.scope()`` and feeds a global batch of ``per_replica_batch × num_replicas``.

A multi-worker job obeys four rules, all handled here:

* the strategy exists before any other TensorFlow op runs (``get_strategy`` is called first by the
  CLI and the studies, and returns the same ``MultiWorkerMirroredStrategy`` on every later call);
* every worker runs the same code; only the chief (``is_chief``) writes the run folder, the
  others write into a temporary folder that is deleted (:func:`output_dir`);
* each worker keeps its own training backup (:func:`worker_backup_dir`), so restarting every
  worker with the same command resumes, with or without a shared file system;
* a worker that dies stops the others: TensorFlow's coordination service notices the missing
  heartbeats within seconds, collectives fail, and :func:`worker_failure_message` turns the error
  into a message that says what to do. ``KERAS_ASTRO_COLLECTIVE_TIMEOUT`` (seconds) also bounds
  how long a collective may wait for a worker that is alive but stuck.

Keras 3.15 cannot run ``Model.fit`` under ``MultiWorkerMirroredStrategy`` as released
(keras-team/keras#20585, tensorflow/tensorflow#72388: the symbolic build reduces a nested batch,
and logged scalars are reduced along a batch axis they do not have); :func:`get_strategy` applies
two narrow fixes when it creates that strategy (:func:`patch_keras_for_multi_worker`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

StrategyKind = Literal["auto", "default", "one_device", "mirrored", "multi_worker"]

#: Set to ``1`` to build the cluster from Slurm's variables (``srun`` with several tasks).
SLURM_ENV = "KERAS_ASTRO_SLURM"
#: First port of the Slurm cluster's gRPC servers (one port per task on a node); default 8888.
SLURM_PORT_ENV = "KERAS_ASTRO_SLURM_PORT"
#: Seconds a collective may wait for the other workers before the job fails (0 or unset: 1800).
TIMEOUT_ENV = "KERAS_ASTRO_COLLECTIVE_TIMEOUT"
DEFAULT_COLLECTIVE_TIMEOUT = 1800.0

_JOB_TYPES = ("chief", "worker", "evaluator", "ps")
_MULTI_WORKER: tf.distribute.Strategy | None = None


# ----------------------------------------------------------------------------- TF_CONFIG
def parse_tf_config(raw: str | None = None) -> dict | None:
    """The validated ``TF_CONFIG`` (from ``raw`` or the environment), or ``None`` when unset.

    Raises
    ------
    ValueError
        Naming the key that is wrong: not JSON, ``cluster`` not a mapping of job names to
        ``"host:port"`` lists, ``task`` missing or without ``type``/``index``, an index outside its
        job, or a parameter-server job (``ps``), which this package does not use.
    """
    raw = os.environ.get("TF_CONFIG", "") if raw is None else raw
    raw = raw.strip()
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object with 'cluster' and 'task', got {type(cfg).__name__}")
    cluster = cfg.get("cluster") or {}
    if not isinstance(cluster, dict):
        raise ValueError(f"TF_CONFIG['cluster'] must map job names to lists of 'host:port', got {cluster!r}")
    for job, addresses in cluster.items():
        if job not in _JOB_TYPES:
            raise ValueError(f"TF_CONFIG['cluster'] has an unknown job {job!r}; expected some of {list(_JOB_TYPES)}")
        if isinstance(addresses, str) or not isinstance(addresses, (list, tuple)) or not addresses:
            raise ValueError(f"TF_CONFIG['cluster']['{job}'] must be a non-empty list of 'host:port', got {addresses!r}")
        for i, addr in enumerate(addresses):
            host, sep, port = str(addr).rpartition(":")
            if not isinstance(addr, str) or not sep or not host or not port.isdigit():
                raise ValueError(f"TF_CONFIG['cluster']['{job}'][{i}] = {addr!r} is not 'host:port'")
    if "ps" in cluster:
        raise ValueError(
            "TF_CONFIG['cluster'] lists parameter servers ('ps'): keras-astro trains with "
            "MultiWorkerMirroredStrategy, which needs only 'worker' (and optionally one 'chief') tasks"
        )
    if not cluster:
        return cfg
    task = cfg.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError("TF_CONFIG names a cluster but no task {'type': ..., 'index': ...} (key 'task')")
    if task["type"] not in cluster:
        raise ValueError(f"TF_CONFIG['task']['type'] = {task['type']!r} is not a job of the cluster {sorted(cluster)}")
    index = task["index"]
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError(
            f"TF_CONFIG['task']['index'] = {index!r} is not an index into "
            f"TF_CONFIG['cluster']['{task['type']}'] ({len(cluster[task['type']])} addresses)"
        )
    if len(cluster.get("chief", [])) > 1:
        raise ValueError(f"TF_CONFIG['cluster']['chief'] lists {len(cluster['chief'])} addresses; at most one chief")
    return cfg


def cluster_from_env() -> dict | None:
    """The ``cluster`` part of ``TF_CONFIG`` if it names more than one task, else ``None``.

    Raises
    ------
    ValueError
        If ``TF_CONFIG`` is set but malformed (see :func:`parse_tf_config`).
    """
    cfg = parse_tf_config()
    if not cfg or not cfg.get("cluster"):
        return None
    cluster = cfg["cluster"]
    n_tasks = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    return cluster if n_tasks > 1 else None


# ---------------------------------------------------------------------------------- Slurm
def slurm_num_tasks() -> int:
    """Tasks of the current Slurm job step (``SLURM_STEP_NUM_TASKS`` or ``SLURM_NTASKS``), 0 outside Slurm."""
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a number of tasks") from None
    return 0


def use_slurm() -> bool:
    """True when ``KERAS_ASTRO_SLURM=1`` and the Slurm job step has more than one task."""
    return os.environ.get(SLURM_ENV, "").strip().lower() in ("1", "true", "yes") and slurm_num_tasks() > 1


def slurm_cluster_resolver() -> tf.distribute.cluster_resolver.SlurmClusterResolver:
    """TensorFlow's Slurm resolver for this task, with settings that also work on CPU-only nodes.

    GPUs per node come from ``CUDA_VISIBLE_DEVICES`` or ``SLURM_GPUS_ON_NODE`` (no ``nvidia-smi``
    call); without GPUs each task is a CPU worker. Ports start at ``KERAS_ASTRO_SLURM_PORT``
    (default 8888) on every node.

    Raises
    ------
    ValueError
        If a Slurm variable the resolver needs is missing or malformed (named in the message).
    """
    for name in ("SLURM_PROCID", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE"):
        if not os.environ.get(name, "").strip():
            raise ValueError(f"{SLURM_ENV}=1 but {name} is not set: start the workers with `srun`, one task per worker")
    try:
        port = int(os.environ.get(SLURM_PORT_ENV, "8888"))
    except ValueError:
        raise ValueError(f"{SLURM_PORT_ENV}={os.environ[SLURM_PORT_ENV]!r} is not a port number") from None
    gpus = 0
    if os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        gpus = len([d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip()])
    elif os.environ.get("SLURM_GPUS_ON_NODE", "").strip().isdigit():
        gpus = int(os.environ["SLURM_GPUS_ON_NODE"])
    SlurmClusterResolver = tf.distribute.cluster_resolver.SlurmClusterResolver
    try:
        if gpus:
            return SlurmClusterResolver(port_base=port, gpus_per_node=gpus)
        # CPU nodes: TF assigns "GPU slots" to tasks; give every task one slot and set nothing.
        probe = SlurmClusterResolver(port_base=port, gpus_per_node=1024, gpus_per_task=1, auto_set_gpu=False)
        per_node = max(probe._task_configuration.values())  # noqa: SLF001 - the resolver's own parse
        return SlurmClusterResolver(port_base=port, gpus_per_node=per_node, gpus_per_task=1, auto_set_gpu=False)
    except RuntimeError as exc:
        raise ValueError(f"cannot build the Slurm cluster: {exc}") from None


# ------------------------------------------------------------------------------- strategy
def select_kind() -> StrategyKind:
    """The strategy ``get_strategy("auto")`` would create, without creating it."""
    if cluster_from_env() is not None or use_slurm():
        return "multi_worker"
    gpus = tf.config.list_physical_devices("GPU")
    return "mirrored" if len(gpus) > 1 else ("one_device" if len(gpus) == 1 else "default")


def collective_timeout() -> float | None:
    """Seconds a collective may wait (``KERAS_ASTRO_COLLECTIVE_TIMEOUT``; default 1800, ``0``/``none``: no limit)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip().lower()
    if not raw:
        return DEFAULT_COLLECTIVE_TIMEOUT
    if raw in ("0", "none", "off"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if value < 0:
        raise ValueError(f"{TIMEOUT_ENV} must be >= 0 seconds, got {value}")
    return value


def multi_worker_strategy(*, timeout_seconds: float | None = None) -> tf.distribute.MultiWorkerMirroredStrategy:
    """The process's ``MultiWorkerMirroredStrategy`` (created once, then reused).

    The cluster comes from Slurm when :func:`use_slurm` is true, else from ``TF_CONFIG``.
    ``timeout_seconds`` bounds every collective (default :func:`collective_timeout`).
    """
    global _MULTI_WORKER
    if _MULTI_WORKER is not None:
        return _MULTI_WORKER
    resolver = slurm_cluster_resolver() if use_slurm() else None
    if resolver is None:
        parse_tf_config()  # clear errors before TensorFlow's own parser sees it
    timeout = collective_timeout() if timeout_seconds is None else (timeout_seconds or None)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver, communication_options=options)
    except RuntimeError as exc:
        if "configured at program startup" in str(exc) or "already been initialized" in str(exc):
            raise RuntimeError(
                "MultiWorkerMirroredStrategy must be created before any other TensorFlow op runs; "
                "call keras_astro.distribute.get_strategy() first in the program"
            ) from exc
        raise
    patch_keras_for_multi_worker()
    _MULTI_WORKER = strategy
    return strategy


def get_strategy(kind: StrategyKind = "auto", *, timeout_seconds: float | None = None) -> tf.distribute.Strategy:
    """Return the distribution strategy for this process (see module docstring for ``auto``)."""
    if kind == "auto":
        kind = "multi_worker" if _MULTI_WORKER is not None else select_kind()
    if kind == "multi_worker":
        strategy = multi_worker_strategy(timeout_seconds=timeout_seconds)
    elif kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    elif kind == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        strategy = tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    elif kind == "default":
        strategy = tf.distribute.get_strategy()
    else:
        raise ValueError(f"unknown strategy kind {kind!r}; expected auto, default, one_device, mirrored or multi_worker")
    log.info("distribution strategy: %s", describe_strategy(strategy))
    return strategy


def worker_info(strategy: tf.distribute.Strategy | None = None) -> tuple[int, int]:
    """``(number of workers, this worker's index)``; the chief (if any) is worker 0, as in
    ``tf.distribute.InputContext.input_pipeline_id``."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return 1, 0
    try:
        spec = resolver.cluster_spec().as_dict()
    except Exception:  # pragma: no cover - resolver without a cluster spec
        return 1, 0
    chiefs, workers = len(spec.get("chief", [])), len(spec.get("worker", []))
    if chiefs + workers <= 1:
        return 1, 0
    if resolver.task_type == "chief":
        return chiefs + workers, 0
    if resolver.task_type == "worker":
        return chiefs + workers, chiefs + int(resolver.task_id)
    return chiefs + workers, -1  # evaluator: not part of the training group


def describe_strategy(strategy: tf.distribute.Strategy) -> dict:
    """A JSON-friendly description: class name, replicas, workers, this task and whether it is chief."""
    workers, index = worker_info(strategy)
    resolver = getattr(strategy, "cluster_resolver", None)
    task = None
    if resolver is not None and getattr(resolver, "task_type", None) is not None:
        task = f"{resolver.task_type}:{resolver.task_id}"
    return {
        "strategy": type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": workers,
        "worker_index": index,
        "task": task,
        "chief": is_chief(strategy),
    }


def planned_strategy() -> dict:
    """What :func:`get_strategy` would create here, described without creating it.

    A ``MultiWorkerMirroredStrategy`` joins its cluster when created and waits for every other
    worker, so ``keras-astro info`` describes the cluster from ``TF_CONFIG`` (or Slurm) instead:
    ``{"strategy", "workers", "worker_index", "task", "chief", "joined": False}``. For the other
    kinds the strategy is cheap and is created and described (``"joined": True``).
    """
    kind = select_kind()
    if kind != "multi_worker":
        return {**describe_strategy(get_strategy(kind)), "joined": True}
    if use_slurm():
        n, index = slurm_num_tasks(), int(os.environ.get("SLURM_PROCID", "0") or 0)
        return {"strategy": "MultiWorkerMirroredStrategy", "workers": n, "worker_index": index,
                "task": f"worker:{index}", "chief": index == 0, "source": "slurm", "joined": False}
    cfg = parse_tf_config() or {}
    cluster, task = cfg.get("cluster", {}), cfg.get("task", {})
    chiefs, workers = len(cluster.get("chief", [])), len(cluster.get("worker", []))
    ttype, tid = task.get("type"), int(task.get("index", 0))
    index = 0 if ttype == "chief" else (chiefs + tid if ttype == "worker" else -1)
    chief = ttype == "chief" or (chiefs == 0 and ttype == "worker" and tid == 0)
    return {"strategy": "MultiWorkerMirroredStrategy", "workers": chiefs + workers, "worker_index": index,
            "task": f"{ttype}:{tid}" if ttype else None, "chief": chief, "source": "TF_CONFIG", "joined": False}


def global_batch_size(per_replica: int, strategy: tf.distribute.Strategy | None = None) -> int:
    """Global batch = ``per_replica`` × replicas in sync (every replica sees ``per_replica``)."""
    if per_replica < 1:
        raise ValueError(f"batch size must be >= 1, got {per_replica}")
    strategy = strategy or tf.distribute.get_strategy()
    return int(per_replica) * int(strategy.num_replicas_in_sync)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True in the process that should write files: the ``chief`` task, else worker 0, or any
    single-process run."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return True
    workers, index = worker_info(strategy)
    return workers <= 1 or index == 0


# ------------------------------------------------------------------------- files per worker
def output_dir(out: str | os.PathLike, strategy: tf.distribute.Strategy | None = None) -> Path:
    """The folder this process writes the run's outputs to: ``out`` on the chief; on every other
    worker a new temporary folder, removed at exit (the TF multi-worker recipe: all workers execute
    the same saves, only the chief's survive)."""
    out = Path(out)
    if is_chief(strategy):
        out.mkdir(parents=True, exist_ok=True)
        return out
    _, index = worker_info(strategy)
    tmp = Path(tempfile.mkdtemp(prefix=f"keras_astro_worker{index}_"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    return tmp


def discard_output_dir(path: str | os.PathLike, out: str | os.PathLike) -> None:
    """Remove a non-chief's temporary output folder (``path`` returned by :func:`output_dir` for ``out``)."""
    if Path(path).resolve() != Path(out).resolve():
        shutil.rmtree(path, ignore_errors=True)


def worker_backup_dir(backup_dir: str | os.PathLike, strategy: tf.distribute.Strategy | None = None) -> Path:
    """This worker's training-backup folder: ``backup_dir`` on the chief, ``backup_dir/worker-<i>``
    on worker ``i``. Every worker keeps its own copy, so resuming needs no shared file system."""
    backup_dir = Path(backup_dir)
    if is_chief(strategy):
        return backup_dir
    return backup_dir / f"worker-{worker_info(strategy)[1]}"


def remove_backup(backup_dir: str | os.PathLike, strategy: tf.distribute.Strategy | None = None) -> None:
    """Delete the training backup after a successful run: the chief removes the whole folder,
    another worker its own ``worker-<i>`` folders under it (and folders left empty)."""
    backup_dir = Path(backup_dir)
    if is_chief(strategy):
        shutil.rmtree(backup_dir, ignore_errors=True)
    elif backup_dir.is_dir():
        name = f"worker-{worker_info(strategy)[1]}"
        for p in sorted(backup_dir.rglob(name), key=lambda q: len(q.parts), reverse=True):
            shutil.rmtree(p, ignore_errors=True)
        for p in sorted((q for q in backup_dir.rglob("*") if q.is_dir()), key=lambda q: len(q.parts), reverse=True):
            try:
                p.rmdir()
            except OSError:
                pass
        try:
            backup_dir.rmdir()
        except OSError:
            pass
    log.info("removed the training backup in %s", backup_dir)


# ------------------------------------------------------------------------------ input data
@dataclass(frozen=True)
class InputSharding:
    """How one worker reads a store.

    Attributes
    ----------
    policy
        ``"file"``: each worker reads only its own shard files (``rows`` are this worker's rows,
        ``steps`` the step count every worker can make); ``"data"``: every worker reads the whole
        selection and keeps its slice of each global batch (tf.data ``AutoShardPolicy.DATA``);
        ``"none"``: a single worker.
    num_workers, worker_index
        From :func:`worker_info`.
    global_batch
        Samples per training step over all replicas.
    per_worker_batch
        Samples per step on this worker (``global_batch / num_workers``).
    rows
        File-level only: sorted store rows of this worker's files that are selected.
    steps
        File-level only: steps per epoch, equal on every worker (the smallest worker's share).
    """

    policy: Literal["file", "data", "none"]
    num_workers: int
    worker_index: int
    global_batch: int
    per_worker_batch: int
    rows: np.ndarray | None = None
    steps: int | None = None


def plan_input_sharding(
    store: str | os.PathLike,
    selected: np.ndarray,
    *,
    global_batch: int,
    num_workers: int,
    worker_index: int,
) -> InputSharding:
    """Decide file- or data-level sharding of the selected rows of a spectrum store.

    File-level when the store is a folder of at least ``num_workers`` shard files
    (:func:`keras_astro.io.spectra_store.shard_paths`): worker ``i`` reads files ``i, i + W, …``
    and all workers make the same number of full steps. Data-level otherwise.

    Parameters
    ----------
    store
        Store file or shard folder.
    selected
        Boolean mask over the store's rows (the training split).
    global_batch
        Global batch size (samples per step over all replicas).
    num_workers, worker_index
        This worker's place in the cluster (:func:`worker_info`).
    """
    from keras_astro.io.spectra_store import open_store, shard_paths

    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}")
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index {worker_index} is not in [0, {num_workers})")
    if num_workers == 1:
        return InputSharding("none", 1, 0, global_batch, global_batch)
    if global_batch % num_workers:
        raise ValueError(f"the global batch {global_batch} does not split evenly over {num_workers} workers")
    per_worker = global_batch // num_workers
    files = shard_paths(store) if Path(store).is_dir() else []
    if len(files) < num_workers:
        return InputSharding("data", num_workers, worker_index, global_batch, per_worker)
    with open_store(store) as reader:
        offsets = np.asarray(reader.offsets)
    selected = np.asarray(selected, bool)
    if selected.shape != (int(offsets[-1]),):
        raise ValueError(f"{store}: the selection has {selected.shape[0]} rows, the store {int(offsets[-1])}")
    counts, mine = [], None
    for w in range(num_workers):
        rows = np.concatenate([np.arange(offsets[f], offsets[f + 1]) for f in range(w, len(files), num_workers)])
        rows = rows[selected[rows]]
        counts.append(rows.size)
        if w == worker_index:
            mine = np.sort(rows)
    steps = min(counts) // per_worker
    if steps < 1:
        raise ValueError(
            f"{store}: the smallest worker's share holds {min(counts)} selected rows, fewer than one "
            f"per-worker batch of {per_worker}; use fewer workers or a smaller batch"
        )
    return InputSharding("file", num_workers, worker_index, global_batch, per_worker, rows=mine, steps=steps)


def shard_dataset(dataset: tf.data.Dataset, policy: Literal["file", "data", "none"]) -> tf.data.Dataset:
    """Set how ``tf.distribute`` shards ``dataset`` over workers: ``"data"`` →
    ``AutoShardPolicy.DATA`` (each worker keeps its slice of every global batch); ``"file"`` or
    ``"none"`` → ``OFF`` (the dataset already holds only this worker's files)."""
    opts = tf.data.Options()
    policies = {"data": tf.data.experimental.AutoShardPolicy.DATA, "file": tf.data.experimental.AutoShardPolicy.OFF, "none": tf.data.experimental.AutoShardPolicy.OFF}
    if policy not in policies:
        raise ValueError(f"unknown sharding policy {policy!r}; expected 'file', 'data' or 'none'")
    opts.experimental_distribute.auto_shard_policy = policies[policy]
    return dataset.with_options(opts)


def distribute_per_worker(
    strategy: tf.distribute.Strategy, make_dataset, *, per_worker_batch: int
) -> tf.distribute.DistributedDataset:
    """A distributed dataset whose per-replica batches come from ``make_dataset(batch_size)``, built
    once per worker (file-level input: no re-batching or auto-sharding by ``tf.distribute``)."""

    def fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = per_worker_batch // max(1, ctx.num_replicas_in_sync // ctx.num_input_pipelines)
        return shard_dataset(make_dataset(per_replica), "file")

    return strategy.distribute_datasets_from_function(fn)


# ------------------------------------------------------------------------------- models
def synchronize_batch_norm(model: Any, strategy: tf.distribute.Strategy | None = None) -> Any:
    """Prepare a model for data-parallel training with more than one replica, so that it computes
    what one device would with the same global batch. A no-op for one replica. Returns ``model``.

    * every ``BatchNormalization`` layer normalises with the statistics of the *global* batch
      (``synchronized=True``), which also keeps the moving statistics identical on all workers;
    * gradient clipping and batch statistics follow one device (:func:`patch_keras_for_replicas`).
    """
    import keras

    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync <= 1:
        return model
    patch_keras_for_replicas()
    n = 0
    for layer in model._flatten_layers(include_self=False):  # noqa: SLF001 - Keras' layer walk
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            n += 1
    log.info("synchronised %d batch-normalisation layers over %d replicas", n, strategy.num_replicas_in_sync)
    return model


def local_copy(model: Any, strategy: tf.distribute.Strategy | None = None) -> Any:
    """After multi-worker training: the trained model rebuilt outside the strategy, with the same
    weights, for predictions, saving and export on each worker without collectives (a worker's
    slice of a small last batch may be empty, which some layers cannot take). Batch normalisation
    is un-synchronised again. Returns ``model`` itself for a single worker."""
    import keras

    strategy = strategy or getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    if worker_info(strategy)[0] <= 1:
        return model
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy._flatten_layers(include_self=False):  # noqa: SLF001 - Keras' layer walk
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = False
    return copy


# ------------------------------------------------------------------------------ failures
_WORKER_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)


def is_worker_failure(exc: BaseException) -> bool:
    """True for the errors collectives raise when another worker died or stopped answering."""
    if isinstance(exc, _WORKER_FAILURES):
        return True
    text = str(exc)
    return isinstance(exc, tf.errors.OpError) and ("Collective ops is aborted" in text or "unhealthy" in text)


def worker_failure_message(exc: BaseException, backup_dir: str | os.PathLike | None = None) -> str:
    """A short explanation of a collective failure and how to resume."""
    first = str(exc).strip().splitlines()
    detail = next((line for line in first if "unhealthy" in line or "aborted" in line.lower()), first[0] if first else "")
    where = f" from the backup in {backup_dir}" if backup_dir else " from the last backup"
    return (
        f"multi-worker training stopped: another worker died or stopped answering ({type(exc).__name__}: "
        f"{detail.strip()[:300]}). Restart every worker with the same command to resume{where}."
    )


class WorkerLostError(RuntimeError):
    """Raised by the studies when a collective fails because another worker is gone."""


@contextlib.contextmanager
def worker_failures(backup_dir: str | os.PathLike | None = None) -> Iterator[None]:
    """Turn a collective failure caused by a lost worker into :class:`WorkerLostError` with a
    message that says how to resume; other errors pass unchanged."""
    try:
        yield
    except Exception as exc:
        if is_worker_failure(exc):
            raise WorkerLostError(worker_failure_message(exc, backup_dir)) from exc
        raise


# ------------------------------------------------------------------------- keras fixes
def patch_keras_for_multi_worker() -> bool:
    """Make Keras 3's TensorFlow trainer work under ``MultiWorkerMirroredStrategy``.

    Two narrow fixes, applied once (keras-team/keras#20585):

    * the symbolic build of ``fit``/``evaluate``/``predict`` takes the shapes from this worker's
      first replica batch instead of all-reducing the nested batch (which raises);
    * logged scalars of a train/test step are averaged over replicas with ``axis=None`` instead of
      ``axis=0`` (which raises for 0-d values).

    Returns ``True`` if the trainer was patched (now or before).
    """
    try:
        from keras.src import tree
        from keras.src.backend.tensorflow import trainer as tf_trainer
    except ImportError:  # pragma: no cover - other Keras layouts
        log.warning("keras internals moved; Model.fit under MultiWorkerMirroredStrategy may fail")
        return False
    Trainer = tf_trainer.TensorFlowTrainer
    if getattr(Trainer, "_keras_astro_multi_worker", False):
        return True
    if not hasattr(Trainer, "_maybe_symbolic_build") or not hasattr(tf_trainer, "reduce_per_replica"):
        log.warning("keras internals moved; Model.fit under MultiWorkerMirroredStrategy may fail")
        return False

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda v: self.distribute_strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues)
                    else v,
                    batch,
                )
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):  # noqa: SLF001
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    Trainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    Trainer._keras_astro_multi_worker = True
    return True


def patch_keras_for_replicas() -> bool:
    """Make Keras 3.15 compute, with several replicas, what one device computes on the global batch.

    Two narrow fixes of the TensorFlow backend, applied once:

    * **gradient clipping** (``clipnorm``, ``global_clipnorm``, ``clipvalue``) acts on the
      all-reduced gradient. Keras clips before it sums the replicas' gradients, so with R replicas a
      global-norm threshold acts like R × the threshold on differently scaled pieces (FNet clips at
      norm 1, Sec 3.2). Patched, a replica first all-reduces its gradients, clips the sum and hands
      Keras ``clipped / R`` for its own all-reduce, which then yields exactly the clipped global
      gradient (one extra all-reduce per step, only when clipping is on);
    * **synchronised batch statistics** are computed in two passes like ``tf.nn.moments`` (global
      mean, then the mean squared deviation from it) instead of ``E[x²] − E[x]²``, which loses
      digits in float32 when a feature's mean is large against its spread (magnitudes ≈ 20 mag
      with errors ≈ 0.1 in the AGN input) and made two workers differ from one device by several
      per cent after a few steps. One more all-reduce per batch-normalisation layer and step.

    Returns ``True`` once patched.
    """
    try:
        from keras.src.backend.tensorflow import nn as tf_nn
        from keras.src.optimizers import base_optimizer
    except ImportError:  # pragma: no cover - other Keras layouts
        log.warning("keras internals moved; multi-replica clipping and batch statistics are Keras' own")
        return False
    Base = base_optimizer.BaseOptimizer
    if getattr(Base, "_keras_astro_replicas", False):
        return True
    original_clip = Base._clip_gradients

    def _clip_gradients(self, grads):
        clipping = any((getattr(self, name, None) or 0) > 0 for name in ("clipnorm", "global_clipnorm", "clipvalue"))
        ctx = tf.distribute.get_replica_context() if clipping else None
        if ctx is None or ctx.num_replicas_in_sync <= 1:
            return original_clip(self, grads)
        present = [i for i, g in enumerate(grads) if g is not None]
        summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in present])
        clipped = original_clip(self, list(summed))
        out = list(grads)
        for i, g in zip(present, clipped):
            out[i] = g / ctx.num_replicas_in_sync
        return out

    def _compute_moments_sync(x, axes, keepdims):
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync <= 1:
            return tf.nn.moments(x, axes, keepdims=keepdims)
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.ones_like(x), axis=axes, keepdims=True))
        total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(x, axis=axes, keepdims=True))
        mean = tf.math.divide_no_nan(total, count)
        squares = tf.reduce_sum(tf.math.squared_difference(x, tf.stop_gradient(mean)), axis=axes, keepdims=True)
        variance = tf.math.divide_no_nan(ctx.all_reduce(tf.distribute.ReduceOp.SUM, squares), count)
        if not keepdims:
            mean, variance = tf.squeeze(mean, axes), tf.squeeze(variance, axes)
        return mean, variance

    Base._clip_gradients = _clip_gradients
    tf_nn._compute_moments_sync = _compute_moments_sync
    Base._keras_astro_replicas = True
    return True


def split_cpu(n: int) -> None:
    """Expose the CPU as ``n`` logical devices (for testing Mirrored strategies without GPUs).

    Must run before TensorFlow initialises its devices.
    """
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
