"""SDSS spectra in and out: the thesis's SkyServer query, resumable downloads, spec FITS, DR16Q.

* :func:`build_query` — the SQL of the spectral-classification thesis (Csepreghy 2020, Sec 4.1 /
  Appendix 10.2): ``SpecObjAll`` joined to ``SpecPhotoAll`` on ``specObjID``, ``zWarning = 0``,
  an optional class filter and the optional ``emissionLinesPort`` variant. Tables, columns and
  conditions live in ``data_specs/sdss_query.yaml``.
* :class:`SDSSClient` — runs the query through :class:`astroquery.sdss.SDSSClass` (SkyServer
  answers CSV: ``#Table1``, a header, rows), optionally as the thesis's separate QSO / STAR /
  GALAXY queries subsampled to its class shares; downloads spectra **by plate–MJD–fibre** from the
  Science Archive Server (never by cone search, which lost about half the thesis's objects),
  in parallel, retrying transient failures with exponential back-off, each file written
  atomically, resumable, and optionally appended batch by batch to a sharded HDF5 store
  (:mod:`keras_astro.io.spectra_store`) on the ``sdss`` wavelength lattice.
* :func:`read_spec_fits` / :func:`write_spec_fits` — the SDSS ``spec-PLATE-MJD-FIBER.fits``
  "lite" layout (HDU1 ``COADD``, HDU2 ``SPECOBJ``, HDU3 ``SPZLINE``); the simulator writes the
  same files the archive serves.
* :func:`place_on_lattice` — a coadd on the store's log10 λ lattice by integer offset.
* :func:`read_dr16q` / :func:`dr16q_fnet_split` — the DR16Q catalogue and FNet's split
  (Sec 2, Sec 4): DR12Q visually inspected quasars for training (90/10 train/validation), the VI
  quasars new in DR16Q for testing, and the QuasarNET failures (``Z_QN = -1``).
* :func:`spectra_from_fits_dir` — a store from a folder of spec files.

Examples
--------
>>> from keras_astro.io import sdss
>>> print(sdss.build_query("QSO", top=10))                                   # doctest: +SKIP
>>> client = sdss.SDSSClient()
>>> targets = client.query(balance=True, top=50_000)                          # doctest: +SKIP
>>> report = client.download_spectra(targets, "spectra/fits", store="spectra/raw")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import requests
from astropy.io import fits
from astropy.table import Table, vstack

from keras_astro import __version__, specs
from keras_astro.io import spectra_store
from keras_astro.io._fits import fits_damage

log = logging.getLogger(__name__)

__all__ = [
    "DownloadReport",
    "SDSSClient",
    "SDSSSpectrum",
    "SDSSUnavailableError",
    "SpectraIOError",
    "build_query",
    "dr16q_fnet_split",
    "make_specobjid",
    "place_on_lattice",
    "query_columns",
    "read_dr16q",
    "read_spec_fits",
    "read_targets",
    "run2d_code",
    "spec_file_name",
    "spectra_from_fits_dir",
    "write_spec_fits",
]

QUERY_SPEC = "sdss_query"
DR16Q_SPEC = "dr16q"

#: Exceptions of :mod:`requests` after which a new attempt may succeed.
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
#: HTTP statuses after which a new attempt may succeed.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Largest |loglam - lattice| (dex) still counted as "on the lattice".
LATTICE_TOL = 1e-6
#: Keys of :attr:`SDSSSpectrum.meta` (store meta column names, ``data_specs/spectra_store.yaml``).
META_KEYS = ("specObjID", "plate", "mjd", "fiberid", "ra", "dec", "z", "zErr", "class", "subClass", "sn_median")
FAILURE_COLUMNS = ("specObjID", "plate", "mjd", "fiberid", "reason")

_USER_AGENT = f"keras_astro/{__version__} (+requests)"


class SpectraIOError(ValueError):
    """A spectrum file, catalogue or SDSS answer is missing, malformed or inconsistent.

    Every message names the file (or URL / object) and the problem.

    Attributes
    ----------
    unreadable
        True when the bytes could not be parsed at all (truncated or corrupt FITS, not CSV): a
        fresh download may cure it. False for well-formed files with bad content.
    """

    def __init__(self, message: str, *, unreadable: bool = False) -> None:
        super().__init__(message)
        self.unreadable = unreadable


class SDSSUnavailableError(SpectraIOError, ConnectionError):
    """SkyServer could not be reached after all retries, or refused the request."""


class _TransientHTTPError(Exception):
    """Internal: an HTTP status worth retrying."""


# ============================================================================================
# the query (thesis Sec 4.1)


def _query_spec() -> dict[str, Any]:
    return specs.load_spec(QUERY_SPEC)


def _kind(kind: str) -> str:
    kinds = _query_spec()["kinds"]
    k = str(kind).strip().upper()
    if k not in kinds:
        raise ValueError(f"unknown query kind {kind!r}; expected one of {sorted(kinds)} (data_specs/{QUERY_SPEC}.yaml)")
    return k


def query_columns(*, emission_lines: bool = False) -> list[str]:
    """Alias-qualified columns of the query: the thesis's, the download's, optionally the lines'."""
    spec = _query_spec()
    cols = list(spec["columns"]) + list(spec["download_columns"])
    if emission_lines:
        cols += list(spec["emission_lines"]["columns"])
    return cols


def build_query(
    kind: str = "ALL",
    *,
    top: int | None = None,
    emission_lines: bool = False,
    where: str | None = None,
) -> str:
    """SQL of the thesis's SkyServer query (Sec 4.1, Appendix 10.2) as one line.

    ``SELECT [TOP n] <columns> FROM SpecObjAll AS spec JOIN SpecPhotoAll AS spho ON
    spec.specObjID = spho.specObjID [JOIN emissionLinesPort AS em ON em.specObjID =
    spec.specObjID] WHERE spec.zWarning = 0 [AND spec.class = '<KIND>'] [AND (<where>)]``.

    Parameters
    ----------
    kind
        ``ALL`` (no class filter), ``QSO``, ``STAR`` or ``GALAXY``; case-insensitive.
    top
        ``SELECT TOP n``; None for no limit (SkyServer still stops at 500,000 rows).
    emission_lines
        Join ``emissionLinesPort`` and add its Hβ, [O III], Hα, [N II] flux/amplitude columns
        (the thesis's variant).
    where
        Extra SQL condition ANDed to the others, e.g. ``"spec.z < 0.3"``.

    Returns
    -------
    str
        The SQL; columns are z, ra, dec, specObjID, bestObjID, fluxObjID, targetObjID, plate,
        class, subClass, zErr, petroMag_[ugriz], petroMagErr_[ugriz] (the thesis's), then mjd,
        fiberID, run2d (for the download by plate–MJD–fibre).

    Raises
    ------
    ValueError
        For an unknown kind, ``top < 1``, or a ``where`` holding ``;`` or ``--`` (astroquery
        strips everything after ``--`` on a line, and SkyServer runs a single statement).
    """
    spec = _query_spec()
    k = _kind(kind)
    if top is not None:
        if isinstance(top, bool) or int(top) != top or int(top) < 1:
            raise ValueError(f"top must be a positive integer, got {top!r}")
        top = int(top)
    if where is not None and (";" in where or "--" in where):
        raise ValueError(f"where= must be a single SQL condition without ';' or '--', got {where!r}")

    tables = spec["tables"]
    join = spec["join"]
    select = "SELECT " + (f"TOP {top} " if top else "") + ", ".join(query_columns(emission_lines=emission_lines))
    frm = f"FROM {tables['spec']} AS spec JOIN {tables[join['alias']]} AS {join['alias']} ON {join['condition']}"
    if emission_lines:
        em = spec["emission_lines"]
        frm += f" JOIN {em['table']} AS {em['alias']} ON {em['condition']}"
    conditions = list(spec["conditions"])
    cls = spec["kinds"][k]
    if cls:
        conditions.append(f"{spec['class_column']} = '{cls}'")
    if where and where.strip():
        conditions.append(f"({where.strip()})")
    return f"{select} {frm} WHERE {' AND '.join(conditions)}"


def _class_shares(shares: Mapping[str, float] | None) -> dict[str, float]:
    """Validated, normalised class shares (default: the thesis's, ``spectra.yaml``)."""
    classes = [str(c) for c in specs.load_spec("spectra")["classes"]]
    raw = dict(specs.load_spec("spectra")["thesis_class_shares"] if shares is None else shares)
    out: dict[str, float] = {}
    for key, value in raw.items():
        k = str(key).strip().upper()
        if k not in classes:
            raise ValueError(f"shares: unknown class {key!r}; expected some of {classes}")
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"shares: {key} must be a finite share >= 0, got {value!r}")
        if v > 0:
            out[k] = v
    total = sum(out.values())
    if total <= 0:
        raise ValueError(f"shares must hold at least one positive share, got {raw!r}")
    return {c: out[c] / total for c in classes if c in out}


def _apportion(shares: Mapping[str, float], available: Mapping[str, int]) -> dict[str, int]:
    """Largest sample whose class counts follow ``shares`` without exceeding ``available``.

    The total is ``floor(min_c available_c / share_c)``; counts are the floors of total × share,
    the remainder going to the largest fractional parts where rows are left.
    """
    total = math.floor(min(available[c] / s for c, s in shares.items()) + 1e-9)
    exact = {c: total * s for c, s in shares.items()}
    counts = {c: min(math.floor(exact[c] + 1e-9), available[c]) for c in shares}
    left = total - sum(counts.values())
    for c in sorted(shares, key=lambda c: exact[c] - math.floor(exact[c] + 1e-9), reverse=True):
        if left <= 0:
            break
        if counts[c] < available[c]:
            counts[c] += 1
            left -= 1
    return counts


def _find_column(names: Sequence[str], *candidates: str) -> str | None:
    """The first of ``names`` equal (case-insensitively) to one of ``candidates``."""
    lower = {n.lower(): n for n in names}
    for c in candidates:
        if c.lower() in lower:
            return lower[c.lower()]
    return None


def _as_uint64(values: Any, what: str) -> np.ndarray:
    """specObjIDs (integers or numeric strings; empty → 0) as uint64."""
    arr = np.ma.filled(np.ma.asarray(values), 0) if np.ma.isMaskedArray(values) else np.asarray(values)
    if arr.dtype.kind in "u":
        return arr.astype(np.uint64)
    if arr.dtype.kind == "i":
        if np.any(arr < 0):
            raise SpectraIOError(f"{what}: negative specObjID")
        return arr.astype(np.uint64)
    out = np.zeros(arr.shape, np.uint64)
    for i, v in enumerate(arr.ravel()):
        s = v.decode() if isinstance(v, bytes) else str(v)
        s = s.strip()
        try:
            out.flat[i] = int(s) if s not in ("", "nan", "None", "--") else 0
        except ValueError:
            raise SpectraIOError(f"{what}: specObjID {s!r} is not an integer") from None
    return out


def _clean_query_table(table: Table) -> Table:
    """SkyServer answer → plain columns: uint64 ids, '' for empty strings, NaN for empty floats."""
    out = Table(meta=dict(table.meta))
    for name in table.colnames:
        col = table[name]
        lname = name.lower()
        if lname == "specobjid":
            out[name] = _as_uint64(col, f"SkyServer column {name}")
            continue
        if lname == "run2d":
            vals = np.ma.filled(np.ma.asarray(col).astype(str), "") if np.ma.isMaskedArray(col) else np.asarray(col)
            out[name] = np.array([_norm_run2d(v) or "" for v in vals], dtype=str)
            continue
        if np.ma.isMaskedArray(col):
            data = np.ma.asarray(col)
            if data.dtype.kind in "US":
                out[name] = np.ma.filled(data, "")
            elif data.dtype.kind == "f":
                out[name] = np.ma.filled(data, np.nan)
            elif data.dtype.kind in "iu" and np.ma.count_masked(data):
                out[name] = np.ma.filled(data.astype(np.float64), np.nan)
            else:
                out[name] = np.ma.filled(data)
        else:
            out[name] = col
    return out


def _dedupe_table(table: Table, *, what: str) -> Table:
    key = _find_column(table.colnames, "specObjID")
    if key is None or len(table) == 0:
        return table
    _, first = np.unique(np.asarray(table[key]), return_index=True)
    if len(first) < len(table):
        log.info("%s: dropped %d duplicate specObjID row(s)", what, len(table) - len(first))
        table = table[np.sort(first)]
    return table


def _empty_result(emission_lines: bool) -> Table:
    names = [c.split(".", 1)[1] for c in query_columns(emission_lines=emission_lines)]
    return Table(names=names, dtype=[np.uint64 if n == "specObjID" else "f8" for n in names])


# ============================================================================================
# SAS file names, URLs and specObjIDs


def spec_file_name(plate: int, mjd: int, fiberid: int) -> str:
    """``spec-PPPP-MMMMM-FFFF.fits`` (4-digit plate, 5 for eBOSS plates ≥ 10000)."""
    return _query_spec()["sas"]["file_name"].format(plate=int(plate), mjd=int(mjd), fiberid=int(fiberid))


def _norm_run2d(run2d: Any) -> str | None:
    """run2d as SDSS spells it ("26", "v5_13_2"), None when absent."""
    if run2d is None or run2d is np.ma.masked:
        return None
    if isinstance(run2d, bytes):
        run2d = run2d.decode()
    if isinstance(run2d, (float, np.floating)):
        if not math.isfinite(run2d):
            return None
        if float(run2d).is_integer():
            return str(int(run2d))
    s = str(run2d).strip()
    if s.endswith(".0") and s[:-2].isdigit():
        s = s[:-2]
    if not s or s.lower() in ("nan", "none", "--"):
        return None
    return s


def run2d_code(run2d: str | int) -> int:
    """The run2d field of a specObjID: ``(N-5)*10000 + M*100 + P`` for ``vN_M_P``, else the integer."""
    s = _norm_run2d(run2d)
    if s is None:
        raise ValueError(f"run2d {run2d!r} is empty")
    m = re.fullmatch(r"v(\d+)_(\d+)_(\d+)", s)
    if m:
        major, minor, fix = (int(g) for g in m.groups())
        return (major - 5) * 10000 + minor * 100 + fix
    if s.isdigit():
        return int(s)
    raise ValueError(f"run2d {run2d!r} is neither 'vN_M_P' nor an integer")


def make_specobjid(plate: int, mjd: int, fiberid: int, run2d: str | int) -> int:
    """SDSS DR8+ specObjID: ``plate<<50 | fiber<<38 | (mjd-50000)<<24 | run2d_code<<10``.

    Checked against DR17 ids (e.g. plate 10445, MJD 58158, fibre 427, run2d v5_13_2 →
    11760142036707334144).
    """
    bits = _query_spec()["specobjid_bits"]
    plate, mjd, fiberid = int(plate), int(mjd), int(fiberid)
    code = run2d_code(run2d)
    dm = mjd - int(bits["mjd_offset"])
    if not (0 < plate < 2**14 and 0 < fiberid < 2**12 and 0 <= dm < 2**14 and 0 <= code < 2**14):
        raise ValueError(f"plate {plate}, MJD {mjd}, fibre {fiberid}, run2d {run2d!r} do not fit a specObjID")
    return (plate << bits["plate"]) | (fiberid << bits["fiber"]) | (dm << bits["mjd"]) | (code << bits["run2d"])


def _default_run2d(plate: int, data_release: int) -> str:
    sas = _query_spec()["sas"]
    defaults = sas["default_run2d"].get(int(data_release))
    if defaults is None:
        raise ValueError(
            f"no default run2d for DR{data_release} in data_specs/{QUERY_SPEC}.yaml (have "
            f"{sorted(sas['default_run2d'])}); give the targets a run2d column"
        )
    return str(defaults["sdss"] if int(plate) <= int(sas["legacy_max_plate"]) else defaults["boss"])


# ============================================================================================
# spec FITS files


@dataclass
class SDSSSpectrum:
    """One SDSS coadded spectrum.

    Attributes
    ----------
    path
        The file it was read from.
    loglam
        log10 of the vacuum wavelength in Å (float64; SDSS stores float32).
    flux
        Flux density, 1e-17 erg s⁻¹ cm⁻² Å⁻¹ (float32).
    ivar
        Inverse variance of ``flux`` (float32); 0 marks a pixel without data.
    and_mask
        SDSS SPPIXMASK bits set in every exposure (int32).
    meta
        ``specObjID`` (int), ``plate``, ``mjd``, ``fiberid`` (int), ``ra``, ``dec`` (deg, the
        fibre position PLUG_RA/PLUG_DEC), ``z``, ``zErr``, ``class``, ``subClass`` (str, '' =
        NULL), ``sn_median`` (median S/N per good pixel), ``source`` ('sdss' or 'sim').
    """

    path: Path
    loglam: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    and_mask: np.ndarray
    meta: dict[str, Any]

    @property
    def wavelength(self) -> np.ndarray:
        """Vacuum wavelength in Å."""
        return 10.0**self.loglam

    def __len__(self) -> int:
        return int(self.flux.size)


def _bad_bits() -> int:
    bits = specs.load_spec("spectra")["and_mask_bad_bits"]
    return int(sum(1 << int(b) for b in bits.values()))


def _good_pixels(ivar: np.ndarray, and_mask: np.ndarray) -> np.ndarray:
    return (ivar > 0) & ((and_mask.astype(np.int64) & _bad_bits()) == 0)


def _median_sn(flux: np.ndarray, ivar: np.ndarray, and_mask: np.ndarray) -> float:
    good = _good_pixels(ivar, and_mask)
    if not good.any():
        return float("nan")
    return float(np.median(np.abs(flux[good]) * np.sqrt(ivar[good])))


def _hdu_by_name(hdul: fits.HDUList, name: str, path: Path) -> fits.BinTableHDU:
    for hdu in hdul[1:]:
        if str(hdu.name).upper() == name:
            if not isinstance(hdu, fits.BinTableHDU):
                raise SpectraIOError(
                    f"{path}: HDU {name} is a {type(hdu).__name__}, expected a binary table (corrupt header?)",
                    unreadable=True,
                )
            return hdu
    have = [str(h.name) for h in hdul]
    raise SpectraIOError(f"{path}: no {name} HDU (an SDSS spec file has COADD, SPECOBJ, SPZLINE); HDUs present: {have}")


def _column(data: fits.FITS_rec, names: Sequence[str], wanted: str, hdu: str, path: Path) -> np.ndarray:
    name = _find_column(names, wanted)
    if name is None:
        raise SpectraIOError(f"{path}: {hdu} HDU has no '{wanted}' column; columns present: {list(names)}")
    return np.asarray(data[name])


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip()
    if isinstance(value, str):
        return value.strip()
    arr = np.asarray(value)
    if arr.ndim:
        return arr
    return arr.item()


def _check_complete(hdul: fits.HDUList, path: Path) -> None:
    """Raise if the file is shorter (truncated) or longer (unparsed bytes) than its HDUs say."""
    info = hdul.fileinfo(len(hdul) - 1)
    if not info:
        return
    expected = int(info["datLoc"]) + int(info["datSpan"])
    size = path.stat().st_size
    if size < expected:
        raise SpectraIOError(
            f"{path}: truncated FITS file ({size} bytes, its headers describe {expected})", unreadable=True
        )
    if size > expected:
        raise SpectraIOError(
            f"{path}: corrupt FITS file ({size - expected} bytes after the last readable HDU "
            f"{hdul[-1].name!r}; HDUs read: {[h.name for h in hdul]})",
            unreadable=True,
        )


def read_spec_fits(path: str | os.PathLike) -> SDSSSpectrum:
    """Read an SDSS ``spec-PLATE-MJD-FIBER.fits`` file (DR8+ layout, "lite" or "full").

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    SDSSSpectrum
        HDU ``COADD`` columns flux, loglam, ivar, and_mask; meta from HDU ``SPECOBJ`` (PLATE, MJD,
        FIBERID, SPECOBJID, PLUG_RA, PLUG_DEC, Z, Z_ERR, CLASS, SUBCLASS, SN_MEDIAN_ALL).
        SPECOBJID is a string column in DR13+ files; when it is absent it is computed from
        plate, MJD, fibre and RUN2D (:func:`make_specobjid`). When SN_MEDIAN_ALL is absent the
        median S/N is computed from the good pixels.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    SpectraIOError
        For a truncated or corrupt file, a missing COADD/SPECOBJ HDU or column, an empty or
        non-increasing loglam, non-finite flux or ivar, negative ivar, or no unmasked pixel (ivar
        = 0 or a bad ``and_mask`` bit of ``spectra.yaml`` everywhere). The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such spectrum file")
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
            _check_complete(hdul, path)
            damage = fits_damage(hdul, path)  # CHECKSUM/DATASUM of files written by write_spec_fits
            if damage:
                raise SpectraIOError(f"{path}: corrupt FITS file ({'; '.join(damage)})", unreadable=True)
            coadd = _hdu_by_name(hdul, "COADD", path)
            specobj = _hdu_by_name(hdul, "SPECOBJ", path)
            header = hdul[0].header
            cdata, cnames = coadd.data, coadd.columns.names
            if cdata is None:
                raise SpectraIOError(f"{path}: COADD HDU holds no rows")
            loglam = _column(cdata, cnames, "loglam", "COADD", path).astype(np.float64)
            flux = _column(cdata, cnames, "flux", "COADD", path).astype(np.float32)
            ivar = _column(cdata, cnames, "ivar", "COADD", path).astype(np.float32)
            and_mask = _column(cdata, cnames, "and_mask", "COADD", path).astype(np.int32)
            sdata, snames = specobj.data, specobj.columns.names
            if sdata is None or len(sdata) != 1:
                raise SpectraIOError(f"{path}: SPECOBJ HDU has {0 if sdata is None else len(sdata)} rows, expected 1")
            row = {n.upper(): _scalar(sdata[n][0]) for n in snames}
            source = str(header.get("KA_SRC", "sdss")).strip() or "sdss"
            header_run2d = header.get("RUN2D")
    except (SpectraIOError, FileNotFoundError):
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, VerifyError, AssertionError … for broken bytes
        raise SpectraIOError(
            f"{path}: not a readable SDSS spec FITS file ({type(exc).__name__}: {exc})", unreadable=True
        ) from None

    n = flux.size
    if n == 0:
        raise SpectraIOError(f"{path}: COADD HDU holds no pixels")
    if not (loglam.size == ivar.size == and_mask.size == n) or flux.ndim != 1:
        raise SpectraIOError(f"{path}: COADD columns have different lengths or shapes")
    if not np.all(np.isfinite(loglam)) or np.any(np.diff(loglam) <= 0):
        raise SpectraIOError(f"{path}: COADD loglam is not finite and strictly increasing")
    bad_flux = ~np.isfinite(flux)
    if bad_flux.any():
        raise SpectraIOError(f"{path}: {int(bad_flux.sum())} of {n} flux values are NaN or infinite")
    if not np.all(np.isfinite(ivar)) or np.any(ivar < 0):
        raise SpectraIOError(f"{path}: ivar has NaN, infinite or negative values")
    if not _good_pixels(ivar, and_mask).any():
        raise SpectraIOError(f"{path}: all {n} pixels are masked (ivar = 0 or a bad and_mask bit)")

    for col in ("PLATE", "MJD", "FIBERID", "Z", "Z_ERR", "CLASS", "SUBCLASS", "PLUG_RA", "PLUG_DEC"):
        if col not in row:
            raise SpectraIOError(f"{path}: SPECOBJ HDU has no '{col}' column; columns present: {list(snames)}")
    try:
        plate, mjd, fiberid = int(row["PLATE"]), int(row["MJD"]), int(row["FIBERID"])
    except (TypeError, ValueError, OverflowError) as exc:
        raise SpectraIOError(
            f"{path}: SPECOBJ PLATE/MJD/FIBERID {row['PLATE']!r}/{row['MJD']!r}/{row['FIBERID']!r} are not integers "
            f"({exc})"
        ) from None
    sid_raw = row.get("SPECOBJID")
    try:
        if sid_raw is not None and str(sid_raw).strip() not in ("", "0"):
            specobjid = int(str(sid_raw).strip())
        else:
            run2d = _norm_run2d(row.get("RUN2D", header_run2d))
            if run2d is None:
                raise SpectraIOError(f"{path}: SPECOBJ has neither SPECOBJID nor RUN2D; cannot name the spectrum")
            specobjid = make_specobjid(plate, mjd, fiberid, run2d)
    except ValueError as exc:
        if isinstance(exc, SpectraIOError):
            raise
        raise SpectraIOError(f"{path}: bad SPECOBJID {sid_raw!r} ({exc})") from None
    try:
        sn = row.get("SN_MEDIAN_ALL")
        sn = (
            float(sn)
            if sn is not None and np.isscalar(sn) and math.isfinite(float(sn))
            else _median_sn(flux, ivar, and_mask)
        )
        meta = {
            "specObjID": specobjid,
            "plate": plate,
            "mjd": mjd,
            "fiberid": fiberid,
            "ra": float(row["PLUG_RA"]),
            "dec": float(row["PLUG_DEC"]),
            "z": float(row["Z"]),
            "zErr": float(row["Z_ERR"]),
            "class": str(row["CLASS"]),
            "subClass": str(row["SUBCLASS"]),
            "sn_median": sn,
            "source": source,
        }
    except (TypeError, ValueError) as exc:
        raise SpectraIOError(f"{path}: a SPECOBJ value has the wrong type ({exc})") from None
    return SDSSSpectrum(path=path, loglam=loglam, flux=flux, ivar=ivar, and_mask=and_mask, meta=meta)


def _meta_get(meta: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    key = _find_column(list(meta), *names)
    if key is None:
        return default
    value = meta[key]
    if value is None or value is np.ma.masked:
        return default
    return value


def _atomic_write_hdul(hdul: fits.HDUList, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        hdul.writeto(tmp, overwrite=True, checksum=True)  # CHECKSUM/DATASUM: readers detect damaged bytes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_spec_fits(
    path: str | os.PathLike,
    *,
    loglam: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    and_mask: np.ndarray,
    meta: Mapping[str, Any],
    or_mask: np.ndarray | None = None,
    wdisp: np.ndarray | None = None,
    sky: np.ndarray | None = None,
    model: np.ndarray | None = None,
) -> Path:
    """Write a spectrum in the layout of an SDSS DR8+ "lite" ``spec-PLATE-MJD-FIBER.fits`` file.

    HDU0: primary header (PLATEID, MJD, FIBERID, RA, DEC, PLUG_RA, PLUG_DEC, RUN2D, COEFF0,
    COEFF1, BUNIT, VACUUM, …). HDU1 ``COADD``: flux, loglam, ivar (E), and_mask, or_mask (J),
    wdisp, sky, model (E). HDU2 ``SPECOBJ``: one row (PLATE, MJD, FIBERID, SPECOBJID as a string,
    PLUG_RA, PLUG_DEC, CLASS, SUBCLASS, Z, Z_ERR, ZWARNING, SN_MEDIAN, SN_MEDIAN_ALL, RUN2D, …).
    HDU3 ``SPZLINE``: the line-fit table, empty. Written atomically (temporary file + rename).

    Parameters
    ----------
    path
        Target file (its folder is created).
    loglam, flux, ivar, and_mask
        Equal-length 1-D arrays: log10 vacuum wavelength (Å), flux (1e-17 erg/s/cm²/Å), inverse
        variance, SDSS and_mask bits.
    meta
        Store-style keys (case-insensitive): ``plate``, ``mjd``, ``fiberid`` (required);
        ``specObjID`` (default :func:`make_specobjid` with ``run2d``), ``run2d`` (default the DR17
        reduction of the plate), ``ra``, ``dec``, ``z``, ``zErr`` (default NaN), ``class``,
        ``subClass`` (default ''), ``zWarning`` (0), ``sn_median`` (default: computed),
        ``source`` (written as keyword KA_SRC; 'sim' for simulated files).
    or_mask, wdisp, sky, model
        Optional further COADD columns (defaults: and_mask, 1.0, 0.0, 0.0).

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    SpectraIOError
        For arrays of different lengths or not of real numbers, non-finite loglam, or missing plate/MJD/fibre.
    """
    path = Path(path)
    arrays = {"loglam": loglam, "flux": flux, "ivar": ivar, "and_mask": and_mask}
    arrays = {k: np.asarray(v).ravel() for k, v in arrays.items()}
    n = arrays["flux"].size
    if n == 0 or any(a.size != n for a in arrays.values()):
        raise SpectraIOError(f"{path}: loglam, flux, ivar and and_mask must be non-empty and equally long")
    for k, a in arrays.items():
        if a.dtype.kind not in "biuf":
            raise SpectraIOError(f"{path}: {k} must hold real numbers, got dtype {a.dtype}")
    ll = arrays["loglam"].astype(np.float64)
    if not np.all(np.isfinite(ll)):  # COEFF0/COEFF1 header cards cannot hold NaN or inf
        raise SpectraIOError(f"{path}: loglam must be finite")
    extra = {"or_mask": or_mask, "wdisp": wdisp, "sky": sky, "model": model}
    for k, v in extra.items():
        if v is not None and np.asarray(v).size != n:
            raise SpectraIOError(f"{path}: {k} has {np.asarray(v).size} values, expected {n}")

    plate = _meta_get(meta, "plate", "plateid")
    mjd = _meta_get(meta, "mjd")
    fiberid = _meta_get(meta, "fiberid", "fiber")
    if plate is None or mjd is None or fiberid is None:
        raise SpectraIOError(f"{path}: meta needs plate, mjd and fiberid, got keys {sorted(meta)}")
    plate, mjd, fiberid = int(plate), int(mjd), int(fiberid)
    run2d = _norm_run2d(_meta_get(meta, "run2d")) or _default_run2d(plate, 17)
    specobjid = _meta_get(meta, "specObjID")
    specobjid = make_specobjid(plate, mjd, fiberid, run2d) if specobjid is None else int(specobjid)
    ra = float(_meta_get(meta, "ra", "plug_ra", default=np.nan))
    dec = float(_meta_get(meta, "dec", "plug_dec", default=np.nan))
    z = float(_meta_get(meta, "z", default=np.nan))
    zerr = float(_meta_get(meta, "zErr", "z_err", default=np.nan))
    cls = str(_meta_get(meta, "class", default="")).strip()
    subcls = str(_meta_get(meta, "subClass", default="")).strip()
    zwarning = int(_meta_get(meta, "zWarning", default=0))
    source = str(_meta_get(meta, "source", default="sdss")).strip() or "sdss"
    f32 = arrays["flux"].astype(np.float32)
    iv32 = arrays["ivar"].astype(np.float32)
    am32 = arrays["and_mask"].astype(np.int32)
    sn = _meta_get(meta, "sn_median")
    sn = float(sn) if sn is not None and math.isfinite(float(sn)) else _median_sn(f32, iv32, am32)
    legacy = run2d in [str(r) for r in _query_spec()["sas"]["legacy_run2d"]]

    hdr = fits.Header()
    hdr["TELESCOP"] = ("SDSS 2.5-M", "Sloan Digital Sky Survey")
    hdr["FLAVOR"] = ("science", "exposure type")
    hdr["PLATEID"] = (plate, "SDSS plate number")
    hdr["MJD"] = (mjd, "MJD of observation")
    hdr["FIBERID"] = (fiberid, "fiber number")
    if math.isfinite(ra) and math.isfinite(dec):  # FITS headers cannot hold NaN (the documented default)
        hdr["RA"] = (ra, "[deg] object RA (real files: plate centre)")
        hdr["DEC"] = (dec, "[deg] object Dec (real files: plate centre)")
        hdr["PLUG_RA"] = (ra, "[deg] RA of the fibre")
        hdr["PLUG_DEC"] = (dec, "[deg] Dec of the fibre")
    hdr["RUN2D"] = (run2d, "spectro-2D reduction name")
    hdr["COEFF0"] = (float(ll[0]), "log10 of the first wavelength (A)")
    hdr["COEFF1"] = (float(np.median(np.diff(ll))) if n > 1 else 1e-4, "log10 dispersion per pixel")
    hdr["VACUUM"] = (True, "wavelengths are in vacuum")
    hdr["BUNIT"] = ("1E-17 erg/cm^2/s/Ang", "flux unit")
    hdr["KA_SRC"] = (source, "keras_astro: sdss (archive) or sim (simulated)")
    hdr["ORIGIN"] = (f"keras_astro {__version__}", "writer")

    def col(name: str, fmt: str, values: Any, dtype: Any) -> fits.Column:
        return fits.Column(name=name, format=fmt, array=np.asarray(values, dtype=dtype))

    coadd = fits.BinTableHDU.from_columns(
        [
            col("flux", "E", f32, np.float32),
            col("loglam", "E", ll, np.float32),
            col("ivar", "E", iv32, np.float32),
            col("and_mask", "J", am32, np.int32),
            col("or_mask", "J", am32 if or_mask is None else np.asarray(or_mask).ravel(), np.int32),
            col("wdisp", "E", np.ones(n) if wdisp is None else np.asarray(wdisp).ravel(), np.float32),
            col("sky", "E", np.zeros(n) if sky is None else np.asarray(sky).ravel(), np.float32),
            col("model", "E", np.zeros(n) if model is None else np.asarray(model).ravel(), np.float32),
        ],
        name="COADD",
    )
    sid = str(specobjid)
    wl = 10.0**ll
    good = _good_pixels(iv32, am32)
    specobj = fits.BinTableHDU.from_columns(
        [
            col("SURVEY", "6A", ["sdss" if legacy else "eboss"], "S6"),
            col("RUN2D", "7A", [run2d], "S7"),
            col("RUN1D", "7A", [run2d], "S7"),
            col("PLATE", "J", [plate], np.int32),
            col("MJD", "J", [mjd], np.int32),
            col("FIBERID", "J", [fiberid], np.int32),
            col("PLUG_RA", "D", [ra], np.float64),
            col("PLUG_DEC", "D", [dec], np.float64),
            col("CLASS", "6A", [cls], "S6"),
            col("SUBCLASS", f"{max(21, len(subcls))}A", [subcls], f"S{max(21, len(subcls))}"),
            col("Z", "E", [z], np.float32),
            col("Z_ERR", "E", [zerr], np.float32),
            col("ZWARNING", "J", [zwarning], np.int32),
            col("SN_MEDIAN", "5E", [[sn] * 5], np.float32),
            col("SN_MEDIAN_ALL", "E", [sn], np.float32),
            col("WAVEMIN", "E", [wl[good].min() if good.any() else np.nan], np.float32),
            col("WAVEMAX", "E", [wl[good].max() if good.any() else np.nan], np.float32),
            col("WCOVERAGE", "E", [float(np.ptp(ll[good])) if good.any() else 0.0], np.float32),
            col("SPECPRIMARY", "B", [1], np.uint8),
            col("SPECOBJID", f"{max(19, len(sid))}A", [sid], f"S{max(19, len(sid))}"),
        ],
        name="SPECOBJ",
    )
    spzline = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="PLATE", format="J", array=np.zeros(0, np.int32)),
            fits.Column(name="MJD", format="J", array=np.zeros(0, np.int32)),
            fits.Column(name="FIBERID", format="J", array=np.zeros(0, np.int32)),
            fits.Column(name="LINENAME", format="13A", array=np.zeros(0, "S13")),
            fits.Column(name="LINEWAVE", format="D", array=np.zeros(0, np.float64)),
            fits.Column(name="LINEZ", format="E", array=np.zeros(0, np.float32)),
            fits.Column(name="LINEZ_ERR", format="E", array=np.zeros(0, np.float32)),
            fits.Column(name="LINEAREA", format="E", array=np.zeros(0, np.float32)),
            fits.Column(name="LINEEW", format="E", array=np.zeros(0, np.float32)),
        ],
        name="SPZLINE",
    )
    hdul = fits.HDUList([fits.PrimaryHDU(header=hdr), coadd, specobj, spzline])
    return _atomic_write_hdul(hdul, path)


# ============================================================================================
# the store lattice


def place_on_lattice(spec: SDSSSpectrum, wavelengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Put a coadd on a log10-uniform store grid by integer pixel offset (no resampling).

    Parameters
    ----------
    spec
        The spectrum (its ``loglam`` must sit on the grid's lattice).
    wavelengths
        The store grid in Å, uniform in log10 (e.g. ``keras_astro.specs.spectral_grid("sdss")``,
        step 1e-4).

    Returns
    -------
    flux, ivar, and_mask
        Arrays of the grid's length (float32, float32, int32). Pixels outside the spectrum's
        coverage have flux 0, ivar 0 and the NODATA bit set in ``and_mask``; flux is 0 wherever
        ivar is 0 (the store's convention).

    Raises
    ------
    SpectraIOError
        If the grid is not uniform in log10, a pixel of the spectrum lies more than 1e-6 dex off
        the lattice, or the spectrum does not overlap the grid. The message names the file.
    """
    wl = np.asarray(wavelengths, dtype=np.float64)
    if wl.ndim != 1 or wl.size < 2 or not np.all(wl > 0):
        raise SpectraIOError(f"{spec.path}: store grid must be 1-D positive wavelengths, got shape {wl.shape}")
    grid = np.log10(wl)
    step = (grid[-1] - grid[0]) / (grid.size - 1)
    if step <= 0 or np.max(np.abs(grid - (grid[0] + step * np.arange(grid.size)))) > LATTICE_TOL:
        raise SpectraIOError(f"{spec.path}: the store grid is not uniform in log10(lambda)")
    offset = (spec.loglam - grid[0]) / step
    k = np.rint(offset).astype(np.int64)
    miss = np.abs(spec.loglam - (grid[0] + k * step))
    if np.any(miss > LATTICE_TOL):
        i = int(np.argmax(miss))
        raise SpectraIOError(
            f"{spec.path}: loglam is not on the store lattice (loglam0 {grid[0]:.6f}, step {step:.3e}): pixel {i} "
            f"at {spec.loglam[i]:.7f} is {miss[i]:.2e} dex off (tolerance {LATTICE_TOL:g})"
        )
    inside = (k >= 0) & (k < grid.size)
    if not inside.any():
        raise SpectraIOError(
            f"{spec.path}: spectrum ({10 ** spec.loglam[0]:.1f}-{10 ** spec.loglam[-1]:.1f} A) does not overlap the "
            f"store grid ({wl[0]:.1f}-{wl[-1]:.1f} A)"
        )
    nodata = 1 << int(specs.load_spec("spectra")["and_mask_bad_bits"]["NODATA"])
    flux = np.zeros(grid.size, np.float32)
    ivar = np.zeros(grid.size, np.float32)
    mask = np.full(grid.size, nodata, np.int32)
    idx = k[inside]
    flux[idx] = spec.flux[inside]
    ivar[idx] = spec.ivar[inside]
    mask[idx] = spec.and_mask[inside]
    flux[ivar == 0] = 0.0
    return flux, ivar, mask


def _store_meta(spectra: Sequence[SDSSSpectrum], rows: Sequence[Mapping[str, Any] | None]) -> dict[str, np.ndarray]:
    """Store meta columns: the FITS SPECOBJ values, overridden by matching target columns.

    Key columns (specObjID, plate, mjd, fiberid) always come from the file. Target columns match
    store column names case-insensitively (``fiberID`` → ``fiberid``, ``Z_VI`` → ``z_vi``).
    Required columns that neither provides (e.g. petroMag_* for a DR16Q target list) are NaN;
    missing values of optional integer columns (bestObjID, ...) are 0, SDSS's "none".
    """
    schema = spectra_store.meta_schema()
    keys = {"specObjID", "plate", "mjd", "fiberid"}
    target_names = sorted({name for r in rows if r for name in r})
    matched: dict[str, str] = {}
    for s in schema:
        t = _find_column(target_names, s)
        if s not in keys and t is not None:
            matched[s] = t
    names = list(dict.fromkeys([*spectra_store.required_meta_columns(), "sn_median", "source", *matched]))
    out: dict[str, np.ndarray] = {}
    for name in names:
        values = []
        for spec, r in zip(spectra, rows):
            value = spec.meta.get(name, np.nan)
            tname = matched.get(name)
            if r and tname is not None and not _is_missing(r.get(tname)):
                value = r[tname]
            values.append(value)
        dtype = schema[name]
        if name == "specObjID":
            out[name] = np.array([int(v) for v in values], dtype=np.uint64)
        elif dtype.kind == "S":
            out[name] = np.array(["" if _is_missing(v) else str(v).strip() for v in values], dtype=str)
        elif dtype.kind == "b":
            out[name] = np.array([False if _is_missing(v) else bool(v) for v in values])
        elif dtype.kind in "iu":
            out[name] = np.array([0 if _is_missing(v) else int(v) for v in values], dtype=dtype)
        else:
            out[name] = np.array([np.nan if _is_missing(v) else float(v) for v in values], dtype=np.float64)
    return out


def _is_missing(v: Any) -> bool:
    if v is None or v is np.ma.masked:
        return True
    if isinstance(v, (float, np.floating)):
        return not math.isfinite(float(v))
    return False


def _append_batch(
    store: Path,
    spectra: Sequence[SDSSSpectrum],
    placed: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    rows: Sequence[Mapping[str, Any] | None],
    attrs: Mapping[str, Any],
) -> Path:
    """Append spectra already placed on the ``sdss`` lattice as one new shard."""
    return spectra_store.append_shard(
        store,
        fluxes=np.stack([p[0] for p in placed]),
        ivar=np.stack([p[1] for p in placed]),
        and_mask=np.stack([p[2] for p in placed]),
        wavelengths=specs.spectral_grid("sdss"),
        meta=_store_meta(spectra, rows),
        attrs=dict(attrs),
    )


def _check_store_dir(store: Path) -> Path:
    if store.exists() and not store.is_dir():
        raise SpectraIOError(
            f"{store}: is a file; the download appends shards to a store directory (pass a folder, e.g. 'spectra/raw')"
        )
    return store


# ============================================================================================
# the client


@dataclass
class DownloadReport:
    """What :meth:`SDSSClient.download_spectra` did.

    ``n_downloaded + n_skipped + n_failed + n_duplicates == n_requested``.

    Attributes
    ----------
    n_requested
        Rows of the target list.
    n_downloaded
        Files fetched by this run.
    n_skipped
        Targets already done: a FITS file that reads cleanly, or a specObjID already in the store.
    n_failed
        Targets that failed (HTTP error, bad file, off the lattice, ...).
    failures
        ``(specObjID, reason)`` per failure (specObjID None when the targets did not give one).
    n_duplicates
        Rows dropped because an earlier row named the same spectrum.
    n_stored
        Spectra appended to the store.
    shards
        Store shards written by this run.
    failures_csv
        The ``failures.csv`` written to the output folder.
    """

    n_requested: int
    n_downloaded: int
    n_skipped: int
    n_failed: int
    failures: list[tuple[int | None, str]] = field(default_factory=list)
    n_duplicates: int = 0
    n_stored: int = 0
    shards: list[Path] = field(default_factory=list)
    failures_csv: Path | None = None


@dataclass
class _Target:
    index: int
    plate: int
    mjd: int
    fiberid: int
    specobjid: int | None
    run2d: str | None
    row: dict[str, Any]


@dataclass
class _Outcome:
    status: str  # "downloaded", "present", "failed"
    spectrum: SDSSSpectrum | None = None
    reason: str = ""


def _targets_frame(targets: Table | pd.DataFrame) -> tuple[list[_Target], list[tuple[int | None, dict, str]]]:
    """Parse the target list; returns (targets, rows that cannot be parsed with their reason)."""
    if isinstance(targets, Table):
        names = [c for c in targets.colnames if targets[c].ndim == 1]
        columns = {}
        for c in names:
            col = targets[c]
            columns[c] = np.ma.asarray(col).tolist(None) if np.ma.isMaskedArray(col) else np.asarray(col).tolist()
        n = len(targets)
    elif isinstance(targets, pd.DataFrame):
        names = [str(c) for c in targets.columns]
        columns = {str(c): targets[c].tolist() for c in targets.columns}
        n = len(targets)
    else:
        raise TypeError(f"targets must be an astropy Table or a pandas DataFrame, got {type(targets).__name__}")
    pc, mc, fc = _find_column(names, "plate"), _find_column(names, "mjd"), _find_column(names, "fiberid", "fiberID")
    missing = [w for w, c in (("plate", pc), ("mjd", mc), ("fiberid", fc)) if c is None]
    if missing:
        raise SpectraIOError(
            f"targets lack column(s) {missing} (needed to download by plate-MJD-fibre); columns: {names}"
        )
    sc, rc = _find_column(names, "specObjID"), _find_column(names, "run2d")
    parsed: list[_Target] = []
    bad: list[tuple[int | None, dict, str]] = []
    for i in range(n):
        row = {c: columns[c][i] for c in names}
        sid = None
        if sc is not None and isinstance(row[sc], (float, np.floating)):
            # a float cannot hold a 64-bit id exactly: the file's SPECOBJID will name the spectrum
            sid = None
        elif sc is not None and not _is_missing(row[sc]):
            try:
                sid = int(_as_uint64([row[sc]], "targets")[0]) or None
            except SpectraIOError as exc:
                bad.append((None, row, str(exc)))
                continue
        try:
            plate, mjd, fiber = int(row[pc]), int(row[mc]), int(row[fc])
        except (TypeError, ValueError, OverflowError):
            bad.append((sid, row, f"bad plate/mjd/fiberid {row[pc]!r}/{row[mc]!r}/{row[fc]!r}"))
            continue
        run2d = _norm_run2d(row[rc]) if rc is not None else None
        parsed.append(_Target(i, plate, mjd, fiber, sid, run2d, row))
    return parsed, bad


def read_targets(path: str | os.PathLike) -> Table:
    """Read a target list for :meth:`SDSSClient.download_spectra` from a CSV file.

    Parameters
    ----------
    path
        CSV with a header line, e.g. what ``keras-astro spectra query`` writes: ``plate``,
        ``mjd``, ``fiberID`` (any case) and optionally ``specObjID``, ``run2d`` and further columns.

    Returns
    -------
    astropy.table.Table
        The rows as read; values of single rows are not judged here (``download_spectra``
        reports unusable rows as failures with the reason).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    SpectraIOError
        If the file is not readable CSV (undecodable bytes, rows with more fields than the header)
        or lacks the plate, mjd or fiberID column; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such targets file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns about masked ints etc.; the rows are judged later
            table = Table.read(path, format="ascii.csv", encoding="utf-8")
    except Exception as exc:  # astropy raises InconsistentTableError, UnicodeDecodeError, ValueError ...
        raise SpectraIOError(
            f"{path}: not a readable CSV target list ({type(exc).__name__}: {str(exc)[:300]})", unreadable=True
        ) from None
    names = [str(c) for c in table.colnames]
    missing = [
        w
        for w, c in (("plate", ("plate",)), ("mjd", ("mjd",)), ("fiberid", ("fiberid", "fiberID")))
        if _find_column(names, *c) is None
    ]
    if missing:
        raise SpectraIOError(
            f"{path}: target list lacks column(s) {missing} (needed to download by plate-MJD-fibre); "
            f"columns: {names[:20]}"
        )
    return table


def _write_failures_csv(
    path: Path, failures: Sequence[tuple[int | None, int | None, int | None, int | None, str]]
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(FAILURE_COLUMNS)
            for row in failures:
                w.writerow(["" if v is None else v for v in row])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class SDSSClient:
    """SkyServer SQL (astroquery) and SAS spectrum downloads for one SDSS data release.

    Parameters
    ----------
    data_release
        SDSS data release (17 by default; DR17 holds every SDSS-I–IV optical spectrum).
    timeout
        Seconds per HTTP request (the thesis used 600 for the SQL query, Sec 4.1).
    cache_dir
        Folder for astroquery's SQL response cache (default astroquery's own).
    retries
        Attempts in all for a SkyServer query (connection errors, time-outs, HTTP 408/429/5xx).
    backoff
        Seconds before the second query attempt; doubled before each further one.
    sas_base_url
        Science Archive Server root (default ``data_specs/sdss_query.yaml``).
    sleep
        Function used to wait between attempts (for tests).
    """

    def __init__(
        self,
        *,
        data_release: int = 17,
        timeout: float = 600,
        cache_dir: str | os.PathLike | None = None,
        retries: int = 3,
        backoff: float = 2.0,
        sas_base_url: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if int(data_release) < 8:
            raise ValueError(f"data_release must be 8 or later (spec-PLATE-MJD-FIBER layout), got {data_release}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 s, got {timeout}")
        if retries < 1:
            raise ValueError(f"retries must be >= 1, got {retries}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0 s, got {backoff}")
        self.data_release = int(data_release)
        self.timeout = float(timeout)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.sas_base_url = (sas_base_url or _query_spec()["sas"]["base_url"]).rstrip("/")
        self._sleep = sleep
        self._local = threading.local()

    # -- SQL ----------------------------------------------------------------------------------
    def _astroquery(self) -> Any:
        from astroquery.sdss import SDSSClass

        client = SDSSClass()
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            client.cache_location = self.cache_dir
        return client

    @staticmethod
    def _forget(client: Any, cache: bool) -> None:
        """Drop the cached copy of a bad answer so the next call asks SkyServer again."""
        q = getattr(client, "_last_query", None)
        if cache and q is not None:
            try:
                q.request_file(client.cache_location).unlink(missing_ok=True)
            except OSError as exc:  # a stale cache entry is a nuisance, not an error
                log.debug("could not remove cached SkyServer answer: %s", exc)

    def run_sql(
        self, sql: str, *, cache: bool = True, emission_lines: bool = False, check_columns: bool = False
    ) -> Table:
        """Run one SQL statement on SkyServer (``SDSS.query_sql``) with retries; return the rows.

        With ``check_columns`` the answer must carry every column of :func:`build_query` (with
        or without the emission-line variant), which tells SkyServer CSV from an error page.

        Raises
        ------
        SDSSUnavailableError
            If SkyServer cannot be reached after ``retries`` attempts or refuses the request.
        SpectraIOError
            If SkyServer answers with an error message or with something that is not its CSV.
        """
        from astroquery.exceptions import RemoteServiceError

        client = self._astroquery()
        where = f"SkyServer DR{self.data_release}"
        last: BaseException | None = None
        response = None
        for attempt in range(1, self.retries + 1):
            try:
                response = client.query_sql_async(
                    sql, timeout=self.timeout, data_release=self.data_release, cache=cache
                )
                status = int(getattr(response, "status_code", 200) or 200)
                if status in TRANSIENT_STATUS:
                    self._forget(client, cache)
                    raise _TransientHTTPError(f"HTTP {status} {getattr(response, 'reason', '')}".strip())
                if status >= 400:
                    self._forget(client, cache)
                    raise SDSSUnavailableError(f"{where} refused the query with HTTP {status}: {sql[:200]}")
                break
            except (*TRANSIENT_EXCEPTIONS, _TransientHTTPError) as exc:
                last = exc
                response = None
                if attempt < self.retries:
                    delay = self.backoff * 2 ** (attempt - 1)
                    log.warning(
                        "%s query failed (attempt %d/%d: %s); retrying in %.1f s",
                        where,
                        attempt,
                        self.retries,
                        exc,
                        delay,
                    )
                    self._sleep(delay)
        if response is None:
            raise SDSSUnavailableError(
                f"could not reach {where} ({getattr(client, '_last_url', '')}) after {self.retries} attempt(s): {last}"
            ) from last
        text = response.text
        header = next((ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")), "")
        names = {h.strip().lower() for h in header.split(",")}
        expected = [c.split(".", 1)[-1] for c in query_columns(emission_lines=emission_lines)] if check_columns else []
        lacking = [c for c in expected if c.lower() not in names]
        if lacking:
            self._forget(client, cache)
            raise SpectraIOError(
                f"{where}: the answer is not the expected SkyServer CSV (no column(s) {lacking[:5]}"
                f"{' ...' if len(lacking) > 5 else ''}); it starts {text[:120]!r}",
                unreadable=True,
            )
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*OverflowError converting to IntType.*")
                table = client._parse_result(response)  # the parser of astroquery's SDSS.query_sql
        except RemoteServiceError as exc:
            self._forget(client, cache)
            raise SpectraIOError(f"{where} rejected the query: {str(exc)[:500]} (SQL: {sql[:300]})") from None
        except Exception as exc:  # astropy raises many types for text that is not CSV
            self._forget(client, cache)
            raise SpectraIOError(
                f"{where}: the answer is not SkyServer CSV ({type(exc).__name__}: {exc}); it starts {text[:120]!r}",
                unreadable=True,
            ) from None
        if table is None:
            return _empty_result(emission_lines)
        return _clean_query_table(table)

    def query(
        self,
        kind: str = "ALL",
        *,
        top: int | None = None,
        balance: bool = False,
        shares: Mapping[str, float] | None = None,
        seed: int = 0,
        cache: bool = True,
        **kw: Any,
    ) -> Table:
        """Run the thesis's query (Sec 4.1) on SkyServer.

        Parameters
        ----------
        kind
            ``ALL``, ``QSO``, ``STAR`` or ``GALAXY`` (see :func:`build_query`).
        top
            ``SELECT TOP n`` of each query.
        balance
            Run separate QSO, STAR and GALAXY queries, as the thesis did to correct the 83 %
            galaxies of an unfiltered query, and subsample them (seeded) to ``shares``: the largest
            sample whose class counts follow the shares. ``kind`` must be ``ALL``.
        shares
            Class → share (normalised); default the thesis's 56.0 / 33.8 / 10.2 %
            (``spectra.yaml`` ``thesis_class_shares``).
        seed
            Seed of the subsampling.
        cache
            Use astroquery's response cache.
        **kw
            ``emission_lines=``, ``where=`` of :func:`build_query`.

        Returns
        -------
        astropy.table.Table
            One row per specObjID (duplicates dropped, first kept), SkyServer's column names
            (z, ra, dec, specObjID as uint64, ..., mjd, fiberID, run2d as str); empty strings
            for NULL strings, NaN for NULL numbers. ``meta`` records the SQL, release and date.
        """
        limit = int(_query_spec()["server_row_limit"])
        if top is not None and int(top) > limit:
            log.warning("top=%d exceeds SkyServer's limit of %d rows; results stop there", top, limit)
        emission_lines = bool(kw.get("emission_lines", False))
        unknown = set(kw) - {"emission_lines", "where"}
        if unknown:
            raise TypeError(f"query() got unexpected keyword argument(s) {sorted(unknown)}")

        def run(k: str) -> tuple[str, Table]:
            sql = build_query(k, top=top, **kw)
            t = self.run_sql(sql, cache=cache, emission_lines=emission_lines, check_columns=True)
            if len(t) >= limit:
                log.warning("SkyServer returned %d rows, its limit: the %s result is truncated", len(t), k)
            log.info("SkyServer DR%d %s query: %d rows", self.data_release, k, len(t))
            return sql, t

        if not balance:
            sql, table = run(_kind(kind))
            table = _dedupe_table(table, what=f"{_kind(kind)} query")
            table.meta.update(self._meta([sql]))
            return table

        if _kind(kind) != "ALL":
            raise ValueError(f"balance=True runs its own QSO / STAR / GALAXY queries; kind must be 'ALL', got {kind!r}")
        wanted = _class_shares(shares)
        parts: dict[str, Table] = {}
        sqls: list[str] = []
        seen: set[int] = set()
        for cls in wanted:
            sql, t = run(cls)
            sqls.append(sql)
            t = _dedupe_table(t, what=f"{cls} query")
            key = _find_column(t.colnames, "specObjID")
            if key is not None and len(t):
                ids = np.asarray(t[key]).astype(np.uint64)
                fresh = np.array([int(i) not in seen for i in ids], bool)
                if not fresh.all():
                    log.info("%s query: dropped %d row(s) already returned by another class", cls, int((~fresh).sum()))
                t = t[fresh]
                seen.update(int(i) for i in ids[fresh])
            parts[cls] = t
        available = {c: len(parts[c]) for c in wanted}
        empty = [c for c, n in available.items() if n == 0]
        if empty:
            raise SpectraIOError(
                f"SkyServer DR{self.data_release}: no rows for class(es) {empty}; cannot balance to shares {wanted}"
            )
        counts = _apportion(wanted, available)
        rng = np.random.default_rng(seed)
        chosen = []
        for cls in wanted:
            pick = np.sort(rng.choice(available[cls], size=counts[cls], replace=False))
            chosen.append(parts[cls][pick])
        table = vstack(chosen, join_type="outer", metadata_conflicts="silent")
        table = _clean_query_table(table)
        total = sum(counts.values())
        log.info(
            "balanced sample of %d: %s (available %s, shares %s)",
            total,
            counts,
            available,
            {c: round(s, 3) for c, s in wanted.items()},
        )
        table.meta.update(self._meta(sqls))
        table.meta.update({"BALANCED": True, "SEED": int(seed), "COUNTS": str(counts)})
        return table

    def _meta(self, sqls: Sequence[str]) -> dict[str, Any]:
        return {
            "SQL": " ;; ".join(sqls),
            "DR": self.data_release,
            "RETRIEVD": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "REFERENC": str(_query_spec()["reference"]),
        }

    # -- spectra ------------------------------------------------------------------------------
    def spectrum_url(self, plate: int, mjd: int, fiberid: int, run2d: str | int | None = None) -> str:
        """SAS URL of the "lite" spec file of a plate–MJD–fibre.

        BOSS/eBOSS reductions (``v5_13_2``...) live under ``eboss/spectro/redux``, SDSS-I/II ones
        (``26``, ``103``, ``104``) under ``sdss/spectro/redux`` (``data_specs/sdss_query.yaml``).
        Without ``run2d``, plates up to 3006 take the release's legacy reduction, later plates its
        BOSS reduction.
        """
        sas = _query_spec()["sas"]
        plate, mjd, fiberid = int(plate), int(mjd), int(fiberid)
        r = _norm_run2d(run2d) or _default_run2d(plate, self.data_release)
        template = "sdss" if r in [str(x) for x in sas["legacy_run2d"]] else "boss"
        return sas["url_templates"][template].format(
            base=self.sas_base_url, dr=self.data_release, run2d=r, plate=plate, file=spec_file_name(plate, mjd, fiberid)
        )

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["User-Agent"] = _USER_AGENT
            self._local.session = s
        return s

    def _obtain(self, t: _Target, out_dir: Path, retries: int, backoff: float) -> _Outcome:
        """Return the target's spectrum: the file on disk if it reads cleanly, else downloaded."""
        final = out_dir / spec_file_name(t.plate, t.mjd, t.fiberid)
        if final.is_file():
            try:
                return _Outcome("present", read_spec_fits(final))
            except SpectraIOError as exc:
                log.info("%s does not read cleanly (%s); downloading it again", final.name, exc)
        try:
            url = self.spectrum_url(t.plate, t.mjd, t.fiberid, t.run2d)
        except ValueError as exc:
            return _Outcome("failed", reason=str(exc))
        last = ""
        for attempt in range(retries + 1):
            try:
                response = self._session().get(url, timeout=self.timeout)
            except TRANSIENT_EXCEPTIONS as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                status = int(response.status_code)
                if status == 200:
                    try:
                        spec = self._save(response.content, final, url)
                        return _Outcome("downloaded", spec)
                    except SpectraIOError as exc:
                        if not exc.unreadable:
                            return _Outcome("failed", reason=f"bad spectrum from {url}: {exc}")
                        last = f"unreadable download: {exc}"
                    except OSError as exc:
                        return _Outcome("failed", reason=f"cannot write {final}: {exc}")
                elif status in TRANSIENT_STATUS:
                    last = f"HTTP {status} {response.reason or ''}".strip()
                else:
                    return _Outcome(
                        "failed", reason=f"HTTP {status} {response.reason or ''} for {url}".replace("  ", " ")
                    )
            if attempt < retries:
                delay = backoff * 2**attempt
                log.warning(
                    "%s: attempt %d/%d failed (%s); retrying in %.1f s",
                    final.name,
                    attempt + 1,
                    retries + 1,
                    last,
                    delay,
                )
                self._sleep(delay)
        return _Outcome("failed", reason=f"gave up after {retries + 1} attempt(s): {last} ({url})")

    @staticmethod
    def _save(content: bytes, final: Path, url: str) -> SDSSSpectrum:
        """Write the bytes to a temporary file, check they read cleanly, then rename (atomic)."""
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        tmp_path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                spec = read_spec_fits(tmp_path)
            except SpectraIOError as exc:
                raise SpectraIOError(
                    str(exc).replace(str(tmp_path), f"{final.name} from {url}"), unreadable=exc.unreadable
                ) from None
            os.replace(tmp_path, final)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        spec.path = final
        return spec

    def download_spectra(
        self,
        targets: Table | pd.DataFrame,
        out_dir: str | os.PathLike,
        *,
        store: str | os.PathLike | None = None,
        workers: int = 4,
        retries: int = 4,
        backoff: float = 1.0,
        progress: bool = True,
        batch_size: int = 256,
    ) -> DownloadReport:
        """Download spectra by plate–MJD–fibre into ``out_dir`` (and a store), resumably.

        Parameters
        ----------
        targets
            Rows with ``plate``, ``mjd``, ``fiberID`` (any case); optional ``specObjID`` and
            ``run2d`` (e.g. :meth:`query`'s table, or a DR16Q frame from :func:`read_dr16q`).
            Further columns whose names match store meta columns (``class``, ``petroMag_r``,
            ``Z_VI`` → ``z_vi``, ...) are copied into the store.
        out_dir
            Folder of the ``spec-PPPP-MMMMM-FFFF.fits`` files and ``failures.csv``.
        store
            Optional store directory: each finished batch is placed on the ``sdss`` lattice and
            appended as one new shard (:func:`keras_astro.io.spectra_store.append_shard`).
        workers
            Parallel downloads.
        retries
            Further attempts after the first for network errors, HTTP 408/429/5xx and unreadable
            downloads; other HTTP errors (404, ...) fail at once.
        backoff
            Seconds before the first retry; doubled before each further one.
        progress
            Show a progress bar.
        batch_size
            Spectra per store shard.

        Returns
        -------
        DownloadReport

        Notes
        -----
        Resumable: a re-run skips targets whose specObjID is in the store or whose file exists and
        reads cleanly (such a file is appended to the store if it is not there yet). Files are
        written to a temporary name, checked with :func:`read_spec_fits`, then renamed, so an
        interrupted run never leaves a partial file under a final name, and a specObjID is never
        stored twice (duplicates in ``targets`` are dropped first). ``failures.csv`` (specObjID,
        plate, mjd, fiberid, reason) lists this run's failures and is rewritten by every run.
        """
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0 s, got {backoff}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        from tqdm.auto import tqdm

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        store_dir = _check_store_dir(Path(store)) if store is not None else None
        parsed, bad = _targets_frame(targets)
        n_requested = len(parsed) + len(bad)
        failures: list[tuple[int | None, int | None, int | None, int | None, str]] = [
            (sid, None, None, None, reason) for sid, _row, reason in bad
        ]

        unique: list[_Target] = []
        seen_ids: set[int] = set()
        seen_files: set[tuple[int, int, int]] = set()
        for t in parsed:
            triple = (t.plate, t.mjd, t.fiberid)
            if (t.specobjid is not None and t.specobjid in seen_ids) or triple in seen_files:
                continue
            if t.specobjid is not None:
                seen_ids.add(t.specobjid)
            seen_files.add(triple)
            unique.append(t)
        n_duplicates = len(parsed) - len(unique)
        if n_duplicates:
            log.info("targets: dropped %d duplicate row(s)", n_duplicates)

        stored: set[int] = set(int(i) for i in spectra_store.store_spec_ids(store_dir)) if store_dir else set()
        todo = [t for t in unique if not (t.specobjid is not None and t.specobjid in stored)]
        n_skipped = len(unique) - len(todo)
        n_downloaded = 0
        n_stored = 0
        shards: list[Path] = []
        attrs = {
            "grid": "sdss",
            "source": "sdss",
            "data_release": self.data_release,
            "creator": f"keras_astro {__version__}: keras_astro.io.sdss.SDSSClient.download_spectra",
        }
        bar = tqdm(total=len(unique), desc=f"SDSS DR{self.data_release} spectra", unit="spec", disable=not progress)
        bar.update(n_skipped)
        executor = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="sdss-download")
        csv_path = out_dir / "failures.csv"
        grid = specs.spectral_grid("sdss")

        def fail(t: _Target, reason: str) -> None:
            failures.append((t.specobjid, t.plate, t.mjd, t.fiberid, reason))
            log.warning("spec-%04d-%05d-%04d (specObjID %s): %s", t.plate, t.mjd, t.fiberid, t.specobjid, reason)

        try:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                futures: list[Future] = [executor.submit(self._obtain, t, out_dir, retries, backoff) for t in batch]
                pending = set(futures)
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                        for f in done:
                            f.result()  # re-raises KeyboardInterrupt & co. from a worker
                        bar.update(len(done))
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
                to_store: list[SDSSSpectrum] = []
                placed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
                rows: list[dict[str, Any]] = []
                batch_ids: set[int] = set()
                for t, f in zip(batch, futures):
                    outcome: _Outcome = f.result()
                    if outcome.status == "failed":
                        fail(t, outcome.reason)
                        continue
                    spec = outcome.spectrum
                    assert spec is not None
                    sid = int(spec.meta["specObjID"])
                    if t.specobjid is not None and t.specobjid != sid:
                        log.warning(
                            "%s: specObjID %d in the file differs from %d in the targets; keeping the file's",
                            spec.path.name,
                            sid,
                            t.specobjid,
                        )
                    if store_dir is not None and (sid in stored or sid in batch_ids):
                        n_skipped += 1 if outcome.status == "present" else 0
                        n_downloaded += 1 if outcome.status == "downloaded" else 0
                        continue
                    if store_dir is not None:
                        try:
                            placed.append(place_on_lattice(spec, grid))
                        except SpectraIOError as exc:
                            fail(t, str(exc))
                            continue
                        to_store.append(spec)
                        rows.append(t.row)
                        batch_ids.add(sid)
                    n_downloaded += 1 if outcome.status == "downloaded" else 0
                    n_skipped += 1 if outcome.status == "present" else 0
                if store_dir is not None and to_store:
                    shard = _append_batch(store_dir, to_store, placed, rows, attrs)
                    shards.append(shard)
                    stored.update(batch_ids)
                    n_stored += len(to_store)
                    log.info("appended %d spectra to %s", len(to_store), shard)
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            bar.close()
            _write_failures_csv(csv_path, failures)

        report = DownloadReport(
            n_requested=n_requested,
            n_downloaded=n_downloaded,
            n_skipped=n_skipped,
            n_failed=len(failures),
            failures=[(f[0], f[4]) for f in failures],
            n_duplicates=n_duplicates,
            n_stored=n_stored,
            shards=shards,
            failures_csv=csv_path,
        )
        log.info(
            "SDSS download: %d requested, %d downloaded, %d skipped, %d failed, %d duplicates, %d stored",
            report.n_requested,
            report.n_downloaded,
            report.n_skipped,
            report.n_failed,
            report.n_duplicates,
            report.n_stored,
        )
        return report


# ============================================================================================
# a store from a folder of spec files


def spectra_from_fits_dir(
    fits_dir: str | os.PathLike,
    store_path: str | os.PathLike,
    *,
    progress: bool = True,
    batch_size: int = 1024,
) -> Path:
    """Build or extend a sharded store (on the ``sdss`` lattice) from a folder of spec files.

    Parameters
    ----------
    fits_dir
        Folder with ``spec-*.fits`` files (not searched recursively).
    store_path
        Store directory; new spectra go into new shards of ``batch_size`` rows.
    progress
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        ``store_path``.

    Notes
    -----
    SpecObjIDs already in the store (or met earlier in the folder) are skipped; files that do not
    read cleanly or are off the lattice are logged and skipped.
    """
    from tqdm.auto import tqdm

    fits_dir = Path(fits_dir)
    if not fits_dir.is_dir():
        raise FileNotFoundError(f"{fits_dir}: no such folder of spec files")
    store = _check_store_dir(Path(store_path))
    files = sorted(fits_dir.glob("spec-*.fits"))
    stored = set(int(i) for i in spectra_store.store_spec_ids(store))
    grid = specs.spectral_grid("sdss")
    attrs = {"grid": "sdss", "creator": f"keras_astro {__version__}: keras_astro.io.sdss.spectra_from_fits_dir"}
    batch: list[SDSSSpectrum] = []
    placed: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_added = n_bad = n_known = 0

    def flush() -> None:
        nonlocal n_added
        if batch:
            shard = _append_batch(store, batch, placed, [None] * len(batch), attrs)
            stored.update(int(s.meta["specObjID"]) for s in batch)
            n_added += len(batch)
            log.info("appended %d spectra to %s", len(batch), shard)
            batch.clear()
            placed.clear()

    batch_ids: set[int] = set()
    for path in tqdm(files, desc="spec files", unit="file", disable=not progress):
        try:
            spec = read_spec_fits(path)
            on_grid = place_on_lattice(spec, grid)
        except SpectraIOError as exc:
            log.warning("skipping %s", exc)
            n_bad += 1
            continue
        sid = int(spec.meta["specObjID"])
        if sid in stored or sid in batch_ids:
            n_known += 1
            continue
        batch.append(spec)
        placed.append(on_grid)
        batch_ids.add(sid)
        if len(batch) >= batch_size:
            flush()
            batch_ids.clear()
    flush()
    log.info("%s: %d spectra added, %d already stored, %d bad files skipped", store, n_added, n_known, n_bad)
    return store


# ============================================================================================
# DR16Q (FNet Sec 2)


def _dr16q_spec() -> dict[str, Any]:
    return specs.load_spec(DR16Q_SPEC)


def read_dr16q(path: str | os.PathLike, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read the DR16Q catalogue (``DR16Q_v4.fits``, HDU 1) into a DataFrame.

    Parameters
    ----------
    path
        The FITS file.
    columns
        Columns to read (case-insensitive). Default: those of ``data_specs/dr16q.yaml`` the file
        has, which must include the required ones (PLATE, MJD, FIBERID, Z_VI, Z_QN, CLASS_PERSON)
        and a DR12Q membership column (IS_QSO_DR12Q or Z_DR12Q).

    Returns
    -------
    pandas.DataFrame
        One row per catalogue row, in file order, native byte order; strings stripped.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    SpectraIOError
        If the file is not a readable FITS table, or lacks columns; the message names the file
        and the missing columns.
    """
    spec = _dr16q_spec()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such DR16Q file")
    try:
        df = _read_dr16q_table(path, spec, columns)
    except SpectraIOError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, VerifyError, KeyError … for broken bytes
        raise SpectraIOError(
            f"{path}: not a readable DR16Q FITS file ({type(exc).__name__}: {exc})", unreadable=True
        ) from None
    log.info("read %d DR16Q rows (%d columns) from %s", len(df), df.shape[1], path)
    return df


def _read_dr16q_table(path: Path, spec: Mapping[str, Any], columns: Sequence[str] | None) -> pd.DataFrame:
    """The body of :func:`read_dr16q` (its caller turns astropy's exceptions into SpectraIOError)."""
    with fits.open(path, memmap=True) as hdul:
        _check_complete(hdul, path)
        damage = fits_damage(hdul, path)  # CHECKSUM/DATASUM, when the file carries them
        if damage:
            raise SpectraIOError(f"{path}: corrupt FITS file ({'; '.join(damage)})", unreadable=True)
        idx = int(spec["hdu"])
        if len(hdul) <= idx or not isinstance(hdul[idx], fits.BinTableHDU):
            raise SpectraIOError(f"{path}: HDU {idx} is not the DR16Q binary table (HDUs: {[h.name for h in hdul]})")
        hdu = hdul[idx]
        have = [str(c) for c in hdu.columns.names]
        if columns is None:
            wanted = [c for c in spec["columns"] if _find_column(have, c)]
            missing = [c for c in spec["required"] if not _find_column(have, c)]
            member_cols = [r["column"] for r in spec["dr12q_membership"]]
            if not any(_find_column(have, c) for c in member_cols):
                missing.append(" or ".join(member_cols))
        else:
            wanted = [str(c) for c in columns]
            missing = [c for c in wanted if not _find_column(have, c)]
        if missing:
            raise SpectraIOError(
                f"{path}: DR16Q table (HDU {idx}) lacks column(s) {missing} (data_specs/{DR16Q_SPEC}.yaml); "
                f"it has {len(have)} columns, e.g. {have[:20]}"
            )
        data = hdu.data
        out: dict[str, np.ndarray] = {}
        try:
            for c in wanted:
                arr = np.asarray(data[_find_column(have, c)])
                if arr.ndim != 1:
                    raise SpectraIOError(
                        f"{path}: DR16Q column {c} is a vector column {arr.shape[1:]}; ask for scalar columns"
                    )
                if arr.dtype.kind == "S":
                    arr = np.char.strip(np.char.decode(arr, "ascii", errors="replace"))
                elif arr.dtype.kind == "U":
                    arr = np.char.strip(arr)
                else:
                    arr = arr.astype(arr.dtype.newbyteorder("="), copy=True)
                out[c] = arr
        except (OSError, ValueError, TypeError) as exc:
            if isinstance(exc, SpectraIOError):
                raise
            raise SpectraIOError(f"{path}: cannot read DR16Q column data ({exc})", unreadable=True) from None
    return pd.DataFrame(out)


def _dr12q_members(df: pd.DataFrame) -> np.ndarray:
    for rule in _dr16q_spec()["dr12q_membership"]:
        col = _find_column([str(c) for c in df.columns], rule["column"])
        if col is None:
            continue
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
        if rule["rule"] == "equals":
            return values == float(rule["value"])
        if rule["rule"] == "greater_than":
            return np.isfinite(values) & (values > float(rule["value"]))
        raise ValueError(f"data_specs/{DR16Q_SPEC}.yaml: unknown dr12q_membership rule {rule['rule']!r}")
    cols = [r["column"] for r in _dr16q_spec()["dr12q_membership"]]
    raise SpectraIOError(
        f"DR16Q frame lacks a DR12Q membership column ({' or '.join(cols)}); columns: {list(df.columns)}"
    )


def dr16q_fnet_split(
    df: pd.DataFrame,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    class_person: Sequence[int] = (3,),
) -> dict[str, np.ndarray]:
    """FNet's split of DR16Q (Sec 2, Sec 4) as positional row indices of ``df``.

    Parameters
    ----------
    df
        DR16Q rows (:func:`read_dr16q`) with CLASS_PERSON, Z_QN and IS_QSO_DR12Q or Z_DR12Q.
    val_fraction
        Share of the DR12Q pool held out for validation (FNet: 10 %, 24,976 of 249,762).
    seed
        Seed of the train/validation permutation.
    class_person
        CLASS_PERSON codes counted as visually inspected quasars (FNet: 3; add 30 for BAL QSOs).

    Returns
    -------
    dict
        ``train`` / ``val``: the VI quasars that are DR12Q quasars, split (1 − f) / f at random;
        ``test``: the VI quasars not in DR12Q (new in DR16Q); ``qn_fail``: VI quasars with
        ``Z_QN = -1`` (QuasarNET gave no redshift; FNet's 5,190). Sorted int64 arrays; train, val
        and test are disjoint and together are all VI quasars; qn_fail is a subset of them.
    """
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    spec = _dr16q_spec()
    names = [str(c) for c in df.columns]
    missing = [c for c in ("CLASS_PERSON", "Z_QN") if _find_column(names, c) is None]
    if missing:
        raise SpectraIOError(f"DR16Q frame lacks column(s) {missing}; columns: {names}")
    codes = [int(c) for c in np.atleast_1d(class_person)]
    cp = pd.to_numeric(df[_find_column(names, "CLASS_PERSON")], errors="coerce").to_numpy(np.float64)
    vi = np.isin(cp, codes)
    in12 = _dr12q_members(df)
    zqn = pd.to_numeric(df[_find_column(names, "Z_QN")], errors="coerce").to_numpy(np.float64)
    pool = np.flatnonzero(vi & in12)
    test = np.flatnonzero(vi & ~in12)
    qn_fail = np.flatnonzero(vi & (zqn == float(spec["qn_failed_value"])))
    rng = np.random.default_rng(seed)
    perm = rng.permutation(pool)
    n_val = int(math.floor(float(val_fraction) * len(pool) + 0.5))
    out = {
        "train": np.sort(perm[n_val:]).astype(np.int64),
        "val": np.sort(perm[:n_val]).astype(np.int64),
        "test": test.astype(np.int64),
        "qn_fail": qn_fail.astype(np.int64),
    }
    paper = spec["fnet"]
    log.info(
        "DR16Q FNet split (CLASS_PERSON in %s): train %d, val %d, test %d, qn_fail %d (FNet: %d / %d / %d / %d)",
        codes,
        len(out["train"]),
        len(out["val"]),
        len(out["test"]),
        len(out["qn_fail"]),
        paper["train"],
        paper["val"],
        paper["test"],
        paper["qn_failed_vi"],
    )
    return out
