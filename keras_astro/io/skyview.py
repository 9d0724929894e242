"""FIRST 1.4 GHz and WISE 3.4 µm cutouts of RGZ subjects from NASA SkyView (Wu et al. 2019, Sec 3).

CLARAN's inputs are 3′ × 3′ FIRST radio and WISE W1 infrared images of each Radio Galaxy Zoo
subject, 132 × 132 pixels of ~1.375″ (``data_specs/rgz.yaml``). :class:`SkyViewClient` fetches
them with :class:`astroquery.skyview.SkyViewClass` — one query per subject for both surveys,
centred on the subject position, ``pixels=132``, ``width = height = 3′`` — and writes
``<FIRST name>_radio.fits`` and ``<FIRST name>_ir.fits``. Downloads are resumable (valid files are
kept), atomic (temporary file + ``os.replace``) and retried with exponential back-off on network
failures; one subject's failure is reported and the others go on.

Every cutout file — downloaded here or written by the simulator
(:mod:`keras_astro.simulate.radio`) — has one layout: a primary HDU holding the float32 image
in FITS orientation (row 0 = south), a celestial WCS, ``BUNIT`` and ``SURVEY``.
:func:`read_cutout` reads and checks it; :func:`write_cutout` writes it.

Examples
--------
>>> from keras_astro.io import rgz, skyview
>>> cat = rgz.load_catalogue()
>>> summary = skyview.SkyViewClient().fetch(cat.subjects[:10], "cutouts/")   # doctest: +SKIP
>>> image, header = skyview.read_cutout("cutouts/FIRSTJ000007.0+081644_radio.fits")  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import io
import logging
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import requests
from astropy.io import fits

from keras_astro import specs
from keras_astro.io._fits import fits_damage

log = logging.getLogger(__name__)

__all__ = [
    "CutoutError",
    "SkyViewClient",
    "SURVEY_UNITS",
    "cutout_paths",
    "read_cutout",
    "surveys",
    "write_cutout",
]

#: ``BUNIT`` of each SkyView survey we use: FIRST maps are in Jy/beam; the WISE Atlas images
#: SkyView resamples are in DN (W1 zero point MAGZP = 20.5 Vega mag).
SURVEY_UNITS: Mapping[str, str] = {"VLA FIRST (1.4 GHz)": "JY/BEAM", "WISE 3.4": "DN"}

#: Exceptions of :mod:`requests` after which a new attempt may succeed.
TRANSIENT_EXCEPTIONS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)
#: HTTP statuses after which a new attempt may succeed.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Largest fraction of NaN/inf pixels a cutout may have (they are replaced by the median).
MAX_NAN_FRACTION = 0.1


class CutoutError(ValueError):
    """A cutout is missing, unreadable or not the image that was asked for; the message names the
    subject and/or file and the problem."""


class _Transient(Exception):
    """Internal: a failure worth another attempt."""


class _NoData(CutoutError):
    """Internal: the image holds no usable data (all NaN, mostly NaN, blank): asking again will not help."""


# --------------------------------------------------------------------------------------------
# names and geometry from data_specs/rgz.yaml


@functools.lru_cache(maxsize=None)
def _rgz_spec() -> dict:
    return specs.load_spec("rgz")


def surveys() -> dict[str, str]:
    """SkyView survey names: ``{"radio": "VLA FIRST (1.4 GHz)", "ir": "WISE 3.4"}`` (rgz.yaml)."""
    sv = _rgz_spec()["skyview"]
    return {"radio": str(sv["radio_survey"]), "ir": str(sv["ir_survey"])}


def cutout_paths(subject: Any, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``(out_dir/<name>_radio.fits, out_dir/<name>_ir.fits)`` for a subject or a subject name."""
    name = getattr(subject, "name", subject)
    sv = _rgz_spec()["skyview"]
    out = Path(out_dir)
    return out / f"{name}{sv['radio_suffix']}", out / f"{name}{sv['ir_suffix']}"


# --------------------------------------------------------------------------------------------
# the one cutout layout: read, check, write


def _where(path: Any, subject: str | None) -> str:
    return f"subject {subject}, {path}" if subject else str(path)


def _image_from_hdul(hdul: fits.HDUList, *, where: str) -> tuple[np.ndarray, fits.Header]:
    """The first 2-D image of an HDU list (degenerate leading axes dropped) and its header."""
    for hdu in hdul:
        if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            continue
        data = hdu.data
        if data is None:
            continue
        data = np.asarray(data)
        while data.ndim > 2 and data.shape[0] == 1:
            data = data[0]
        if data.ndim != 2:
            raise CutoutError(f"{where}: image has shape {data.shape}; expected a 2-D image")
        return data, hdu.header.copy()
    raise CutoutError(f"{where}: no image data in any HDU")


def _check_image(
    data: np.ndarray, header: fits.Header, *, size: int | None, where: str, max_nan_fraction: float
) -> tuple[np.ndarray, fits.Header]:
    from astropy.wcs import WCS, FITSFixedWarning

    if size is not None and data.shape != (size, size):
        raise CutoutError(f"{where}: image is {data.shape[1]}x{data.shape[0]} pixels; expected {size}x{size}")
    if not np.issubdtype(data.dtype, np.number):
        raise CutoutError(f"{where}: image pixels are {data.dtype}, not numbers")
    image = data.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception as exc:  # astropy raises several types for broken WCS keywords
            raise CutoutError(f"{where}: the WCS keywords cannot be read ({exc})") from exc
    if not wcs.has_celestial:
        raise CutoutError(
            f"{where}: no celestial WCS (CTYPE1/CTYPE2 = {header.get('CTYPE1')!r}/{header.get('CTYPE2')!r}); "
            "expected RA---xxx / DEC--xxx with CRVAL, CRPIX and CDELT or CD"
        )
    finite = np.isfinite(image)
    n_bad = int(image.size - finite.sum())
    if n_bad == image.size:
        raise _NoData(f"{where}: every pixel is NaN/inf (no survey coverage?)")
    if n_bad:
        frac = n_bad / image.size
        if frac > max_nan_fraction:
            raise _NoData(
                f"{where}: {n_bad} of {image.size} pixels ({frac:.1%}) are NaN/inf; at most "
                f"{max_nan_fraction:.1%} are accepted (edge of the survey?)"
            )
        fill = float(np.median(image[finite]))
        image = np.where(finite, image, np.float32(fill))
        log.info("%s: replaced %d NaN/inf pixel(s) by the image median %.4g", where, n_bad, fill)
    if float(image.max()) == float(image.min()):
        raise _NoData(f"{where}: blank image (every pixel is {float(image.flat[0])!r})")
    return image, header


def read_cutout(
    path: str | os.PathLike,
    *,
    size: int | None = 132,
    subject: str | None = None,
    max_nan_fraction: float = MAX_NAN_FRACTION,
) -> tuple[np.ndarray, fits.Header]:
    """Read and check one cutout FITS file.

    Parameters
    ----------
    path
        A ``*_radio.fits`` / ``*_ir.fits`` file (downloaded or simulated).
    size
        Expected image side in pixels (``None``: any 2-D size).
    subject
        Subject name, for messages.
    max_nan_fraction
        Largest accepted fraction of NaN/inf pixels. Up to that many are replaced by the median of
        the others (and logged); more, or all, is an error.

    Returns
    -------
    image : numpy.ndarray
        float32 (size, size), FITS orientation (row 0 is the bottom/south row); units per ``BUNIT``.
    header : astropy.io.fits.Header
        The image header, with a celestial WCS.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CutoutError
        Unreadable or truncated FITS, no image data, wrong size, no celestial WCS, all pixels NaN (or
        more than ``max_nan_fraction``), or a blank (constant) image. The message names the file.
    """
    path = Path(path)
    where = _where(path, subject)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no such cutout file")
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            with fits.open(path, memmap=False) as hdul:
                # a short file, or CHECKSUM/DATASUM (written by write_cutout) that do not match
                # the bytes; checked explicitly, not from warnings (other threads emit those too)
                damage = fits_damage(hdul, path)
                if damage:
                    raise CutoutError(
                        f"{where}: {'unreadable or truncated' if 'truncated' in damage[0] else 'corrupt'} FITS file "
                        f"({'; '.join(damage)})"
                    )
                data, header = _image_from_hdul(hdul, where=where)
                data = np.array(data)  # force the read while the file is open
    except CutoutError:
        raise
    except Exception as exc:  # astropy raises OSError/ValueError/TypeError/VerifyError for broken files
        raise CutoutError(f"{where}: unreadable or truncated FITS file ({type(exc).__name__}: {exc})") from exc
    return _check_image(data, header, size=size, where=where, max_nan_fraction=max_nan_fraction)


def write_cutout(
    path: str | os.PathLike,
    image: np.ndarray,
    header: fits.Header,
    *,
    survey: str | None = None,
    bunit: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a cutout atomically in the common layout (float32 primary HDU + WCS header).

    ``SURVEY`` and ``BUNIT`` are set from ``survey``/``bunit`` where given (``bunit`` defaults to
    :data:`SURVEY_UNITS` of the survey when the header has none); ``extra`` adds header cards.
    The file appears under its name only once it is complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hdr = fits.Header(header, copy=True)
    for key in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "NAXIS4", "EXTEND", "BSCALE", "BZERO"):
        hdr.remove(key, ignore_missing=True, remove_all=True)
    if survey is not None:
        hdr["SURVEY"] = survey
    if bunit is None and "BUNIT" not in hdr:
        bunit = SURVEY_UNITS.get(str(hdr.get("SURVEY", "")))
    if bunit is not None:
        hdr["BUNIT"] = bunit
    for key, value in (extra or {}).items():
        hdr[key] = value
    hdu = fits.PrimaryHDU(np.asarray(image, dtype=np.float32), header=hdr)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        hdu.writeto(tmp, overwrite=True, output_verify="silentfix", checksum=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------
# the client


def _skyview_class(timeout: float, url: str | None = None):
    """A SkyView client that never caches (result links are temporary) and always times out;
    ``url`` replaces astroquery's query-form address (a mirror)."""
    from astroquery.skyview import SkyViewClass

    class _SkyView(SkyViewClass):
        def _request(self, method, url, **kwargs):  # noqa: D401 - astroquery's signature
            kwargs["cache"] = False
            if kwargs.get("timeout") is None:
                kwargs["timeout"] = timeout
            return super()._request(method, url, **kwargs)

    sv = _SkyView()
    if url:
        sv.URL = url
    return sv


class SkyViewClient:
    """Fetch RGZ subject cutouts (FIRST 1.4 GHz + WISE 3.4 µm) from SkyView.

    Parameters
    ----------
    retries
        Attempts in all per subject for transient failures (connection errors, time-outs, HTTP
        408/429/5xx, truncated or unreadable downloads).
    backoff
        Seconds before the second attempt; doubled before each further one.
    timeout
        Seconds to wait for SkyView per HTTP request.
    sleep
        Function used to wait between attempts (for tests).
    url
        SkyView's query-form URL (default: astroquery's, ``SkyViewClass.URL``), e.g. a mirror.
    """

    def __init__(
        self,
        *,
        retries: int = 3,
        backoff: float = 2.0,
        timeout: float = 60,
        sleep: Callable[[float], None] = time.sleep,
        url: str | None = None,
    ) -> None:
        if retries < 1:
            raise ValueError(f"retries must be >= 1, got {retries}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0 s, got {backoff}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 s, got {timeout}")
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.timeout = float(timeout)
        if url is not None and not str(url).startswith(("http://", "https://")):
            raise ValueError(f"SkyView URL must start with http:// or https://, got {url!r}")
        self.url = url
        self._sleep = sleep
        self._local = threading.local()
        g = _rgz_spec()["subject"]
        self.size = int(g["size_px"])
        self.width_arcmin = self.size * float(g["pixel_arcsec"]) / 60.0  # 132 x 1.375" = 3.025' (Sec 3.4: "~3 arcmin")
        self.surveys = surveys()

    # one astroquery instance per thread: a requests.Session is not meant to be shared
    def _skyview(self):
        sv = getattr(self._local, "skyview", None)
        if sv is None:
            sv = self._local.skyview = _skyview_class(self.timeout, self.url)
        return sv

    def _existing(self, path: Path, name: str) -> bool:
        if not path.exists():
            return False
        try:
            read_cutout(path, size=self.size, subject=name)
        except (CutoutError, OSError) as exc:
            log.warning("%s: existing file is not a valid cutout (%s); fetching it again", path, exc)
            return False
        return True

    def fetch_subject(self, subject: Any, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Fetch the radio and IR cutouts of one subject into ``out_dir`` (skipping valid files).

        Returns
        -------
        (radio_path, ir_path)

        Raises
        ------
        CutoutError
            If SkyView does not deliver a valid image after ``retries`` attempts, or answers
            with the wrong number of images; the message names the subject.
        requests.HTTPError
            For a non-transient HTTP error (e.g. 404).
        """
        paths, _ = self._fetch_subject(subject, Path(out_dir))
        return paths

    def _fetch_subject(self, subject: Any, out_dir: Path) -> tuple[tuple[Path, Path], int]:
        name = subject.name
        radio_path, ir_path = cutout_paths(subject, out_dir)
        wanted = [
            (kind, path) for kind, path in (("radio", radio_path), ("ir", ir_path)) if not self._existing(path, name)
        ]
        if not wanted:
            return (radio_path, ir_path), 0
        out_dir.mkdir(parents=True, exist_ok=True)
        last: BaseException | None = None
        for attempt in range(1, self.retries + 1):
            try:
                self._download(subject, wanted)
                return (radio_path, ir_path), len(wanted)
            except (*TRANSIENT_EXCEPTIONS, _Transient) as exc:
                last = exc
                wanted = [(k, p) for k, p in wanted if not p.exists()]  # keep what already arrived
                if attempt < self.retries:
                    delay = self.backoff * 2 ** (attempt - 1)
                    log.warning(
                        "SkyView fetch of %s failed (attempt %d/%d: %s); retrying in %.1f s",
                        name,
                        attempt,
                        self.retries,
                        exc,
                        delay,
                    )
                    self._sleep(delay)
        raise CutoutError(
            f"subject {name}: no valid cutout from SkyView after {self.retries} attempt(s): {last}"
        ) from last

    def _download(self, subject: Any, wanted: list[tuple[str, Path]]) -> None:
        import astropy.units as u
        from astropy.coordinates import SkyCoord

        sv = self._skyview()
        names = [self.surveys[kind] for kind, _ in wanted]
        position = SkyCoord(subject.ra * u.deg, subject.dec * u.deg, frame="icrs")
        try:
            urls = sv.get_image_list(
                position=position,
                survey=names,
                pixels=str(self.size),
                width=self.width_arcmin * u.arcmin,
                height=self.width_arcmin * u.arcmin,
                cache=False,
            )
        except requests.HTTPError as exc:
            self._raise_http(exc, subject.name)
        if len(urls) != len(names):
            raise CutoutError(
                f"subject {subject.name}: SkyView returned {len(urls)} image link(s) for the survey(s) {names}"
            )
        for (_kind, path), survey, url in zip(wanted, names, urls):
            response = sv._request("GET", url, timeout=self.timeout)
            try:
                response.raise_for_status()
            except requests.HTTPError as exc:
                self._raise_http(exc, subject.name)
            where = f"subject {subject.name}, {survey} download {url}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with fits.open(io.BytesIO(response.content), memmap=False) as hdul:
                        data, header = _image_from_hdul(hdul, where=where)
                        data = np.array(data)
                _check_image(data, header, size=self.size, where=where, max_nan_fraction=MAX_NAN_FRACTION)
            except _NoData as exc:  # SkyView has no data here: report, do not retry
                raise CutoutError(str(exc)) from exc
            except CutoutError as exc:  # garbled or truncated answer: worth another attempt
                raise _Transient(str(exc)) from exc
            except Exception as exc:
                raise _Transient(f"{where}: unreadable or truncated FITS ({type(exc).__name__}: {exc})") from exc
            data = np.asarray(data, dtype=np.float32)  # keep NaNs as delivered; read_cutout handles them
            write_cutout(
                path,
                data,
                header,
                survey=survey if "SURVEY" not in header else None,
                extra={
                    "OBJECT": subject.name,
                    "DATE-RET": (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "UTC date retrieved from SkyView"),
                },
            )
            log.debug("wrote %s (%s)", path, survey)

    @staticmethod
    def _raise_http(exc: requests.HTTPError, name: str) -> NoReturn:
        status = getattr(exc.response, "status_code", None)
        if status in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {status}") from exc
        raise requests.HTTPError(
            f"subject {name}: SkyView answered HTTP {status} ({exc})", response=exc.response
        ) from exc

    def fetch(
        self,
        subjects: Iterable[Any],
        out_dir: str | os.PathLike,
        *,
        workers: int = 2,
        progress: bool = True,
    ) -> dict[str, Any]:
        """Fetch the cutouts of many subjects; failures are collected, not raised.

        Returns
        -------
        dict
            ``fetched`` (names downloaded now), ``skipped`` (both files already valid),
            ``failed`` ({name: reason}) and ``paths`` ({name: (radio, ir)} of every subject that
            has both files).
        """
        subjects = list(subjects)
        out = Path(out_dir)
        summary: dict[str, Any] = {"fetched": [], "skipped": [], "failed": {}, "paths": {}}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(subjects), desc="SkyView cutouts", unit="subject")

        with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
            futures = {pool.submit(self._fetch_subject, s, out): s for s in subjects}
            for future in as_completed(futures):
                subj = futures[future]
                try:
                    paths, n = future.result()
                except Exception as exc:  # one subject's failure must not stop the others
                    summary["failed"][subj.name] = f"{type(exc).__name__}: {exc}"
                    log.warning("SkyView: %s failed: %s", subj.name, exc)
                else:
                    summary["paths"][subj.name] = paths
                    summary["fetched" if n else "skipped"].append(subj.name)
                if bar is not None:
                    bar.update(1)
        order = {s.name: i for i, s in enumerate(subjects)}
        for key in ("fetched", "skipped"):
            summary[key].sort(key=order.__getitem__)
        if bar is not None:
            bar.close()
        log.info(
            "SkyView: %d fetched, %d skipped, %d failed",
            len(summary["fetched"]),
            len(summary["skipped"]),
            len(summary["failed"]),
        )
        return summary
