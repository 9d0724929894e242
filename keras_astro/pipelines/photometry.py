"""tf.data pipelines for the AGN photometry arrays (Chen et al. 2021)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def photometry_dataset(
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    cache: bool = True,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Dataset of (image, label) or image batches from in-memory arrays.

    ``x`` is (N, 44, 2, 1) float32 (already filled); ``y`` (N,) 0/1 labels. The data are cached
    after the first pass and reshuffled every epoch with a fixed seed; batches are prefetched.
    ``batch_size`` is the global batch (see :func:`keras_astro.distribute.global_batch_size`).
    """
    x = np.asarray(x, np.float32)
    if y is not None and len(y) != len(x):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    items = x if y is None else (x, np.asarray(y, np.float32).reshape(-1, 1))
    ds = tf.data.Dataset.from_tensor_slices(items)
    if cache:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(opts).prefetch(tf.data.AUTOTUNE)
