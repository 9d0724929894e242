"""tf.data pipelines that stream spectra from the HDF5 store (``data_specs/spectra_store.yaml``).

The store is read in contiguous chunks of rows, so memory stays bounded by
``chunk_rows + shuffle_buffer`` spectra whatever the file size. Chunks are the unit of sharding
(one worker of a multi-worker job reads only its chunks) and of coarse shuffling; rows are then
shuffled in a buffer, batched and prefetched.

Bad values never reach a model silently: labels and meta inputs of the selected rows are checked
when the dataset is built (a :class:`~keras_astro.io.spectra_store.StoreError` naming the store);
``fluxes`` and ``ivar`` must be finite and no input may be ±inf (NaN in other inputs, e.g. an
equivalent width that could not be measured, means "missing" to the models). Problems met while
streaming (a NaN flux, a corrupt HDF5 chunk) stop the iteration with a
``tf.errors.InvalidArgumentError`` whose message carries the ``StoreError`` and the file name.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf

from keras_astro.io.spectra_store import StoreError, open_store

__all__ = ["select_rows", "spectra_dataset", "load_arrays", "class_index"]

_ROW_DATASETS = ("fluxes", "ivar", "pixel_flags", "equivalent_widths", "and_mask")
#: Inputs that must be finite everywhere (NaN elsewhere means "missing" to the models).
_FINITE_INPUTS = ("fluxes", "ivar")


def _check_values(path: str, name: str, values: np.ndarray, rows: np.ndarray, *, allow_nan: bool) -> None:
    """Raise :class:`StoreError` if ``values`` (one per row of ``rows``) hold inf (or NaN when not allowed)."""
    if values.dtype.kind != "f":
        return
    flat = values.reshape(len(values), -1)
    bad = np.isinf(flat).any(axis=1) if allow_nan else ~np.isfinite(flat).all(axis=1)
    if bad.any():
        what = "inf" if allow_nan else "NaN or inf"
        raise StoreError(
            f"{path}: '{name}' holds {what} in {int(bad.sum())} selected row(s), e.g. rows {rows[bad][:5].tolist()}"
            + ("" if allow_nan else " (resample / preprocess the store first, or filter them with where=)")
        )


def class_index(values: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Map label strings to integer indices in ``classes``; unknown labels raise with examples."""
    lookup = {c: i for i, c in enumerate(classes)}
    vals = pd.Series(values).fillna("").astype(str).str.strip()
    vals = vals.replace({"": "NULL"}) if "NULL" in lookup else vals
    idx = vals.map(lookup)
    if idx.isna().any():
        bad = sorted(set(vals[idx.isna()]))[:5]
        raise StoreError(f"labels {bad} are not among the classes {list(classes)}")
    return idx.to_numpy(dtype=np.int64)


def select_rows(
    meta: pd.DataFrame,
    *,
    split: str | Sequence[str] | None = None,
    split_column: str = "split",
    where: Callable[[pd.DataFrame], Any] | None = None,
) -> np.ndarray:
    """Sorted row indices of a store's meta table that belong to ``split`` and satisfy ``where``."""
    keep = np.ones(len(meta), dtype=bool)
    if split is not None:
        if split_column not in meta:
            raise StoreError(f"the store has no '{split_column}' column to select split {split!r} from")
        splits = [split] if isinstance(split, str) else list(split)
        keep &= meta[split_column].astype(str).isin(splits).to_numpy()
    if where is not None:
        keep &= np.asarray(where(meta), dtype=bool)
    return np.nonzero(keep)[0]


def _labels(meta: pd.DataFrame, label: str | Callable | None, classes: Sequence[str] | None) -> np.ndarray | None:
    if label is None:
        return None
    if callable(label):
        return np.asarray(label(meta))
    if label not in meta:
        raise StoreError(f"the store's meta has no column {label!r} to use as label")
    col = meta[label]
    if classes is not None:
        return class_index(col.to_numpy(), classes)
    if col.dtype.kind in "OUS":
        raise StoreError(f"label column {label!r} holds strings: pass classes=[...] to index them")
    return col.to_numpy(dtype=np.float32)


def spectra_dataset(
    path: str | os.PathLike,
    *,
    inputs: Sequence[str] = ("fluxes",),
    label: str | Callable[[pd.DataFrame], Any] | None = None,
    classes: Sequence[str] | None = None,
    split: str | Sequence[str] | None = None,
    split_column: str = "split",
    where: Callable[[pd.DataFrame], Any] | None = None,
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    shuffle_buffer: int = 2048,
    chunk_rows: int = 512,
    num_shards: int = 1,
    shard_index: int = 0,
    channel_axis: bool = False,
    drop_remainder: bool = False,
    transform: Callable[[dict[str, np.ndarray], pd.DataFrame], dict[str, np.ndarray]] | None = None,
) -> tf.data.Dataset:
    """A batched ``tf.data.Dataset`` streamed from a spectrum store.

    Parameters
    ----------
    inputs : names of per-row datasets (``fluxes``, ``ivar``, ``equivalent_widths`` …) or meta
        columns (``z``, ``petroMag_r`` …). One name → the element is that tensor; several → a dict.
    label : a meta column (``z``, ``class``, ``subClass`` …) or a function of a meta chunk;
        string columns need ``classes`` (index order of the softmax).
    split : keep rows whose ``split_column`` equals this (or one of these) value(s).
    where : extra row filter, a function of the meta table returning a boolean mask.
    batch_size : the *global* batch (see :func:`keras_astro.distribute.global_batch_size`).
    shuffle, seed, shuffle_buffer : chunk order and rows are reshuffled each epoch, seeded.
    chunk_rows : rows read per HDF5 access; memory ≈ (chunk_rows + shuffle_buffer) spectra.
    num_shards, shard_index : read only every ``num_shards``-th chunk (file-level sharding for
        multi-worker input); with 1 shard, tf.distribute may shard by data instead.
    channel_axis : add a trailing axis of size 1 to 2-D per-row inputs (Conv1D layout).
    transform : optional numpy function applied to each chunk's arrays (e.g. normalisation).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    path = os.fspath(path)
    with open_store(path) as r:
        meta = r.meta
        n_rows = r.n_rows
        row_inputs = [name for name in inputs if name in _ROW_DATASETS]
        for name in row_inputs:
            if not r.has(name):
                raise StoreError(f"{path}: store has no '{name}' dataset")
        widths = {name: r._handles[0][name].shape[1] for name in row_inputs}
        dtypes = {name: np.float32 for name in inputs}
    meta_inputs = [name for name in inputs if name not in _ROW_DATASETS]
    for name in meta_inputs:
        if name not in meta:
            raise StoreError(f"{path}: '{name}' is neither a per-row dataset nor a meta column")
    selected = np.zeros(n_rows, dtype=bool)
    selected[select_rows(meta, split=split, split_column=split_column, where=where)] = True
    if not selected.any():
        raise StoreError(f"{path}: no rows selected (split={split!r})")
    chosen = np.flatnonzero(selected)
    meta_values: dict[str, np.ndarray] = {}
    for name in meta_inputs:
        try:
            meta_values[name] = meta[name].to_numpy(dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{path}: meta column '{name}' is not numeric ({exc}); it cannot be an input") from None
        _check_values(path, name, meta_values[name][chosen], chosen, allow_nan=True)
    labels = _labels(meta, label, classes)
    if labels is not None:
        if labels.shape != (n_rows,):
            raise StoreError(f"{path}: the labels have shape {labels.shape}, expected one per row ({n_rows},)")
        if labels.dtype.kind not in "biuf":
            raise StoreError(f"{path}: the labels are {labels.dtype}, not numbers: pass classes=[...] to index them")
        _check_values(path, "label", labels[chosen], chosen, allow_nan=False)
    starts = np.arange(0, n_rows, chunk_rows)
    starts = np.array([s for s in starts if selected[s : s + chunk_rows].any()], dtype=np.int64)
    starts = starts[shard_index::num_shards]

    def element_spec():
        spec = {}
        for name in inputs:
            shape = (widths[name],) if name in widths else ()
            if channel_axis and name in widths:
                shape = shape + (1,)
            spec[name] = tf.TensorSpec(shape=shape, dtype=tf.float32)
        x = spec[inputs[0]] if len(inputs) == 1 else spec
        if labels is None:
            return x
        y = tf.TensorSpec(shape=(), dtype=tf.int64 if labels.dtype.kind in "iu" else tf.float32)
        return x, y

    def read_chunk(start):
        start = int(start)
        stop = min(start + chunk_rows, n_rows)
        keep = np.nonzero(selected[start:stop])[0]
        with open_store(path) as rr:
            arrays = rr.read(start, stop, row_inputs) if row_inputs else {}
        chunk_meta = meta.iloc[start:stop]
        out = {name: arrays[name][keep] for name in row_inputs}
        for name in meta_inputs:
            out[name] = meta_values[name][start:stop][keep]
        if transform is not None:
            out = transform(out, chunk_meta.iloc[keep])
        for name in inputs:
            out[name] = np.asarray(out[name], dtype=dtypes[name])
            _check_values(path, name, out[name], start + keep, allow_nan=name not in _FINITE_INPUTS)
            if channel_axis and name in widths:
                out[name] = out[name][..., None]
        ys = None if labels is None else labels[start:stop][keep]
        for i in range(len(keep)):
            x = out[inputs[0]][i] if len(inputs) == 1 else {k: out[k][i] for k in inputs}
            yield x if ys is None else (x, ys[i])

    chunks = tf.data.Dataset.from_tensor_slices(starts)
    if shuffle:
        chunks = chunks.shuffle(max(1, len(starts)), seed=seed, reshuffle_each_iteration=True)
    spec = element_spec()
    ds = chunks.interleave(
        lambda s: tf.data.Dataset.from_generator(read_chunk, args=(s,), output_signature=spec),
        cycle_length=1,
    )
    if shuffle:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    n_rows_here = int(sum(selected[s : s + chunk_rows].sum() for s in starts))
    ds = ds.apply(tf.data.experimental.assert_cardinality(n_rows_here))  # known epoch length for Keras
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF if num_shards > 1 else tf.data.experimental.AutoShardPolicy.DATA
    )
    return ds.with_options(opts).prefetch(tf.data.AUTOTUNE)


def load_arrays(
    path: str | os.PathLike,
    *,
    inputs: Sequence[str] = ("fluxes",),
    label: str | Callable | None = None,
    classes: Sequence[str] | None = None,
    split: str | Sequence[str] | None = None,
    split_column: str = "split",
    where: Callable[[pd.DataFrame], Any] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray | None, pd.DataFrame]:
    """Selected rows of a (small) store in memory: ``(inputs dict, labels, meta)``."""
    from keras_astro.io.spectra_store import read_store

    with open_store(path) as r:
        meta = r.meta
    rows = select_rows(meta, split=split, split_column=split_column, where=where)
    st = read_store(path, rows=rows)
    out: dict[str, np.ndarray] = {}
    for name in inputs:
        if name in _ROW_DATASETS:
            arr = getattr(st, name)
            if arr is None:
                raise StoreError(f"{path}: store has no '{name}' dataset")
            out[name] = np.asarray(arr, dtype=np.float32)
        elif name in st.meta:
            out[name] = st.meta[name].to_numpy(dtype=np.float32)
        else:
            raise StoreError(f"{path}: '{name}' is neither a per-row dataset nor a meta column")
    return out, _labels(st.meta, label, classes), st.meta
