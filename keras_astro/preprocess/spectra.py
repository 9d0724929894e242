"""Spectrum preprocessing: resampling, normalisation, smoothing, equivalent widths, line masks.

Pure numpy (+ scipy's Gaussian filter), vectorised over spectra: every function takes a batch
``(N, M)`` of spectra that share one wavelength grid (the layout of the HDF5 store), so a chunk of
a thousand spectra costs a handful of array operations instead of a thousand Python iterations.

* :func:`resample` — onto a log-λ grid of ``data_specs/spectra.yaml`` (FNet's 4,618 pixels over
  360–1032.5 nm, the thesis's 3,850.34–9,099.13 Å cut, …). Masked pixels (ivar = 0, a bad
  ``and_mask`` bit, or a non-finite flux) are linearly interpolated from their good neighbours;
  target pixels outside the measured range take the nearest measured value (FNet's
  "fitting and extrapolating"); both kinds are flagged.
* :func:`fnet_normalise` — FNet Sec 3.1: zero mean, then unit L2 norm, per spectrum.
* :class:`PixelStandardiser` — the thesis's per-pixel standardisation, fitted on the training
  split only.
* :func:`gaussian_smooth` — the σ = 4 px variant of the thesis's Table 6.
* :func:`equivalent_widths` — thesis Sec 4.2, Eq. 1, for the 14 lines of ``spectra.yaml`` at each
  object's redshift; NaN where a window falls outside the grid or is mostly masked.
* :func:`line_mask` / :func:`mask_lines` — FNet Fig. 6: hide emission lines at their rest
  wavelengths.
* :func:`preprocess_store` — all of it, streamed chunk by chunk from one store into another.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from keras_astro import specs

log = logging.getLogger(__name__)

__all__ = [
    "SpectrumError",
    "Resampled",
    "bad_pixel_mask",
    "resample",
    "fnet_normalise",
    "PixelStandardiser",
    "gaussian_smooth",
    "equivalent_widths",
    "line_names",
    "line_mask",
    "mask_lines",
    "preprocess_store",
    "C_KMS",
]

C_KMS = 299_792.458


class SpectrumError(ValueError):
    """A spectrum cannot be preprocessed (all masked, no overlap with the grid, bad shape...)."""


@dataclass
class Resampled:
    """Output of :func:`resample`.

    Attributes
    ----------
    fluxes : (N, K) float32 on the target grid.
    flags : (N, K) uint8, 1 where the value was interpolated over a masked pixel or extrapolated.
    good_rows : (N,) bool, False for spectra that could not be resampled (all pixels masked, or too
        little overlap with the grid); their rows are zeros and fully flagged.
    reasons : dict row → reason for every rejected row.
    ivar : (N, K) float32, the inverse variance of the nearest source pixel, 0 on flagged pixels
        (computed on first access: models that only need fluxes do not pay for it).
    """

    fluxes: np.ndarray
    flags: np.ndarray
    good_rows: np.ndarray
    reasons: dict[int, str]
    _ivar_source: tuple | None = field(default=None, repr=False)
    _ivar: np.ndarray | None = field(default=None, repr=False)

    @property
    def ivar(self) -> np.ndarray:
        if self._ivar is None:
            iv, nearest = self._ivar_source
            if iv is None:
                self._ivar = (self.flags == 0).astype(np.float32)
            else:
                out = np.take(iv, nearest, axis=1).astype(np.float32, copy=False)
                np.copyto(out, np.float32(0), where=self.flags.view(bool))
                self._ivar = out
            self._ivar_source = None
        return self._ivar


def _bad_mask_bits() -> int:
    bits = specs.load_spec("spectra")["and_mask_bad_bits"]
    return int(sum(1 << int(b) for b in bits.values()))


def bad_pixel_mask(
    fluxes: np.ndarray, ivar: np.ndarray | None = None, and_mask: np.ndarray | None = None
) -> np.ndarray:
    """True where a pixel is unusable: ivar ≤ 0, a bad ``and_mask`` bit, or a non-finite value.

    Raises :class:`SpectrumError` if the arrays are not real numbers or differ in shape.
    """
    f = _real(fluxes, "fluxes")
    bad = ~np.isfinite(f)
    if ivar is not None:
        iv = _real(ivar, "ivar")
        if iv.shape != f.shape:
            raise SpectrumError(f"ivar shape {iv.shape} differs from fluxes {f.shape}")
        bad |= ~(iv > 0)  # also catches NaN ivar
    if and_mask is not None:
        am = _bitmask(and_mask, "and_mask")
        if am.shape != f.shape:
            raise SpectrumError(f"and_mask shape {am.shape} differs from fluxes {f.shape}")
        bad |= (am & _bad_mask_bits()) != 0
    return bad


def _real(x: Any, name: str) -> np.ndarray:
    """``x`` as an array of real numbers (bool, integer or float); anything else is a SpectrumError."""
    a = np.asarray(x)
    if a.dtype.kind == "O":
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            raise SpectrumError(f"{name} must hold real numbers, got an object array") from None
    if a.dtype.kind not in "biuf":
        raise SpectrumError(f"{name} must hold real numbers, got dtype {a.dtype}")
    return a


def _bitmask(x: Any, name: str) -> np.ndarray:
    """An SDSS bit mask as integers; floats must be finite whole numbers."""
    a = _real(x, name)
    if a.dtype.kind in "iu":
        return a
    if a.dtype.kind == "f" and not (np.all(np.isfinite(a)) and np.all(a == np.round(a))):
        raise SpectrumError(f"{name} is a bit mask: it must hold whole numbers, got non-integer values")
    return a.astype(np.int64)


def _as_batch(x: np.ndarray, name: str) -> np.ndarray:
    x = _real(x, name)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise SpectrumError(f"{name} must be (N, M) or (M,), got shape {x.shape}")
    if x.shape[1] == 0:
        raise SpectrumError(f"{name} has no pixels (shape {x.shape})")
    return x


def _grid(grid: str | np.ndarray) -> np.ndarray:
    if isinstance(grid, str):
        return specs.spectral_grid(grid)
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 1 or g.size < 2 or not np.all(np.diff(g) > 0):
        raise SpectrumError(f"target grid must be 1-D and strictly increasing, got shape {g.shape}")
    return g


def resample(
    fluxes: np.ndarray,
    wavelengths: np.ndarray,
    grid: str | np.ndarray = "fnet",
    *,
    ivar: np.ndarray | None = None,
    and_mask: np.ndarray | None = None,
    min_coverage: float = 0.5,
    on_bad: str = "skip",
    source: str = "spectra",
) -> Resampled:
    """Resample spectra that share ``wavelengths`` onto a log-λ ``grid``.

    Parameters
    ----------
    fluxes : (N, M) or (M,) array
        Flux densities on ``wavelengths`` (Å).
    wavelengths : (M,) array
        Strictly increasing source wavelengths (Å).
    grid : str or (K,) array
        A grid name of ``data_specs/spectra.yaml`` (``fnet``, ``thesis``, ``sdss``) or wavelengths.
    ivar, and_mask : (N, M) arrays, optional
        Pixels with ivar ≤ 0 or a bad ``and_mask`` bit are treated as missing.
    min_coverage : float
        Minimum fraction of target pixels that must lie between a spectrum's first and last good
        source pixel; below it the row is rejected (flux on the rest would be pure extrapolation).
    on_bad : {"skip", "raise"}
        Rejected rows are zeroed, flagged and reported in ``reasons`` (and logged), or raise
        :class:`SpectrumError` naming ``source`` and the row.

    Interpolation is linear in log λ; ivar is interpolated alike and set to 0 on flagged pixels.
    """
    if on_bad not in ("skip", "raise"):
        raise ValueError(f"on_bad must be 'skip' or 'raise', got {on_bad!r}")
    f = _as_batch(fluxes, f"{source}: fluxes").astype(np.float32, copy=False)
    n, m = f.shape
    wl = _real(wavelengths, f"{source}: wavelengths").astype(np.float64)
    if wl.shape != (m,):
        raise SpectrumError(f"{source}: wavelengths has shape {wl.shape}, fluxes has {m} pixels")
    if m < 2 or not (np.all(np.isfinite(wl)) and np.all(np.diff(wl) > 0) and wl[0] > 0):
        raise SpectrumError(f"{source}: wavelengths must be at least 2 positive, finite, strictly increasing values")
    iv = None if ivar is None else _as_batch(ivar, f"{source}: ivar").astype(np.float32, copy=False)
    if iv is not None and iv.shape != f.shape:
        raise SpectrumError(f"{source}: ivar shape {iv.shape} differs from fluxes {f.shape}")
    am = None if and_mask is None else _bitmask(_as_batch(and_mask, f"{source}: and_mask"), f"{source}: and_mask")
    if am is not None and am.shape != f.shape:
        raise SpectrumError(f"{source}: and_mask shape {am.shape} differs from fluxes {f.shape}")
    target = _grid(grid)
    x = np.log10(wl)
    xt = np.log10(target)

    # One pass per quantity over the (N, M) block: memory traffic, not arithmetic, is the cost.
    if iv is not None:
        good = iv > 0  # NaN ivar compares False
        # non-finite fluxes are rare: test pixels only in rows whose sum is not finite
        with np.errstate(invalid="ignore", over="ignore"):
            odd = np.flatnonzero(~np.isfinite(f.sum(axis=1)))
        if odd.size:
            good[odd] &= np.isfinite(f[odd])
    else:
        good = np.isfinite(f)
    if am is not None:
        good &= (am & _bad_mask_bits()) == 0
    any_good = good.any(axis=1)
    first = np.where(any_good, good.argmax(axis=1), 0)
    last = np.where(any_good, m - 1 - good[:, ::-1].argmax(axis=1), 0)

    # shared interpolation weights (all rows live on the same source grid): target pixel c lies
    # between source pixels j[c] and j[c] + 1 at fraction w[c]
    j = np.clip(np.searchsorted(x, xt, side="right") - 1, 0, m - 2)
    w = np.clip((xt - x[j]) / (x[j + 1] - x[j]), 0.0, 1.0)
    near0, near1 = w < 1e-9, w > 1.0 - 1e-9
    exact = bool(np.all(near0 | near1))
    if exact:  # target pixels sit on source pixels (e.g. the thesis cut of the SDSS lattice)
        j = np.where(near1, j + 1, j)
        out = np.take(f, j, axis=1)  # np.take keeps C order (f[:, j] would not)
        nearest = j
    else:
        f0 = np.take(f, j, axis=1)  # np.take keeps C order (f[:, j] would not)
        out = np.take(f, j + 1, axis=1)
        with np.errstate(invalid="ignore"):  # inf pixels are masked and replaced below
            out -= f0
            out *= w.astype(np.float32)
            out += f0
        del f0
        nearest = np.where(w > 0.5, j + 1, j)
    k_t = xt.size
    flags = np.zeros((n, k_t), dtype=bool)
    # outside a row's measured range: constant extrapolation (nearest measured value), flagged;
    # these are contiguous runs at both ends, set row by row with slices
    c_first = np.searchsorted(xt, x[first] - 1e-12, side="left")
    c_last = np.searchsorted(xt, x[last] + 1e-12, side="right")
    c_first[~any_good] = k_t
    c_last[~any_good] = k_t
    for i in range(n):
        a, b = c_first[i], c_last[i]
        if a > 0:
            out[i, :a] = f[i, first[i]]
            flags[i, :a] = True
        if b < k_t:
            out[i, b:] = f[i, last[i]]
            flags[i, b:] = True
    # inside the range, next to a masked pixel: linear interpolation between the nearest good
    # source pixels on either side (exactly np.interp over the good pixels). Masked pixels are
    # sparse inside the range, so they are found in the flat index and mapped to the target
    # pixels that use them.
    badflat = np.flatnonzero(~good)
    br, bs = np.divmod(badflat, m)
    inner = (bs > first[br]) & (bs < last[br]) & any_good[br]
    br, bs = br[inner], bs[inner]
    if br.size:
        lo_c = np.searchsorted(j, bs - (0 if exact else 1), side="left")
        hi_c = np.searchsorted(j, bs, side="right")
        counts = hi_c - lo_c
        r = np.repeat(br, counts)
        c = np.repeat(lo_c, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        if r.size:
            key = np.unique(r * k_t + c)
            r, c = np.divmod(key, k_t)
            # runs of consecutive masked pixels in the flat index: a masked pixel's nearest good
            # neighbours are just outside its run (inside the measured range both exist in-row)
            inner_flat = badflat[inner]
            run_break = np.diff(inner_flat) != 1
            starts = np.r_[True, run_break]
            ends = np.r_[run_break, True]
            ar = np.arange(inner_flat.size)
            start_of = inner_flat[np.maximum.accumulate(np.where(starts, ar, 0))]
            end_of = inner_flat[np.minimum.accumulate(np.where(ends, ar, inner_flat.size)[::-1])[::-1]]
            badflat = inner_flat
            left = r * m + j[c]
            kl = np.minimum(np.searchsorted(badflat, left), badflat.size - 1)
            p = np.where(badflat[kl] == left, start_of[kl] - 1, left)
            right = left + (0 if exact else 1)
            kr = np.minimum(np.searchsorted(badflat, right), badflat.size - 1)
            q = np.where(badflat[kr] == right, end_of[kr] + 1, right)
            pc, qc = p - r * m, q - r * m
            fp, fq = f.ravel()[p], f.ravel()[q]
            span = np.where(qc > pc, x[np.clip(qc, 0, m - 1)] - x[np.clip(pc, 0, m - 1)], 1.0)
            t = np.clip((xt[c] - x[np.clip(pc, 0, m - 1)]) / span, 0.0, 1.0)
            out[r, c] = np.where(qc > pc, fp + t * (fq - fp), fp)
            flags[r, c] = True
    outside_frac = (c_first + (k_t - c_last)) / k_t
    coverage = 1.0 - np.minimum(outside_frac, 1.0)
    first = np.where(any_good, first, -1)

    good_rows = np.ones(n, dtype=bool)
    reasons: dict[int, str] = {}
    for r in np.nonzero(first < 0)[0]:
        reasons[int(r)] = "every pixel is masked (ivar = 0, bad and_mask bit or non-finite flux)"
    for r in np.nonzero((first >= 0) & (coverage < min_coverage))[0]:
        reasons[int(r)] = (
            f"measured range {wl[first[r]]:.1f}-{wl[last[r]]:.1f} A covers {coverage[r]:.0%} of the "
            f"{target[0]:.1f}-{target[-1]:.1f} A grid (need {min_coverage:.0%})"
        )
    if reasons:
        if on_bad == "raise":
            r, why = next(iter(sorted(reasons.items())))
            raise SpectrumError(f"{source}: spectrum {r}: {why}")
        rows = np.fromiter(reasons, dtype=np.int64)
        good_rows[rows] = False
        out[rows] = 0.0
        flags[rows] = True
        for r, why in sorted(reasons.items())[:5]:
            log.warning("%s: skipping spectrum %d: %s", source, r, why)
        if len(reasons) > 5:
            log.warning("%s: %d more spectra skipped", source, len(reasons) - 5)
    return Resampled(
        fluxes=out.astype(np.float32, copy=False),
        flags=flags.view(np.uint8),
        good_rows=good_rows,
        reasons=reasons,
        _ivar_source=(iv, nearest),
    )


def fnet_normalise(fluxes: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """FNet Sec 3.1: subtract each spectrum's mean, then divide by its L2 norm (float32).

    A constant spectrum has zero norm after centring and comes back as zeros.
    """
    f = _as_batch(fluxes, "fluxes").astype(np.float32, copy=False)
    m = f.shape[1]
    total = f.sum(axis=1, dtype=np.float64)
    if not np.all(np.isfinite(total)):  # a float64 sum of float32 values is finite iff every value is
        raise SpectrumError("fnet_normalise: fluxes contain NaN or inf; resample() first")
    mean = total / m
    # |x - mean|^2 = sum x^2 - m mean^2 (float64 accumulation), then one fused pass
    sq = np.einsum("ij,ij->i", f, f, dtype=np.float64) - m * mean * mean
    inv = 1.0 / np.maximum(np.sqrt(np.maximum(sq, 0.0)), eps)
    out = f * inv.astype(np.float32)[:, None]
    out -= (mean * inv).astype(np.float32)[:, None]
    return out


class PixelStandardiser:
    """Per-pixel standardisation (thesis Sec 6: scikit-learn's StandardScaler over pixels).

    Fit on the training split only, then transform every split with the training statistics.
    Pixels with zero variance (below float32's smallest normal number) get a scale of 1;
    :meth:`transform` raises :class:`SpectrumError` for NaN/inf input and for results that do not
    fit in float32.
    """

    def __init__(self) -> None:
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    def fit(self, fluxes: np.ndarray) -> "PixelStandardiser":
        f = _as_batch(fluxes, "fluxes").astype(np.float64)
        if f.shape[0] < 2:
            raise SpectrumError("PixelStandardiser.fit needs at least 2 spectra")
        if not np.all(np.isfinite(f)):
            raise SpectrumError("PixelStandardiser.fit: fluxes contain NaN or inf")
        self.mean_ = f.mean(axis=0)
        std = f.std(axis=0)
        # a spread below float32's smallest normal number is rounding noise of a constant pixel
        self.scale_ = np.where(std > np.finfo(np.float32).tiny, std, 1.0)
        return self

    def transform(self, fluxes: np.ndarray) -> np.ndarray:
        if self.mean_ is None:
            raise SpectrumError("PixelStandardiser is not fitted; call fit() on the training split first")
        f = _as_batch(fluxes, "fluxes")
        if f.shape[1] != self.mean_.size:
            raise SpectrumError(f"fitted on {self.mean_.size} pixels, got spectra of {f.shape[1]}")
        if not np.all(np.isfinite(f)):
            raise SpectrumError("PixelStandardiser.transform: fluxes contain NaN or inf; resample() first")
        with np.errstate(over="ignore"):
            out = ((f - self.mean_) / self.scale_).astype(np.float32)
        if not np.all(np.isfinite(out)):
            cols = np.flatnonzero(~np.isfinite(out).all(axis=0))[:5].tolist()
            raise SpectrumError(
                f"PixelStandardiser.transform: standardised values overflow float32 at pixels {cols} (training "
                f"scales {self.scale_[cols].tolist()}): these spectra are far outside the training distribution"
            )
        return out

    def fit_transform(self, fluxes: np.ndarray) -> np.ndarray:
        return self.fit(fluxes).transform(fluxes)

    def get_config(self) -> dict[str, Any]:
        return {"mean": self.mean_.tolist(), "scale": self.scale_.tolist()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "PixelStandardiser":
        s = cls()
        s.mean_ = np.asarray(config["mean"], dtype=np.float64)
        s.scale_ = np.asarray(config["scale"], dtype=np.float64)
        return s


def gaussian_smooth(fluxes: np.ndarray, sigma_px: float | None = None) -> np.ndarray:
    """Gaussian smoothing along wavelength (σ in pixels; default the thesis's σ = 4, Table 6)."""
    from scipy.ndimage import gaussian_filter1d

    sigma = float(specs.load_spec("spectra")["thesis_smoothing_sigma_px"] if sigma_px is None else sigma_px)
    f = _as_batch(fluxes, "fluxes")
    if not np.all(np.isfinite(f)):
        raise SpectrumError("gaussian_smooth: fluxes contain NaN or inf; resample() first")
    if not (math.isfinite(sigma) and sigma <= f.shape[1]):
        raise SpectrumError(
            f"gaussian_smooth: sigma_px must be finite and at most the {f.shape[1]} pixels, got {sigma}"
        )
    if sigma <= 0:
        return f.astype(np.float32)
    return gaussian_filter1d(f.astype(np.float32), sigma, axis=1, mode="nearest")


# --- equivalent widths ------------------------------------------------------------------------


def line_names() -> list[str]:
    """Names of the 14 equivalent-width features, in column order."""
    return [ln["name"] for ln in specs.spectral_lines()]


def _pixel_widths(wl: np.ndarray) -> np.ndarray:
    edges = np.empty(wl.size + 1)
    edges[1:-1] = 0.5 * (wl[1:] + wl[:-1])
    edges[0] = wl[0] - 0.5 * (wl[1] - wl[0])
    edges[-1] = wl[-1] + 0.5 * (wl[-1] - wl[-2])
    return np.diff(edges)


def _window_index(wl: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel index ranges [a, b) whose centres fall in [lo, hi] per object."""
    a = np.searchsorted(wl, lo, side="left")
    b = np.searchsorted(wl, hi, side="right")
    return a, b


def equivalent_widths(
    fluxes: np.ndarray,
    wavelengths: np.ndarray,
    z: np.ndarray,
    *,
    flags: np.ndarray | None = None,
    lines: Sequence[Mapping[str, Any]] | None = None,
    frame: str = "rest",
    max_masked: float = 0.5,
) -> np.ndarray:
    """Equivalent widths by the thesis's Eq. 1, ``EW = Σ (F_c − F) / F_c · Δλ`` (Å).

    Parameters
    ----------
    fluxes : (N, M) array on ``wavelengths`` (Å; any grid, e.g. the store's).
    z : (N,) redshifts; each line's windows are placed at ``λ_rest (1 + z)``.
    flags : (N, M) bool/uint8, optional
        Masked/interpolated pixels. A window (or side band) more than ``max_masked`` flagged gives
        NaN; flagged pixels inside a usable window count as continuum (contribute 0).
    lines : list of dicts, optional
        ``name``, ``centers``, ``half_width``, ``continuum`` (rest Å); default ``spectra.yaml``.
    frame : {"rest", "observed"}
        Rest-frame EW (observed / (1 + z), the physical quantity) or the observed-frame sum.

    Returns
    -------
    (N, L) float32. Positive = absorption, negative = emission. NaN where a window or its side
    bands fall outside the grid, are mostly masked, or the continuum is not positive (or so close
    to 0 that the width overflows float32).

    The continuum ``F_c`` is the straight line through the mean fluxes of a blue and a red side
    band just outside the feature's outermost windows; multi-line features sum their windows.
    """
    f = _as_batch(fluxes, "fluxes")
    n, m = f.shape
    wl = _real(wavelengths, "wavelengths").astype(np.float64)
    if wl.shape != (m,):
        raise SpectrumError(f"wavelengths has shape {wl.shape}, fluxes has {m} pixels")
    if m < 2 or not (np.all(np.isfinite(wl)) and np.all(np.diff(wl) > 0)):
        raise SpectrumError("wavelengths must be at least 2 finite, strictly increasing values")
    z_arr = _real(z, "z").astype(np.float64)
    if z_arr.shape not in ((), (n,)):
        raise SpectrumError(f"z has shape {z_arr.shape}; expected one redshift per spectrum ({n},) or a scalar")
    zz = np.broadcast_to(z_arr, (n,))
    if frame not in ("rest", "observed"):
        raise ValueError(f"frame must be 'rest' or 'observed', got {frame!r}")
    lines = specs.spectral_lines() if lines is None else list(lines)
    if flags is None:
        bad = ~np.isfinite(f)
    else:  # flagged pixels include the non-finite ones (resample() output); NaN elsewhere gives NaN
        fl = _as_batch(flags, "flags")
        bad = fl.view(bool) if fl.dtype in (np.uint8, np.bool_) else fl.astype(bool)
        if bad.shape != f.shape:
            raise SpectrumError(f"flags shape {bad.shape} differs from fluxes {f.shape}")
        bad = bad | ~np.isfinite(f)  # a non-finite pixel is never usable, flagged or not
    f_flat, bad_flat = f.ravel(), bad.ravel()
    dl = _pixel_widths(wl)
    scale = 1.0 + zz
    out = np.full((n, len(lines)), np.nan)

    def windows(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray):
        """Padded pixel windows [lo, hi] (Å, shape (R, S)) of the given rows, all segments at once:
        columns, fluxes, usable and valid, each (R, S, W)."""
        a = np.searchsorted(wl, lo.ravel(), side="left").reshape(lo.shape)
        b = np.searchsorted(wl, hi.ravel(), side="right").reshape(hi.shape)
        width = int(max(1, (b - a).max(initial=1)))
        raw = a[..., None] + np.arange(width)
        valid = raw < b[..., None]
        cols = np.minimum(raw, m - 1)
        flat = cols + (rows * m)[:, None, None]
        return cols, f_flat[flat], valid & ~bad_flat[flat], valid

    for k, line in enumerate(lines):
        centers = np.asarray(line["centers"], dtype=np.float64)
        hw, cw = float(line["half_width"]), float(line["continuum"])
        # only the objects whose feature (with its side bands) lies on the grid are measured
        rows = np.nonzero(((centers.min() - hw - cw) * scale >= wl[0]) & ((centers.max() + hw + cw) * scale <= wl[-1]))[0]
        if rows.size == 0:
            continue
        sc = scale[rows]
        # segments: blue side band, red side band, then one window per line centre (rest Å)
        seg_lo = np.array([centers.min() - hw - cw, centers.max() + hw, *(centers - hw)])
        seg_hi = np.array([centers.min() - hw, centers.max() + hw + cw, *(centers + hw)])
        lo, hi = sc[:, None] * seg_lo, sc[:, None] * seg_hi
        cols, vals, use, valid = windows(rows, lo, hi)
        n_use = use.sum(axis=2)
        n_valid = valid.sum(axis=2)
        means = np.where(use[:, :2], vals[:, :2], 0.0).sum(axis=2) / np.maximum(n_use[:, :2], 1)
        fb, fr = means[:, 0], means[:, 1]
        ok = np.all((n_use[:, :2] > (1 - max_masked) * n_valid[:, :2]) & (n_use[:, :2] > 0), axis=1)
        xb = 0.5 * (lo[:, 0] + hi[:, 0])
        xr = 0.5 * (lo[:, 1] + hi[:, 1])
        slope = (fr - fb) / (xr - xb)
        wc, wv, wu, wval = cols[:, 2:], vals[:, 2:], use[:, 2:], valid[:, 2:]
        fc = fb[:, None, None] + slope[:, None, None] * (wl[wc] - xb[:, None, None])
        ok &= np.all(fc > 0, axis=(1, 2), where=wval)
        ok &= np.all(n_use[:, 2:] > (1 - max_masked) * np.maximum(n_valid[:, 2:], 1), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            term = (1.0 - wv / fc) * dl[wc]
        ew = term.sum(axis=(1, 2), where=wu)
        if frame == "rest":
            ew = ew / sc
        ok &= np.abs(ew) <= np.finfo(np.float32).max  # a continuum of ~0 gives widths float32 cannot hold
        out[rows, k] = np.where(ok, ew, np.nan)
    return out.astype(np.float32)


# --- line masking (FNet Fig. 6) ---------------------------------------------------------------


def line_mask(
    wavelengths: np.ndarray,
    z: np.ndarray,
    lines: Mapping[str, float] | None = None,
    half_width_kms: float | None = None,
) -> np.ndarray:
    """(N, M) bool: True within ±``half_width_kms`` of each line's observed wavelength.

    Defaults are FNet's masked lines (OVI, Lyα, NV, SiIV+OIV, CIV, CIII, CII; ``spectra.yaml``).
    """
    spec = specs.load_spec("spectra")["fnet_masked_lines"]
    lines = spec["lines"] if lines is None else lines
    hw = float(spec["half_width_kms"] if half_width_kms is None else half_width_kms)
    wl = _real(wavelengths, "wavelengths").astype(np.float64)
    if wl.ndim != 1 or not np.all(np.isfinite(wl) & (wl > 0)):
        raise SpectrumError(f"wavelengths must be a 1-D array of positive finite values, got shape {wl.shape}")
    zz = np.atleast_1d(_real(z, "z").astype(np.float64))
    if zz.ndim != 1 or not np.all(np.isfinite(zz) & (zz > -1)):
        raise SpectrumError(
            f"z must be finite redshifts > -1 (a scalar or one per spectrum), got {np.asarray(z)!r:.80}"
        )
    rest = np.asarray(list(lines.values()), dtype=np.float64)
    obs = rest[None, :] * (1.0 + zz[:, None])  # (N, L)
    # |ln(λ/λ_line)| < v/c, tested in log space for every line
    d = np.abs(np.log(wl[None, None, :] / obs[:, :, None]))  # (N, L, M)
    return (d < hw / C_KMS).any(axis=1)


def mask_lines(
    fluxes: np.ndarray,
    wavelengths: np.ndarray,
    z: np.ndarray,
    *,
    fill: float = 0.0,
    lines: Mapping[str, float] | None = None,
    half_width_kms: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Replace pixels near the masked lines by ``fill`` (0 on normalised spectra); returns (fluxes, mask)."""
    f = _as_batch(fluxes, "fluxes")
    mask = line_mask(wavelengths, z, lines, half_width_kms)
    if mask.shape[1] != f.shape[1] or mask.shape[0] not in (1, f.shape[0]):
        raise SpectrumError(
            f"fluxes {f.shape} do not match {mask.shape[1]} wavelengths and {mask.shape[0]} redshift(s)"
        )
    if mask.shape[0] == 1 and f.shape[0] > 1:
        mask = np.broadcast_to(mask, f.shape)
    return np.where(mask, np.asarray(fill, f.dtype), f), mask


# --- whole stores -----------------------------------------------------------------------------


def _process_chunk(
    fluxes: np.ndarray,
    ivar: np.ndarray,
    and_mask: np.ndarray | None,
    wl: np.ndarray,
    z: np.ndarray,
    grid: np.ndarray,
    normalise: str | None,
    smooth_sigma: float | None,
    with_ew: bool,
    min_coverage: float,
    source: str,
) -> tuple[Resampled, np.ndarray | None, np.ndarray]:
    res = resample(fluxes, wl, grid, ivar=ivar, and_mask=and_mask, min_coverage=min_coverage, source=source)
    ew = equivalent_widths(res.fluxes, grid, z, flags=res.flags) if with_ew else None
    out = res.fluxes
    if smooth_sigma:
        out = gaussian_smooth(out, smooth_sigma)
    if normalise == "fnet":
        out = fnet_normalise(out)
    elif normalise not in (None, "none"):
        raise ValueError(f"normalise must be 'fnet' or None, got {normalise!r}")
    return res, ew, out


def preprocess_store(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    grid: str = "fnet",
    normalise: str | None = None,
    smooth_sigma: float | None = None,
    with_equivalent_widths: bool = True,
    min_coverage: float = 0.5,
    chunk_rows: int = 1024,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Resample (and optionally smooth / normalise) every spectrum of a store into a new store.

    Streams ``chunk_rows`` spectra at a time (memory bounded whatever the file size), computes the
    equivalent widths on the resampled, un-normalised fluxes, writes ``pixel_flags`` and
    ``equivalent_widths`` beside the fluxes, and drops (and logs) spectra that cannot be
    resampled. Returns a summary with the number kept and the skipped specObjIDs with reasons.

    ``normalise="fnet"`` applies FNet's zero-mean/unit-norm; ``smooth_sigma`` the thesis's Gaussian.
    Chunks are processed on ``workers`` threads (numpy releases the GIL); default: all cores.
    """
    from keras_astro.io.spectra_store import StoreWriter, open_store

    g = specs.spectral_grid(grid)
    workers = workers or min(4, os.cpu_count() or 1)
    skipped: list[tuple[int, str]] = []
    kept = 0
    with open_store(src) as r:
        meta = r.meta
        fields = ["fluxes", "ivar"] + (["and_mask"] if r.has("and_mask") else [])
        if "z" not in meta:
            raise SpectrumError(f"{src}: meta has no 'z' column (needed for equivalent widths)")
        attrs = {
            "grid": grid,
            "normalise": normalise or "none",
            "smooth_sigma": float(smooth_sigma or 0.0),
            "source_store": str(src),
            "lines": ",".join(line_names()) if with_equivalent_widths else "",
        }
        n_chunks = max(1, math.ceil(r.n_rows / chunk_rows))
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=r.n_rows, unit="spectrum", desc=f"preprocess → {grid}")
        with (
            StoreWriter(
                dst,
                g,
                attrs=attrs,
                with_pixel_flags=True,
                n_lines=len(line_names()) if with_equivalent_widths else None,
            ) as w,
            ThreadPoolExecutor(max_workers=workers) as pool,
        ):

            def job(start: int):
                arr = r.read(start, start + chunk_rows, fields)
                z = meta["z"].to_numpy()[start : start + len(arr["fluxes"])]
                return start, _process_chunk(
                    arr["fluxes"],
                    arr["ivar"],
                    arr.get("and_mask"),
                    r.wavelengths,
                    z,
                    g,
                    normalise,
                    smooth_sigma,
                    with_equivalent_widths,
                    min_coverage,
                    str(src),
                )

            # h5py serialises reads internally; the numpy work overlaps across threads. At most
            # `workers + 1` chunks are in flight, so memory stays bounded.
            pending: deque = deque()
            for i in range(n_chunks):
                pending.append(pool.submit(job, i * chunk_rows))
                if len(pending) <= workers and i < n_chunks - 1:
                    continue
                while pending and (len(pending) > workers or i == n_chunks - 1):
                    start, (res, ew, out) = pending.popleft().result()
                    kept += _write_chunk(w, meta, start, res, ew, out, skipped)
                    if bar is not None:
                        bar.update(len(res.good_rows))
        if bar is not None:
            bar.close()
    if skipped:
        log.warning("%s: %d spectra skipped (first: %s: %s)", src, len(skipped), *skipped[0])
    return {"input": str(src), "output": str(Path(dst)), "grid": grid, "n_kept": kept, "skipped": skipped}


def _write_chunk(w, meta, start, res: Resampled, ew, out, skipped: list) -> int:
    rows = np.nonzero(res.good_rows)[0]
    chunk_meta = meta.iloc[start : start + len(res.good_rows)]
    for r_bad, why in res.reasons.items():
        skipped.append((int(chunk_meta["specObjID"].iloc[r_bad]), why))
    if rows.size:
        w.append(
            fluxes=out[rows],
            ivar=res.ivar[rows],
            pixel_flags=res.flags[rows],
            equivalent_widths=None if ew is None else ew[rows],
            meta=chunk_meta.iloc[rows].reset_index(drop=True),
        )
    return int(rows.size)
