"""Read and write NEPW band-merged catalogues (Chen et al. 2021, Sec 2.1).

A catalogue is a FITS binary table or a CSV file with one row per object: an identifier, a
redshift, an optional class label ("AGN"/"SFG", empty when unknown) and, for each of the 44 bands
of ``data_specs/agn_bands.yaml``, an AB magnitude and its error. The column names and the value
marking a missing band come from ``data_specs/nepw_catalogue.yaml``; a real catalogue with other
names is read by passing ``column_map``.

The embedded simulator (:mod:`keras_astro.simulate.photometry`) writes this same layout, so every
run on embedded data goes through this reader.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from astropy.io import fits
from astropy.table import Table

from keras_astro import specs
from keras_astro.io._fits import fits_damage

log = logging.getLogger(__name__)

__all__ = [
    "CatalogueError",
    "CatalogueLayout",
    "Photometry",
    "read_catalogue",
    "write_catalogue",
    "catalogue_to_photometry",
    "load_photometry",
    "validate_photometry_array",
]


class CatalogueError(ValueError):
    """A catalogue or photometry array does not have the expected content."""


@dataclass(frozen=True)
class CatalogueLayout:
    """Column names of a NEPW catalogue (defaults: ``data_specs/nepw_catalogue.yaml``).

    Parameters
    ----------
    column_map
        Optional mapping from the default column names (``ID``, ``z``, ``class``,
        ``HSC_g_mag``, ``HSC_g_magerr``, ...) to the names used in a given file.
    """

    id_column: str
    redshift_column: str
    label_column: str
    labels: Mapping[str, int]
    mag_columns: tuple[str, ...]
    err_columns: tuple[str, ...]
    missing_value: float
    column_map: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def default(cls, column_map: Mapping[str, str] | None = None) -> "CatalogueLayout":
        spec = specs.load_spec("nepw_catalogue")
        cmap = dict(column_map or {})
        names = specs.band_names()

        def m(col: str) -> str:
            return cmap.get(col, col)

        return cls(
            id_column=m(spec["id_column"]),
            redshift_column=m(spec["redshift_column"]),
            label_column=m(spec["label_column"]),
            labels=dict(spec["labels"]),
            mag_columns=tuple(m(spec["mag_column"].format(band=b)) for b in names),
            err_columns=tuple(m(spec["err_column"].format(band=b)) for b in names),
            missing_value=float(spec["missing_value"]),
            column_map=cmap,
        )


@dataclass
class Photometry:
    """Photometry of a catalogue as the network sees it.

    Attributes
    ----------
    values
        (N, 44, 2) float32: magnitude (AB) and magnitude error (mag) per band; missing bands are
        NaN here and are filled by :func:`keras_astro.preprocess.photometry.fill_missing`.
    labels
        (N,) int8: 1 = AGN, 0 = SFG, -1 = unlabelled.
    ids
        (N,) object identifiers.
    redshift
        (N,) float redshifts (NaN when the column is absent).
    """

    values: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    redshift: np.ndarray

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def labelled(self) -> np.ndarray:
        """Boolean mask of rows with an AGN/SFG label."""
        return self.labels >= 0

    def subset(self, index: np.ndarray) -> "Photometry":
        return Photometry(self.values[index], self.labels[index], self.ids[index], self.redshift[index])


def write_catalogue(table: Table, path: str | os.PathLike, *, meta: Mapping | None = None) -> Path:
    """Write ``table`` as FITS (``.fits``/``.fit``/``.fits.gz``) or CSV (``.csv``), atomically.

    The table is written to a temporary file in the target folder and renamed into place, so an
    interrupted write never leaves a partial catalogue behind. ``meta`` entries are stored in the
    table header (FITS keywords; comment lines in CSV via ECSV-free ``meta``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = _format_of(path)
    out = table.copy(copy_data=False)
    for k, v in (meta or {}).items():
        out.meta[str(k).upper()[:8] if fmt == "fits" else str(k)] = v
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if fmt == "fits":
            # CHECKSUM/DATASUM keywords (FITS checksum convention): read_catalogue detects damaged bytes
            fits.table_to_hdu(out, character_as_bytes=True).writeto(tmp, overwrite=True, checksum=True)
        else:
            out.write(tmp, format="ascii.csv", overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_catalogue(path: str | os.PathLike) -> Table:
    """Read a FITS or CSV catalogue into an astropy Table (no validation; see
    :func:`catalogue_to_photometry`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"catalogue {path} does not exist")
    fmt = _format_of(path)
    try:
        if fmt != "fits":
            return Table.read(path, format="ascii.csv")
        with fits.open(path, memmap=False) as hdul:
            # a short file, or CHECKSUM/DATASUM (written by write_catalogue) that do not match
            damage = fits_damage(hdul, path)
            if damage:
                raise CatalogueError(f"{path}: corrupt or truncated FITS file ({'; '.join(damage)})")
            return Table.read(hdul, format="fits")
    except CatalogueError:
        raise
    except Exception as exc:  # astropy raises many types for malformed files
        raise CatalogueError(f"{path}: cannot be read as a {fmt.upper()} table ({type(exc).__name__}: {exc})") from exc


def _format_of(path: Path) -> str:
    name = path.name.lower()
    if name.endswith((".fits", ".fit", ".fits.gz", ".fts")):
        return "fits"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise CatalogueError(f"{path}: unknown catalogue format; expected a .fits or .csv file")


def _column_as_float(table: Table, name: str, source: str) -> np.ndarray:
    col = table[name]
    try:
        data = np.ma.asarray(col).astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise CatalogueError(f"{source}: column {name!r} is not numeric (dtype {col.dtype})") from exc
    if np.ma.isMaskedArray(data) and np.ma.is_masked(data):
        return data.filled(np.nan)
    return np.asarray(data)


def catalogue_to_photometry(
    table: Table,
    *,
    layout: CatalogueLayout | None = None,
    source: str = "catalogue",
    require_labels: bool = False,
) -> Photometry:
    """Turn a catalogue table into a :class:`Photometry` (N, 44, 2) array with labels.

    A band is missing when both its magnitude and its error equal the layout's missing value
    (−99.0 by default) or are empty (masked). Anything else that is not a finite magnitude with a
    positive error is an error.

    Raises
    ------
    CatalogueError
        Naming the column and what was expected: missing columns, NaN magnitudes next to a valid
        error (or the reverse), negative or zero errors, unknown class labels.
    """
    layout = layout or CatalogueLayout.default()
    have = set(table.colnames)
    needed = [layout.id_column, *layout.mag_columns, *layout.err_columns]
    missing = [c for c in needed if c not in have]
    if missing:
        show = ", ".join(missing[:6]) + (f" … ({len(missing)} in all)" if len(missing) > 6 else "")
        raise CatalogueError(
            f"{source}: missing column(s) {show}; a NEPW catalogue needs an id column, and a "
            f"magnitude and an error column for each of the {len(layout.mag_columns)} bands of "
            "data_specs/agn_bands.yaml (pass column_map= for other names)"
        )
    n = len(table)
    values = np.empty((n, len(layout.mag_columns), 2), dtype=np.float32)
    miss = layout.missing_value
    for j, (mc, ec) in enumerate(zip(layout.mag_columns, layout.err_columns)):
        mag = _column_as_float(table, mc, source)
        err = _column_as_float(table, ec, source)
        mag_missing = np.isnan(mag) | (mag == miss)
        err_missing = np.isnan(err) | (err == miss)
        both = mag_missing & err_missing
        bad_mag = np.isnan(mag) & ~err_missing
        if bad_mag.any():
            rows = np.flatnonzero(bad_mag)[:5].tolist()
            raise CatalogueError(
                f"{source}: column {mc!r} has NaN magnitudes (rows {rows}) where {ec!r} holds an "
                f"error; expected a finite AB magnitude, or {miss} in both columns for a missing band"
            )
        bad_err = err_missing & ~mag_missing
        if bad_err.any():
            rows = np.flatnonzero(bad_err)[:5].tolist()
            raise CatalogueError(
                f"{source}: column {ec!r} has no error (rows {rows}) for a measured magnitude in "
                f"{mc!r}; expected a positive error in mag, or {miss} in both columns"
            )
        if not np.isfinite(mag[~mag_missing]).all():
            rows = np.flatnonzero(~mag_missing & ~np.isfinite(mag))[:5].tolist()
            raise CatalogueError(f"{source}: column {mc!r} has non-finite magnitudes (rows {rows})")
        infinite = ~err_missing & np.isinf(err)
        if infinite.any():
            rows = np.flatnonzero(infinite)[:5].tolist()
            raise CatalogueError(f"{source}: column {ec!r} has infinite errors (rows {rows}); expected finite errors > 0 mag")
        nonpos = ~err_missing & ~(err > 0)
        if nonpos.any():
            rows = np.flatnonzero(nonpos)[:5].tolist()
            raise CatalogueError(
                f"{source}: column {ec!r} has negative or zero errors (rows {rows}, e.g. "
                f"{err[nonpos][0]:g}); expected errors > 0 mag"
            )
        values[:, j, 0] = np.where(both, np.nan, mag)
        values[:, j, 1] = np.where(both, np.nan, err)

    labels = np.full(n, -1, dtype=np.int8)
    if layout.label_column in have:
        col = table[layout.label_column]
        empty = np.ma.getmaskarray(col) if hasattr(col, "mask") else np.zeros(n, bool)
        raw = np.char.strip(np.asarray(col).astype(str))
        raw[empty] = ""  # an all-empty CSV column comes back as masked integers
        unknown = set(np.unique(raw)) - set(layout.labels) - {"", "--", "nan", "None"}
        if unknown:
            raise CatalogueError(
                f"{source}: column {layout.label_column!r} has unknown labels {sorted(unknown)[:5]}; "
                f"expected one of {sorted(layout.labels)} or empty for unlabelled objects"
            )
        for name, code in layout.labels.items():
            labels[raw == name] = code
    elif require_labels:
        raise CatalogueError(f"{source}: no label column {layout.label_column!r}; expected AGN/SFG labels")
    if require_labels and not (labels >= 0).any():
        raise CatalogueError(f"{source}: column {layout.label_column!r} holds no AGN/SFG label")

    z = (
        _column_as_float(table, layout.redshift_column, source)
        if layout.redshift_column in have
        else np.full(n, np.nan)
    )
    ids = np.asarray(table[layout.id_column])
    return Photometry(values=values, labels=labels, ids=ids, redshift=z)


def load_photometry(
    path: str | os.PathLike,
    *,
    column_map: Mapping[str, str] | None = None,
    require_labels: bool = False,
) -> Photometry:
    """Read a FITS/CSV NEPW catalogue file and return its validated :class:`Photometry`."""
    table = read_catalogue(path)
    layout = CatalogueLayout.default(column_map)
    return catalogue_to_photometry(table, layout=layout, source=str(path), require_labels=require_labels)


def validate_photometry_array(x: np.ndarray, *, name: str = "photometry") -> np.ndarray:
    """Check a raw (N, 44, 2) magnitude/error array (NaN = missing band) and return it as float32.

    Raises
    ------
    CatalogueError
        If the shape is not (N, n_bands, 2), a magnitude is NaN while its error is not (or the
        reverse), or an error is not positive.
    """
    n_bands = len(specs.agn_bands())
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (n_bands, 2):
        raise CatalogueError(
            f"{name}: expected shape (N, {n_bands}, 2) — {n_bands} bands × (magnitude, error) — "
            f"got {x.shape}"
        )
    mag_nan, err_nan = np.isnan(x[..., 0]), np.isnan(x[..., 1])
    if (mag_nan != err_nan).any():
        i, j = np.argwhere(mag_nan != err_nan)[0]
        raise CatalogueError(
            f"{name}: band {specs.band_names()[j]} of row {i} has a NaN magnitude or error but not "
            "both; a missing band must be NaN in both"
        )
    bad = ~err_nan & ~(x[..., 1] > 0)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise CatalogueError(
            f"{name}: band {specs.band_names()[j]} of row {i} has error {x[i, j, 1]:g}; expected > 0"
        )
    return x
