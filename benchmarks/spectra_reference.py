"""A straightforward per-spectrum implementation of the spectral preprocessing, for comparison.

This is how the thesis worked (Sec 4.1-4.2): a pandas DataFrame whose cells hold each spectrum's
flux and wavelength arrays, processed one row at a time with ``iterrows``. It computes the same
quantities as :mod:`keras_astro.preprocess.spectra` (resample onto a grid with masked pixels
interpolated, FNet normalisation, Eq. 1 equivalent widths) and serves both as the benchmark's
baseline and as an independent reference in the tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def frame_from_arrays(fluxes, ivar, wavelengths, z) -> pd.DataFrame:
    """The thesis's storage: one row per spectrum, arrays in cells."""
    return pd.DataFrame(
        {
            "fluxes": list(np.asarray(fluxes, dtype=np.float64)),
            "ivar": list(np.asarray(ivar, dtype=np.float64)),
            "wavelength": [np.asarray(wavelengths, dtype=np.float64)] * len(fluxes),
            "z": np.asarray(z, dtype=np.float64),
        }
    )


def _ew_one(flux, flagged, wl, z, line):
    """Eq. 1 for one spectrum and one feature; same definitions as the vectorised code."""
    edges = np.concatenate(
        [[wl[0] - 0.5 * (wl[1] - wl[0])], 0.5 * (wl[1:] + wl[:-1]), [wl[-1] + 0.5 * (wl[-1] - wl[-2])]]
    )
    dl = np.diff(edges)
    s = 1.0 + z
    c = np.asarray(line["centers"], dtype=float)
    hw, cw = line["half_width"], line["continuum"]
    b_lo, b_hi = (c.min() - hw - cw) * s, (c.min() - hw) * s
    r_lo, r_hi = (c.max() + hw) * s, (c.max() + hw + cw) * s
    if b_lo < wl[0] or r_hi > wl[-1]:
        return np.nan
    blue = (wl >= b_lo) & (wl <= b_hi)
    red = (wl >= r_lo) & (wl <= r_hi)
    bg, rg = blue & ~flagged, red & ~flagged
    if bg.sum() == 0 or rg.sum() == 0 or bg.sum() <= 0.5 * blue.sum() or rg.sum() <= 0.5 * red.sum():
        return np.nan
    fb, fr = flux[bg].mean(), flux[rg].mean()
    xb, xr = 0.5 * (b_lo + b_hi), 0.5 * (r_lo + r_hi)
    total = 0.0
    for centre in c:
        win = (wl >= (centre - hw) * s) & (wl <= (centre + hw) * s)
        fc = fb + (fr - fb) / (xr - xb) * (wl[win] - xb)
        if np.any(fc <= 0):
            return np.nan
        use = ~flagged[win]
        if use.sum() <= 0.5 * max(win.sum(), 1):
            return np.nan
        total += np.sum(((fc - flux[win]) / fc * dl[win])[use])
    return total / s


def preprocess_per_row(df: pd.DataFrame, grid: np.ndarray, lines) -> tuple[np.ndarray, np.ndarray]:
    """Resample + FNet-normalise + equivalent widths, one spectrum at a time."""
    out_f, out_ew = [], []
    xg = np.log10(grid)
    for _, row in df.iterrows():
        wl, flux, ivar, z = row["wavelength"], row["fluxes"], row["ivar"], row["z"]
        good = (ivar > 0) & np.isfinite(flux)
        x = np.log10(wl[good])
        f = np.interp(xg, x, flux[good])  # linear in log lambda; constant beyond the ends
        # a target pixel is flagged if a neighbouring source pixel was masked or it is outside
        j = np.clip(np.searchsorted(np.log10(wl), xg, side="right") - 1, 0, len(wl) - 2)
        on = np.isclose(np.log10(wl)[j], xg, rtol=0, atol=1e-12)
        nb_bad = ~good[j] | (~good[j + 1] & ~on)
        flagged = nb_bad | (xg < x[0] - 1e-12) | (xg > x[-1] + 1e-12)
        out_ew.append([_ew_one(f, flagged, grid, z, ln) for ln in lines])
        f = f - f.mean()
        out_f.append(f / max(np.linalg.norm(f), 1e-12))
    return np.asarray(out_f, dtype=np.float32), np.asarray(out_ew, dtype=np.float32)
