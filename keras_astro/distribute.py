"""Choosing a ``tf.distribute`` strategy so that the same code trains on a laptop, a multi-GPU box
or a cluster.

``get_strategy()`` picks, in order:

1. ``MultiWorkerMirroredStrategy`` when the ``TF_CONFIG`` environment variable names a cluster
   with more than one task (one process per machine, synchronous all-reduce);
2. ``MirroredStrategy`` over all local GPUs when there are two or more;
3. ``OneDeviceStrategy`` on the GPU when there is exactly one;
4. otherwise TensorFlow's default strategy (CPU).

Every training entry point of :mod:`keras_astro.studies` builds its model inside
``strategy.scope()`` and feeds a global batch of ``per_replica_batch × num_replicas``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Literal

import tensorflow as tf

log = logging.getLogger(__name__)

StrategyKind = Literal["auto", "default", "one_device", "mirrored", "multi_worker"]


def cluster_from_env() -> dict | None:
    """The ``cluster`` part of ``TF_CONFIG`` if it names more than one task, else ``None``.

    Raises
    ------
    ValueError
        If ``TF_CONFIG`` is set but is not valid JSON with a ``cluster`` and a ``task``.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    cluster = cfg.get("cluster") or {}
    if not cluster:
        return None
    if "task" not in cfg or "type" not in cfg["task"] or "index" not in cfg["task"]:
        raise ValueError("TF_CONFIG names a cluster but no task {'type': ..., 'index': ...}")
    n_tasks = sum(len(v) for v in cluster.values())
    return cluster if n_tasks > 1 else None


def get_strategy(kind: StrategyKind = "auto") -> tf.distribute.Strategy:
    """Return the distribution strategy for this process (see module docstring for ``auto``)."""
    if kind == "auto":
        if cluster_from_env() is not None:
            kind = "multi_worker"
        else:
            gpus = tf.config.list_logical_devices("GPU")
            kind = "mirrored" if len(gpus) > 1 else ("one_device" if len(gpus) == 1 else "default")
    if kind == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
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


def describe_strategy(strategy: tf.distribute.Strategy) -> dict:
    """A JSON-friendly description: class name, replica count, worker count."""
    resolver = getattr(strategy, "cluster_resolver", None)
    workers = 1
    if resolver is not None:
        try:
            workers = max(1, len(resolver.cluster_spec().as_dict().get("worker", [])))
        except Exception:  # pragma: no cover - resolver without a cluster spec
            workers = 1
    return {
        "strategy": type(strategy).__name__,
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": workers,
    }


def global_batch_size(per_replica: int, strategy: tf.distribute.Strategy | None = None) -> int:
    """Global batch = ``per_replica`` × replicas in sync (every replica sees ``per_replica``)."""
    if per_replica < 1:
        raise ValueError(f"batch size must be >= 1, got {per_replica}")
    strategy = strategy or tf.distribute.get_strategy()
    return int(per_replica) * int(strategy.num_replicas_in_sync)


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
    """True in the process that should write files (worker 0, or any single-process run)."""
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not cluster_from_env():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)


def split_cpu(n: int) -> None:
    """Expose the CPU as ``n`` logical devices (for testing Mirrored strategies without GPUs).

    Must run before TensorFlow initialises its devices.
    """
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
