"""Embedded SDSS-like optical spectra: quasars, galaxies and stars on the SDSS coadd lattice.

FNet (quasar redshifts) and the spectral-classification thesis (GALAXY / QSO / STAR and their
subclasses) need tens of thousands of SDSS spectra, which cannot be downloaded at run time. This
module simulates a physically grounded stand-in written in the real formats: the HDF5 store of
``data_specs/spectra_store.yaml`` and, optionally, one ``spec-PLATE-MJD-FIBER.fits`` per object.

Model, in short (numbers and sources in ``data_specs/spectra_simulator.yaml``; approximations in
``docs/fidelity.md``, section "SDSS-like spectrum simulator"):

* **Quasars**: broken power-law continuum (Vanden Berk et al. 2001) with slope scatter, the broad and
  narrow lines of the SDSS composite (Vanden Berk et al. 2001 Table 2 equivalent widths), a
  log-normal fluctuating Lyα/Lyβ forest whose mean transmission is exp(−τ_eff),
  τ_eff = 0.0018 (1+z)^3.92 (Faucher-Giguère et al. 2008), Lyman-limit absorption, ~10 % BAL
  troughs, a DR16Q-like redshift mixture and ~1.5 % QuasarNET failures (``z_qn = -1``).
* **Galaxies**: non-negative mixtures of the five kcorrect v4 NMF templates (real SDSS-based
  spectra, 600 Å–320 µm) with their nebular lines removed, redshifted (main sample, LRG and BOSS
  populations, z ≲ 0.7), with emission lines added at the strengths each SDSS subclass implies
  (BPT ratios, Hα EW > 50 Å for STARBURST, broad Balmer lines for BROADLINE).
* **Stars**: the 15 thesis groups. Blackbody continua at a colour temperature solved from the
  Johnson B−V of the dwarf sequence (Pecaut & Mamajek 2013), metal-line blanketing, a Balmer
  jump, absorption lines (Balmer, Ca H&K, G band, Mg b, Na D, Ca triplet, He), molecular bands
  (TiO, CaH, VO, C₂, CN, CrH, FeH, H₂O); white dwarfs with pressure-broadened or Zeeman-split
  Balmer lines, DQ white dwarfs, cataclysmic variables with broad Balmer/He emission.
* **Observation**: fibre spectra on the ``sdss`` lattice (SDSS-I/II 3800–9200 Å or BOSS
  3600–10400 Å coverage, flux 0 / ivar 0 outside), instrumental resolution, photon noise from the
  object and a dark-sky spectrum (continuum, [O I], Na D, Hg and the red OH forest) through a
  two-camera throughput, sky-subtraction residuals, masked pixels with SDSS and_mask bits, and
  asinh petroMag_ugriz through the speclite SDSS filter curves.

Objects are generated in fixed blocks of 256, block ``b`` with ``numpy.random.default_rng([seed, b])``,
so the same seed gives byte-identical arrays however the sequence is cut into chunks.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.special import expit, ndtr

from keras_astro import specs

log = logging.getLogger(__name__)

__all__ = ["SIM_VERSION", "SimulatedSpectra", "simulate_spectra", "write_simulated_store"]

#: Version of the simulated data; bump whenever the output of a given seed changes.
SIM_VERSION = "1.0.0"

# --------------------------------------------------------------------------------------------
# Fixed numbers of the implementation (physics constants; literature numbers live in the YAML)
# --------------------------------------------------------------------------------------------
_BLOCK = 256  # objects per random block: the unit of determinism
_C_KMS = 299792.458
_C_AA = 2.99792458e18  # Å/s
_HC_OVER_K_AA = 1.438776877e8  # h c / k_B in Å K
_AB0_CGS = 3631.0e-23  # erg/s/cm²/Hz
_FLUX_UNIT = 1.0e-17  # erg/s/cm²/Å of the store
_PHOT_RANGE_AA = (2900.0, 11500.0)  # observed range of the photometry grid (covers SDSS u..z)
_REST_RANGE_AA = (1650.0, 11600.0)  # rest range of the galaxy template lattice (z ≤ 0.75)
_MAX_OBJECTS = 1_700_000  # SDSS-I/II plates stay ≤ 2,922 (legacy plates end at 3,006), BOSS from 3,586
_BANDS = ("u", "g", "r", "i", "z")


def _cfg() -> dict[str, Any]:
    return specs.load_spec("spectra_simulator")


def _spectra_spec() -> dict[str, Any]:
    return specs.load_spec("spectra")


def _air_to_vac(wave_air: np.ndarray) -> np.ndarray:
    """IAU air→vacuum conversion (Morton 1991; the SDSS idlutils ``airtovac`` formula), Å."""
    w = np.asarray(wave_air, dtype=np.float64)
    sigma2 = (1.0e4 / w) ** 2
    fact = 1.0 + 5.792105e-2 / (238.0185 - sigma2) + 1.67917e-3 / (57.362 - sigma2)
    return w * fact


# --------------------------------------------------------------------------------------------
# Public result type
# --------------------------------------------------------------------------------------------
@dataclass
class SimulatedSpectra:
    """Simulated spectra on the ``sdss`` lattice, laid out like a spectrum store.

    Attributes
    ----------
    wavelengths : ndarray (M,), float64
        Pixel centres, vacuum Å (``keras_astro.specs.spectral_grid("sdss")``).
    fluxes : ndarray (N, M), float32
        Flux density in 1e-17 erg/s/cm²/Å; 0 where ``ivar`` is 0.
    ivar : ndarray (N, M), float32
        Inverse variance; 0 outside the object's coverage and at masked pixels.
    and_mask : ndarray (N, M), int32
        SDSS and_mask bits (``spectra.yaml`` ``and_mask_bad_bits``) of the masked pixels.
    meta : dict of str → ndarray (N,)
        Columns of ``spectra_store.yaml`` ``meta`` with their dtypes (all required columns plus
        ``sn_median``, ``z_vi``, ``z_qn``, ``in_dr12q`` and ``source``).
    """

    wavelengths: np.ndarray
    fluxes: np.ndarray
    ivar: np.ndarray
    and_mask: np.ndarray
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.fluxes.shape[0])


# --------------------------------------------------------------------------------------------
# Wavelength grids
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    """The SDSS lattice extended to cover the photometric bands (same log10 step)."""

    wave: np.ndarray  # (K,) Å, wide grid
    loglam: np.ndarray  # (K,)
    dlam: np.ndarray  # (K,) pixel widths, Å
    dloglam: float
    lo: int  # index of the first ``sdss`` pixel in the wide grid
    n_sdss: int
    px_kms: float  # velocity width of a pixel

    @property
    def sdss(self) -> slice:
        return slice(self.lo, self.lo + self.n_sdss)

    def pixel_of(self, wave: np.ndarray | float) -> np.ndarray:
        """Fractional wide-grid pixel coordinate of a wavelength (pixel k is centred on k)."""
        return (np.log10(wave) - self.loglam[0]) / self.dloglam


@functools.lru_cache(maxsize=1)
def _grid() -> _Grid:
    g = _spectra_spec()["grids"]["sdss"]
    loglam0, dl, n = float(g["loglam0"]), float(g["dloglam"]), int(g["n_pixels"])
    k_lo = math.floor((math.log10(_PHOT_RANGE_AA[0]) - loglam0) / dl)
    k_hi = math.ceil((math.log10(_PHOT_RANGE_AA[1]) - loglam0) / dl)
    k = np.arange(k_lo, k_hi + 1)
    loglam = loglam0 + dl * k
    wave = 10.0**loglam
    return _Grid(
        wave=wave,
        loglam=loglam,
        dlam=wave * math.log(10.0) * dl,
        dloglam=dl,
        lo=-k_lo,
        n_sdss=n,
        px_kms=_C_KMS * math.log(10.0) * dl,
    )


# --------------------------------------------------------------------------------------------
# Line profiles on the log-lambda lattice (pixel-integrated, windowed, scattered with bincount)
# --------------------------------------------------------------------------------------------
def _profile_add(
    out: np.ndarray,
    rows: np.ndarray,
    centre_px: np.ndarray,
    amp: np.ndarray,
    width_px: np.ndarray,
    shape: str = "gauss",
) -> None:
    """Add ``amp × profile`` to ``out[rows]``; profiles are normalised (sum 1 over all pixels).

    ``width_px`` is the Gaussian σ or the Lorentzian half width (pixels). The profile is
    integrated over each pixel, so the summed value equals ``amp`` (up to the window truncation
    of Lorentzian wings at ±25 half widths and the grid edges).
    """
    rows = np.asarray(rows, dtype=np.int64).ravel()
    centre = np.asarray(centre_px, dtype=np.float64).ravel()
    amp = np.asarray(amp, dtype=np.float64).ravel()
    width = np.maximum(np.asarray(width_px, dtype=np.float64).ravel(), 0.05)
    keep = (amp != 0) & np.isfinite(centre)
    rows, centre, amp, width = rows[keep], centre[keep], amp[keep], width[keep]
    if rows.size == 0:
        return
    n_obj, n_pix = out.shape
    reach = 5.0 if shape == "gauss" else 25.0
    # far outside the grid: nothing to add
    inside = (centre + reach * width >= -1) & (centre - reach * width <= n_pix)
    rows, centre, amp, width = rows[inside], centre[inside], amp[inside], width[inside]
    if rows.size == 0:
        return
    # group by window size to keep the work proportional to the line widths
    half = np.minimum(np.ceil(reach * width).astype(np.int64) + 1, n_pix)
    for h in np.unique(np.minimum(2 ** np.ceil(np.log2(half)).astype(np.int64), n_pix)):
        sel = np.minimum(2 ** np.ceil(np.log2(half)).astype(np.int64), n_pix) == h
        c, a, w, r = centre[sel], amp[sel], width[sel], rows[sel]
        c0 = np.rint(c).astype(np.int64)
        offs = np.arange(-h, h + 1)
        edges = (c0 - c)[:, None] + np.arange(-h, h + 2)[None, :] - 0.5
        x = edges / w[:, None]
        cdf = ndtr(x) if shape == "gauss" else 0.5 + np.arctan(x) / math.pi
        vals = np.diff(cdf, axis=1) * a[:, None]
        pix = c0[:, None] + offs[None, :]
        ok = (pix >= 0) & (pix < n_pix)
        flat = (r[:, None] * n_pix + pix)[ok]
        out += np.bincount(flat, weights=vals[ok], minlength=n_obj * n_pix).reshape(n_obj, n_pix)


def _band_profile(wave: np.ndarray, head: float, direction: str, length: float) -> np.ndarray:
    """Molecular band shape: 1 at the head, fading exponentially to the red or the blue."""
    if direction == "red":
        d = wave - head
    elif direction == "blue":
        d = head - wave
    else:
        raise ValueError(f"spectra_simulator.yaml: band direction must be 'red' or 'blue', got {direction!r}")
    with np.errstate(over="ignore"):
        return np.where(d >= 0, np.exp(-np.clip(d, 0, None) / length), 0.0)


def _blackbody(wave: np.ndarray, temp: np.ndarray) -> np.ndarray:
    """Planck B_λ shape λ⁻⁵ / (exp(hc/λkT) − 1), normalised at 5500 Å; rows = temperatures."""
    t = np.asarray(temp, dtype=np.float64)[:, None]
    x = _HC_OVER_K_AA / (wave * t)
    x0 = _HC_OVER_K_AA / (5500.0 * t)
    with np.errstate(over="ignore"):
        b = (wave / 5500.0) ** -5.0 * np.expm1(np.minimum(x0, 700.0)) / np.expm1(np.minimum(x, 700.0))
    return np.where(x < 700.0, b, 0.0)


def _loginterp(x: np.ndarray, nodes: list[float], values: list[float]) -> np.ndarray:
    """Linear interpolation in log10(x) between ``nodes`` (clamped at the ends)."""
    return np.interp(np.log10(x), np.log10(np.asarray(nodes, dtype=np.float64)), np.asarray(values, float))


def _uniform(rng: np.random.Generator, lohi: list[float] | tuple[float, float], size: int) -> np.ndarray:
    lo, hi = float(lohi[0]), float(lohi[1])
    return lo + (hi - lo) * rng.random(size)


def _log_uniform(rng: np.random.Generator, lohi: list[float], size: int) -> np.ndarray:
    lo, hi = max(float(lohi[0]), 1e-3), float(lohi[1])
    return np.exp(np.log(lo) + (np.log(hi) - np.log(lo)) * rng.random(size))


def _counts_mag(rng: np.random.Generator, spec: Mapping[str, Any], size: int) -> np.ndarray:
    """Magnitudes in ``spec['range']`` with number counts ∝ 10^(slope m)."""
    a, b = (float(v) for v in spec["range"])
    s = float(spec["slope"])
    u = rng.random(size)
    return np.log10(10 ** (s * a) + u * (10 ** (s * b) - 10 ** (s * a))) / s


# --------------------------------------------------------------------------------------------
# Filters and synthetic photometry
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _band_weights(names: tuple[str, ...]) -> np.ndarray:
    """(B, K) weights W with ⟨f_ν⟩ [erg/s/cm²/Hz] = W @ f_λ [erg/s/cm²/Å] on the wide grid.

    Photon-counting convention ⟨f_ν⟩ = ∫ f_λ R λ dλ / ∫ R (c/λ) dλ; on a log-λ grid dλ ∝ λ.
    """
    import speclite.filters

    g = _grid()
    out = np.zeros((len(names), g.wave.size))
    for j, name in enumerate(names):
        f = speclite.filters.load_filter(name)
        w = np.asarray(f.wavelength, dtype=np.float64)
        r = np.clip(np.asarray(f.response, dtype=np.float64), 0.0, None)
        if w[0] < g.wave[0] or w[-1] > g.wave[-1]:
            raise ValueError(f"filter {name} ({w[0]:.0f}-{w[-1]:.0f} Å) exceeds the photometry grid")
        resp = np.interp(g.wave, w, r, left=0.0, right=0.0)
        out[j] = resp * g.wave**2 / (_C_AA * resp.sum())
    return out


def _ab_mags(model: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """AB magnitudes (n, B) of spectra (n, K) in store flux units (1e-17 erg/s/cm²/Å)."""
    fnu = model @ _band_weights(names).T * _FLUX_UNIT
    with np.errstate(divide="ignore", invalid="ignore"):
        return -2.5 * np.log10(np.maximum(fnu, 1e-300) / _AB0_CGS)


def _sdss_filter_names() -> tuple[str, ...]:
    return tuple(_cfg()["photometry"]["filters"])


def _normalise(model: np.ndarray, bands: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Scale each row so that its AB magnitude in ``bands[i]`` (index into ugriz) is ``target[i]``."""
    if model.shape[0] == 0:
        return model
    mags = _ab_mags(model, _sdss_filter_names())
    have = mags[np.arange(model.shape[0]), bands]
    scale = 10.0 ** (-0.4 * (target - have))
    return model * scale[:, None]


def _observed_photometry(
    rng: np.random.Generator, model: np.ndarray, extended: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy asinh petroMag (n, 5) and errors of noiseless total spectra (n, K)."""
    ph = _cfg()["photometry"]
    n = model.shape[0]
    if n == 0:
        return np.zeros((0, 5)), np.zeros((0, 5))
    ab = _ab_mags(model, _sdss_filter_names())
    offsets = np.asarray(ph["ab_offsets"], dtype=np.float64)  # m_SDSS − m_AB
    f_true = 10.0 ** (-0.4 * (ab + offsets))  # maggies in the SDSS system
    lim = np.asarray(ph["limit_mag"], dtype=np.float64)
    sig_sky = 10.0 ** (-0.4 * lim) / 5.0
    sig_sky = sig_sky[None, :] * np.where(extended, float(ph["extended_noise_factor"]), 1.0)[:, None]
    floor = float(ph["calibration_floor_mag"]) / (2.5 / math.log(10.0))
    sigma = np.sqrt(sig_sky**2 + (floor * f_true) ** 2)
    f_obs = f_true + sigma * rng.standard_normal((n, 5))
    b = np.asarray(ph["asinh_b"], dtype=np.float64)[None, :]
    k = 2.5 / math.log(10.0)
    mag = -k * (np.arcsinh(f_obs / (2 * b)) + np.log(b))
    err = k * sigma / (2 * b) / np.sqrt(1.0 + (f_obs / (2 * b)) ** 2)
    return mag, err


# --------------------------------------------------------------------------------------------
# Observation model: throughput, sky, gain calibration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Survey:
    name: str
    index: int
    lo_px: float  # nominal first covered pixel (sdss grid coordinates)
    hi_px: float
    jitter_px: float
    sky: np.ndarray  # (M,) total sky in the fibre, store flux units
    sky_lines: np.ndarray  # (M,) line part of the sky
    throughput: np.ndarray  # (M,)
    gain: float  # effective photons per (flux unit) at 5000 Å, with throughput = 1
    run2d_code: int
    plate_first: int
    fibers_per_plate: int
    mjd_range: tuple[int, int]


def _run2d_code(run2d: str) -> int:
    """specObjID run2d field: "vN_M_P" → (N−5)·10000 + M·100 + P, else the integer (SDSS)."""
    s = str(run2d)
    if s.startswith("v"):
        n, m, p = (int(x) for x in s[1:].split("_"))
        return (n - 5) * 10000 + m * 100 + p
    return int(s)


@functools.lru_cache(maxsize=None)
def _survey(name: str) -> _Survey:
    cfg = _cfg()
    sv = cfg["surveys"][name]
    g = _grid()
    wave = g.wave[g.sdss]
    nodes = np.asarray(cfg["throughput_nodes"], dtype=np.float64)
    thr = np.clip(np.interp(wave, nodes[:, 0], nodes[:, 1], left=nodes[0, 1], right=nodes[-1, 1]), 0.01, None)
    # dark sky continuum in the fibre
    sky_nodes = np.asarray(cfg["sky_continuum_nodes"], dtype=np.float64)
    mu = np.interp(wave, sky_nodes[:, 0], sky_nodes[:, 1])
    area = math.pi * (float(sv["fiber_diameter_arcsec"]) / 2.0) ** 2
    m_fib = mu - 2.5 * math.log10(area)
    sky_cont = _AB0_CGS * 10.0 ** (-0.4 * m_fib) * _C_AA / wave**2 / _FLUX_UNIT
    lines = np.asarray(cfg["sky_lines_air"] + cfg["sky_oh_lines_air"], dtype=np.float64)
    lam = _air_to_vac(lines[:, 0])
    px = (np.log10(lam) - g.loglam[g.lo]) / g.dloglam
    cont_at = np.interp(lam, wave, sky_cont)
    dl_at = lam * math.log(10.0) * g.dloglam
    sigma_px = float(cfg["noise"]["resolution_sigma_kms"]) / g.px_kms
    sky_lines = np.zeros((1, wave.size))
    _profile_add(sky_lines, np.zeros(lam.size), px, lines[:, 1] * cont_at / dl_at, np.full(lam.size, sigma_px))
    sky_lines = sky_lines[0]
    sky = sky_cont + sky_lines
    # gain: median S/N per pixel over 4000-5500 Å equals sn_ref for a flat-f_nu source at mag_ref
    f_ref = _AB0_CGS * 10.0 ** (-0.4 * float(sv["mag_ref"])) * _C_AA / wave**2 / _FLUX_UNIT
    lam5 = (wave / 5000.0) ** 2
    sel = (wave > 4000.0) & (wave < 5500.0)
    need = float(sv["sn_ref"]) ** 2 * (f_ref + sky) / (f_ref**2 * lam5 * thr)
    gain = float(np.median(need[sel]))
    lo_px = (math.log10(sv["coverage"][0]) - g.loglam[g.lo]) / g.dloglam
    hi_px = (math.log10(sv["coverage"][1]) - g.loglam[g.lo]) / g.dloglam
    jit = float(sv["coverage_jitter"]) / (5000.0 * math.log(10.0) * g.dloglam)
    return _Survey(
        name=name,
        index=0 if name == "sdss" else 1,
        lo_px=lo_px,
        hi_px=hi_px,
        jitter_px=jit,
        sky=sky,
        sky_lines=sky_lines,
        throughput=thr,
        gain=gain,
        run2d_code=_run2d_code(sv["run2d"]),
        plate_first=int(sv["plate_first"]),
        fibers_per_plate=int(sv["fibers_per_plate"]),
        mjd_range=(int(sv["mjd_range"][0]), int(sv["mjd_range"][1])),
    )


_SURVEYS = ("sdss", "boss")


# --------------------------------------------------------------------------------------------
# Per-class output of the generators
# --------------------------------------------------------------------------------------------
@dataclass
class _ClassOut:
    model: np.ndarray  # (n, K) noiseless total (photometric) spectrum, store flux units
    z: np.ndarray
    subclass: list[str]
    survey: np.ndarray  # 0 sdss, 1 boss
    fiber_frac: np.ndarray  # spectrum = model × fiber_frac
    depth: np.ndarray  # multiplicative factor on the gain (QuasarNET low-S/N failures)
    extended: np.ndarray  # bool: galaxy photometry
    zerr_k: float  # km/s at S/N = 1
    transmission: np.ndarray | None = None  # (n, K) forest × Lyman-limit transmission (quasars)
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def _empty_out(k: int) -> _ClassOut:
    return _ClassOut(
        model=np.zeros((0, k)),
        z=np.zeros(0),
        subclass=[],
        survey=np.zeros(0, np.int64),
        fiber_frac=np.zeros(0),
        depth=np.zeros(0),
        extended=np.zeros(0, bool),
        zerr_k=1.0,
    )


def _instrument_sigma_px() -> float:
    return float(_cfg()["noise"]["resolution_sigma_kms"]) / _grid().px_kms


# --------------------------------------------------------------------------------------------
# Quasars
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _forest_table(sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean transmission ⟨exp(−a e^{σδ})⟩, δ ~ N(0, 1), on a grid of ln a (Gauss–Hermite)."""
    x, w = np.polynomial.hermite.hermgauss(60)
    ln_a = np.linspace(math.log(1e-5), math.log(1e3), 800)
    tau = np.exp(ln_a)[:, None] * np.exp(sigma * math.sqrt(2.0) * x)[None, :]
    mean = (np.exp(-tau) * w[None, :]).sum(axis=1) / math.sqrt(math.pi)
    return ln_a, mean


def _forest_amplitude(tau_eff: np.ndarray, sigma: float) -> np.ndarray:
    """Amplitude ``a`` with ⟨exp(−a e^{σδ})⟩ = exp(−τ_eff)."""
    ln_a, mean = _forest_table(sigma)
    target = np.exp(-np.asarray(tau_eff))
    # mean decreases with a: interpolate on the reversed arrays
    return np.exp(np.interp(target, mean[::-1], ln_a[::-1]))


def _forest_transmission(
    rng: np.random.Generator, z: np.ndarray, wave: np.ndarray, line: float, tau_scale: float
) -> np.ndarray:
    """Fluctuating Lyman-series forest transmission (n, K) for one transition."""
    q = _cfg()["quasar"]
    n, k = z.size, wave.size
    sigma = float(q["forest_lognormal_sigma"])
    z_abs = wave[None, :] / line - 1.0
    region = (z_abs < z[:, None]) & (z_abs > 0.0)
    field_ = rng.standard_normal((n, k))
    corr = float(q["forest_correlation_px"])
    field_ = gaussian_filter1d(field_, corr, axis=1, mode="nearest")
    field_ /= math.sqrt(1.0 / (2.0 * math.sqrt(math.pi) * corr))  # unit variance after smoothing
    out = np.ones((n, k))
    if not region.any():
        return out
    za = np.broadcast_to(z_abs, (n, k))[region]
    tau_eff = tau_scale * float(q["forest_tau_a"]) * (1.0 + za) ** float(q["forest_tau_b"])
    a = _forest_amplitude(tau_eff, sigma)
    out[region] = np.exp(-a * np.exp(sigma * field_[region]))
    return out


def _quasars(rng: np.random.Generator, n: int) -> _ClassOut:
    g = _grid()
    k = g.wave.size
    if n == 0:
        return _empty_out(k)
    q = _cfg()["quasar"]
    # --- redshifts: DR16Q-like mixture
    comps = q["z_mixture"]
    weights = np.asarray([c["weight"] for c in comps], dtype=np.float64)
    which = rng.choice(len(comps), size=n, p=weights / weights.sum())
    z = np.empty(n)
    zlo, zhi = (float(v) for v in q["z_range"])
    todo = np.arange(n)
    for _ in range(100):
        if todo.size == 0:
            break
        draw = np.empty(todo.size)
        for j, c in enumerate(comps):
            m = which[todo] == j
            if c["kind"] == "normal":
                draw[m] = rng.normal(float(c["mean"]), float(c["sigma"]), m.sum())
            elif c["kind"] == "exponential":
                draw[m] = float(c["start"]) + rng.exponential(float(c["scale"]), m.sum())
            else:
                raise ValueError(f"spectra_simulator.yaml quasar.z_mixture: unknown kind {c['kind']!r}")
        z[todo] = draw
        todo = todo[(draw < zlo) | (draw > zhi)]
    z[todo] = np.clip(z[todo], zlo, zhi)

    rest = g.wave[None, :] / (1.0 + z[:, None])  # (n, K)
    # --- continuum: broken power law in f_nu ∝ nu^alpha → f_lambda ∝ lambda^-(2+alpha)
    alpha = rng.normal(float(q["alpha_nu"]), float(q["alpha_nu_scatter"]), n)
    a_red, b_red = float(q["alpha_nu_red"]), float(q["break_red"])
    a_euv, b_euv = float(q["alpha_nu_euv"]), float(q["break_euv"])
    lam0 = 3000.0
    beta = -(2.0 + alpha)[:, None]
    cont = (rest / lam0) ** beta
    at_red = (b_red / lam0) ** beta
    cont = np.where(rest > b_red, at_red * (rest / b_red) ** -(2.0 + a_red), cont)
    at_euv = (b_euv / lam0) ** beta
    cont = np.where(rest < b_euv, at_euv * (rest / b_euv) ** -(2.0 + a_euv), cont)

    def cont_at(lam_rest: np.ndarray) -> np.ndarray:
        lr = np.asarray(lam_rest, dtype=np.float64)
        c = (lr / lam0) ** beta
        c = np.where(lr > b_red, at_red * (lr / b_red) ** -(2.0 + a_red), c)
        return np.where(lr < b_euv, at_euv * (lr / b_euv) ** -(2.0 + a_euv), c)

    # --- QuasarNET failures: weak-line quasars or very low S/N
    fail = rng.random(n) < float(q["qn_fail_fraction"])
    weak = fail & (rng.random(n) < float(q["qn_fail_weakline_share"]))
    lowsn = fail & ~weak
    ew_factor = np.where(weak, _uniform(rng, q["weakline_ew_factor"], n), 1.0)
    depth = np.where(lowsn, _uniform(rng, q["lowsn_depth_factor"], n), 1.0)

    # --- emission lines
    lines = q["lines"]
    n_l = len(lines)
    lam_l = np.asarray([ln["wave"] for ln in lines], dtype=np.float64)
    ew = np.asarray([ln["ew"] for ln in lines], dtype=np.float64)
    broad = np.asarray([ln["kind"] == "broad" for ln in lines])
    wfac = np.asarray([float(ln.get("width_factor", 1.0)) for ln in lines])
    shift = np.asarray([float(ln.get("shift", 0.0)) for ln in lines])
    fwhm_b = float(q["broad_fwhm_kms"]["median"]) * 10 ** rng.normal(0, float(q["broad_fwhm_kms"]["sigma_dex"]), n)
    fwhm_n = float(q["narrow_fwhm_kms"]["median"]) * 10 ** rng.normal(0, float(q["narrow_fwhm_kms"]["sigma_dex"]), n)
    ew_obj = ew[None, :] * 10 ** rng.normal(0.0, float(q["ew_scatter_dex"]), (n, n_l)) * ew_factor[:, None]
    sig_kms = np.where(broad[None, :], fwhm_b[:, None] * wfac[None, :], fwhm_n[:, None]) / 2.3548
    sig_px = np.sqrt((sig_kms / g.px_kms) ** 2 + _instrument_sigma_px() ** 2)
    lam_c_rest = lam_l[None, :] * (1.0 + shift[None, :] / _C_KMS)
    lam_c_obs = lam_c_rest * (1.0 + z[:, None])
    flux_line = ew_obj * (1.0 + z[:, None]) * cont_at(lam_l[None, :] * np.ones((n, 1)))  # EW_obs × f_c
    dl_c = lam_c_obs * math.log(10.0) * g.dloglam
    model = cont.copy()
    rows = np.repeat(np.arange(n), n_l)
    _profile_add(model, rows, g.pixel_of(lam_c_obs).ravel(), (flux_line / dl_c).ravel(), sig_px.ravel())

    # --- broad absorption lines
    bal = rng.random(n) < float(q["bal_fraction"])
    lobal = bal & (rng.random(n) < float(q["lobal_fraction_of_bal"]))
    vmin = _uniform(rng, q["bal_vmin_kms"], n)
    vmax = np.minimum(vmin + _uniform(rng, q["bal_width_kms"], n), float(q["bal_vmax_kms"]))
    bdepth = _uniform(rng, q["bal_depth"], n)
    idx = np.flatnonzero(bal)
    if idx.size:
        structure = gaussian_filter1d(rng.standard_normal((idx.size, k)), 8.0, axis=1, mode="nearest")
        structure = np.clip(1.0 + 1.5 * structure, 0.3, 1.3)
        trans = np.ones((idx.size, k))
        for bl in q["bal_lines"]:
            use = lobal[idx] if bl["lobal_only"] else np.ones(idx.size, bool)
            if not use.any():
                continue
            v = _C_KMS * (1.0 - rest[idx] / float(bl["wave"]))  # > 0 blueward of the line
            edge = 300.0
            s = expit((v - vmin[idx, None]) / edge) * expit((vmax[idx, None] - v) / edge)
            d = np.clip(bdepth[idx, None] * float(bl["depth"]) * s * structure, 0.0, 0.98)
            trans *= np.where(use[:, None], 1.0 - d, 1.0)
        model[idx] *= trans

    # --- Lyman-alpha and Lyman-beta forest, Lyman limit
    lyb_ratio = float(q["lyb_f"]) * float(q["lyb_wave"]) / (float(q["lya_f"]) * float(q["lya_wave"]))
    t_forest = _forest_transmission(rng, z, g.wave, float(q["lya_wave"]), 1.0)
    t_forest *= _forest_transmission(rng, z, g.wave, float(q["lyb_wave"]), lyb_ratio)
    ll = float(q["lyman_limit"])
    tau_ll = _uniform(rng, q["lls_tau_range"], n)
    with np.errstate(over="ignore"):
        t_ll = np.where(rest < ll, np.exp(-tau_ll[:, None] * (rest / ll) ** 3), 1.0)
    t_total = gaussian_filter1d(t_forest * t_ll, _instrument_sigma_px(), axis=1, mode="nearest")
    model *= t_total

    # --- magnitudes and survey
    mag_spec = q["mag"]
    band = _BANDS.index(mag_spec["band"])
    target = _counts_mag(rng, mag_spec, n)
    model = _normalise(model, np.full(n, band), target)
    survey = (rng.random(n) < float(q["boss_fraction"])).astype(np.int64)
    in_dr12q = rng.random(n) < float(q["in_dr12q_fraction"])
    return _ClassOut(
        model=model,
        z=z,
        subclass=[""] * n,
        survey=survey,
        fiber_frac=np.ones(n),
        depth=depth,
        extended=np.zeros(n, bool),
        zerr_k=float(q["zerr_kms_at_sn1"]),
        transmission=t_total,
        extra={
            "qn_fail": fail,
            "bal": bal,
            "in_dr12q": in_dr12q,
            "weak": weak,
        },
    )


# --------------------------------------------------------------------------------------------
# Galaxies
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Templates:
    flux: np.ndarray  # (5, R) line-free rest templates on the rest lattice, unit mean at 5400-5600 Å
    loglam0: float  # rest lattice start (log10 Å)
    offset: float  # wide pixel k ↔ rest pixel k + offset − log10(1+z)/dloglam


def _kcorrect_data_dir() -> Path:
    spec = importlib.util.find_spec("kcorrect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the kcorrect package (with its data files) is required by the spectrum simulator")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@functools.lru_cache(maxsize=1)
def _templates() -> _Templates:
    """kcorrect v4 NMF templates with nebular emission removed, on a rest log-λ lattice."""
    from astropy.io import fits

    path = _kcorrect_data_dir() / "templates" / "kcorrect-default-v4.fits"
    if not path.is_file():
        raise FileNotFoundError(f"kcorrect templates not found at {path}")
    with fits.open(path, memmap=False) as hdul:
        data = hdul["FLUX"].data
        wave = np.asarray(data["wave"][0], dtype=np.float64)
        flux = np.asarray(data["flux"][0], dtype=np.float64)
    gc = _cfg()["galaxy"]
    hw = float(gc["template_window_half_width"])
    flux = flux.copy()
    for lam in gc["template_line_windows"]:
        i0 = int(np.searchsorted(wave, lam - hw))
        i1 = int(np.searchsorted(wave, lam + hw))
        if i0 <= 0 or i1 >= wave.size - 1:
            continue
        line = (
            flux[:, i0 - 1, None]
            + (flux[:, i1, None] - flux[:, i0 - 1, None])
            * ((wave[i0:i1] - wave[i0 - 1]) / (wave[i1] - wave[i0 - 1]))[None, :]
        )
        flux[:, i0:i1] = np.minimum(flux[:, i0:i1], line)
    g = _grid()
    r_lo = math.floor((math.log10(_REST_RANGE_AA[0]) - g.loglam[0]) / g.dloglam)
    r_hi = math.ceil((math.log10(_REST_RANGE_AA[1]) - g.loglam[0]) / g.dloglam)
    loglam_r = g.loglam[0] + g.dloglam * np.arange(r_lo, r_hi + 1)
    wr = 10.0**loglam_r
    out = np.stack([np.interp(wr, wave, f) for f in flux])
    norm = out[:, (wr > 5400) & (wr < 5600)].mean(axis=1)
    return _Templates(flux=out / norm[:, None], loglam0=float(loglam_r[0]), offset=float(-r_lo))


def _redshift_templates(mix: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Rest spectra on the rest lattice (n, R) → observed wide grid (n, K) by a log-λ shift."""
    t = _templates()
    g = _grid()
    s = np.log10(1.0 + z) / g.dloglam
    pos0 = t.offset - s  # rest coordinate of wide pixel 0
    base = np.floor(pos0).astype(np.int64)
    frac = (pos0 - base)[:, None]
    idx = base[:, None] + np.arange(g.wave.size)[None, :]
    idx = np.clip(idx, 0, mix.shape[1] - 2)
    lo = np.take_along_axis(mix, idx, axis=1)
    hi = np.take_along_axis(mix, idx + 1, axis=1)
    return lo * (1.0 - frac) + hi * frac


def _rest_continuum(mix: np.ndarray, lam: float, half: float = 20.0) -> np.ndarray:
    """Mean rest-frame template flux within ±half Å of lam, per object."""
    t = _templates()
    g = _grid()
    wr = 10.0 ** (t.loglam0 + g.dloglam * np.arange(mix.shape[1]))
    sel = (wr > lam - half) & (wr < lam + half)
    return mix[:, sel].mean(axis=1)


_GAL_KIND = {
    "NULL": ("passive", False),
    "STARFORMING": ("sf", False),
    "STARBURST": ("starburst", False),
    "AGN": ("agn", False),
    "BROADLINE": ("passive", True),
    "STARFORMING BROADLINE": ("sf", True),
    "STARBURST BROADLINE": ("starburst", True),
    "AGN BROADLINE": ("agn", True),
}


def _galaxy_subclass_names() -> list[str]:
    """spectra.yaml galaxy_subclasses with YAML's null read back as "NULL"."""
    return ["NULL" if s is None else str(s) for s in _spectra_spec()["galaxy_subclasses"]]


def _galaxies(rng: np.random.Generator, n: int) -> _ClassOut:
    g = _grid()
    k = g.wave.size
    if n == 0:
        return _empty_out(k)
    gc = _cfg()["galaxy"]
    names = _galaxy_subclass_names()
    shares = gc["subclass_shares"]
    missing = [s for s in names if s not in shares]
    if missing:
        raise ValueError(f"spectra_simulator.yaml galaxy.subclass_shares lacks {missing}")
    p = np.asarray([float(shares[s]) for s in names])
    sub = rng.choice(len(names), size=n, p=p / p.sum())
    kinds = np.array([_GAL_KIND[names[i]][0] for i in sub])
    broadline = np.array([_GAL_KIND[names[i]][1] for i in sub])

    # --- population (redshift, magnitude band and range, survey)
    pops = gc["populations"]
    pop_names = list(pops)
    pop = np.empty(n, dtype=np.int64)
    for key in ("passive", "active"):
        m = (kinds == "passive") if key == "passive" else (kinds != "passive")
        sh = gc["population_shares"][key]
        pp = np.asarray([float(sh[name]) for name in pop_names])
        pop[m] = rng.choice(len(pop_names), size=int(m.sum()), p=pp / pp.sum())
    z = np.empty(n)
    mag_target = np.empty(n)
    mag_band = np.empty(n, dtype=np.int64)
    survey = np.empty(n, dtype=np.int64)
    for j, name in enumerate(pop_names):
        m = pop == j
        cnt = int(m.sum())
        if cnt == 0:
            continue
        pc = pops[name]
        lo, hi = (float(v) for v in pc["z_range"])
        zz = np.full(cnt, np.nan)
        for _ in range(200):
            bad = ~((zz >= lo) & (zz <= hi))
            if not bad.any():
                break
            if "zc" in pc:
                zz[bad] = float(pc["zc"]) * rng.gamma(2.0, 1.0, bad.sum()) ** (2.0 / 3.0)
            else:
                mu, sd = (float(v) for v in pc["z_normal"])
                zz[bad] = rng.normal(mu, sd, bad.sum())
        zz = np.clip(np.nan_to_num(zz, nan=lo), lo, hi)
        z[m] = zz
        mag_target[m] = _counts_mag(rng, pc["mag"], cnt)
        mag_band[m] = _BANDS.index(pc["mag"]["band"])
        survey[m] = 0 if pc["survey"] == "sdss" else 1

    # --- stellar continuum: non-negative template mixture
    t = _templates()
    coeff = np.zeros((n, 5))
    for kind, ranges in gc["template_weights"].items():
        m = kinds == kind
        if not m.any():
            continue
        r = np.asarray(ranges, dtype=np.float64)
        coeff[m] = r[None, :, 0] + (r[:, 1] - r[:, 0])[None, :] * rng.random((int(m.sum()), 5))
    coeff = np.where(coeff.sum(axis=1, keepdims=True) > 0, coeff, np.array([0, 0, 0, 1.0, 0]))
    coeff /= coeff.sum(axis=1, keepdims=True)
    mix = coeff @ t.flux  # (n, R), unit mean at 5500 Å rest
    model = _redshift_templates(mix, z)

    # --- emission lines (rest EWs → observed fluxes relative to the template continuum)
    ha_ew = np.zeros(n)
    for kind, rr in gc["ha_ew"].items():
        m = kinds == kind
        if m.any():
            ha_ew[m] = _log_uniform(rng, rr, int(m.sum())) if rr[0] > 0 else _uniform(rng, rr, int(m.sum()))
    bpt = gc["bpt_line"]
    kf = gc["kauffmann"]
    x = np.empty(n)  # log [NII]/Ha
    y = np.empty(n)  # log [OIII]/Hb
    m_sf = (kinds == "sf") | (kinds == "starburst")
    m_agn = kinds == "agn"
    m_pas = kinds == "passive"
    x[m_sf] = _uniform(rng, gc["sf_n2ha_range"], int(m_sf.sum()))
    y_sf = float(kf["a"]) / (x[m_sf] - float(kf["b"])) + float(kf["c"]) - np.abs(rng.normal(0, 0.15, m_sf.sum())) - 0.05
    sdss_line = float(bpt["a"]) - float(bpt["b"]) * (x[m_sf] + float(bpt["c"]))
    y[m_sf] = np.minimum(y_sf, sdss_line - 0.05)
    x[m_agn] = _uniform(rng, gc["agn_n2ha_range"], int(m_agn.sum()))
    y[m_agn] = (
        float(bpt["a"])
        - float(bpt["b"]) * (x[m_agn] + float(bpt["c"]))
        + _uniform(rng, gc["agn_o3hb_above"], int(m_agn.sum()))
    )
    x[m_pas] = _uniform(rng, (-0.3, 0.25), int(m_pas.sum()))
    y[m_pas] = _uniform(rng, (-0.4, 0.4), int(m_pas.sum()))
    ebv = _uniform(rng, gc["ebv_gas_range"], n)
    kc = gc["calzetti_k"]
    caseb = gc["balmer_case_b"]

    def att(name: str) -> np.ndarray:  # attenuation relative to Ha
        return 10.0 ** (-0.4 * ebv * (float(kc[name]) - float(kc["Ha"])))

    cont_ha = _rest_continuum(mix, 6564.61)
    f_ha = ha_ew * cont_ha  # rest-frame line flux in template units (EW × continuum)
    f_hb = f_ha / float(caseb["Ha"]) * att("Hb")
    kind_key = np.where(m_agn, "agn", np.where(m_pas, "passive", "sf"))
    r_oii = np.empty(n)
    r_sii = np.empty(n)
    r_oi = np.empty(n)
    sig_n = np.empty(n)
    for key in ("sf", "agn", "passive"):
        m = kind_key == key
        cnt = int(m.sum())
        if cnt == 0:
            continue
        r_oii[m] = _uniform(rng, gc["oii_hb_range"][key], cnt)
        r_sii[m] = _uniform(rng, gc["sii_ha_range"][key], cnt)
        r_oi[m] = _uniform(rng, gc["oi_ha_range"][key], cnt)
        sig_n[m] = _uniform(rng, gc["narrow_sigma_kms"][key], cnt)
    f_oii = f_hb * r_oii * 10.0 ** (-0.4 * ebv * (float(kc["OII"]) - float(kc["Hb"])))
    f_n2 = f_ha * 10.0**x
    f_o3 = f_hb * 10.0**y
    f_s2 = f_ha * r_sii
    f_o1 = f_ha * r_oi
    ne3 = f_oii * _uniform(rng, gc["neiii_oii"], n)
    line_defs = [
        (6564.61, f_ha),
        (4862.68, f_hb),
        (4341.68, f_hb * float(caseb["Hg"]) * att("Hg") / att("Hb")),
        (4102.89, f_hb * float(caseb["Hd"]) * att("Hd") / att("Hb")),
        (3971.20, f_hb * float(caseb["He"]) * att("He") / att("Hb")),
        (6585.27, f_n2),
        (6549.86, f_n2 / float(gc["nii_ratio"])),
        (5008.24, f_o3),
        (4960.30, f_o3 / float(gc["oiii_ratio"])),
        (3727.09, 0.42 * f_oii),
        (3729.88, 0.58 * f_oii),
        (3869.86, ne3),
        (6718.29, 0.58 * f_s2),
        (6732.67, 0.42 * f_s2),
        (6302.05, f_o1),
        (6365.54, f_o1 / 3.0),
        (5877.25, f_hb * float(gc["hei_hb"])),
    ]
    lam = np.asarray([d[0] for d in line_defs])
    flux = np.stack([d[1] for d in line_defs], axis=1)  # (n, L) rest units (EW_Å × cont)
    lam_obs = lam[None, :] * (1.0 + z[:, None])
    dl = lam_obs * math.log(10.0) * g.dloglam
    amp = flux * (1.0 + z[:, None]) / dl  # observed: EW scales with (1+z), continuum level unchanged
    sig_px = np.sqrt((sig_n[:, None] / g.px_kms) ** 2 + _instrument_sigma_px() ** 2) * np.ones_like(lam_obs)
    rows = np.repeat(np.arange(n), lam.size)
    _profile_add(model, rows, g.pixel_of(lam_obs).ravel(), amp.ravel(), sig_px.ravel())
    # broad Balmer lines for BROADLINE subclasses
    bi = np.flatnonzero(broadline)
    if bi.size:
        fwhm = _log_uniform(rng, gc["broad_fwhm_kms"], bi.size)
        ew_b = _log_uniform(rng, gc["broad_ha_ew"], bi.size)
        fb_ha = ew_b * cont_ha[bi]
        fb = np.stack([fb_ha, fb_ha / float(gc["broad_hb_ratio"])], axis=1)
        lam_b = np.array([6564.61, 4862.68])[None, :] * (1.0 + z[bi, None])
        sig_b = np.sqrt((fwhm / 2.3548 / g.px_kms) ** 2 + _instrument_sigma_px() ** 2)[:, None] * np.ones((1, 2))
        amp_b = fb * (1.0 + z[bi, None]) / (lam_b * math.log(10.0) * g.dloglam)
        _profile_add(model, np.repeat(bi, 2), g.pixel_of(lam_b).ravel(), amp_b.ravel(), sig_b.ravel())

    model = _normalise(model, mag_band, mag_target)
    fl = gc["fiber_loss_mag"]
    dm = float(fl["base"]) + float(fl["amplitude"]) * np.exp(-z / float(fl["z_scale"]))
    dm = dm + rng.normal(0.0, float(fl["scatter"]), n) + np.where(survey == 1, float(fl["boss_extra"]), 0.0)
    fiber_frac = 10.0 ** (-0.4 * np.clip(dm, 0.2, 3.0))
    return _ClassOut(
        model=model,
        z=z,
        subclass=["" if names[i] == "NULL" else names[i] for i in sub],
        survey=survey,
        fiber_frac=fiber_frac,
        depth=np.ones(n),
        extended=np.ones(n, bool),
        zerr_k=float(gc["zerr_kms_at_sn1"]),
        extra={"ha_ew": ha_ew, "log_n2ha": x, "log_o3hb": y},
    )


# --------------------------------------------------------------------------------------------
# Stars
# --------------------------------------------------------------------------------------------
_STAR_KIND = {
    "O": "normal",
    "B": "normal",
    "A": "normal",
    "F": "normal",
    "G": "normal",
    "K": "normal",
    "M": "normal",
    "L": "ultracool",
    "T2": "ultracool",
    "WD": "wd",
    "WDmagnetic": "wdmag",
    "CarbonWD": "dq",
    "CV": "cv",
    "Carbon": "carbon",
    "Carbon_lines": "carbon",
}


def _star_group_of(subclass: str) -> str:
    """The thesis group of an SDSS star subClass (spectra.yaml: exact names first, then prefix)."""
    sp = _spectra_spec()
    exact = sp["star_group_exact"]
    if subclass in exact:
        return str(exact[subclass])
    prefix = sp["star_group_prefix"]
    if subclass and subclass[0] in prefix:
        return str(prefix[subclass[0]])
    raise ValueError(f"star subClass {subclass!r} maps to no group of spectra.yaml star_groups")


@functools.lru_cache(maxsize=1)
def _star_subclasses_by_group() -> dict[str, tuple[str, ...]]:
    sp = _spectra_spec()
    out: dict[str, list[str]] = {gname: [] for gname in sp["star_groups"]}
    for s in sp["thesis_star_subclasses"]:
        out[_star_group_of(str(s))].append(str(s))
    empty = [k for k, v in out.items() if not v]
    if empty:
        raise ValueError(f"spectra.yaml: star groups without subclasses: {empty}")
    return {k: tuple(v) for k, v in out.items()}


def _normal_star_shape(wave_rest: np.ndarray, teff: np.ndarray, subclass: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Continuum modifiers (blanketing × Balmer jump) and optical depth of lines/bands (n, K)."""
    sc = _cfg()["star"]
    n = teff.size
    bl = sc["blanketing_nodes"]
    s_bl = np.interp(teff, bl["teff"], bl["strength"])
    step = 1.0 / (1.0 + np.exp((wave_rest - 4000.0) / 150.0))
    mod = 1.0 - s_bl[:, None] * step
    bj = sc["balmer_jump_nodes"]
    jump = _loginterp(teff, bj["teff"], bj["jump"])
    lim = float(sc["balmer_limit"])
    bstep = 1.0 / (1.0 + np.exp((wave_rest - (lim + 100.0)) / 35.0))  # line crowding up to ~3750 Å
    mod *= 1.0 - jump[:, None] * bstep
    pj = float(sc["paschen_to_balmer"]) * jump
    pstep = 1.0 / (1.0 + np.exp((wave_rest - float(sc["paschen_limit"])) / 30.0))
    mod *= 1.0 - pj[:, None] * pstep
    tau = np.zeros_like(wave_rest)
    _star_lines(tau, wave_rest, teff, sc["lines"], sc["line_teff_nodes"], rows=np.arange(n))
    # peculiar A stars
    ap = np.flatnonzero(np.array([s.endswith("p") for s in subclass], dtype=bool))
    if ap.size:
        apl = sc["ap_lines"]
        for lam, ew in zip(apl["wave"], apl["ew"]):
            _add_abs(tau, ap, wave_rest[ap], np.full(ap.size, float(lam)), np.full(ap.size, float(ew)), "gauss")
    # molecular bands of cool stars
    tio = _loginterp(teff, sc["tio_nodes"]["teff"], sc["tio_nodes"]["tau"])
    vo = _loginterp(teff, sc["vo_nodes"]["teff"], sc["vo_nodes"]["tau"])
    cool = np.flatnonzero((tio > 0) | (vo > 0))
    if cool.size:
        w = wave_rest[cool]
        for head, direction, length, rel in sc["tio_bands"]:
            tau[cool] += tio[cool, None] * float(rel) * _band_profile(w, float(head), direction, float(length))
        for head, direction, length, rel in sc["cah_bands"]:
            tau[cool] += 0.5 * tio[cool, None] * float(rel) * _band_profile(w, float(head), direction, float(length))
        for head, direction, length, rel in sc["vo_bands"]:
            tau[cool] += vo[cool, None] * float(rel) * _band_profile(w, float(head), direction, float(length))
    return mod, tau


def _add_abs(
    tau: np.ndarray, rows: np.ndarray, wave_rest_rows: np.ndarray, lam: np.ndarray, ew: np.ndarray, profile: str
) -> None:
    """Add absorption lines of rest EW ``ew`` (Å) at rest ``lam`` to the optical depth of ``rows``.

    ``wave_rest_rows`` gives the rest wavelengths of those rows (stars are at z ≈ 0, the pixel of a
    line is found per row). Gaussian widths grow with the EW so the line core stays unsaturated
    (peak τ ≤ 0.9); Lorentzian half widths are EW / (π · 0.6).
    """
    g = _grid()
    rows = np.asarray(rows)
    keep = ew > 0
    if not keep.any():
        return
    rows, lam, ew, wr = rows[keep], lam[keep], ew[keep], wave_rest_rows[keep]
    # pixel of lam in each row: rest wave of pixel 0 sets the shift
    shift = np.log10(wr[:, 0] / g.wave[0]) / g.dloglam  # rest = obs / (1+z)
    px = g.pixel_of(lam) - shift
    dl = lam * math.log(10.0) * g.dloglam
    ew_px = ew / dl
    inst = _instrument_sigma_px()
    if profile == "lorentz":
        gam = ew_px / (math.pi * 0.6)
        lor = gam > 1.5 * inst
        if lor.any():
            _profile_add(tau, rows[lor], px[lor], ew_px[lor], gam[lor], "lorentz")
        rows, px, ew_px = rows[~lor], px[~lor], ew_px[~lor]
    sig = np.sqrt(inst**2 + (ew_px / (0.9 * math.sqrt(2 * math.pi))) ** 2)
    _profile_add(tau, rows, px, ew_px, sig, "gauss")


def _star_lines(
    tau: np.ndarray,
    wave_rest: np.ndarray,
    teff: np.ndarray,
    lines: list[dict[str, Any]],
    nodes: list[float],
    rows: np.ndarray,
    scale: np.ndarray | None = None,
) -> None:
    for ln in lines:
        ew = _loginterp(teff, nodes, ln["ew"])
        if scale is not None:
            ew = ew * scale
        waves = [float(w) for w in ln["wave"]]
        for lam in waves:
            _add_abs(
                tau,
                rows,
                wave_rest,
                np.full(rows.size, lam),
                ew / len(waves),
                ln.get("profile", "gauss"),
            )


@functools.lru_cache(maxsize=1)
def _colour_temperatures() -> dict[str, float]:
    """Continuum colour temperature per subclass with a tabulated B−V (solved once, cached).

    The blanketed, line-absorbed blackbody reproduces the Johnson B−V of the dwarf sequence
    (Pecaut & Mamajek 2013) with AB−Vega offsets of Blanton & Roweis (2007).
    """
    sc = _cfg()["star"]
    g = _grid()
    abv = sc["ab_minus_vega"]
    out: dict[str, float] = {}
    temps = np.exp(np.linspace(math.log(2500.0), math.log(80000.0), 400))
    bb = _blackbody(g.wave, temps)  # (T, K)
    for name, entry in sc["subclasses"].items():
        if "bv" not in entry:
            continue
        tv = entry["teff"]
        teff = float(np.mean(tv)) if isinstance(tv, list) else float(tv)
        wr = g.wave[None, :]
        mod, tau = _normal_star_shape(wr, np.array([teff]), [str(name)])
        shape = mod[0] * np.exp(-tau[0])
        mags = _ab_mags(bb * shape[None, :], ("bessell-B", "bessell-V"))
        bv = (mags[:, 0] - float(abv["B"])) - (mags[:, 1] - float(abv["V"]))
        target = float(entry["bv"])
        # B−V decreases with temperature: interpolate on the reversed arrays
        if not (bv.min() <= target <= bv.max()):
            raise ValueError(f"spectra_simulator.yaml star {name}: B-V {target} outside the reachable range")
        out[str(name)] = float(np.interp(target, bv[::-1], temps[::-1]))
    return out


def _stars(rng: np.random.Generator, n: int) -> _ClassOut:
    g = _grid()
    k = g.wave.size
    if n == 0:
        return _empty_out(k)
    sc = _cfg()["star"]
    groups = list(_spectra_spec()["star_groups"])
    shares = sc["group_shares"]
    missing = [gname for gname in groups if gname not in shares]
    if missing:
        raise ValueError(f"spectra_simulator.yaml star.group_shares lacks {missing}")
    p = np.asarray([float(shares[gname]) for gname in groups])
    gi = rng.choice(len(groups), size=n, p=p / p.sum())
    by_group = _star_subclasses_by_group()
    pick = rng.random(n)
    subclass = [by_group[groups[j]][int(u * len(by_group[groups[j]]))] for j, u in zip(gi, pick)]
    table = sc["subclasses"]
    teff = np.empty(n)
    tscat = rng.normal(1.0, float(sc["teff_scatter"]), n)
    tu = rng.random(n)
    for i, s in enumerate(subclass):
        tv = table[s]["teff"]
        if isinstance(tv, list):
            teff[i] = math.exp(math.log(tv[0]) + (math.log(tv[1]) - math.log(tv[0])) * tu[i])
        else:
            teff[i] = float(tv) * tscat[i]
    rv = rng.normal(0.0, float(sc["radial_velocity_sigma_kms"]), n)
    z = rv / _C_KMS
    kind = np.array([_STAR_KIND[groups[j]] for j in gi])
    model = _star_spectra(rng, subclass, teff, z)

    # --- magnitudes and survey
    mag = np.empty(n)
    band = np.empty(n, dtype=np.int64)
    uc = kind == "ultracool"
    for sel, spec in ((~uc, sc["mag"]), (uc, sc["mag_ultracool"])):
        cnt = int(sel.sum())
        mag[sel] = _counts_mag(rng, spec, cnt)
        band[sel] = _BANDS.index(spec["band"])
    model = _normalise(model, band, mag)
    survey = (rng.random(n) < float(sc["boss_fraction"])).astype(np.int64)
    return _ClassOut(
        model=model,
        z=z,
        subclass=subclass,
        survey=survey,
        fiber_frac=np.ones(n),
        depth=np.ones(n),
        extended=np.zeros(n, bool),
        zerr_k=float(sc["zerr_kms_at_sn1"]),
        extra={"teff": teff, "group": np.array([groups[j] for j in gi])},
    )


def _star_spectra(rng: np.random.Generator, subclass: list[str], teff: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Noiseless, unnormalised stellar spectra (n, K) on the wide grid for the given subclasses."""
    g = _grid()
    k = g.wave.size
    sc = _cfg()["star"]
    n = len(subclass)
    wave_rest = g.wave[None, :] / (1.0 + z[:, None])
    kind = np.array([_STAR_KIND[_star_group_of(s)] for s in subclass])
    model = np.zeros((n, k))
    tcol_table = _colour_temperatures()
    inst = _instrument_sigma_px()

    # --- O..M dwarfs
    m = np.flatnonzero(kind == "normal")
    if m.size:
        subs = [subclass[i] for i in m]
        tcol = np.array([tcol_table.get(s, 0.0) for s in subs])
        tcol = np.where(tcol > 0, tcol * teff[m] / np.array([_nominal_teff(s) for s in subs]), teff[m])
        mod, tau = _normal_star_shape(wave_rest[m], teff[m], subs)
        model[m] = _blackbody_rows(wave_rest[m], tcol) * mod * np.exp(-tau)

    # --- L and T dwarfs
    m = np.flatnonzero(kind == "ultracool")
    if m.size:
        wr = wave_rest[m]
        tau = np.zeros((m.size, k))
        tio = _loginterp(teff[m], sc["tio_nodes"]["teff"], sc["tio_nodes"]["tau"])
        vo = _loginterp(teff[m], sc["vo_nodes"]["teff"], sc["vo_nodes"]["tau"])
        for head, direction, length, rel in sc["tio_bands"]:
            tau += tio[:, None] * float(rel) * _band_profile(wr, float(head), direction, float(length))
        for head, direction, length, rel in sc["vo_bands"]:
            tau += vo[:, None] * float(rel) * _band_profile(wr, float(head), direction, float(length))
        nodes = sc["ultracool_nodes"]
        for band in sc["ultracool_bands"]:
            amp = _loginterp(teff[m], nodes, band["tau"])
            tau += amp[:, None] * _band_profile(wr, float(band["head"]), band["direction"], float(band["length"]))
        sub_tau = np.zeros_like(tau)
        _star_lines(sub_tau, wr, teff[m], sc["ultracool_lines"], nodes, rows=np.arange(m.size))
        model[m] = _blackbody_rows(wr, teff[m]) * np.exp(-(tau + sub_tau))

    # --- DA white dwarfs (and magnetic DAH)
    for kname in ("wd", "wdmag"):
        m = np.flatnonzero(kind == kname)
        if not m.size:
            continue
        wr = wave_rest[m]
        tau = np.zeros((m.size, k))
        depth = float(sc["wd_balmer_depth"])
        wn = sc["wd_teff_nodes"]
        bfield = _log_uniform(rng, sc["wd_field_mg"], m.size) * 1.0e6 if kname == "wdmag" else np.zeros(m.size)
        for name, lam in (
            ("Ha", 6564.61),
            ("Hb", 4862.68),
            ("Hg", 4341.68),
            ("Hd", 4102.89),
            ("He", 3971.20),
            ("H8", 3890.15),
        ):
            ew = _loginterp(teff[m], wn, sc["wd_balmer_ew"][name])
            dl = lam * math.log(10.0) * g.dloglam
            shift = np.log10(wr[:, 0] / g.wave[0]) / g.dloglam
            if kname == "wd":
                comps = [(0.0, 1.0)]
            else:
                dlam = float(sc["zeeman_coefficient"]) * lam**2 * bfield
                comps = [(-1.0, 1 / 3), (0.0, 1 / 3), (1.0, 1 / 3)]
            for sgn, frac in comps:
                lam_c = lam + (sgn * dlam if kname == "wdmag" else 0.0)
                px = g.pixel_of(lam_c) - shift
                ew_px = ew * frac / dl
                broaden = 1.0 if kname == "wd" else 2.0
                gam = broaden * ew_px / (math.pi * depth)
                _profile_add(tau, np.arange(m.size), px, ew_px, np.maximum(gam, inst), "lorentz")
        model[m] = _blackbody_rows(wr, teff[m]) * np.exp(-tau)

    # --- DQ white dwarfs (CarbonWD): C2 Swan bands, no hydrogen
    m = np.flatnonzero(kind == "dq")
    if m.size:
        wr = wave_rest[m]
        amp = _uniform(rng, sc["carbonwd_c2_tau"], m.size)
        tau = np.zeros((m.size, k))
        for head, direction, length, rel in sc["c2_bands"]:
            tau += amp[:, None] * float(rel) * _band_profile(wr, float(head), direction, float(length))
        model[m] = _blackbody_rows(wr, teff[m]) * np.exp(-tau)

    # --- carbon stars (Carbon, Carbon_lines)
    m = np.flatnonzero(kind == "carbon")
    if m.size:
        wr = wave_rest[m]
        c2 = _uniform(rng, sc["carbon_c2_tau"], m.size)
        cn = _uniform(rng, sc["carbon_cn_tau"], m.size)
        tau = np.zeros((m.size, k))
        for head, direction, length, rel in sc["c2_bands"]:
            tau += c2[:, None] * float(rel) * _band_profile(wr, float(head), direction, float(length))
        for head, direction, length, rel in sc["cn_bands"]:
            tau += cn[:, None] * float(rel) * _band_profile(wr, float(head), direction, float(length))
        bl = sc["blanketing_nodes"]
        s_bl = np.interp(teff[m], bl["teff"], bl["strength"])
        mod = 1.0 - s_bl[:, None] / (1.0 + np.exp((wr - 4000.0) / 150.0))
        _star_lines(
            tau,
            wr,
            teff[m],
            [ln for ln in sc["lines"] if ln["name"] in ("CaK", "CaH", "NaD", "KI7700")],
            sc["line_teff_nodes"],
            rows=np.arange(m.size),
        )
        cont = _blackbody_rows(wr, teff[m]) * mod
        spec = cont * np.exp(-tau)
        with_lines = np.flatnonzero(np.array([subclass[i] == "Carbon_lines" for i in m]))
        if with_lines.size:
            ew = _uniform(rng, sc["carbon_lines_balmer_ew"], with_lines.size)
            _add_emission(
                spec, cont, with_lines, wr, [6564.61, 4862.68], [ew, ew / 2.5], np.full(with_lines.size, 1.5 * inst)
            )
        model[m] = spec

    # --- cataclysmic variables: disc + donor + broad double-peaked emission
    m = np.flatnonzero(kind == "cv")
    if m.size:
        wr = wave_rest[m]
        disc = _blackbody_rows(wr, teff[m])
        donor_t = np.full(m.size, 3200.0)
        dmod, dtau = _normal_star_shape(wr, donor_t, ["M4"] * m.size)
        donor = _blackbody_rows(wr, donor_t) * dmod * np.exp(-dtau)
        frac = _uniform(rng, sc["cv_donor_fraction"], m.size)
        r_sel = (g.wave > 5600) & (g.wave < 6900)
        disc /= disc[:, r_sel].mean(axis=1, keepdims=True)
        donor /= donor[:, r_sel].mean(axis=1, keepdims=True)
        cont = (1.0 - frac[:, None]) * disc + frac[:, None] * donor
        spec = cont.copy()
        fwhm = _uniform(rng, sc["cv_fwhm_kms"], m.size)
        sig = np.sqrt((0.5 * fwhm / 2.3548 / g.px_kms) ** 2 + inst**2)
        lams, ews = [], []
        for ln in sc["cv_lines"]:
            lams.append(float(ln["wave"]))
            ews.append(_uniform(rng, ln["ew"], m.size))
        # double peak: two components at ±0.25 FWHM, each with half the line
        for sgn in (-1.0, 1.0):
            off = 1.0 + sgn * 0.25 * fwhm / _C_KMS
            _add_emission(
                spec,
                cont,
                np.arange(m.size),
                wr,
                [lam for lam in lams],
                [0.5 * e for e in ews],
                sig,
                velocity_factor=off,
            )
        model[m] = spec

    return model


def _star_template(subclass: str, teff: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Wavelengths (Å) and the noiseless rest-frame model (arbitrary units) of one star subclass."""
    t = _nominal_teff(subclass) if teff is None else float(teff)
    model = _star_spectra(np.random.default_rng(0), [subclass], np.array([t]), np.zeros(1))
    return _grid().wave.copy(), model[0]


def _nominal_teff(subclass: str) -> float:
    tv = _cfg()["star"]["subclasses"][subclass]["teff"]
    return float(np.mean(tv)) if isinstance(tv, list) else float(tv)


def _blackbody_rows(wave_rest: np.ndarray, temp: np.ndarray) -> np.ndarray:
    """Blackbody per row on per-row rest wavelengths (n, K), normalised at 5500 Å."""
    t = np.asarray(temp, dtype=np.float64)[:, None]
    x = _HC_OVER_K_AA / (wave_rest * t)
    x0 = _HC_OVER_K_AA / (5500.0 * t)
    with np.errstate(over="ignore"):
        b = (wave_rest / 5500.0) ** -5.0 * np.expm1(np.minimum(x0, 700.0)) / np.expm1(np.minimum(x, 700.0))
    return np.where(x < 700.0, b, 0.0)


def _add_emission(
    spec: np.ndarray,
    cont: np.ndarray,
    rows: np.ndarray,
    wave_rest: np.ndarray,
    lams: list[float],
    ews: list[np.ndarray],
    sigma_px: np.ndarray,
    velocity_factor: np.ndarray | float = 1.0,
) -> None:
    """Add emission lines (negative EW = emission, Å) scaled to the local continuum of ``cont``."""
    g = _grid()
    rows = np.asarray(rows)
    sub = np.zeros((rows.size, spec.shape[1]))
    shift = np.log10(wave_rest[rows, 0] / g.wave[0]) / g.dloglam
    for lam, ew in zip(lams, ews):
        lam_c = lam * np.asarray(velocity_factor) * np.ones(rows.size)
        px = g.pixel_of(lam_c) - shift
        ip = np.clip(np.rint(px).astype(np.int64), 0, spec.shape[1] - 1)
        c = cont[rows, ip]
        dl = lam_c * math.log(10.0) * g.dloglam
        _profile_add(sub, np.arange(rows.size), px, -np.asarray(ew) * c / dl, sigma_px)
    spec[rows] += sub


# --------------------------------------------------------------------------------------------
# Noise, masks and bookkeeping
# --------------------------------------------------------------------------------------------
def _and_bits() -> dict[str, int]:
    return {str(k): int(v) for k, v in _spectra_spec()["and_mask_bad_bits"].items()}


def _observe(
    rng: np.random.Generator, spec: np.ndarray, survey: np.ndarray, depth: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Noisy fluxes, ivar, and_mask, coverage mask and noiseless-within-coverage model (n, M)."""
    cfg = _cfg()["noise"]
    g = _grid()
    n, m = spec.shape
    wave = g.wave[g.sdss]
    lam5 = (wave / 5000.0) ** 2
    pix = np.arange(m)
    flux = np.zeros((n, m), np.float32)
    ivar = np.zeros((n, m), np.float32)
    and_mask = np.zeros((n, m), np.int32)
    covered = np.zeros((n, m), bool)
    depth_obj = depth * 10.0 ** rng.normal(0.0, float(cfg["depth_scatter_dex"]), n)
    eps = float(cfg["sky_residual_fraction"])
    noise = rng.standard_normal((n, m))
    jit_u = rng.uniform(-1.0, 1.0, (n, 2))
    bits = _and_bits()
    for s_idx, s_name in enumerate(_SURVEYS):
        rows = np.flatnonzero(survey == s_idx)
        if rows.size == 0:
            continue
        sv = _survey(s_name)
        lo = np.ceil(sv.lo_px + sv.jitter_px * jit_u[rows, 0]).astype(np.int64)
        hi = np.floor(sv.hi_px + sv.jitter_px * jit_u[rows, 1]).astype(np.int64)
        cov = (pix[None, :] >= lo[:, None]) & (pix[None, :] <= hi[:, None])
        f = spec[rows]
        gain = sv.gain * depth_obj[rows, None] * sv.throughput[None, :] * lam5[None, :]
        var = (np.maximum(f, 0.0) + sv.sky[None, :]) / gain + (eps * sv.sky_lines[None, :]) ** 2
        sigma = np.sqrt(var)
        flux[rows] = np.where(cov, f + sigma * noise[rows], 0.0)
        ivar[rows] = np.where(cov, 1.0 / var, 0.0)
        covered[rows] = cov
        # bright sky-line cores: BRIGHTSKY with some probability per line and spectrum
        bright = np.flatnonzero(sv.sky_lines > 15.0 * np.median(sv.sky))
        if bright.size:
            # group contiguous pixels into lines
            starts = bright[np.r_[True, np.diff(bright) > 1]]
            ends = bright[np.r_[np.diff(bright) > 1, True]]
            hit = rng.random((rows.size, starts.size)) < float(cfg["brightsky_probability"])
            for j, (a, b) in enumerate(zip(starts, ends)):
                r = rows[hit[:, j]]
                if r.size:
                    and_mask[r, a : b + 1] |= 1 << bits["BRIGHTSKY"]
    # isolated rejected pixels
    n_single = rng.poisson(float(cfg["single_pixels_mean"]), n)
    tot = int(n_single.sum())
    r_single = np.repeat(np.arange(n), n_single)
    p_single = rng.integers(0, m, tot)
    and_mask[r_single, p_single] |= 1 << bits["FULLREJECT"]
    # occasional bad chunks
    chunk = rng.random(n) < float(cfg["bad_chunk_probability"])
    c_len = rng.integers(int(cfg["bad_chunk_pixels"][0]), int(cfg["bad_chunk_pixels"][1]) + 1, n)
    c_start = rng.integers(0, m, n)
    c_bit = rng.integers(0, len(cfg["chunk_bits"]), n)
    for i in np.flatnonzero(chunk):
        b = bits[str(cfg["chunk_bits"][c_bit[i]])]
        and_mask[i, c_start[i] : min(m, c_start[i] + c_len[i])] |= 1 << b
    and_mask &= np.where(covered, -1, 0).astype(np.int32)
    bad = and_mask != 0
    flux[bad] = 0.0
    ivar[bad] = 0.0
    return flux, ivar, and_mask, covered, depth_obj


def _plate_centres(seed: int, survey: int, plates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic plate centres (deg) on an SDSS-like footprint (north cap + south stripe)."""
    ra = np.empty(plates.size)
    dec = np.empty(plates.size)
    for i, p in enumerate(plates):
        r = np.random.default_rng([seed, 1_000_003, survey, int(p)])
        if r.random() < 0.8:  # northern Galactic cap
            ra[i] = r.uniform(115.0, 255.0)
            s = r.uniform(math.sin(math.radians(-5.0)), math.sin(math.radians(65.0)))
        else:  # southern Galactic cap stripe
            ra[i] = r.uniform(-45.0, 45.0) % 360.0
            s = r.uniform(math.sin(math.radians(-10.0)), math.sin(math.radians(35.0)))
        dec[i] = math.degrees(math.asin(s))
    return ra, dec


def _sky_positions(
    rng: np.random.Generator, seed: int, survey: np.ndarray, plate: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = plate.size
    ra = np.empty(n)
    dec = np.empty(n)
    rad = np.radians(1.49) * np.sqrt(rng.random(n))  # SDSS plates: 3° field
    ang = 2 * math.pi * rng.random(n)
    for s in (0, 1):
        m = survey == s
        if not m.any():
            continue
        up, inv = np.unique(plate[m], return_inverse=True)
        ra0, dec0 = _plate_centres(seed, s, up)
        ra[m], dec[m] = ra0[inv], dec0[inv]
    # offset on the sphere (small-angle tangent plane is enough inside 1.5°)
    dra = np.degrees(rad * np.cos(ang)) / np.cos(np.radians(dec))
    ddec = np.degrees(rad * np.sin(ang))
    dec = np.clip(dec + ddec, -89.9, 89.9)
    ra = (ra + dra) % 360.0
    return ra, dec


def _identifiers(global_index: np.ndarray, survey: np.ndarray) -> dict[str, np.ndarray]:
    """plate, mjd, fiberid and specObjID (SDSS bit layout), unique per global object index."""
    n = global_index.size
    plate = np.empty(n, np.int64)
    fiber = np.empty(n, np.int64)
    mjd = np.empty(n, np.int64)
    run2d = np.empty(n, np.int64)
    for s_idx, s_name in enumerate(_SURVEYS):
        m = survey == s_idx
        sv = _survey(s_name)
        j = global_index[m]
        plate[m] = sv.plate_first + j // sv.fibers_per_plate
        fiber[m] = j % sv.fibers_per_plate + 1
        lo, hi = sv.mjd_range
        mjd[m] = lo + (plate[m] * 37) % (hi - lo + 1)
        run2d[m] = sv.run2d_code
    spec_id = (
        (plate.astype(np.uint64) << np.uint64(50))
        | (fiber.astype(np.uint64) << np.uint64(38))
        | ((mjd - 50000).astype(np.uint64) << np.uint64(24))
        | (run2d.astype(np.uint64) << np.uint64(10))
    )
    return {"plate": plate, "fiberid": fiber, "mjd": mjd, "specObjID": spec_id}


# --------------------------------------------------------------------------------------------
# One block of 256 objects
# --------------------------------------------------------------------------------------------
def _class_probabilities(class_shares: Mapping[str, float] | None) -> np.ndarray:
    classes = list(_spectra_spec()["classes"])
    shares = dict(_spectra_spec()["thesis_class_shares"] if class_shares is None else class_shares)
    unknown = [c for c in shares if c not in classes]
    if unknown:
        raise ValueError(f"class_shares: unknown class(es) {unknown}; expected keys among {classes}")
    p = np.asarray([float(shares.get(c, 0.0)) for c in classes])
    if np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError(f"class_shares must be non-negative with a positive sum, got {shares}")
    return p / p.sum()


def _simulate_block(seed: int, block: int, probs: tuple[float, ...], with_truth: bool) -> dict[str, Any]:
    rng = np.random.default_rng([seed, block])
    classes = list(_spectra_spec()["classes"])
    g = _grid()
    cls = rng.choice(len(classes), size=_BLOCK, p=np.asarray(probs))
    gen = {"GALAXY": _galaxies, "QSO": _quasars, "STAR": _stars}
    outs: dict[str, _ClassOut] = {}
    for name in ("GALAXY", "QSO", "STAR"):
        outs[name] = gen[name](rng, int((cls == classes.index(name)).sum()))
    n = _BLOCK
    model = np.empty((n, g.wave.size))
    z = np.empty(n)
    survey = np.empty(n, np.int64)
    fiber_frac = np.empty(n)
    depth = np.empty(n)
    extended = np.empty(n, bool)
    zerr_k = np.empty(n)
    subclass = np.empty(n, dtype="S32")
    in_dr12q = np.zeros(n, bool)
    qn_fail = np.zeros(n, bool)
    transmission = np.ones((n, g.n_sdss), np.float32) if with_truth else None
    for name, out in outs.items():
        rows = np.flatnonzero(cls == classes.index(name))
        if rows.size == 0:
            continue
        model[rows] = out.model
        z[rows] = out.z
        survey[rows] = out.survey
        fiber_frac[rows] = out.fiber_frac
        depth[rows] = out.depth
        extended[rows] = out.extended
        zerr_k[rows] = out.zerr_k
        subclass[rows] = np.array([s.encode("ascii") for s in out.subclass], dtype="S32")
        if name == "QSO":
            in_dr12q[rows] = out.extra["in_dr12q"]
            qn_fail[rows] = out.extra["qn_fail"]
            if transmission is not None and out.transmission is not None:
                transmission[rows] = out.transmission[:, g.sdss]
    mag, mag_err = _observed_photometry(rng, model, extended)
    spec = model[:, g.sdss] * fiber_frac[:, None]
    flux, ivar, and_mask, covered, _ = _observe(rng, spec, survey, depth)
    good = ivar > 0
    with np.errstate(invalid="ignore"):
        snr = np.where(good, flux * np.sqrt(ivar), np.nan)
    sn_median = np.nan_to_num(np.nanmedian(np.where(good.any(axis=1)[:, None], snr, 0.0), axis=1))
    zerr = (1.0 + z) * zerr_k / _C_KMS / np.maximum(np.abs(sn_median), 0.5)
    # QuasarNET and visual-inspection redshifts of quasars
    q = _cfg()["quasar"]
    is_q = cls == classes.index("QSO")
    qn_sig = float(q["qn_velocity_sigma_kms"])
    z_qn = np.where(is_q, z + (1.0 + z) * rng.normal(0.0, qn_sig, n) / _C_KMS, -1.0)
    confuse = is_q & (rng.random(n) < float(q["qn_catastrophic_fraction"]))
    ratio = np.where(rng.random(n) < 0.5, 1549.06 / 2798.75, 2798.75 / 1549.06)
    z_qn = np.where(confuse, np.maximum((1.0 + z) * ratio - 1.0, 0.0), z_qn)
    z_qn = np.where(qn_fail, -1.0, z_qn)
    z_vi = np.where(is_q & in_dr12q, z, -1.0)
    rows_global = block * _BLOCK + np.arange(n)
    ids = _identifiers(rows_global, survey)
    ra, dec = _sky_positions(rng, seed, survey, ids["plate"])
    meta: dict[str, np.ndarray] = {
        "specObjID": ids["specObjID"],
        "plate": ids["plate"],
        "mjd": ids["mjd"],
        "fiberid": ids["fiberid"],
        "ra": ra,
        "dec": dec,
        "z": z,
        "zErr": zerr,
        "class": np.array([classes[c].encode("ascii") for c in cls], dtype="S6"),
        "subClass": subclass,
    }
    for j, b in enumerate(_BANDS):
        meta[f"petroMag_{b}"] = mag[:, j]
    for j, b in enumerate(_BANDS):
        meta[f"petroMagErr_{b}"] = mag_err[:, j]
    meta.update(
        {
            "sn_median": sn_median,
            "z_vi": z_vi,
            "z_qn": z_qn,
            "in_dr12q": in_dr12q,
            "source": np.full(n, b"sim", dtype="S8"),
        }
    )
    schema = specs.load_spec("spectra_store")["meta"]
    meta = {k: np.asarray(v).astype(np.dtype(schema[k]["dtype"])) for k, v in meta.items()}
    res: dict[str, Any] = {"fluxes": flux, "ivar": ivar, "and_mask": and_mask, "meta": meta}
    if with_truth:
        res["truth"] = {
            "model": spec.astype(np.float32),
            "transmission": transmission,
            "covered": covered,
            "qn_fail": qn_fail,
            "total_model": model.astype(np.float32),
            "bal": _expand(cls == classes.index("QSO"), outs["QSO"].extra.get("bal"), n),
            "teff": _expand(cls == classes.index("STAR"), outs["STAR"].extra.get("teff"), n, np.nan),
            "ha_ew": _expand(cls == classes.index("GALAXY"), outs["GALAXY"].extra.get("ha_ew"), n, np.nan),
        }
    return res


def _expand(mask: np.ndarray, values: np.ndarray | None, n: int, fill: Any = False) -> np.ndarray:
    out = np.full(n, fill, dtype=np.asarray(values).dtype if values is not None else bool)
    if values is not None and mask.any():
        out[mask] = values
    return out


def _simulate(
    n: int,
    *,
    seed: int = 0,
    class_shares: Mapping[str, float] | None = None,
    start: int = 0,
    with_truth: bool = False,
) -> tuple[SimulatedSpectra, dict[str, np.ndarray] | None]:
    """:func:`simulate_spectra` plus, with ``with_truth``, the noiseless models (for tests)."""
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    if start + n > _MAX_OBJECTS:
        raise ValueError(f"the simulator numbers at most {_MAX_OBJECTS} objects per seed; asked for {start + n}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    t0 = time.perf_counter()
    probs = tuple(float(p) for p in _class_probabilities(class_shares))
    g = _grid()
    wavelengths = specs.spectral_grid("sdss")
    first, last = start // _BLOCK, (start + n - 1) // _BLOCK if n else start // _BLOCK - 1
    parts = [_simulate_block(int(seed), b, probs, with_truth) for b in range(first, last + 1)]
    lo = start - first * _BLOCK
    sl = slice(lo, lo + n)

    def cat(key: str) -> np.ndarray:
        if not parts:
            return np.zeros((0, g.n_sdss), {"and_mask": np.int32}.get(key, np.float32))
        return np.concatenate([p[key] for p in parts])[sl]

    schema = specs.load_spec("spectra_store")["meta"]
    meta_names = (
        list(parts[0]["meta"])
        if parts
        else [
            c
            for c in schema
            if not schema[c].get("optional") or c in ("sn_median", "z_vi", "z_qn", "in_dr12q", "source")
        ]
    )
    meta = {
        k: (np.concatenate([p["meta"][k] for p in parts])[sl] if parts else np.zeros(0, np.dtype(schema[k]["dtype"])))
        for k in meta_names
    }
    out = SimulatedSpectra(
        wavelengths=wavelengths, fluxes=cat("fluxes"), ivar=cat("ivar"), and_mask=cat("and_mask"), meta=meta
    )
    truth = None
    if with_truth and parts:
        truth = {k: np.concatenate([p["truth"][k] for p in parts])[sl] for k in parts[0]["truth"]}
    log.debug("simulated %d spectra (seed %d, start %d) in %.2f s", n, seed, start, time.perf_counter() - t0)
    return out, truth


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def simulate_spectra(
    n: int, *, seed: int = 0, class_shares: Mapping[str, float] | None = None, start: int = 0
) -> SimulatedSpectra:
    """Simulate objects ``start .. start+n−1`` of the seeded sequence of SDSS-like spectra.

    Parameters
    ----------
    n
        Number of spectra.
    seed
        Non-negative seed; block ``b`` of 256 objects uses ``numpy.random.default_rng([seed, b])``,
        so ``simulate_spectra(a + b, seed=s)`` equals the concatenation of
        ``simulate_spectra(a, seed=s)`` and ``simulate_spectra(b, seed=s, start=a)`` byte for byte.
    class_shares
        Expected shares of ``GALAXY``, ``QSO`` and ``STAR`` (normalised; missing classes get 0).
        Default: the thesis's 56.0 / 33.8 / 10.2 % (``spectra.yaml`` ``thesis_class_shares``).
    start
        Index of the first object in the sequence.

    Returns
    -------
    SimulatedSpectra
        Fluxes (1e-17 erg/s/cm²/Å), ivar and and_mask on the ``sdss`` lattice (4,701 pixels) and
        the meta columns of ``spectra_store.yaml``.
    """
    return _simulate(n, seed=seed, class_shares=class_shares, start=start)[0]


def write_simulated_store(
    path: str | Path,
    n: int,
    *,
    seed: int = 0,
    class_shares: Mapping[str, float] | None = None,
    fits_dir: str | Path | None = None,
    chunk: int = 1024,
    progress: bool = False,
) -> Path:
    """Simulate ``n`` spectra and stream them into an HDF5 spectrum store (and optional FITS files).

    Parameters
    ----------
    path
        Store file (``.h5``); written atomically by :class:`keras_astro.io.spectra_store.StoreWriter`
        with root attributes ``grid="sdss"``, ``seed``, ``creator`` and ``sim_version``.
    n, seed, class_shares
        As in :func:`simulate_spectra`.
    fits_dir
        When given, one ``spec-PLATE-MJD-FIBER.fits`` per object (pixels of its coverage only, like
        an SDSS coadd) is written there with :func:`keras_astro.io.sdss.write_spec_fits`.
    chunk
        Objects generated and appended per step (rounded up to a multiple of 256).
    progress
        Show a tqdm progress bar.

    Returns
    -------
    Path
        The store path.
    """
    from keras_astro.io.spectra_store import StoreWriter

    write_spec_fits = None
    if fits_dir is not None:
        from keras_astro.io.sdss import write_spec_fits

        fits_dir = Path(fits_dir)
        fits_dir.mkdir(parents=True, exist_ok=True)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    path = Path(path)
    step = max(_BLOCK, int(math.ceil(max(int(chunk), 1) / _BLOCK)) * _BLOCK)
    try:
        import keras_astro

        version = getattr(keras_astro, "__version__", "unknown")
    except ImportError:  # pragma: no cover
        version = "unknown"
    attrs = {
        "grid": "sdss",
        "seed": int(seed),
        "creator": f"keras_astro {version}: keras_astro.simulate.spectra.write_simulated_store(n={n}, seed={seed})",
        "sim_version": SIM_VERSION,
    }
    wavelengths = specs.spectral_grid("sdss")
    loglam_all = np.log10(wavelengths)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="spectra", desc="simulating spectra")
    try:
        with StoreWriter(path, wavelengths, attrs=attrs, with_and_mask=True, chunk_rows=_BLOCK) as writer:
            for start in range(0, n, step):
                sim = simulate_spectra(min(step, n - start), seed=seed, class_shares=class_shares, start=start)
                writer.append(fluxes=sim.fluxes, ivar=sim.ivar, meta=sim.meta, and_mask=sim.and_mask)
                if write_spec_fits is not None:
                    _write_fits_files(write_spec_fits, Path(fits_dir), sim, loglam_all)
                if bar is not None:
                    bar.update(len(sim))
    finally:
        if bar is not None:
            bar.close()
    log.info("wrote %d simulated spectra to %s", n, path)
    return path


def _write_fits_files(write_spec_fits: Any, fits_dir: Path, sim: SimulatedSpectra, loglam_all: np.ndarray) -> None:
    for i in range(len(sim)):
        good = np.flatnonzero(sim.ivar[i] > 0)
        if good.size == 0:
            continue
        sl = slice(int(good[0]), int(good[-1]) + 1)
        meta = {}
        for key, col in sim.meta.items():
            v = col[i]
            meta[key] = v.decode("ascii") if isinstance(v, bytes) else v.item() if hasattr(v, "item") else v
        meta["run2d"] = _cfg()["surveys"]["sdss" if meta["plate"] < _survey("boss").plate_first else "boss"]["run2d"]
        name = f"spec-{meta['plate']:04d}-{meta['mjd']:05d}-{meta['fiberid']:04d}.fits"
        write_spec_fits(
            fits_dir / name,
            loglam=loglam_all[sl],
            flux=sim.fluxes[i, sl],
            ivar=sim.ivar[i, sl],
            and_mask=sim.and_mask[i, sl],
            meta=meta,
        )
