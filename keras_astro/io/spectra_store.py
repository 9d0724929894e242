"""The HDF5 spectrum store: one layout for raw downloads, simulated data and preprocessed spectra.

Layout (documented in ``data_specs/spectra_store.yaml``)::

    /fluxes        float32 (N, M), chunked by rows
    /ivar          float32 (N, M)
    /and_mask      int32   (N, M)   optional (raw stores)
    /pixel_flags   uint8   (N, M)   optional (preprocessed: 1 = interpolated / extrapolated)
    /equivalent_widths float32 (N, L) optional (preprocessed: thesis Eq. 1)
    /wavelengths   float64 (M,)     vacuum Å
    /meta/<column> one 1-D dataset per column (specObjID, plate, mjd, fiberid, ra, dec, z, ...)

A *store* is one ``.h5`` file or a directory of shards (``shard-00000.h5`` …) with that layout
and the same grid; readers see a directory as the concatenation of its shards. Every write is
atomic (temporary file, then ``os.replace``), so a killed writer never leaves a half file behind
under the final name.

Integrity: every dataset carries HDF5's Fletcher-32 checksum per chunk and the root attribute
``n_rows`` records the row count, so a truncated or byte-corrupted store fails to open or to read
with a :class:`StoreError` naming the file instead of yielding different numbers. (Stores written
by other tools without checksums are read as before; corruption of their raw data bytes cannot
be detected.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd

from keras_astro import specs

log = logging.getLogger(__name__)

__all__ = [
    "StoreError",
    "meta_schema",
    "required_meta_columns",
    "StoreWriter",
    "write_store",
    "append_shard",
    "shard_paths",
    "open_store",
    "StoreReader",
    "read_store",
    "read_meta",
    "store_spec_ids",
    "SpectraStore",
]

_SHARD_RE = re.compile(r"^shard-(\d{5,})\.h5$")
#: What h5py/HDF5 raise for unreadable, truncated or corrupt files (wrapped as StoreError).
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError)
_ROW_ARRAYS = ("fluxes", "ivar", "and_mask", "pixel_flags", "equivalent_widths")


class StoreError(ValueError):
    """A spectrum store is missing, malformed, or was given inconsistent data.

    The message names the file and the problem.
    """


def _layout() -> dict[str, Any]:
    return specs.load_spec("spectra_store")


def meta_schema() -> dict[str, np.dtype]:
    """Column name → numpy dtype of the store's ``meta`` table (``spectra_store.yaml``)."""
    return {name: np.dtype(d["dtype"]) for name, d in _layout()["meta"].items()}


def required_meta_columns() -> list[str]:
    """The meta columns every store must carry."""
    return [name for name, d in _layout()["meta"].items() if not d.get("optional", False)]


def _as_meta_columns(meta: Mapping[str, Any] | pd.DataFrame, n: int, where: str) -> dict[str, np.ndarray]:
    """Validate and convert a meta mapping/DataFrame to arrays with the layout's dtypes."""
    if isinstance(meta, pd.DataFrame):
        meta = {c: meta[c].to_numpy() for c in meta.columns}
    schema = meta_schema()
    missing = [c for c in required_meta_columns() if c not in meta]
    if missing:
        raise StoreError(f"{where}: meta lacks required column(s) {missing} (data_specs/spectra_store.yaml)")
    out: dict[str, np.ndarray] = {}
    for name, values in meta.items():
        arr = np.asarray(values)
        if arr.ndim != 1 or len(arr) != n:
            raise StoreError(f"{where}: meta column {name!r} has shape {arr.shape}, expected ({n},)")
        dtype = schema.get(name)
        if dtype is None:
            # extra columns are kept with their own dtype; strings become fixed-width bytes
            if arr.dtype.kind in "OU":
                arr = np.char.encode(arr.astype(str), "ascii")
            out[name] = arr
            continue
        if dtype.kind == "S":
            if arr.dtype.kind in "OU":
                arr = np.char.encode(arr.astype(str), "ascii")
            too_long = np.char.str_len(arr) > dtype.itemsize if arr.size else np.zeros(0, bool)
            if np.any(too_long):
                raise StoreError(
                    f"{where}: meta column {name!r} holds values longer than {dtype.itemsize} characters, "
                    f"e.g. {arr[too_long][0]!r}"
                )
            out[name] = arr.astype(dtype)
        else:
            try:
                out[name] = arr.astype(dtype)
            except (TypeError, ValueError) as exc:
                raise StoreError(f"{where}: meta column {name!r} cannot be stored as {dtype}: {exc}") from None
    ids = out["specObjID"]
    if len(np.unique(ids)) != len(ids):
        dup = pd.Series(ids).duplicated(keep=False)
        raise StoreError(f"{where}: specObjID repeated within the data: {np.unique(ids[dup.to_numpy()])[:5].tolist()}")
    return out


def _check_rows(name: str, arr: np.ndarray | None, n: int, m: int | None, where: str) -> None:
    if arr is None:
        return
    if arr.ndim != 2 or arr.shape[0] != n or (m is not None and arr.shape[1] != m):
        want = f"({n}, {m})" if m is not None else f"({n}, L)"
        raise StoreError(f"{where}: {name} has shape {arr.shape}, expected {want}")


class StoreWriter:
    """Stream rows into a new store file; atomic (temp file renamed on a clean exit).

    Parameters
    ----------
    path : path-like
        Final file name. An existing file is replaced only when the writer closes cleanly.
    wavelengths : array (M,)
        Pixel-centre wavelengths in vacuum Å.
    attrs : mapping, optional
        Root attributes (``grid``, ``seed``, ``creator`` …); ``layout_version`` is added.
    with_and_mask, with_pixel_flags : bool
        Create the optional per-pixel datasets.
    n_lines : int, optional
        Create ``equivalent_widths`` with this many columns.
    chunk_rows : int
        HDF5 chunk height.

    Examples
    --------
    >>> with StoreWriter("s.h5", wavelengths) as w:          # doctest: +SKIP
    ...     w.append(fluxes=f, ivar=iv, meta=meta)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        wavelengths: np.ndarray,
        *,
        attrs: Mapping[str, Any] | None = None,
        with_and_mask: bool = False,
        with_pixel_flags: bool = False,
        n_lines: int | None = None,
        chunk_rows: int = 256,
    ) -> None:
        self.path = Path(path)
        self.wavelengths = np.asarray(wavelengths, dtype=np.float64)
        if self.wavelengths.ndim != 1 or self.wavelengths.size < 2:
            raise StoreError(
                f"{self.path}: wavelengths must be 1-D with at least 2 pixels, got {self.wavelengths.shape}"
            )
        if not np.all(np.isfinite(self.wavelengths)) or np.any(np.diff(self.wavelengths) <= 0):
            raise StoreError(f"{self.path}: wavelengths must be finite and strictly increasing")
        self.attrs = dict(attrs or {})
        self.with_and_mask = with_and_mask
        self.with_pixel_flags = with_pixel_flags
        self.n_lines = n_lines
        self.chunk_rows = int(chunk_rows)
        self.n_rows = 0
        self._ids: set[int] = set()
        self._file: h5py.File | None = None
        self._tmp: Path | None = None
        self._meta_names: list[str] | None = None

    # -- context manager -----------------------------------------------------------------------
    def __enter__(self) -> "StoreWriter":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._tmp = Path(tmp)
        # h5py's default (earliest) file format on purpose: with the 1.10 format's checksummed
        # metadata, byte-corrupted files crashed libhdf5 1.14 in the bad-input sweep
        # (tests/fuzz); the earliest format plus Fletcher-32 on every dataset did not.
        self._file = h5py.File(self._tmp, "w")
        m = self.wavelengths.size
        f = self._file
        rows = min(self.chunk_rows, 256)

        def make(name: str, dtype: str, width: int, fill: float = 0) -> None:
            f.create_dataset(
                name,
                shape=(0, width),
                maxshape=(None, width),
                dtype=dtype,
                chunks=(rows, width),
                fillvalue=fill,
                fletcher32=True,
            )

        make("fluxes", "float32", m)
        make("ivar", "float32", m)
        if self.with_and_mask:
            make("and_mask", "int32", m)
        if self.with_pixel_flags:
            make("pixel_flags", "uint8", m)
        if self.n_lines:
            make("equivalent_widths", "float32", int(self.n_lines), np.nan)
        wl = f.create_dataset("wavelengths", data=self.wavelengths, chunks=self.wavelengths.shape, fletcher32=True)
        wl.attrs["unit"] = "Angstrom (vacuum)"
        f.create_group("meta")
        f.attrs["layout_version"] = int(_layout()["layout_version"])
        for k, v in self.attrs.items():
            f.attrs[k] = v

    def append(
        self,
        *,
        fluxes: np.ndarray,
        ivar: np.ndarray,
        meta: Mapping[str, Any] | pd.DataFrame,
        and_mask: np.ndarray | None = None,
        pixel_flags: np.ndarray | None = None,
        equivalent_widths: np.ndarray | None = None,
    ) -> None:
        """Append ``n`` rows; arrays are (n, M), meta columns (n,)."""
        if self._file is None:
            raise StoreError(f"{self.path}: writer is not open (use it as a context manager)")
        where = str(self.path)
        fluxes = np.asarray(fluxes, dtype=np.float32)
        ivar = np.asarray(ivar, dtype=np.float32)
        n, m = fluxes.shape[0], self.wavelengths.size
        _check_rows("fluxes", fluxes, n, m, where)
        _check_rows("ivar", ivar, n, m, where)
        extras = {"and_mask": and_mask, "pixel_flags": pixel_flags, "equivalent_widths": equivalent_widths}
        for name, arr in extras.items():
            present = name in self._file
            if arr is None and present:
                raise StoreError(f"{where}: this store has {name}; append() needs it too")
            if arr is not None and not present:
                raise StoreError(f"{where}: {name} given but the writer was opened without it")
            if arr is not None:
                _check_rows(name, np.asarray(arr), n, m if name != "equivalent_widths" else self.n_lines, where)
        if n == 0:
            return
        cols = _as_meta_columns(meta, n, where)
        if self._meta_names is None:
            self._meta_names = list(cols)
        elif set(cols) != set(self._meta_names):
            raise StoreError(
                f"{where}: meta columns changed between appends: {sorted(cols)} vs {sorted(self._meta_names)}"
            )
        ids = cols["specObjID"].astype(np.uint64)
        clash = [int(i) for i in ids if int(i) in self._ids]
        if clash:
            raise StoreError(f"{where}: specObjID already stored: {clash[:5]}")
        start = self.n_rows
        stop = start + n
        f = self._file
        for name, arr in [("fluxes", fluxes), ("ivar", ivar), *extras.items()]:
            if arr is None:
                continue
            ds = f[name]
            ds.resize(stop, axis=0)
            ds[start:stop] = np.asarray(arr, dtype=ds.dtype)
        g = f["meta"]
        for name, arr in cols.items():
            if name not in g:
                g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=arr.dtype, chunks=(4096,), fletcher32=True)
            ds = g[name]
            ds.resize(stop, axis=0)
            ds[start:stop] = arr
        self._ids.update(int(i) for i in ids)
        self.n_rows = stop

    def close(self) -> Path:
        """Flush and move the file into place."""
        if self._file is None:
            return self.path
        self._file.attrs["n_rows"] = self.n_rows
        self._file.close()
        self._file = None
        os.replace(self._tmp, self.path)
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Drop everything written so far (the final path is left untouched)."""
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None
        if self._tmp is not None and self._tmp.exists():
            self._tmp.unlink()
        self._tmp = None


def write_store(
    path: str | os.PathLike,
    *,
    fluxes: np.ndarray,
    wavelengths: np.ndarray,
    meta: Mapping[str, Any] | pd.DataFrame,
    ivar: np.ndarray | None = None,
    and_mask: np.ndarray | None = None,
    pixel_flags: np.ndarray | None = None,
    equivalent_widths: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
    chunk_rows: int = 256,
) -> Path:
    """Write a whole store in one call (atomic). ``ivar`` defaults to ones where flux is finite."""
    fluxes = np.asarray(fluxes, dtype=np.float32)
    if ivar is None:
        ivar = np.isfinite(fluxes).astype(np.float32)
    n_lines = None if equivalent_widths is None else np.asarray(equivalent_widths).shape[-1]
    with StoreWriter(
        path,
        wavelengths,
        attrs=attrs,
        with_and_mask=and_mask is not None,
        with_pixel_flags=pixel_flags is not None,
        n_lines=n_lines,
        chunk_rows=chunk_rows,
    ) as w:
        w.append(
            fluxes=fluxes,
            ivar=ivar,
            meta=meta,
            and_mask=and_mask,
            pixel_flags=pixel_flags,
            equivalent_widths=equivalent_widths,
        )
    return Path(path)


def shard_paths(store_dir: str | os.PathLike) -> list[Path]:
    """The shard files of a store directory, in order (empty if the directory does not exist)."""
    d = Path(store_dir)
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if _SHARD_RE.match(p.name))


def append_shard(
    store_dir: str | os.PathLike,
    *,
    fluxes: np.ndarray,
    ivar: np.ndarray,
    wavelengths: np.ndarray,
    meta: Mapping[str, Any] | pd.DataFrame,
    and_mask: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Append rows to a sharded store as one new ``shard-NNNNN.h5`` (atomic).

    Rows whose specObjID is already in the store raise :class:`StoreError` (callers filter with
    :func:`store_spec_ids` first); the grid must match the existing shards.
    """
    d = Path(store_dir)
    d.mkdir(parents=True, exist_ok=True)
    existing = shard_paths(d)
    wavelengths = np.asarray(wavelengths, dtype=np.float64)
    if existing:
        with h5py.File(existing[0], "r") as f:
            wl0 = f["wavelengths"][...]
        if wl0.shape != wavelengths.shape or not np.allclose(wl0, wavelengths, rtol=1e-10, atol=0):
            raise StoreError(f"{d}: new shard's wavelength grid differs from {existing[0].name}'s")
    cols = _as_meta_columns(meta, np.asarray(fluxes).shape[0], str(d))
    have = store_spec_ids(d)
    dup = np.intersect1d(have, cols["specObjID"].astype(np.uint64))
    if dup.size:
        raise StoreError(f"{d}: specObjID already stored: {dup[:5].tolist()}")
    nums = [int(_SHARD_RE.match(p.name).group(1)) for p in existing]
    nxt = (max(nums) + 1) if nums else 0
    return write_store(
        d / f"shard-{nxt:05d}.h5",
        fluxes=fluxes,
        ivar=ivar,
        wavelengths=wavelengths,
        meta=cols,
        and_mask=and_mask,
        attrs=attrs,
    )


def _files_of(path: str | os.PathLike) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = shard_paths(p)
        if not files:
            raise StoreError(f"{p}: directory holds no shard-NNNNN.h5 files")
        return files
    if not p.exists():
        raise StoreError(f"{p}: no such spectrum store")
    return [p]


@contextlib.contextmanager
def _wrap_h5(fp: Path, what: str) -> Iterator[None]:
    """Turn what h5py raises for a corrupt or truncated file into a :class:`StoreError` naming it."""
    try:
        yield
    except StoreError:
        raise
    except _H5_ERRORS as exc:
        raise StoreError(
            f"{fp}: corrupt or unreadable HDF5 spectrum store ({what}: {type(exc).__name__}: {exc})"
        ) from None


def _check_layout(h: h5py.File, fp: Path) -> tuple[np.ndarray, int]:
    """Check one open store file against the layout; returns (wavelengths, number of rows)."""
    for key in ("fluxes", "ivar", "wavelengths", "meta"):
        if key not in h:
            raise StoreError(f"{fp}: not a keras_astro spectrum store: no '{key}' (data_specs/spectra_store.yaml)")
    for key in ("fluxes", "ivar", "wavelengths"):
        if not isinstance(h[key], h5py.Dataset):
            raise StoreError(f"{fp}: '{key}' is not a dataset (data_specs/spectra_store.yaml)")
    if not isinstance(h["meta"], h5py.Group):
        raise StoreError(f"{fp}: 'meta' is not a group (data_specs/spectra_store.yaml)")
    w = h["wavelengths"][...]
    n, m = h["fluxes"].shape if h["fluxes"].ndim == 2 else (None, None)
    if n is None or w.ndim != 1 or m != w.size or h["ivar"].shape != h["fluxes"].shape:
        raise StoreError(f"{fp}: fluxes {h['fluxes'].shape}, ivar {h['ivar'].shape} and wavelengths {w.shape} disagree")
    for name in h["meta"]:
        ds = h["meta"][name]
        if not isinstance(ds, h5py.Dataset) or ds.shape != (n,):
            shape = getattr(ds, "shape", None)
            raise StoreError(f"{fp}: meta/{name} has shape {shape}, expected ({n},) like the {n} rows of fluxes")
    for name in _ROW_ARRAYS[2:]:
        if name in h and (not isinstance(h[name], h5py.Dataset) or h[name].ndim != 2 or h[name].shape[0] != n):
            raise StoreError(f"{fp}: {name} has shape {getattr(h[name], 'shape', None)}, expected ({n}, ...)")
    declared = h.attrs.get("n_rows")
    if declared is not None and np.ndim(declared) == 0 and int(declared) != n:
        raise StoreError(f"{fp}: the file says it holds {int(declared)} rows but fluxes has {n} (truncated or corrupt)")
    return w, n


class StoreReader:
    """Lazy, read-only view of a store file or shard directory.

    Reads rows in slices so a store of any size streams with bounded memory.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.files = _files_of(path)
        self._handles: list[h5py.File] = []
        offsets = [0]
        wl = None
        attrs: dict[str, Any] = {}
        try:
            for fp in self.files:
                try:
                    h = h5py.File(fp, "r")
                except _H5_ERRORS as exc:
                    raise StoreError(f"{fp}: not a readable HDF5 file ({exc})") from None
                self._handles.append(h)
                with _wrap_h5(fp, "reading the store layout"):
                    w, n = _check_layout(h, fp)
                    file_attrs = dict(h.attrs)
                if wl is None:
                    wl = w
                    attrs = file_attrs
                elif w.shape != wl.shape or not np.allclose(w, wl, rtol=1e-10, atol=0):
                    raise StoreError(f"{fp}: wavelength grid differs from {self.files[0].name}'s")
                offsets.append(offsets[-1] + n)
        except Exception:
            self.close()
            raise
        self.wavelengths = wl
        self.attrs = attrs
        self.offsets = np.asarray(offsets)
        self.n_rows = int(offsets[-1])
        self._meta: pd.DataFrame | None = None

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.n_rows

    def close(self) -> None:
        for h in self._handles:
            try:
                h.close()
            except Exception:  # pragma: no cover - closing a broken handle
                pass
        self._handles = []

    def has(self, name: str) -> bool:
        for fp, h in zip(self.files, self._handles):
            with _wrap_h5(fp, f"looking up '{name}'"):
                if name not in h:
                    return False
        return True

    @property
    def meta(self) -> pd.DataFrame:
        """All meta columns (strings decoded) as a DataFrame, cached."""
        if self._meta is None:
            frames = []
            for fp, h in zip(self.files, self._handles):
                cols = {}
                with _wrap_h5(fp, "reading meta"):
                    for name in h["meta"]:
                        arr = h["meta"][name][...]
                        if arr.dtype.kind == "S":
                            try:
                                arr = np.char.decode(arr, "ascii")
                            except UnicodeDecodeError as exc:
                                raise StoreError(f"{fp}: meta/{name} holds non-ASCII bytes ({exc})") from None
                        cols[name] = arr
                frames.append(pd.DataFrame(cols))
            self._meta = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return self._meta

    def read(
        self, start: int = 0, stop: int | None = None, fields: Sequence[str] = ("fluxes",)
    ) -> dict[str, np.ndarray]:
        """Rows ``start:stop`` of the named per-row datasets, concatenated across shards."""
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        if start < 0 or start > stop:
            raise StoreError(f"{self.path}: bad row range {start}:{stop} for a store of {self.n_rows} rows")
        out: dict[str, list[np.ndarray]] = {f: [] for f in fields}
        for i, h in enumerate(self._handles):
            lo, hi = self.offsets[i], self.offsets[i + 1]
            a, b = max(start, lo), min(stop, hi)
            if a >= b:
                continue
            for name in fields:
                with _wrap_h5(self.files[i], f"reading {name} rows {a - lo}:{b - lo}"):
                    if name not in h:
                        raise StoreError(f"{self.files[i]}: store has no '{name}'")
                    out[name].append(h[name][a - lo : b - lo])
        res = {}
        for name, parts in out.items():
            if parts:
                res[name] = np.concatenate(parts) if len(parts) > 1 else parts[0]
            else:
                width = self._handles[0][name].shape[1] if name in self._handles[0] else self.wavelengths.size
                res[name] = np.zeros(
                    (0, width), dtype=self._handles[0][name].dtype if name in self._handles[0] else np.float32
                )
        return res

    def read_rows(self, index: np.ndarray, fields: Sequence[str] = ("fluxes",)) -> dict[str, np.ndarray]:
        """Arbitrary rows (sorted internally, returned in the order asked)."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.n_rows):
            raise StoreError(f"{self.path}: row index out of range 0..{self.n_rows - 1}")
        order = np.argsort(index, kind="stable")
        sidx = index[order]
        res: dict[str, np.ndarray] = {}
        for name in fields:
            parts = []
            for i, h in enumerate(self._handles):
                lo, hi = self.offsets[i], self.offsets[i + 1]
                sel = sidx[(sidx >= lo) & (sidx < hi)] - lo
                if sel.size:
                    uniq, inv = np.unique(sel, return_inverse=True)
                    with _wrap_h5(self.files[i], f"reading {name} rows"):
                        if name not in h:
                            raise StoreError(f"{self.files[i]}: store has no '{name}'")
                        parts.append(h[name][uniq][inv])
            arr = np.concatenate(parts) if parts else np.zeros((0, self.wavelengths.size), np.float32)
            back = np.empty_like(arr)
            back[order] = arr
            res[name] = back
        return res

    def iter_chunks(self, chunk_rows: int = 1024, fields: Sequence[str] = ("fluxes",)) -> Iterator[tuple[int, dict]]:
        """Yield ``(start_row, arrays)`` over the whole store in slices of ``chunk_rows``."""
        for start in range(0, self.n_rows, chunk_rows):
            yield start, self.read(start, start + chunk_rows, fields)


def open_store(path: str | os.PathLike) -> StoreReader:
    """Open a store file or shard directory for lazy reading (use as a context manager)."""
    return StoreReader(path)


@dataclass
class SpectraStore:
    """A store read fully into memory."""

    wavelengths: np.ndarray
    fluxes: np.ndarray
    ivar: np.ndarray
    meta: pd.DataFrame
    and_mask: np.ndarray | None = None
    pixel_flags: np.ndarray | None = None
    equivalent_widths: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.fluxes.shape[0]


def read_store(path: str | os.PathLike, *, rows: np.ndarray | slice | None = None) -> SpectraStore:
    """Read a whole store (or ``rows`` of it) into memory."""
    with StoreReader(path) as r:
        fields = [f for f in _ROW_ARRAYS if r.has(f)]
        if rows is None:
            arrays = r.read(0, None, fields)
            meta = r.meta
        elif isinstance(rows, slice):
            start, stop, step = rows.indices(r.n_rows)
            arrays = r.read(start, stop, fields)
            arrays = {k: v[::step] for k, v in arrays.items()}
            meta = r.meta.iloc[start:stop:step].reset_index(drop=True)
        else:
            idx = np.asarray(rows)
            arrays = r.read_rows(idx, fields)
            meta = r.meta.iloc[idx].reset_index(drop=True)
        return SpectraStore(
            wavelengths=r.wavelengths,
            fluxes=arrays["fluxes"],
            ivar=arrays["ivar"],
            meta=meta,
            and_mask=arrays.get("and_mask"),
            pixel_flags=arrays.get("pixel_flags"),
            equivalent_widths=arrays.get("equivalent_widths"),
            attrs=r.attrs,
        )


def read_meta(path: str | os.PathLike) -> pd.DataFrame:
    """Only the meta table of a store."""
    with StoreReader(path) as r:
        return r.meta


def store_spec_ids(path: str | os.PathLike) -> np.ndarray:
    """The specObjIDs (uint64) already in a store file or shard directory; empty if none exist."""
    p = Path(path)
    files = shard_paths(p) if p.is_dir() else ([p] if p.exists() else [])
    ids = []
    for fp in files:
        try:
            with h5py.File(fp, "r") as h:
                ids.append(h["meta/specObjID"][...].astype(np.uint64))
        except _H5_ERRORS as exc:
            raise StoreError(f"{fp}: cannot read meta/specObjID ({exc})") from None
    return np.concatenate(ids) if ids else np.zeros(0, np.uint64)
