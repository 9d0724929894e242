"""The Radio Galaxy Zoo DR1 selection used by CLARAN (Wu et al. 2019, Sec 3).

The package ships the real catalogue (``keras_astro/data/rgz_dr1_claran_catalogue.csv``): 11,836
sources with consensus level CL ≥ 0.6 and fewer than four components and peaks, in 10,744
subjects split 6,141 / 4,603 into training and testing (Tables 2–3). This module loads it into
:class:`Subject` objects holding their :class:`Source` objects, parses subject positions from the
FIRST names, and makes the Sec 3.3 ground-truth boxes.

Geometry (``data_specs/rgz.yaml``): a subject is 132 × 132 FIRST pixels of 1.375″ (3′ × 3′)
centred on the position in its name; pixel (0, 0) is the *top-left* corner (PNG convention) with
north up and east left. A source's box is a square centred on its components' centre with side
equal to its angular extent.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from keras_astro import specs

__all__ = [
    "CatalogueError",
    "Source",
    "Subject",
    "RGZCatalogue",
    "catalogue_path",
    "load_catalogue",
    "parse_first_id",
    "subject_wcs",
    "sky_to_pixel",
    "source_box",
    "subject_annotations",
    "class_names",
]

_FIRST_RE = re.compile(r"^FIRSTJ(\d{2})(\d{2})(\d{2}(?:\.\d+)?)([+-])(\d{2})(\d{2})(\d{2}(?:\.\d+)?)$")


class CatalogueError(ValueError):
    """The RGZ catalogue (or one subject of it) is malformed; the message names the subject."""


@functools.lru_cache(maxsize=None)
def _spec() -> dict:
    return specs.load_spec("rgz")


def class_names(include_background: bool = False) -> list[str]:
    """Morphology classes ``iC_jP`` of Table 3 (optionally with ``__background__`` first)."""
    names = list(_spec()["classes"])
    return (["__background__"] + names) if include_background else names


def catalogue_path() -> Path:
    """Path of the catalogue shipped inside the package."""
    return Path(__file__).resolve().parent.parent / "data" / _spec()["catalogue_file"]


def parse_first_id(name: str) -> tuple[float, float]:
    """(RA, Dec) in degrees of a FIRST name such as ``FIRSTJ000007.0+081644``.

    Raises :class:`CatalogueError` for anything else.
    """
    m = _FIRST_RE.match(str(name).strip())
    if not m:
        raise CatalogueError(f"subject {name!r}: not a FIRST name of the form FIRSTJhhmmss.s+ddmmss")
    hh, mm, ss, sign, dd, dm, ds = m.groups()
    hh, mm, ss, dd, dm, ds = int(hh), int(mm), float(ss), int(dd), int(dm), float(ds)
    if hh >= 24 or mm >= 60 or ss >= 60 or dd > 90 or dm >= 60 or ds >= 60:
        raise CatalogueError(f"subject {name!r}: sexagesimal field out of range")
    ra = 15.0 * (hh + mm / 60.0 + ss / 3600.0)
    dec = dd + dm / 60.0 + ds / 3600.0
    return ra, (-dec if sign == "-" else dec)


@dataclass(frozen=True)
class Source:
    """One RGZ consensus radio source."""

    catalog_id: int
    subject: str
    num_cpnts: int
    num_peaks: int
    ras: tuple[float, ...]  # component RAs, deg
    decs: tuple[float, ...]  # component Decs, deg
    ang_extent: float  # arcsec
    cl: float
    training: bool

    @property
    def label(self) -> str:
        """Morphology class, e.g. ``2C_3P``."""
        return f"{self.num_cpnts}C_{self.num_peaks}P"

    @property
    def centre(self) -> tuple[float, float]:
        """Centre of the components (midpoint of their extremes, on the tangent plane), deg."""
        ra0 = self.ras[0]
        dra = (np.asarray(self.ras) - ra0 + 180.0) % 360.0 - 180.0  # wrap at RA = 0
        mid_ra = ra0 + 0.5 * (dra.min() + dra.max())
        return float(mid_ra % 360.0), float(0.5 * (min(self.decs) + max(self.decs)))


@dataclass(frozen=True)
class Subject:
    """A 3′ × 3′ RGZ subject with its sources."""

    name: str
    ra: float
    dec: float
    sources: tuple[Source, ...]

    @property
    def training(self) -> bool:
        return self.sources[0].training

    @property
    def n_components(self) -> int:
        return sum(s.num_cpnts for s in self.sources)

    @property
    def n_peaks(self) -> int:
        return sum(s.num_peaks for s in self.sources)

    @property
    def file_stem(self) -> str:
        """The original data set's file naming: the FIRST name."""
        return self.name


def _floats(text: str, what: str, name: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(t) for t in str(text).split(";") if t.strip() != "")
    except ValueError:
        raise CatalogueError(f"subject {name}: {what} {text!r} is not a ';'-separated list of degrees") from None
    if not all(np.isfinite(vals)):
        raise CatalogueError(f"subject {name}: {what} contains NaN/inf")
    return vals


class RGZCatalogue:
    """Subjects and sources of the CLARAN selection.

    Attributes
    ----------
    subjects : list of :class:`Subject` (catalogue order of first appearance)
    sources : list of :class:`Source`
    """

    def __init__(self, subjects: Sequence[Subject], path: Path | None = None) -> None:
        self.subjects = list(subjects)
        self.path = path
        self._by_name = {s.name: s for s in self.subjects}

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self) -> Iterator[Subject]:
        return iter(self.subjects)

    def __getitem__(self, name: str) -> Subject:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no subject {name!r} in the RGZ catalogue") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    @property
    def sources(self) -> list[Source]:
        return [src for s in self.subjects for src in s.sources]

    def split(self, which: str) -> list[Subject]:
        """``"train"`` (training = 1) or ``"test"`` subjects."""
        if which not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {which!r}")
        want = which == "train"
        return [s for s in self.subjects if s.training == want]

    def table(self) -> pd.DataFrame:
        """One row per source with its subject, label and split."""
        return pd.DataFrame(
            [
                {
                    "subject": src.subject,
                    "catalog_id": src.catalog_id,
                    "label": src.label,
                    "num_cpnts": src.num_cpnts,
                    "num_peaks": src.num_peaks,
                    "ang_extent": src.ang_extent,
                    "cl": src.cl,
                    "split": "train" if src.training else "test",
                }
                for src in self.sources
            ]
        )

    def stratified_subset(self, n_per_class: int, *, split: str | None = None, seed: int = 0) -> list[Subject]:
        """Up to ``n_per_class`` subjects for each morphology class (by their first source), seeded."""
        rng = np.random.default_rng(seed)
        pool = self.subjects if split is None else self.split(split)
        out: list[Subject] = []
        for cls in class_names():
            members = [s for s in pool if s.sources[0].label == cls]
            if members:
                pick = rng.choice(len(members), size=min(n_per_class, len(members)), replace=False)
                out.extend(members[i] for i in sorted(pick))
        return out


def load_catalogue(path: str | os.PathLike | None = None) -> RGZCatalogue:
    """Load the CLARAN RGZ catalogue (default: the copy shipped in the package).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CatalogueError
        If the file is not readable CSV (undecodable bytes, ragged rows), lacks a column, or a row
        holds a value of the wrong kind (a non-integer count, a NaN extent, a class outside
        Table 3, …); the message names the file, and the line and subject where it applies.
    """
    path = Path(path) if path is not None else catalogue_path()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no RGZ catalogue")
    try:
        df = pd.read_csv(path, dtype={"first_id": str, "cpnts_ras": str, "cpnts_decs": str})
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OverflowError) as exc:
        raise CatalogueError(f"{path}: not a readable CSV catalogue ({type(exc).__name__}: {exc})") from None
    need = [
        "catalog_id",
        "first_id",
        "num_cpnts",
        "num_peaks",
        "cpnts_ras",
        "cpnts_decs",
        "ang_extent",
        "cl",
        "training",
    ]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise CatalogueError(f"{path}: missing column(s) {missing}; expected {need}")
    numbers = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in need if c not in _TEXT_COLUMNS}
    labels = set(class_names())
    grouped: dict[str, list[Source]] = {}
    for i, row in enumerate(df.itertuples(index=False)):
        name = str(row.first_id)
        where = f"{path}, line {i + 2}"
        vals = {c: v[i] for c, v in numbers.items()}
        for c in ("catalog_id", "num_cpnts", "num_peaks", "training"):
            v = vals[c]
            if not (np.isfinite(v) and v == int(v)) or v < 0:
                raise CatalogueError(f"{where}: subject {name}: {c} {getattr(row, c)!r} is not a non-negative integer")
        if vals["training"] not in (0, 1):
            raise CatalogueError(f"{where}: subject {name}: training {row.training!r} is not 0 or 1")
        if not np.isfinite(vals["cl"]):
            raise CatalogueError(f"{where}: subject {name}: consensus level cl {row.cl!r} is not a number")
        try:
            ras = _floats(row.cpnts_ras, "cpnts_ras", name)
            decs = _floats(row.cpnts_decs, "cpnts_decs", name)
        except CatalogueError as exc:
            raise CatalogueError(f"{where}: {exc}") from None
        if len(ras) != len(decs):
            raise CatalogueError(
                f"{where}: subject {name}: source {row.catalog_id} has {len(ras)} RAs but {len(decs)} Decs"
            )
        if len(ras) != int(vals["num_cpnts"]):
            raise CatalogueError(
                f"{where}: subject {name}: source {row.catalog_id} lists {len(ras)} components, "
                f"num_cpnts says {row.num_cpnts}"
            )
        if not (np.isfinite(vals["ang_extent"]) and vals["ang_extent"] > 0):
            raise CatalogueError(
                f"{where}: subject {name}: source {row.catalog_id} has angular extent {row.ang_extent!r}"
            )
        label = f"{int(vals['num_cpnts'])}C_{int(vals['num_peaks'])}P"
        if label not in labels:
            raise CatalogueError(
                f"{where}: subject {name}: source {row.catalog_id} is {label}, not one of the classes {sorted(labels)}"
            )
        grouped.setdefault(name, []).append(
            Source(
                catalog_id=int(vals["catalog_id"]),
                subject=name,
                num_cpnts=int(vals["num_cpnts"]),
                num_peaks=int(vals["num_peaks"]),
                ras=ras,
                decs=decs,
                ang_extent=float(vals["ang_extent"]),
                cl=float(vals["cl"]),
                training=bool(vals["training"]),
            )
        )
    subjects = []
    for name, sources in grouped.items():
        if len({s.training for s in sources}) != 1:
            raise CatalogueError(f"{path}: subject {name}: its sources are split between training and testing")
        try:
            ra, dec = parse_first_id(name)
        except CatalogueError as exc:
            raise CatalogueError(f"{path}: {exc}") from None
        subjects.append(Subject(name=name, ra=ra, dec=dec, sources=tuple(sources)))
    return RGZCatalogue(subjects, path)


_TEXT_COLUMNS = ("first_id", "cpnts_ras", "cpnts_decs")


def subject_wcs(subject: Subject | tuple[float, float], *, size: int | None = None, pixel_arcsec: float | None = None):
    """An astropy WCS for a subject image (SIN projection, north up, east left, FITS convention).

    ``size`` pixels square (default 132) of ``pixel_arcsec`` (default 1.375″), centred on the
    subject position.
    """
    from astropy.wcs import WCS

    g = _spec()["subject"]
    size = int(size or g["size_px"])
    pix = float(pixel_arcsec or g["pixel_arcsec"])
    ra, dec = (subject.ra, subject.dec) if isinstance(subject, Subject) else subject
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(size + 1) / 2.0, (size + 1) / 2.0]
    w.wcs.cdelt = [-pix / 3600.0, pix / 3600.0]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    return w


def sky_to_pixel(subject: Subject, ra, dec, *, size: int | None = None, pixel_arcsec: float | None = None):
    """Pixel coordinates (x, y) with the top-left origin (PNG) of sky positions in a subject."""
    size = int(size or _spec()["subject"]["size_px"])
    w = subject_wcs(subject, size=size, pixel_arcsec=pixel_arcsec)
    x, y = w.all_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)  # FITS: origin bottom-left
    # pixel centres: FITS 0-based index i covers [i - 0.5, i + 0.5]; continuous PNG coords put
    # pixel i over [i, i + 1], and rows run top to bottom
    return x + 0.5, (size - 1 - y) + 0.5


def source_box(
    subject: Subject, source: Source, *, size: int | None = None, pixel_arcsec: float | None = None, clip: bool = True
) -> np.ndarray:
    """Sec 3.3 ground-truth box ``[x1, y1, x2, y2]`` in pixels (top-left origin, continuous coordinates).

    A square centred on the source with side = angular extent / pixel size, clipped to the image.
    Raises :class:`CatalogueError` if the box lies entirely outside the image.
    """
    g = _spec()["subject"]
    size = int(size or g["size_px"])
    pix = float(pixel_arcsec or g["pixel_arcsec"])
    ra, dec = source.centre
    x, y = sky_to_pixel(subject, ra, dec, size=size, pixel_arcsec=pix)
    half = 0.5 * source.ang_extent / pix
    box = np.array([x[0] - half, y[0] - half, x[0] + half, y[0] + half], dtype=np.float64)
    if box[2] <= 0 or box[3] <= 0 or box[0] >= size or box[1] >= size:
        raise CatalogueError(
            f"subject {subject.name}: box of source {source.catalog_id} {np.round(box, 1).tolist()} lies outside "
            f"the {size}x{size} image"
        )
    if clip:
        box = np.clip(box, 0.0, float(size))
    return box


def subject_annotations(subject: Subject, *, size: int | None = None, scale: float = 1.0) -> dict:
    """Boxes (K, 4) float32 and class names of a subject, optionally scaled (e.g. 600/132)."""
    boxes = np.stack([source_box(subject, s, size=size) for s in subject.sources]) * scale
    return {
        "subject": subject.name,
        "boxes": boxes.astype(np.float32),
        "labels": [s.label for s in subject.sources],
        "split": "train" if subject.training else "test",
    }
