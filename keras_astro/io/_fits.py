"""Integrity of FITS files read by :mod:`keras_astro.io`: short files and failed checksums.

keras_astro's FITS writers add the CHECKSUM/DATASUM keywords of the FITS checksum convention, so
a byte changed anywhere in an HDU is detected when the file is read back. The checks here call
``verify_checksum()`` / ``verify_datasum()`` directly instead of recording the warnings that
``fits.open(..., checksum=True)`` emits, because ``warnings.catch_warnings`` is process-wide and
not thread-safe: downloads read files on several threads at once, and one thread would see the
warnings of another's damaged file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from astropy.io import fits


def fits_damage(hdul: fits.HDUList, path: Path, *, hdus: Iterable[int] | None = None) -> list[str]:
    """Why the bytes of an open FITS file are damaged (empty if they are not).

    Parameters
    ----------
    hdul
        The open file (all headers are read here).
    path
        Its path, for the file size.
    hdus
        Indices of the HDUs whose checksums are verified (default: all). HDUs without the
        keywords (files from other writers) are not judged.

    Returns
    -------
    list of str
        "truncated ..." when the file is shorter than its headers describe, else one entry per
        HDU whose DATASUM or CHECKSUM does not match its bytes.
    """
    n = len(hdul)  # reads every header
    if n == 0:
        return ["no HDU could be read"]
    info = hdul.fileinfo(n - 1)
    if info:
        expected = int(info["datLoc"]) + int(info["datSpan"])
        size = Path(path).stat().st_size
        if size < expected:
            return [f"truncated FITS file ({size} bytes, its headers describe {expected})"]
    problems = []
    for i in range(n) if hdus is None else hdus:
        hdu = hdul[i]
        header = hdu.header
        if "DATASUM" in header and hdu.verify_datasum() == 0:
            problems.append(f"HDU {i} ({hdu.name}) fails its DATASUM check")
        if "CHECKSUM" in header and hdu.verify_checksum() == 0:
            problems.append(f"HDU {i} ({hdu.name}) fails its CHECKSUM check")
    return problems
