"""Write the crafted SkyView answers used by tests/io/test_skyview.py (see README.md).

Run from the repository root:  python tests/data/skyview/make_recorded.py
Deterministic: the files only change if this script changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

HERE = Path(__file__).resolve().parent
# subject FIRSTJ000007.0+081644 of the RGZ catalogue (RA 0h00m07.0s, Dec +08d16m44s)
RA, DEC = 0.029166666666667, 8.278888888888889
N = 132
SCALE = 3.025 / 60.0 / N  # deg/pixel: 132 pixels over 3.025' (132 x 1.375")


def skyview_header(survey: str, bunit: str, metadata: list[str]) -> fits.Header:
    """Cards in the order and style of a SkyView (https://skyview.gsfc.nasa.gov) FITS answer."""
    h = fits.Header()
    h["SIMPLE"] = (True, "Written by SkyView Tue Nov 24 10:12:03 EST 2026")
    h["BITPIX"] = (-32, "4 byte floating point")
    h["NAXIS"] = (2, "Two dimensional image")
    h["NAXIS1"] = (N, "Width of image")
    h["NAXIS2"] = (N, "Height of image")
    h["CRVAL1"] = (RA, "Reference longitude")
    h["CRVAL2"] = (DEC, "Reference latitude")
    h["RADESYS"] = ("FK5", "Coordinate system")
    h["EQUINOX"] = (2000.0, "Epoch of the equinox")
    h["CTYPE1"] = ("RA---TAN", "Coordinates -- projection")
    h["CTYPE2"] = ("DEC--TAN", "Coordinates -- projection")
    h["CRPIX1"] = ((N + 1) / 2.0, "X reference pixel")
    h["CRPIX2"] = ((N + 1) / 2.0, "Y reference pixel")
    h["CDELT1"] = (-SCALE, "X scale")
    h["CDELT2"] = (SCALE, "Y scale")
    h.add_comment("")
    h.add_comment(" SkyView Survey metadata ")
    h.add_comment("")
    for line in metadata:
        h.add_comment(line)
    h.add_comment("")
    h.add_comment("Survey specific cards")
    h.add_comment("")
    h["SURVEY"] = survey
    h["BUNIT"] = bunit
    h.add_comment("")
    h.add_comment("SkyView Image Processing")
    h.add_comment("")
    h["SAMPLER"] = "Clip"
    h["PROJ"] = "Tan"
    return h


def gauss(y, x, y0, x0, s, amp):
    return amp * np.exp(-0.5 * ((x - x0) ** 2 + (y - y0) ** 2) / s**2)


def main() -> None:
    rng = np.random.default_rng(20261124)
    y, x = np.mgrid[0:N, 0:N].astype(float)
    # FIRST: a double source (two 5" beams, sigma 1.54 px) in beam-correlated 0.15 mJy/beam noise
    from scipy import ndimage

    noise = ndimage.gaussian_filter(rng.standard_normal((N, N)), 1.09, mode="wrap")
    noise *= 0.15e-3 / noise.std()
    radio = noise + gauss(y, x, 70.0, 58.0, 1.8, 0.012) + gauss(y, x, 62.0, 75.0, 1.8, 0.008)
    first = skyview_header(
        "VLA FIRST (1.4 GHz)",
        "JY/BEAM",
        [
            "Provenance:  NRAO/VLA FIRST survey, Becker, White & Helfand",
            "Regime:      Radio",
            "Frequency:   1.4 GHz",
            'PixelScale:  1.8"',
            "PixelUnits:  Jy/beam",
            'Resolution:  5"',
            "Coordinates: Equatorial",
        ],
    )
    fits.PrimaryHDU(radio.astype(np.float32), first).writeto(HERE / "first_cutout.fits", overwrite=True)

    # WISE W1: sky ~3 DN, a host (W1 ~ 14.5 -> 10^(0.4 (20.5 - 14.5)) = 251 DN) and field stars
    ir = 3.0 + ndimage.gaussian_filter(rng.standard_normal((N, N)), 1.0, mode="wrap") * 0.8 / 0.28
    psf = 6.1 / 2.3548 / 1.375
    ir += gauss(y, x, 66.0, 66.5, psf, 251.0 / (2 * np.pi * psf**2))
    for yy, xx, dn in ((20, 30, 900.0), (100, 110, 150.0), (40, 100, 60.0)):
        ir += gauss(y, x, yy, xx, psf, dn / (2 * np.pi * psf**2))
    wise = skyview_header(
        "WISE 3.4",
        "DN",
        [
            "Provenance:  NASA/IPAC Infrared Science Archive, AllWISE Atlas",
            "Regime:      Infrared",
            "Frequency:   88 THz (3.4 microns)",
            'PixelScale:  1.375"',
            "PixelUnits:  DN",
            'Resolution:  6.1"',
            "Coordinates: Equatorial",
        ],
    )
    fits.PrimaryHDU(ir.astype(np.float32), wise).writeto(HERE / "wise_cutout.fits", overwrite=True)


if __name__ == "__main__":
    main()
