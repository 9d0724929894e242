"""Download the NEPW band-merged catalogue from VizieR (Chen et al. 2021, Sec 2.1).

The catalogue of Kim et al. 2021 (MNRAS 500, 4078; VizieR ``J/MNRAS/500/4078``) holds the 44-band
photometry Chen et al. (2021) train on. :class:`NEPWVizierClient` fetches it with
:class:`astroquery.vizier.Vizier`, retries transient network failures, and converts the answer
to the layout of ``data_specs/nepw_catalogue.yaml`` (``ID``, ``ra``, ``dec``, ``z``, ``class``,
``{band}_mag``, ``{band}_magerr``; a missing band is −99.0 in both), which
:mod:`keras_astro.io.nepw` reads. :func:`save` writes the result atomically as FITS or CSV.

The VizieR table name and column labels come from ``data_specs/nepw_vizier.yaml``. They are
*assumed* (see that file); override any of them with ``column_map=`` / ``table=``.

Examples
--------
>>> from keras_astro.io import vizier
>>> table = vizier.NEPWVizierClient().fetch(row_limit=100)        # doctest: +SKIP
>>> vizier.save(table, "nepw.fits")                                # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests
from astropy.table import Column, Table

from keras_astro import specs

log = logging.getLogger(__name__)

__all__ = [
    "NEPWVizierClient",
    "VizierColumnError",
    "VizierError",
    "VizierMapping",
    "VizierResponseError",
    "VizierUnavailableError",
    "fetch",
    "from_votable",
    "save",
    "to_layout",
]

SPEC_NAME = "nepw_vizier"

#: Exceptions of :mod:`requests` after which a new attempt may succeed.
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
#: HTTP statuses after which a new attempt may succeed.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

_LOCAL_FILE_HINT = (
    "To work without the network, pass a local catalogue instead: `keras-astro agn ... --data PATH` "
    "with a FITS/CSV file in the layout of data_specs/nepw_catalogue.yaml (e.g. one written by "
    "keras_astro.io.vizier.save, or a VOTable saved from the VizieR web page converted with "
    "keras_astro.io.vizier.from_votable)."
)


class VizierError(Exception):
    """Base class of the errors of this module."""


class VizierResponseError(VizierError, ValueError):
    """VizieR answered, but not with the table that was asked for."""


class VizierColumnError(VizierResponseError):
    """The VizieR table lacks columns of the mapping.

    Attributes
    ----------
    missing
        The missing VizieR column labels.
    """

    def __init__(self, message: str, missing: Sequence[str]):
        super().__init__(message)
        self.missing = list(missing)


class VizierUnavailableError(VizierError, ConnectionError):
    """VizieR could not be reached (after all retries) or refused the request."""


class _TransientHTTPError(Exception):
    """Internal: an HTTP status worth retrying."""


# --------------------------------------------------------------------------------------------
# mapping


@dataclass(frozen=True)
class VizierMapping:
    """Where each column of our layout comes from in VizieR.

    Parameters
    ----------
    catalog
        VizieR catalogue id, e.g. ``"J/MNRAS/500/4078"``.
    table
        VizieR table name, e.g. ``"J/MNRAS/500/4078/catalog"``.
    columns
        Our column name → VizieR labels. Several labels mean "the first non-empty of these, row by
        row" (used for the redshift: spectroscopic, else photometric).
    """

    catalog: str
    table: str
    columns: Mapping[str, tuple[str, ...]]
    id_column: str = "ID"
    redshift_column: str = "z"
    label_column: str = "class"
    mag_columns: tuple[str, ...] = ()
    err_columns: tuple[str, ...] = ()
    missing_value: float = -99.0
    extra_columns: tuple[str, ...] = field(default=())

    @classmethod
    def from_spec(
        cls,
        column_map: Mapping[str, str | Sequence[str]] | None = None,
        *,
        table: str | None = None,
    ) -> VizierMapping:
        """Build the mapping of ``data_specs/nepw_vizier.yaml``, with overrides.

        Parameters
        ----------
        column_map
            Entries replacing those of the spec: our column name (``"HSC_g_mag"``, ``"z"``, ...)
            → VizieR label or list of labels. Only the entries that differ need to be given.
        table
            VizieR table name replacing the spec's.

        Raises
        ------
        ValueError
            If a key of ``column_map`` is not one of our column names, or the spec does not map
            every column of ``data_specs/nepw_catalogue.yaml``.
        """
        spec = specs.load_spec(SPEC_NAME)
        layout = specs.load_spec("nepw_catalogue")
        names = specs.band_names()
        mag_cols = tuple(layout["mag_column"].format(band=b) for b in names)
        err_cols = tuple(layout["err_column"].format(band=b) for b in names)
        id_col, z_col = str(layout["id_column"]), str(layout["redshift_column"])

        columns = {str(k): _as_labels(v, k) for k, v in spec["columns"].items()}
        for key, value in (column_map or {}).items():
            if key not in columns:
                raise ValueError(
                    f"column_map: {key!r} is not a column of our NEPW layout; expected one of "
                    f"{id_col!r}, {z_col!r}, 'ra', 'dec' or '<band>_mag'/'<band>_magerr' with a band "
                    "of data_specs/agn_bands.yaml (e.g. 'HSC_g_mag')"
                )
            columns[key] = _as_labels(value, key)
        required = (id_col, z_col, *mag_cols, *err_cols)
        unmapped = [c for c in required if c not in columns]
        if unmapped:
            raise ValueError(
                f"data_specs/{SPEC_NAME}.yaml maps no VizieR column to {unmapped[:6]}"
                f"{' …' if len(unmapped) > 6 else ''}; every column of nepw_catalogue.yaml needs one"
            )
        extras = tuple(c for c in columns if c not in required)
        return cls(
            catalog=str(spec["catalog"]),
            table=str(table or spec["table"]),
            columns=columns,
            id_column=id_col,
            redshift_column=z_col,
            label_column=str(layout["label_column"]),
            mag_columns=mag_cols,
            err_columns=err_cols,
            missing_value=float(layout["missing_value"]),
            extra_columns=extras,
        )

    def vizier_columns(self) -> list[str]:
        """The VizieR labels to request, each once, in our column order."""
        out: dict[str, None] = {}
        for ours in self.output_order(with_label=False):
            for label in self.columns[ours]:
                out[label] = None
        return list(out)

    def output_order(self, *, with_label: bool = True) -> list[str]:
        """Our column names in output order: ID, extras (ra, dec), z, class, then per band
        ``_mag`` and ``_magerr``."""
        head = [self.id_column, *self.extra_columns, self.redshift_column]
        if with_label:
            head.append(self.label_column)
        bands = [c for pair in zip(self.mag_columns, self.err_columns) for c in pair]
        return head + bands


def _as_labels(value: str | Sequence[str], key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        labels: tuple[str, ...] = (value,)
    elif isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        labels = tuple(value)
    else:
        raise ValueError(
            f"VizieR column for {key!r} must be a label or a non-empty list of labels, got {value!r}"
        )
    return labels


# --------------------------------------------------------------------------------------------
# conversion to our layout


def _float_column(table: Table, label: str) -> np.ndarray:
    """Column as float64 with NaN wherever VizieR left the cell empty."""
    column = table[label]
    data = np.ma.asarray(column)
    if data.dtype.kind == "f" and data.dtype.itemsize < 8:
        # VizieR's datatype="float" is float32; bring back the decimals VizieR wrote (its
        # `precision`, or the shortest repr) so 18.168 does not become 18.167999267578125.
        values = np.ma.filled(data, np.nan)
        precision = str(column.meta.get("precision", "")).removeprefix("F")  # "3" or "F3"
        if precision.isdigit():
            return np.round(values.astype(np.float64), int(precision))
        return values.astype(str).astype(np.float64)
    try:
        data = data.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise VizierResponseError(
            f"VizieR column {label!r} is not numeric (dtype {table[label].dtype})"
        ) from exc
    return np.ma.filled(data, np.nan)


def _coalesce(table: Table, labels: Sequence[str]) -> np.ndarray:
    out = np.full(len(table), np.nan)
    for label in labels:
        values = _float_column(table, label)
        take = np.isnan(out) & np.isfinite(values)
        out[take] = values[take]
    return out


def to_layout(
    raw: Table,
    mapping: VizierMapping | None = None,
    *,
    source: str | None = None,
) -> Table:
    """Convert a VizieR table to our NEPW catalogue layout.

    Parameters
    ----------
    raw
        Table as VizieR returns it (masked cells where VizieR wrote an empty ``<TD>``).
    mapping
        Column mapping; default :meth:`VizierMapping.from_spec`.
    source
        What ``raw`` is, for error messages (default: the VizieR table name).

    Returns
    -------
    astropy.table.Table
        Columns in :meth:`VizierMapping.output_order`: the id as VizieR gives it; ``ra``/``dec``
        (deg) and ``z`` as float64 with NaN where empty (the first non-empty of the mapped
        redshift columns); ``class`` = ``""`` (VizieR holds no AGN/SFG labels); each band's
        magnitude and error (AB mag) as float64, both set to the missing value (−99.0) when
        either is empty or not finite.

    Raises
    ------
    VizierColumnError
        If ``raw`` lacks mapped columns; the message names them and the catalogue.
    """
    mapping = mapping or VizierMapping.from_spec()
    source = source or f"VizieR table {mapping.table} (catalogue {mapping.catalog})"
    have = set(raw.colnames)
    missing: list[str] = []
    needed_by: dict[str, str] = {}
    for ours in mapping.output_order(with_label=False):
        for label in mapping.columns[ours]:
            if label not in have and label not in needed_by:
                missing.append(label)
                needed_by[label] = ours
    if missing:
        shown = ", ".join(f"{lab!r} (for {needed_by[lab]})" for lab in missing[:8])
        more = f" … ({len(missing)} in all)" if len(missing) > 8 else ""
        available = ", ".join(raw.colnames[:30]) + (" …" if len(raw.colnames) > 30 else "")
        raise VizierColumnError(
            f"{source} lacks the mapped VizieR column(s) {shown}{more}. The labels of "
            f"data_specs/{SPEC_NAME}.yaml are assumed; pass column_map={{our_name: vizier_label}} "
            f"with the labels the table has. Columns present: {available}",
            missing,
        )

    n = len(raw)
    miss = mapping.missing_value
    out = Table()
    id_label = mapping.columns[mapping.id_column][0]
    ids = raw[id_label]
    out[mapping.id_column] = Column(
        np.ma.filled(np.ma.asarray(ids), "" if ids.dtype.kind in "US" else -1),
        description="object identifier (VizieR " + id_label + ")",
    )
    for extra in mapping.extra_columns:
        labels = mapping.columns[extra]
        unit = raw[labels[0]].unit
        out[extra] = Column(_coalesce(raw, labels), unit=unit)
    out[mapping.redshift_column] = Column(
        _coalesce(raw, mapping.columns[mapping.redshift_column]),
        description="redshift: first non-empty of "
        + ", ".join(mapping.columns[mapping.redshift_column]),
    )
    out[mapping.label_column] = Column(np.full(n, "", dtype="U3"), description="AGN/SFG label")

    n_missing = 0
    for mag_col, err_col in zip(mapping.mag_columns, mapping.err_columns):
        mag = _coalesce(raw, mapping.columns[mag_col])
        err = _coalesce(raw, mapping.columns[err_col])
        absent = ~np.isfinite(mag) | ~np.isfinite(err)
        n_missing += int(absent.sum())
        out[mag_col] = Column(np.where(absent, miss, mag), unit="mag")
        out[err_col] = Column(np.where(absent, miss, err), unit="mag")
    log.debug("%s: %d rows, %d missing band measurements set to %g", source, n, n_missing, miss)
    out.meta.update(
        {
            "CATALOG": mapping.catalog,
            "VIZTABLE": mapping.table,
            "REFERENC": str(specs.load_spec(SPEC_NAME).get("reference", "")),
        }
    )
    return out


def from_votable(
    path: str | os.PathLike,
    *,
    column_map: Mapping[str, str | Sequence[str]] | None = None,
    table: str | None = None,
) -> Table:
    """Convert a VOTable saved from VizieR (web page or ``-out`` query) to our layout.

    Parameters
    ----------
    path
        The ``.xml``/``.vot`` file.
    column_map, table
        As for :meth:`NEPWVizierClient.fetch`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    VizierResponseError
        If the file holds no table with rows, or several and none named ``table``.
    VizierColumnError
        If the table lacks mapped columns.
    """
    from astroquery.vizier.core import _parse_vizier_votable

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VOTable {path} does not exist")
    mapping = VizierMapping.from_spec(column_map, table=table)
    data = path.read_bytes()
    try:
        tables = _parse_vizier_votable(data)
    except Exception as exc:  # astropy raises many types for malformed XML
        raise VizierResponseError(f"{path}: cannot be read as a VizieR VOTable ({exc})") from exc
    raw = _pick_table(tables, mapping, data, source=str(path))
    return to_layout(raw, mapping, source=f"{path} (VizieR catalogue {mapping.catalog})")


# --------------------------------------------------------------------------------------------
# client


def _info_messages(content: bytes) -> list[str]:
    """Error INFO elements of a VizieR VOTable, for error messages."""
    text = content.decode("utf-8", errors="replace")
    out = []
    for m in re.finditer(
        r'<INFO\b[^>]*\bname="(?:Error|QUERY_STATUS)"[^>]*?(?:/>|>(.*?)</INFO>)', text, re.DOTALL
    ):
        value = re.search(r'\bvalue="([^"]*)"', m.group(0))
        parts = [value.group(1) if value else "", (m.group(1) or "").strip()]
        msg = " ".join(p for p in parts if p and p != "OK")
        if msg:
            out.append(msg)
    return out


def _pick_table(tables: Any, mapping: VizierMapping, content: bytes, *, source: str) -> Table:
    names = list(tables.keys()) if tables is not None else []
    if not names:
        infos = _info_messages(content)
        said = f" VizieR says: {' | '.join(infos)}." if infos else ""
        raise VizierResponseError(
            f"{source}: VizieR returned no table with rows for {mapping.table} (catalogue "
            f"{mapping.catalog}).{said} Check the table name (table=) against "
            f"https://vizier.cds.unistra.fr/viz-bin/VizieR?-source={mapping.catalog}"
        )
    if mapping.table in names:
        return tables[mapping.table]
    if len(names) == 1:
        log.warning(
            "VizieR returned table %s, not %s as asked; using it", names[0], mapping.table
        )
        return tables[names[0]]
    raise VizierResponseError(
        f"{source}: VizieR returned tables {names} but none is {mapping.table!r} "
        f"(catalogue {mapping.catalog}); pass table= with one of them"
    )


class NEPWVizierClient:
    """Fetch the NEPW band-merged catalogue (Kim et al. 2021) from VizieR.

    Parameters
    ----------
    table
        VizieR table name; default from ``data_specs/nepw_vizier.yaml`` (assumed name).
    retries
        Attempts in all for transient failures (connection errors, time-outs, HTTP 408/429/5xx).
    backoff
        Seconds before the second attempt; doubled before each further one.
    server
        VizieR mirror host (e.g. ``"vizier.cfa.harvard.edu"``); default astroquery's.
    cache_dir
        Folder of astroquery's response cache; default astroquery's
        (``~/.astropy/cache/astroquery/Vizier``).
    sleep
        Function used to wait between attempts (for tests).
    """

    def __init__(
        self,
        *,
        table: str | None = None,
        retries: int = 3,
        backoff: float = 2.0,
        server: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 1:
            raise ValueError(f"retries must be >= 1, got {retries}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0 s, got {backoff}")
        self.table = table
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.server = server
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._sleep = sleep

    def _vizier(self, columns: list[str], row_limit: int, timeout: float) -> Any:
        from astroquery.vizier import Vizier

        kwargs: dict[str, Any] = {"columns": columns, "row_limit": row_limit, "timeout": timeout}
        if self.server:
            kwargs["vizier_server"] = self.server
        vizier = Vizier(**kwargs)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            vizier.cache_location = self.cache_dir
        return vizier

    def fetch(
        self,
        *,
        row_limit: int = -1,
        column_map: Mapping[str, str | Sequence[str]] | None = None,
        cache: bool = True,
        timeout: float = 300,
    ) -> Table:
        """Download the catalogue and return it in our layout (see :func:`to_layout`).

        Parameters
        ----------
        row_limit
            Maximum number of rows (VizieR ``-out.max``); −1 for all (91,861 objects).
        column_map
            Our column name → VizieR label(s), replacing entries of ``data_specs/nepw_vizier.yaml``.
        cache
            Use astroquery's response cache (a repeated query does not hit the network).
        timeout
            Seconds to wait for VizieR per attempt.

        Returns
        -------
        astropy.table.Table
            The catalogue in our layout; ``meta`` records the catalogue, table, server and date.

        Raises
        ------
        VizierUnavailableError
            (a :class:`ConnectionError`) if VizieR cannot be reached after ``retries`` attempts,
            or refuses the request; the message says how to use a local file instead.
        VizierResponseError
            If the answer is not a VOTable or holds no table with rows.
        VizierColumnError
            If the table lacks mapped columns; the message names them.
        """
        mapping = VizierMapping.from_spec(column_map, table=self.table)
        vizier = self._vizier(mapping.vizier_columns(), int(row_limit), timeout)
        response = self._query(vizier, mapping, cache=cache)
        content = response.content
        source = f"VizieR table {mapping.table} (catalogue {mapping.catalog})"
        try:
            tables = vizier._parse_result(response)  # the parser astroquery's sync wrapper uses
        except Exception as exc:
            self._forget(vizier, cache)
            raise VizierResponseError(f"{source}: the answer is not a readable VOTable ({exc})") from exc
        if tables is None:  # not XML: e.g. an HTML error page with status 200
            self._forget(vizier, cache)
            raise VizierResponseError(
                f"{source}: VizieR did not answer with a VOTable (answer starts "
                f"{content[:80]!r}). {_LOCAL_FILE_HINT}"
            )
        try:
            raw = _pick_table(tables, mapping, content, source=source)
        except VizierResponseError:
            self._forget(vizier, cache)
            raise
        out = to_layout(raw, mapping, source=source)
        if row_limit >= 0 and len(out) >= row_limit:
            log.info("%s: %d rows returned = row_limit; the catalogue may hold more", source, len(out))
        out.meta.update(
            {
                "VIZSERV": vizier.VIZIER_SERVER,
                "RETRIEVD": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "ROWLIMIT": int(row_limit),
            }
        )
        log.info("fetched %d rows of %s from %s", len(out), mapping.table, vizier.VIZIER_SERVER)
        return out

    def _query(self, vizier: Any, mapping: VizierMapping, *, cache: bool) -> requests.Response:
        """POST the query, retrying transient failures with exponential back-off."""
        last: BaseException | None = None
        for attempt in range(1, self.retries + 1):
            try:
                response = vizier.query_constraints_async(catalog=mapping.table, cache=cache)
                status = int(getattr(response, "status_code", 200) or 200)
                if status in TRANSIENT_STATUS:
                    self._forget(vizier, cache)
                    raise _TransientHTTPError(f"HTTP {status} {getattr(response, 'reason', '')}")
                if status >= 400:
                    self._forget(vizier, cache)
                    raise VizierUnavailableError(
                        f"VizieR ({vizier.VIZIER_SERVER}) refused the query for {mapping.table} "
                        f"(catalogue {mapping.catalog}) with HTTP {status}. {_LOCAL_FILE_HINT}"
                    )
                return response
            except (*TRANSIENT_EXCEPTIONS, _TransientHTTPError) as exc:
                last = exc
                if attempt < self.retries:
                    delay = self.backoff * 2 ** (attempt - 1)
                    log.warning(
                        "VizieR query for %s failed (attempt %d/%d: %s); retrying in %.1f s",
                        mapping.table, attempt, self.retries, exc, delay,
                    )
                    self._sleep(delay)
        raise VizierUnavailableError(
            f"could not download {mapping.table} (catalogue {mapping.catalog}) from VizieR "
            f"({vizier.VIZIER_SERVER}) after {self.retries} attempt(s): {last}. {_LOCAL_FILE_HINT}"
        ) from last

    @staticmethod
    def _forget(vizier: Any, cache: bool) -> None:
        """Drop the cached copy of a bad answer so the next call asks VizieR again."""
        query = getattr(vizier, "_last_query", None)
        if not cache or query is None:
            return
        try:
            query.request_file(vizier.cache_location).unlink(missing_ok=True)
        except OSError as exc:  # a stale cache entry is a nuisance, not an error
            log.debug("could not remove cached VizieR answer: %s", exc)


def fetch(
    *,
    row_limit: int = -1,
    column_map: Mapping[str, str | Sequence[str]] | None = None,
    cache: bool = True,
    timeout: float = 300,
    **client_kwargs: Any,
) -> Table:
    """Shortcut for ``NEPWVizierClient(**client_kwargs).fetch(...)``."""
    client = NEPWVizierClient(**client_kwargs)
    return client.fetch(row_limit=row_limit, column_map=column_map, cache=cache, timeout=timeout)


def save(table: Table, path: str | os.PathLike, *, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a catalogue atomically as FITS (``.fits``/``.fit``) or CSV (``.csv``) by suffix.

    Delegates to :func:`keras_astro.io.nepw.write_catalogue` (temporary file + ``os.replace``),
    so an interrupted write leaves nothing behind.

    Parameters
    ----------
    table
        Catalogue in our layout (e.g. from :meth:`NEPWVizierClient.fetch`).
    path
        Target file; its folder is created.
    meta
        Extra header entries (FITS keywords, ≤ 8 characters).

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from keras_astro.io.nepw import write_catalogue

    written = write_catalogue(table, path, meta=meta)
    log.info("wrote %d rows to %s", len(table), written)
    return written
