"""Embedded 44-band NEPW photometry simulator for the AGN recognition study (Chen et al. 2021).

The real NEPW band-merged catalogue (Kim et al. 2021) cannot be downloaded at run time, so this
module simulates a physically grounded stand-in with the same layout
(``data_specs/nepw_catalogue.yaml``), the same 44 bands, detection limits and set sizes
(``data_specs/agn_bands.yaml``, ``data_specs/agn_study.yaml``) and the paper's label definition
(Sec 4.2: AGN when the AGN torus supplies ``f_AGN,IR >= 0.2`` of the infrared luminosity).

Model, in short (details and numbers in ``docs/fidelity.md``, section "AGN photometry simulator"):

* **Stars**: non-negative mixtures of the five kcorrect v4 NMF templates (real SDSS/GALEX/2MASS
  based, stellar continuum + nebular lines, 600 Å–320 µm). The templates carry *no* dust emission
  (their continuum beyond 5 µm is a stellar Rayleigh–Jeans tail and they are zero beyond ~200 µm;
  the spikes there are NMF artefacts of far-IR fine-structure lines that are removed); the stellar
  tail is extended with f_ν ∝ ν².
* **Star-formation dust**: a modified blackbody (β = 1.8) with a mid-IR power law
  (f_ν ∝ λ², Casey 2012) on a temperature grid, plus PAH Drude features (Smith et al. 2007); its
  luminosity follows from the star-formation rate (Kennicutt 1998) plus a cirrus term.
* **AGN**: a Schartmann et al. (2005) broken power-law accretion disc with broad emission lines
  (Vanden Berk et al. 2001 equivalent widths), reddened by an SMC-like law
  A_λ = 1.39 λ_µm^-1.2 E(B−V) (type-2 objects have E(B−V) ≈ 0.4–6 and are optically hidden), plus
  a torus made of blackbodies at 1400, 700, 350 and 175 K.
* ``f_AGN,IR`` is the fraction of the rest-frame 8–1000 µm luminosity emitted by the torus.
* Observed photometry: rest-frame spectra on a grid uniform in ln λ, so redshifting is a pixel
  shift; band fluxes of every component are tabulated on ~300 redshifts (photon-counting AB
  convention, ⟨f_ν⟩ = ∫ f_ν R dλ/λ / ∫ R dλ/λ, for every band), Madau (1995) IGM absorption,
  Planck18 luminosity distances. The catalogue is AKARI-selected (a source must be detected in at
  least one AKARI IRC band), every band has a 5σ limit, a 0.025 mag calibration floor and an
  instrument footprint.

Everything is deterministic for a given seed (``numpy.random.default_rng``) and runs offline.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from astropy.table import Table

from keras_astro import specs

log = logging.getLogger(__name__)

__all__ = [
    "SIM_VERSION",
    "band_flux_table",
    "table_components",
    "synthetic_ab_magnitudes",
    "simulate_population",
    "simulate_labelled_set",
    "simulate_unlabelled_set",
    "ensure_embedded_catalogues",
]

#: Version of the simulated data; bump whenever the output of a given seed changes.
SIM_VERSION = "1.0.0"

# --------------------------------------------------------------------------------------------
# Physical constants (cgs) and fixed model numbers (not paper numbers: those live in data_specs)
# --------------------------------------------------------------------------------------------
_C_AA = 2.99792458e18  # speed of light, Å/s
_HC_OVER_K_UM_K = 14387.7688  # h c / k_B, µm K
_PC_CM = 3.0856775814913673e18  # parsec, cm
_L_SUN = 3.828e33  # erg/s (IAU nominal)
_AB_ZERO_CGS = 3631.0e-23  # AB zero point, erg/s/cm²/Hz
_FOUR_PI_10PC2 = 4.0 * math.pi * (10.0 * _PC_CM) ** 2  # kcorrect templates are fluxes at 10 pc
_KENNICUTT_IR = 1.0 / 4.5e-44  # erg/s of L_IR per (M_sun/yr) of dust-obscured SFR (Kennicutt 1998)
_IR_RANGE_UM = (8.0, 1000.0)  # rest-frame range of L_IR used for f_AGN,IR
_CAL_FLOOR_MAG = 0.025  # photometric calibration floor added in quadrature
_DEPTH_SCATTER_MAG = 0.1  # object-to-object scatter of the local 5σ depth (per instrument)
_SNR_DETECT = 5.0  # detection threshold; catalogue limits are 5σ limits
_MAG_ERR_FACTOR = 2.5 / math.log(10.0)  # 1.0857: σ_mag = 1.0857 σ_F / F

# Rest-frame / observed-frame wavelength grid, uniform in ln λ with the kcorrect template pixel.
_GRID_MIN_AA = 200.0
_GRID_MAX_AA = 1.05e7
_Z_MAX = 4.6  # highest redshift of the flux tables
_N_Z_TABLE = 300  # redshift nodes of the default flux table
_RESP_TRIM = 1.0e-4  # response values below this fraction of the peak are dropped

# NEPW field (Kim et al. 2012; Chen et al. 2021 Sec 2.1): 5.4 deg², roughly circular.
_FIELD_RA, _FIELD_DEC, _FIELD_AREA_DEG2 = 270.0, 66.56, 5.4
# Chandra NEP-Deep (Krumpe et al. 2015): ~0.34 deg² around the AKARI NEP-Deep field.
_NEPD_RA, _NEPD_DEC, _NEPD_AREA_DEG2 = 268.85, 66.63, 0.34
_XRAY_FLUX_LIMIT = 3.0e-15  # erg/s/cm², 2–10 keV, for the X-ray route into the labelled set
_XRAY_BOLOMETRIC_CORRECTION = 20.0  # L_disc / L_X(2–10 keV)
# Spectroscopic targets (MMT/Hectospec, WIYN/Hydra; Shim et al. 2013): optically bright
# mid-IR sources.
_SPEC_R_LIMIT = 21.5

# Instrument footprints inside the NEPW circle. ("cut", p, θ): the part of the circle on one side
# of a straight edge, holding a fraction p of the area (θ = orientation of the edge normal, deg);
# ("disc", ra, dec, area): a small circular field. Rough values, see docs/fidelity.md.
_FOOTPRINTS: dict[str, tuple] = {
    "Subaru HSC": ("cut", 0.80, 20.0),
    "Maidanak SNUCAM": ("cut", 0.30, 160.0),
    "CFHT MegaCam": ("cut", 0.40, 250.0),
    "CFHT MegaPrime": ("cut", 0.65, 300.0),
    "GALEX": ("cut", 0.50, 90.0),
    "Spitzer IRAC": ("cut", 0.50, 200.0),
    "Spitzer MIPS": ("cut", 0.50, 200.0),
    "WISE": ("cut", 1.00, 0.0),
    "AKARI IRC": ("cut", 1.00, 0.0),
    "KPNO FLAMINGOS": ("cut", 0.80, 45.0),
    "CFHT WIRCam": ("disc", _NEPD_RA, _NEPD_DEC, 0.70),
    "Herschel SPIRE": ("cut", 0.60, 120.0),
    "Herschel PACS": ("cut", 0.60, 330.0),
}


@dataclass(frozen=True)
class _PopulationModel:
    """Knobs of the galaxy/AGN population (documented in docs/fidelity.md)."""

    z_min: float = 0.02
    z_max_sfg: float = 3.0
    z_max_agn: float = 4.5
    logm_min: float = 8.5
    logm_max: float = 12.0
    logm_char: float = 10.8  # Schechter M* (log M_sun)
    alpha_sfg: float = -1.35  # Schechter slope of all galaxies
    alpha_agn: float = -0.9  # AGN favour massive hosts
    quiescent_max: float = 0.55  # maximum quiescent fraction (massive end, z = 0)
    ms_scatter: float = 0.3  # dex, main-sequence scatter (Speagle et al. 2014)
    dust_beta: float = 1.8
    dust_alpha_mir: float = 2.0
    pah_fraction: float = 0.12
    cirrus_fraction: float = 0.04
    # f_AGN,IR draws: AGN side f = thr + (f_max − thr)·Beta(a, b); SFG side: a fraction with no
    # AGN (log-uniform tiny f), the rest f = thr·Beta(a, b) (density rising towards thr).
    f_max: float = 0.98
    agn_beta: tuple[float, float] = (1.0, 3.0)
    sfg_no_agn_fraction: float = 0.3
    sfg_beta: tuple[float, float] = (1.6, 1.0)
    covering_factor: tuple[float, float] = (0.3, 0.7)
    hot_fraction: tuple[float, float] = (0.05, 0.5)  # share of torus power in the 1400 K body
    type2_hot_factor: float = 0.4  # hot dust partly hidden in edge-on tori
    pah_scatter: float = 0.25  # dex
    t_dust_scatter: float = 4.0  # K
    agn_evol_power: float = 2.0  # AGN density ∝ (1+z)^p / (1 + ((1+z)/b)^5)
    agn_evol_break: float = 2.5
    type1_ebv_sigma: float = 0.1
    type2_ebv_range: tuple[float, float] = (0.4, 6.0)


_MODEL = _PopulationModel()

# Dust-temperature grid (K) of the star-formation dust bases and torus blackbody temperatures.
_DUST_T_GRID = np.arange(14.0, 62.0, 2.0)
_TORUS_T = (1400.0, 700.0, 350.0, 175.0)
# E(B−V) grid of the reddened-disc bases (log-linear interpolation between nodes).
_EBV_GRID = np.concatenate([np.arange(0.0, 2.0, 0.1), np.arange(2.0, 6.01, 0.5)])

# PAH features (Smith et al. 2007): centre (µm), fractional FWHM, share of the PAH power.
_PAH_FEATURES = (
    (3.30, 0.012, 0.03),
    (6.22, 0.030, 0.14),
    (7.42, 0.126, 0.10),
    (7.60, 0.044, 0.13),
    (7.85, 0.053, 0.13),
    (8.61, 0.039, 0.09),
    (11.23, 0.012, 0.05),
    (11.33, 0.032, 0.10),
    (12.69, 0.042, 0.07),
    (17.04, 0.065, 0.06),
)
# Broad/narrow AGN lines (Vanden Berk et al. 2001 composite): rest λ (Å), EW (Å), FWHM (km/s).
_AGN_LINES = (
    (1216.0, 92.0, 4000.0),
    (1549.0, 24.0, 4000.0),
    (1909.0, 22.0, 4000.0),
    (2800.0, 33.0, 4000.0),
    (4861.0, 46.0, 4000.0),
    (5007.0, 13.0, 800.0),
    (6563.0, 195.0, 4000.0),
)
# Madau (1995) Lyman-series coefficients: (λ Å, A).
_LYMAN_SERIES = ((1215.67, 3.6e-3), (1025.72, 1.7e-3), (972.54, 1.2e-3), (949.74, 9.3e-4))


# --------------------------------------------------------------------------------------------
# Data files: kcorrect templates/responses, speclite filters, top-hats
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _kcorrect_data_dir() -> Path:
    spec = importlib.util.find_spec("kcorrect")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the kcorrect package (with its data files) is required by the simulator")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _read_kcorrect_response(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``kcorrect/data/responses/<name>.dat`` (fixed-width ``| lambda | pass |``)."""
    path = _kcorrect_data_dir() / "responses" / f"{name}.dat"
    if not path.is_file():
        raise FileNotFoundError(f"kcorrect response {name!r} not found at {path}")
    rows = []
    with path.open() as fh:
        for line in fh:
            line = line.strip()
            if not line.startswith("|"):
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            try:
                rows.append((float(cells[0]), float(cells[1])))
            except ValueError:  # header row
                continue
    arr = np.asarray(rows, dtype=np.float64)
    order = np.argsort(arr[:, 0])
    return arr[order, 0], np.clip(arr[order, 1], 0.0, None)


def _load_filter(spec: str) -> tuple[np.ndarray, np.ndarray]:
    """Wavelength (Å) and photon response of a ``filter`` entry of agn_bands.yaml."""
    kind, _, arg = spec.partition(":")
    if kind == "kcorrect":
        return _read_kcorrect_response(arg)
    if kind == "speclite":
        import speclite.filters

        f = speclite.filters.load_filter(arg)
        wave = np.asarray(f.wavelength, dtype=np.float64)
        return wave, np.clip(np.asarray(f.response, dtype=np.float64), 0.0, None)
    if kind == "tophat":
        lo, hi = (float(v) * 1.0e4 for v in arg.split("-"))
        eps = 1.0e-6 * lo
        wave = np.array([lo - eps, lo, hi, hi + eps])
        return wave, np.array([0.0, 1.0, 1.0, 0.0])
    raise ValueError(f"unknown filter specification {spec!r}; expected kcorrect:, speclite: or tophat:")


@functools.lru_cache(maxsize=1)
def _kcorrect_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kcorrect v4 templates: wave (Å), f_λ (5, n) at 10 pc per M_sun formed, MREMAIN (5,)."""
    from astropy.io import fits

    path = _kcorrect_data_dir() / "templates" / "kcorrect-default-v4.fits"
    with fits.open(path, memmap=False) as hdul:
        data = hdul["FLUX"].data
        wave = np.asarray(data["wave"][0], dtype=np.float64)
        flux = np.asarray(data["flux"][0], dtype=np.float64)
        mremain = np.asarray(hdul["MREMAIN"].data, dtype=np.float64)
    return wave, flux, mremain


# --------------------------------------------------------------------------------------------
# Wavelength grid and band responses
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Grid:
    wave: np.ndarray  # Å, uniform in ln λ
    dln: float  # pixel size in ln λ

    @property
    def wave_um(self) -> np.ndarray:
        return self.wave * 1.0e-4


@functools.lru_cache(maxsize=1)
def _grid() -> _Grid:
    wave, _, _ = _kcorrect_templates()
    dln = math.log(wave[-1] / wave[0]) / (len(wave) - 1)
    k0 = math.floor(math.log(_GRID_MIN_AA / wave[0]) / dln)
    k1 = math.ceil(math.log(_GRID_MAX_AA / wave[0]) / dln)
    k = np.arange(k0, k1 + 1)
    return _Grid(wave=wave[0] * np.exp(k * dln), dln=dln)


@dataclass(frozen=True)
class _BandResponse:
    lo: int  # first grid index of the trimmed response
    weight: np.ndarray  # response on the grid, normalised to Σ = 1 (photon counting, d ln λ)


@functools.lru_cache(maxsize=1)
def _band_responses() -> tuple[_BandResponse, ...]:
    g = _grid()
    out = []
    for band in specs.agn_bands():
        wave, resp = _load_filter(band.filter)
        r = np.interp(g.wave, wave, resp, left=0.0, right=0.0)
        if not (r > 0).any():
            raise ValueError(f"band {band.name}: filter {band.filter} does not overlap the grid")
        keep = np.flatnonzero(r >= _RESP_TRIM * r.max())
        lo, hi = int(keep[0]), int(keep[-1]) + 1
        w = r[lo:hi]
        out.append(_BandResponse(lo=lo, weight=w / w.sum()))
    return tuple(out)


def _shift_of_z(z: np.ndarray | float) -> np.ndarray:
    """Grid shift (pixels, fractional) that redshifts a rest-frame spectrum to z."""
    return np.log1p(np.asarray(z, dtype=np.float64)) / _grid().dln


# --------------------------------------------------------------------------------------------
# Rest-frame spectral components (L_ν in erg/s/Hz on the grid)
# --------------------------------------------------------------------------------------------
def _blackbody_nu(wave_um: np.ndarray, temp: float) -> np.ndarray:
    """Planck B_ν shape ∝ ν³ / (exp(hν/kT) − 1), arbitrary normalisation."""
    x = _HC_OVER_K_UM_K / (wave_um * temp)
    with np.errstate(over="ignore"):
        return np.where(x < 700.0, wave_um**-3.0 / np.expm1(np.minimum(x, 700.0)), 0.0)


def _total_lum(lnu: np.ndarray, lo_um: float | None = None, hi_um: float | None = None) -> np.ndarray:
    """∫ L_ν dν over the grid (or a rest-frame wavelength range in µm); last axis = wavelength."""
    g = _grid()
    nu_dln = _C_AA / g.wave * g.dln  # dν = ν d ln λ
    if lo_um is not None:
        m = (g.wave_um >= lo_um) & (g.wave_um <= hi_um)
        return (lnu[..., m] * nu_dln[m]).sum(axis=-1)
    return (lnu * nu_dln).sum(axis=-1)


def _stellar_components() -> np.ndarray:
    """The 5 kcorrect templates as L_ν (erg/s/Hz per M_sun formed) on the grid.

    Beyond 5 µm the far-IR fine-structure "lines" (NMF artefacts holding up to 60 % of a
    template's luminosity) are replaced by a running median; beyond 20 µm the stellar continuum
    is a Rayleigh–Jeans tail f_ν ∝ ν². Below 600 Å the templates are zero.
    """
    from scipy.ndimage import median_filter

    wave, flam, _ = _kcorrect_templates()
    g = _grid()
    lnu = _FOUR_PI_10PC2 * flam * wave**2 / _C_AA
    smooth = median_filter(lnu, size=(1, 101), mode="nearest")
    mir = wave > 5.0e4
    lnu = np.where(mir[None, :], smooth, lnu)
    anchor = (wave > 1.9e5) & (wave < 2.1e5)
    l20 = np.median(lnu[:, anchor], axis=1)
    tail = wave > 2.0e5
    lnu[:, tail] = l20[:, None] * (wave[tail] / 2.0e5) ** -2.0
    out = np.empty((lnu.shape[0], g.wave.size))
    lnw = np.log(wave)
    for k in range(lnu.shape[0]):
        out[k] = np.interp(np.log(g.wave), lnw, lnu[k], left=0.0, right=np.nan)
    beyond = g.wave > wave[-1]
    out[:, beyond] = out[:, ~beyond][:, -1:] * (g.wave[beyond] / wave[-1]) ** -2.0
    return np.clip(out, 0.0, None)


def _casey_dust(temp: float, beta: float, alpha: float) -> np.ndarray:
    """Optically thin modified blackbody ν^β B_ν(T) joined to a mid-IR power law f_ν ∝ λ^α.

    The power law takes over blueward of the point where the blackbody's logarithmic slope
    equals α (Casey 2012); it is cut off below ~4.5 µm. Normalised to unit total luminosity.
    """
    lam = _grid().wave_um
    # slope d ln S / d ln λ of ν^β B_ν = x e^x/(e^x − 1) − (3 + β); solve = α for x.
    target = 3.0 + beta + alpha
    x = target
    for _ in range(50):
        ex = math.exp(x)
        fval = x * ex / (ex - 1.0) - target
        dfdx = (ex * (ex - 1.0) - x * ex) / (ex - 1.0) ** 2
        x -= fval / dfdx
    lam_c = _HC_OVER_K_UM_K / (temp * x)
    s = lam**-beta * _blackbody_nu(lam, temp)
    s_c = lam_c**-beta * float(_blackbody_nu(np.array([lam_c]), temp)[0])
    pl = s_c * (lam / lam_c) ** alpha * np.exp(-((4.5 / lam) ** 3))
    s = np.where(lam < lam_c, pl, s)
    return s / _total_lum(s)


def _pah_component() -> np.ndarray:
    """PAH emission as a sum of Drude profiles (Smith et al. 2007); unit total luminosity."""
    lam = _grid().wave_um
    s = np.zeros_like(lam)
    for centre, gamma, share in _PAH_FEATURES:
        prof = gamma**2 / ((lam / centre - centre / lam) ** 2 + gamma**2)
        s += share * prof / _total_lum(prof)
    return s / _total_lum(s)


def _torus_components() -> np.ndarray:
    """Torus blackbodies at _TORUS_T; each normalised to unit total luminosity."""
    lam = _grid().wave_um
    out = np.array([_blackbody_nu(lam, t) for t in _TORUS_T])
    return out / _total_lum(out)[:, None]


def _disc_intrinsic() -> np.ndarray:
    """Schartmann et al. (2005) accretion disc + AGN lines; unit total luminosity.

    λL_λ ∝ λ^1.2 (λ < 0.01 µm), λ^0 (0.01–0.1 µm), λ^-0.5 (0.1–5 µm), λ^-3 (> 5 µm).
    """
    g = _grid()
    lam = g.wave_um
    nu_lnu = np.where(
        lam < 0.01,
        (lam / 0.01) ** 1.2,
        np.where(lam < 0.1, 1.0, np.where(lam < 5.0, (lam / 0.1) ** -0.5, 50.0**-0.5 * (lam / 5.0) ** -3.0)),
    )
    lnu = nu_lnu * g.wave / _C_AA  # L_ν = νL_ν / ν
    llam = lnu * _C_AA / g.wave**2  # L_λ per Å
    lines = np.zeros_like(llam)
    for centre, ew, fwhm_kms in _AGN_LINES:
        cont = np.interp(centre, g.wave, llam)
        sigma = centre * fwhm_kms / 2.99792458e5 / 2.3548
        lines += ew * cont * np.exp(-0.5 * ((g.wave - centre) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    lnu = (llam + lines) * g.wave**2 / _C_AA
    return lnu / _total_lum(lnu)


def _smc_alambda(wave_um: np.ndarray) -> np.ndarray:
    """SMC-like extinction curve A_λ / E(B−V) = 1.39 λ_µm^-1.2 (Prevot et al. 1984 fit)."""
    return 1.39 * wave_um**-1.2


@dataclass(frozen=True)
class _Components:
    names: tuple[str, ...]
    spectra: np.ndarray  # (n_comp, n_grid) L_ν per unit (see names)
    l_total: np.ndarray  # (n_comp,) ∫ L_ν dν, erg/s per unit
    l_ir: np.ndarray  # (n_comp,) rest 8–1000 µm luminosity, erg/s per unit
    stellar: slice
    dust: slice
    pah: int
    torus: slice
    disc: slice
    mremain: np.ndarray  # (5,) surviving stellar mass per M_sun formed
    l_red: np.ndarray  # (5,) rest-frame L_ν at 0.6–0.65 µm per M_sun formed


@functools.lru_cache(maxsize=1)
def _components() -> _Components:
    t0 = time.perf_counter()
    g = _grid()
    stellar = _stellar_components()
    dust = np.array([_casey_dust(t, _MODEL.dust_beta, _MODEL.dust_alpha_mir) for t in _DUST_T_GRID])
    pah = _pah_component()[None, :]
    torus = _torus_components()
    disc0 = _disc_intrinsic()
    ext = _smc_alambda(g.wave_um)
    disc = disc0[None, :] * 10.0 ** (-0.4 * np.outer(_EBV_GRID, ext))
    spectra = np.concatenate([stellar, dust, pah, torus, disc])
    names = (
        tuple(f"stellar_{k}" for k in range(stellar.shape[0]))
        + tuple(f"dust_T{t:.0f}K" for t in _DUST_T_GRID)
        + ("pah",)
        + tuple(f"torus_{t:.0f}K" for t in _TORUS_T)
        + tuple(f"disc_ebv{e:.2f}" for e in _EBV_GRID)
    )
    n_s, n_d, n_t = stellar.shape[0], dust.shape[0], torus.shape[0]
    i_pah = n_s + n_d
    _, _, mremain = _kcorrect_templates()
    red = (g.wave > 6.0e3) & (g.wave < 6.5e3)
    comps = _Components(
        names=names,
        spectra=spectra,
        l_total=_total_lum(spectra),
        l_ir=_total_lum(spectra, *_IR_RANGE_UM),
        stellar=slice(0, n_s),
        dust=slice(n_s, n_s + n_d),
        pah=i_pah,
        torus=slice(i_pah + 1, i_pah + 1 + n_t),
        disc=slice(i_pah + 1 + n_t, len(names)),
        mremain=mremain,
        l_red=stellar[:, red].mean(axis=1),
    )
    log.debug("built %d spectral components in %.2f s", len(names), time.perf_counter() - t0)
    return comps


def table_components() -> tuple[str, ...]:
    """Names of the spectral components along axis 1 of :func:`band_flux_table`.

    ``stellar_k`` (k = 0..4): kcorrect template k, per M_sun formed; ``dust_T<T>K``: SF dust at
    temperature T, per erg/s; ``pah``: PAH features, per erg/s; ``torus_<T>K``: torus blackbody,
    per erg/s; ``disc_ebv<E>``: accretion disc (+ lines) reddened by E(B−V) = E, per erg/s of
    intrinsic disc luminosity.
    """
    return _components().names


# --------------------------------------------------------------------------------------------
# Projection through the bands
# --------------------------------------------------------------------------------------------
def _igm_transmission(wave_obs_aa: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Madau (1995) mean IGM transmission; (n_z, n_wave)."""
    lam = np.asarray(wave_obs_aa, dtype=np.float64)[None, :]
    zz = np.asarray(z, dtype=np.float64)[:, None]
    tau = np.zeros(np.broadcast_shapes(lam.shape, zz.shape))
    for lam_i, a_i in _LYMAN_SERIES:
        tau += np.where(lam < lam_i * (1.0 + zz), a_i * (lam / lam_i) ** 3.46, 0.0)
    xc = lam / 912.0
    xe = 1.0 + zz
    lyc = (
        0.25 * xc**3 * (xe**0.46 - xc**0.46)
        + 9.4 * xc**1.5 * (xe**0.18 - xc**0.18)
        - 0.7 * xc**3 * (xc**-1.32 - xe**-1.32)
        - 0.023 * (xe**1.68 - xc**1.68)
    )
    tau += np.where(xc < xe, np.clip(lyc, 0.0, None), 0.0)
    return np.exp(-tau)


def _project(spectra: np.ndarray, shifts: np.ndarray, *, igm: bool) -> np.ndarray:
    """Band-averaged f_ν of rest-frame spectra shifted by integer grid ``shifts``.

    Returns (n_shift, n_spectra, n_band): ⟨L_ν(λ_obs / (1+z))⟩_band, photon-counting
    (Σ L_ν R / Σ R on the uniform ln λ grid), times the IGM transmission when ``igm``. The (1+z)
    bandwidth factor is *not* applied here.
    """
    from numpy.lib.stride_tricks import sliding_window_view

    g = _grid()
    spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float64))
    shifts = np.asarray(shifts, dtype=np.int64)
    z = np.exp(shifts * g.dln) - 1.0
    bands = _band_responses()
    out = np.empty((shifts.size, spectra.shape[0], len(bands)))
    chunk = 64
    for b, band in enumerate(bands):
        n_w = band.weight.size
        starts = band.lo - shifts
        if starts.min() < 0:
            raise ValueError("redshift beyond the range of the wavelength grid")
        windows = sliding_window_view(spectra, n_w, axis=1)
        lam_obs = g.wave[band.lo : band.lo + n_w]
        needs_igm = igm and lam_obs[0] < 1215.67 * (1.0 + z.max())
        for c0 in range(0, shifts.size, chunk):
            sl = slice(c0, c0 + chunk)
            win = windows[:, starts[sl], :]
            if needs_igm:
                weight = band.weight[None, :] * _igm_transmission(lam_obs, z[sl])
                out[sl, :, b] = np.einsum("ksl,sl->sk", win, weight)
            else:
                out[sl, :, b] = (win @ band.weight).T
    return out


def _project_fractional(spectra: np.ndarray, z: np.ndarray, *, igm: bool) -> np.ndarray:
    """:func:`_project` at arbitrary redshifts: linear in ln(1+z) between integer shifts,
    including the (1+z) factor. Returns (n_z, n_spectra, n_band)."""
    s = _shift_of_z(np.atleast_1d(z))
    lo = np.floor(s).astype(np.int64)
    frac = (s - lo)[:, None, None]
    uniq, inv = np.unique(np.concatenate([lo, lo + 1]), return_inverse=True)
    proj = _project(spectra, uniq, igm=igm)
    a, b = proj[inv[: lo.size]], proj[inv[lo.size :]]
    return ((1.0 - frac) * a + frac * b) * (1.0 + np.atleast_1d(z))[:, None, None]


@functools.lru_cache(maxsize=8)
def _band_flux_table_cached(z_key: tuple[float, ...]) -> np.ndarray:
    t0 = time.perf_counter()
    out = _project_fractional(_components().spectra, np.asarray(z_key), igm=True)
    out.setflags(write=False)
    log.debug("band flux table on %d redshifts in %.2f s", len(z_key), time.perf_counter() - t0)
    return out


def band_flux_table(z_grid: Sequence[float] | np.ndarray) -> np.ndarray:
    """Band-averaged rest-frame luminosity densities of every model component versus redshift.

    Parameters
    ----------
    z_grid
        Redshifts (0 ≤ z ≤ 4.6).

    Returns
    -------
    numpy.ndarray
        Read-only array (n_z, n_components, 44): ``(1+z) ⟨L_ν(λ_obs/(1+z))⟩_band`` in erg/s/Hz per
        unit of each component (see :func:`table_components`), including Madau (1995) IGM
        absorption, for the 44 bands in ``agn_bands.yaml`` order. The observed flux density
        (erg/s/cm²/Hz) of an object is ``Σ_k a_k · table[z, k, :] / (4π d_L²)``. Photon-counting
        convention for every band. Cached in memory (``functools.lru_cache``).
    """
    z = np.asarray(z_grid, dtype=np.float64).ravel()
    if z.size == 0 or z.min() < 0 or z.max() > _Z_MAX:
        raise ValueError(f"z_grid must be non-empty and within [0, {_Z_MAX}]")
    return _band_flux_table_cached(tuple(float(v) for v in z))


@functools.lru_cache(maxsize=1)
def _default_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Default flux table on integer grid shifts: (z nodes, shift nodes, table)."""
    g = _grid()
    s_max = math.ceil(math.log1p(_Z_MAX) / g.dln)
    shifts = np.unique(np.round(np.linspace(0, s_max, _N_Z_TABLE)).astype(np.int64))
    z_nodes = np.exp(shifts * g.dln) - 1.0
    t0 = time.perf_counter()
    table = _project(_components().spectra, shifts, igm=True) * (1.0 + z_nodes)[:, None, None]
    table.setflags(write=False)
    log.debug("default flux table (%d z × %d comps × %d bands) in %.2f s", *table.shape, time.perf_counter() - t0)
    return z_nodes, shifts.astype(np.float64), table


def synthetic_ab_magnitudes(
    wave_aa: np.ndarray, f_nu: np.ndarray, z: float = 0.0, *, igm: bool = False
) -> np.ndarray:
    """AB magnitudes of a spectrum in the 44 bands (same machinery as the simulator).

    Parameters
    ----------
    wave_aa
        Rest-frame wavelengths (Å), increasing.
    f_nu
        Flux density f_ν (erg/s/cm²/Hz) at ``wave_aa``; zero outside the given range. The
        spectrum is moved to redshift ``z`` by stretching the wavelengths only (f_ν values are
        kept, no distance dimming or (1+z) factor), so colours are those of the redshifted
        spectrum.
    z
        Redshift (0 ≤ z ≤ 4.6).
    igm
        Apply Madau (1995) IGM absorption.

    Returns
    -------
    numpy.ndarray
        (44,) AB magnitudes (inf where the band flux is zero), photon-counting convention
        m = −2.5 log10(∫ f_ν R dλ/λ / ∫ 3631 Jy R dλ/λ).
    """
    g = _grid()
    wave_aa = np.asarray(wave_aa, dtype=np.float64)
    f_nu = np.asarray(f_nu, dtype=np.float64)
    spec = np.interp(np.log(g.wave), np.log(wave_aa), f_nu, left=0.0, right=0.0)
    flux = _project_fractional(spec[None, :], np.array([z]), igm=igm)[0, 0] / (1.0 + z)
    with np.errstate(divide="ignore"):
        return -2.5 * np.log10(flux / _AB_ZERO_CGS)


# --------------------------------------------------------------------------------------------
# Cosmology
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _cosmo_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """z grid, luminosity distance (cm), comoving volume element dV/dz (arbitrary), age (Gyr)."""
    from astropy.cosmology import Planck18

    z = np.linspace(0.0, _Z_MAX + 0.1, 2001)
    d_l = Planck18.luminosity_distance(z).to_value("cm")
    dvdz = Planck18.differential_comoving_volume(z).value
    z_coarse = np.linspace(0.0, _Z_MAX + 0.1, 95)  # age(z) is smooth; quad per point is slow
    age = np.interp(z, z_coarse, Planck18.age(z_coarse).to_value("Gyr"))
    return z, d_l, dvdz, age


def _lum_distance_cm(z: np.ndarray) -> np.ndarray:
    zg, d_l, _, _ = _cosmo_grid()
    return np.interp(z, zg, d_l)


# --------------------------------------------------------------------------------------------
# Population
# --------------------------------------------------------------------------------------------
def _inverse_cdf(rng: np.random.Generator, x: np.ndarray, pdf: np.ndarray, n: int) -> np.ndarray:
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x))])
    return np.interp(rng.random(n) * cdf[-1], cdf, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_positions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Uniform positions in the NEPW circle; returns ra, dec (deg) and tangent-plane ξ, η (deg)."""
    radius = math.sqrt(_FIELD_AREA_DEG2 / math.pi)
    r = radius * np.sqrt(rng.random(n))
    phi = 2.0 * math.pi * rng.random(n)
    xi, eta = r * np.cos(phi), r * np.sin(phi)
    ra, dec = _deproject(xi, eta, _FIELD_RA, _FIELD_DEC)
    return ra, dec, xi, eta


def _deproject(xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic tangent-plane offsets (deg) → ra, dec (deg)."""
    x, y = np.radians(xi), np.radians(eta)
    a0, d0 = math.radians(ra0), math.radians(dec0)
    denom = math.cos(d0) - y * math.sin(d0)
    ra = a0 + np.arctan2(x, denom)
    dec = np.arctan2(math.sin(d0) + y * math.cos(d0), np.hypot(x, denom))
    return np.degrees(ra) % 360.0, np.degrees(dec)


def _project_tangent(ra: float, dec: float) -> tuple[float, float]:
    """ra, dec (deg) → gnomonic offsets (deg) about the field centre."""
    a, d = math.radians(ra), math.radians(dec)
    a0, d0 = math.radians(_FIELD_RA), math.radians(_FIELD_DEC)
    cosc = math.sin(d0) * math.sin(d) + math.cos(d0) * math.cos(d) * math.cos(a - a0)
    xi = math.cos(d) * math.sin(a - a0) / cosc
    eta = (math.cos(d0) * math.sin(d) - math.sin(d0) * math.cos(d) * math.cos(a - a0)) / cosc
    return math.degrees(xi), math.degrees(eta)


def _in_footprint(instrument: str, xi: np.ndarray, eta: np.ndarray) -> np.ndarray:
    """Whether positions fall in an instrument's footprint (see _FOOTPRINTS)."""
    fp = _FOOTPRINTS.get(instrument)
    if fp is None:
        raise KeyError(f"no footprint for instrument {instrument!r}; add it to _FOOTPRINTS")
    if fp[0] == "disc":
        x0, y0 = _project_tangent(fp[1], fp[2])
        return np.hypot(xi - x0, eta - y0) <= math.sqrt(fp[3] / math.pi)
    p, theta = fp[1], math.radians(fp[2])
    if p >= 1.0:
        return np.ones(xi.shape, dtype=bool)
    radius = math.sqrt(_FIELD_AREA_DEG2 / math.pi)
    u = np.clip((xi * math.cos(theta) + eta * math.sin(theta)) / radius, -1.0, 1.0)
    area_frac = 0.5 + (u * np.sqrt(1.0 - u**2) + np.arcsin(u)) / math.pi  # uniform-disc CDF
    return area_frac <= p


def _draw_f_agn(rng: np.random.Generator, n: int, is_agn: bool, threshold: float) -> np.ndarray:
    m = _MODEL
    if is_agn:
        f = threshold + (m.f_max - threshold) * rng.beta(*m.agn_beta, size=n)
        return np.maximum(f, threshold)
    none = rng.random(n) < m.sfg_no_agn_fraction
    tiny = 10.0 ** rng.uniform(-4.0, -1.5, size=n)
    weak = threshold * rng.beta(*m.sfg_beta, size=n)
    return np.minimum(np.where(none, tiny, weak), np.nextafter(threshold, 0.0))


def _draw_candidates(rng: np.random.Generator, n: int, is_agn: bool) -> dict[str, np.ndarray]:
    """Physical parameters of n candidate objects of one class (before catalogue selection)."""
    m = _MODEL
    comps = _components()
    threshold = float(specs.load_spec("agn_study")["fagn_ir_threshold"])
    zg, _, dvdz, age_g = _cosmo_grid()
    zmax = m.z_max_agn if is_agn else m.z_max_sfg
    sel = (zg >= m.z_min) & (zg <= zmax)
    if is_agn:  # AGN space density rising to z ~ 2 (luminosity-dependent evolution, simplified)
        zp1 = 1.0 + zg[sel]
        evol = zp1**m.agn_evol_power / (1.0 + (zp1 / m.agn_evol_break) ** 5.0)
    else:
        evol = (1.0 + zg[sel]) ** -1.0
    z = _inverse_cdf(rng, zg[sel], dvdz[sel] * evol, n)

    lm_grid = np.linspace(m.logm_min, m.logm_max, 400)
    alpha = m.alpha_agn if is_agn else m.alpha_sfg
    x = 10.0 ** (lm_grid - m.logm_char)
    logm = _inverse_cdf(rng, lm_grid, x ** (alpha + 1.0) * np.exp(-x), n)

    # Star formation: Speagle et al. (2014) main sequence, quiescent galaxies 0.9–2 dex below.
    t_gyr = np.interp(z, zg, age_g)
    ms = (0.84 - 0.026 * t_gyr) * logm - (6.51 - 0.11 * t_gyr)
    p_q = m.quiescent_max * _sigmoid((logm - 10.55 - 0.6 * z) / 0.25)
    quiescent = rng.random(n) < p_q
    logsfr = np.where(quiescent, ms - rng.uniform(0.9, 2.0, n), ms + m.ms_scatter * rng.standard_normal(n))
    ssfr = logsfr - logm

    # Stellar mix: fractions of the red (0.6–0.65 µm) light from "young" and "old" templates.
    youth = np.clip((ssfr + 11.0) / 1.6 + 0.05 * rng.standard_normal(n), 0.0, 1.0)
    young = np.zeros((n, 5))
    young[:, [1, 2, 4]] = rng.dirichlet([0.3, 1.5, 3.0], size=n)
    old = np.zeros((n, 5))
    old[:, [0, 2, 3]] = rng.dirichlet([1.0, 1.0, 3.0], size=n)
    phi = 0.9 * youth[:, None] * young + (1.0 - 0.9 * youth[:, None]) * old
    coef = phi / comps.l_red[None, :]
    coef *= (10.0**logm / (coef @ comps.mremain))[:, None]  # M_sun formed per template
    l_star = coef @ comps.l_total[comps.stellar]

    # Star-formation dust: obscured SFR (Kennicutt 1998) + cirrus heated by old stars.
    f_obsc = np.clip(0.35 + 0.25 * (logm - 9.0), 0.3, 0.95)
    l_sf = _KENNICUTT_IR * 10.0**logsfr * f_obsc * 10.0 ** (0.1 * rng.standard_normal(n))
    l_sf += m.cirrus_fraction * l_star * 10.0 ** (0.2 * rng.standard_normal(n))
    t_dust = 24.0 + 4.5 * np.log10(l_sf / (1.0e10 * _L_SUN)) + 6.0 * np.log10(1.0 + z)
    t_dust = np.clip(t_dust + m.t_dust_scatter * rng.standard_normal(n), _DUST_T_GRID[0], _DUST_T_GRID[-1])
    q_pah = np.clip(m.pah_fraction * 10.0 ** (m.pah_scatter * rng.standard_normal(n)), 0.0, 0.4)
    it = np.clip(np.searchsorted(_DUST_T_GRID, t_dust) - 1, 0, _DUST_T_GRID.size - 2)
    wt = (t_dust - _DUST_T_GRID[it]) / (_DUST_T_GRID[it + 1] - _DUST_T_GRID[it])
    ir_d = comps.l_ir[comps.dust]
    dust_ir_frac = (1.0 - wt) * ir_d[it] + wt * ir_d[it + 1]
    l_ir_host = (
        l_sf * ((1.0 - q_pah) * dust_ir_frac + q_pah * comps.l_ir[comps.pah])
        + coef @ comps.l_ir[comps.stellar]
    )

    # AGN: f_AGN,IR fixes the torus luminosity relative to the host's 8–1000 µm luminosity.
    fagn = _draw_f_agn(rng, n, is_agn, threshold)
    type2_draw = rng.random(n)
    hot = rng.uniform(*m.hot_fraction, n)
    rest = rng.dirichlet([2.0, 2.0, 1.2], size=n)
    cf = rng.uniform(*m.covering_factor, n)
    ebv1 = np.abs(m.type1_ebv_sigma * rng.standard_normal(n))
    lo2, hi2 = np.log10(m.type2_ebv_range[0]), np.log10(m.type2_ebv_range[1])
    ebv2 = 10.0 ** rng.uniform(lo2, hi2, n)

    l_torus_ir = fagn / (1.0 - fagn) * l_ir_host
    # first pass with the type-1 torus shape to get the disc luminosity → type-2 probability
    ir_t = comps.l_ir[comps.torus]
    w_torus1 = np.column_stack([hot, (1.0 - hot)[:, None] * rest])
    l_disc_guess = l_torus_ir / (w_torus1 @ ir_t) / cf
    p_type2 = np.clip(0.65 - 0.15 * np.log10(np.maximum(l_disc_guess, 1.0) / 1.0e45), 0.25, 0.8)
    type2 = type2_draw < p_type2
    hot = np.where(type2, m.type2_hot_factor * hot, hot)
    w_torus = np.column_stack([hot, (1.0 - hot)[:, None] * rest])
    l_torus = l_torus_ir / (w_torus @ ir_t)
    l_disc = l_torus / cf
    ebv = np.minimum(np.where(type2, ebv2, ebv1), _EBV_GRID[-1])

    ra, dec, xi, eta = _draw_positions(rng, n)
    return {
        "z": z,
        "ra": ra,
        "dec": dec,
        "xi": xi,
        "eta": eta,
        "log_mstar": logm,
        "log_sfr": logsfr,
        "coef": coef,
        "l_sf": l_sf,
        "q_pah": q_pah,
        "t_dust": t_dust,
        "dust_it": it,
        "dust_wt": wt,
        "w_torus": w_torus * l_torus[:, None],
        "l_disc": l_disc,
        "ebv_agn": ebv,
        "agn_type": np.where(fagn > 1.0e-3, np.where(type2, 2, 1), 0).astype(np.int8),
        "fagn_ir": fagn,
        "log_lir": np.log10((l_ir_host + l_torus_ir) / _L_SUN),
    }


def _subset(params: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in params.items()}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _true_fluxes(params: dict[str, np.ndarray], bands: np.ndarray) -> np.ndarray:
    """Noise-free observed flux densities (erg/s/cm²/Hz), shape (n, len(bands))."""
    comps = _components()
    _, s_nodes, table = _default_table()
    tab = np.ascontiguousarray(table[:, :, bands].transpose(1, 0, 2))  # (comp, z, band)
    s = _shift_of_z(params["z"])
    j = np.clip(np.searchsorted(s_nodes, s, side="right") - 1, 0, s_nodes.size - 2)
    w = ((s - s_nodes[j]) / (s_nodes[j + 1] - s_nodes[j]))[:, None]

    def comp(k: np.ndarray | int) -> np.ndarray:
        return (1.0 - w) * tab[k, j] + w * tab[k, j + 1]

    n = params["z"].size
    lum = np.zeros((n, bands.size))
    for k in range(comps.stellar.stop):
        lum += params["coef"][:, k : k + 1] * comp(k)
    it, wt = params["dust_it"], params["dust_wt"][:, None]
    l_mbb = (params["l_sf"] * (1.0 - params["q_pah"]))[:, None]
    lum += l_mbb * ((1.0 - wt) * comp(comps.dust.start + it) + wt * comp(comps.dust.start + it + 1))
    lum += (params["l_sf"] * params["q_pah"])[:, None] * comp(comps.pah)
    for i in range(params["w_torus"].shape[1]):
        lum += params["w_torus"][:, i : i + 1] * comp(comps.torus.start + i)
    ebv = params["ebv_agn"]
    ie = np.clip(np.searchsorted(_EBV_GRID, ebv, side="right") - 1, 0, _EBV_GRID.size - 2)
    we = ((ebv - _EBV_GRID[ie]) / (_EBV_GRID[ie + 1] - _EBV_GRID[ie]))[:, None]
    tiny = 1.0e-300
    d0 = np.maximum(comp(comps.disc.start + ie), tiny)
    d1 = np.maximum(comp(comps.disc.start + ie + 1), tiny)
    lum += params["l_disc"][:, None] * np.exp((1.0 - we) * np.log(d0) + we * np.log(d1))
    d_l = _lum_distance_cm(params["z"])
    return lum / (4.0 * math.pi * d_l**2)[:, None]


def _observe(
    rng: np.random.Generator, params: dict[str, np.ndarray], bands: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy photometry in ``bands``: observed flux, its σ (both erg/s/cm²/Hz) and detection mask."""
    all_bands = specs.agn_bands()
    n = params["z"].size
    flux = _true_fluxes(params, bands)
    limits = np.array([all_bands[b].limit_mag for b in bands])
    depth = limits[None, :] + _DEPTH_SCATTER_MAG * rng.standard_normal((n, bands.size))
    sigma_lim = _AB_ZERO_CGS * 10.0 ** (-0.4 * depth) / _SNR_DETECT
    cal = flux * (10.0 ** (0.4 * _CAL_FLOOR_MAG) - 1.0)
    sigma = np.hypot(sigma_lim, cal)
    obs = flux + sigma * rng.standard_normal((n, bands.size))
    covered = np.column_stack(
        [_in_footprint(all_bands[b].instrument, params["xi"], params["eta"]) for b in bands]
    )
    detected = covered & (obs >= _SNR_DETECT * sigma)
    return obs, sigma, detected


def _band_index(names: Sequence[str]) -> np.ndarray:
    all_names = specs.band_names()
    return np.array([all_names.index(nm) for nm in names], dtype=np.int64)


def _akari_bands() -> np.ndarray:
    return np.array([i for i, b in enumerate(specs.agn_bands()) if b.instrument == "AKARI IRC"])


def _generate(
    rng: np.random.Generator, n_target: int, is_agn: bool, *, labelled: bool
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Draw candidates of one class until ``n_target`` pass the catalogue selection.

    Selection: detected (SNR ≥ 5) in at least one AKARI IRC band (the catalogue is built on AKARI
    NEPW sources). ``labelled`` adds the spectroscopic/X-ray selection of the ground-truth sample.
    Returns the accepted parameters and their noisy observed fluxes, σ and detection masks
    (n_target, 44).
    """
    n_bands = len(specs.agn_bands())
    akari = _akari_bands()
    sel_bands = akari
    if labelled:
        r_band = _band_index(["HSC_r"])
        sel_bands = np.concatenate([akari, r_band])
    others = np.setdiff1d(np.arange(n_bands), sel_bands)
    mir_akari = np.array([i for i in akari if specs.agn_bands()[i].wavelength_um > 5.0])
    nepd = _project_tangent(_NEPD_RA, _NEPD_DEC)
    nepd_r = math.sqrt(_NEPD_AREA_DEG2 / math.pi)

    if n_target <= 0:
        empty = _draw_candidates(rng, 0, is_agn)
        return empty, np.empty((0, n_bands)), np.empty((0, n_bands)), np.empty((0, n_bands), dtype=bool)
    parts, obs_parts, sig_parts, det_parts = [], [], [], []
    have, rate, batches = 0, 0.3 if not labelled else 0.05, 0
    while have < n_target:
        m = int(min(max((n_target - have) / max(rate, 1e-3) * 1.15, 2048), 400_000))
        cand = _draw_candidates(rng, m, is_agn)
        obs, sig, det = _observe(rng, cand, sel_bands)
        det_akari = det[:, : akari.size]
        keep = det_akari.any(axis=1)
        if labelled:
            flux_r_true = _true_fluxes(cand, _band_index(["HSC_r"]))[:, 0]
            r_true = -2.5 * np.log10(flux_r_true / _AB_ZERO_CGS)
            in_mir = np.isin(akari, mir_akari)
            spec_target = (r_true <= _SPEC_R_LIMIT) & det_akari[:, in_mir].any(axis=1)
            f_x = cand["l_disc"] / _XRAY_BOLOMETRIC_CORRECTION / (4 * math.pi * _lum_distance_cm(cand["z"]) ** 2)
            in_nepd = np.hypot(cand["xi"] - nepd[0], cand["eta"] - nepd[1]) <= nepd_r
            xray = in_nepd & (f_x >= _XRAY_FLUX_LIMIT)
            keep &= spec_target | xray
        idx = np.flatnonzero(keep)[: n_target - have]
        batches += 1
        rate = max(keep.mean(), 1.0e-3)
        if idx.size == 0:
            if batches > 50:
                raise RuntimeError("simulation selection accepts no candidates; check the model")
            continue
        parts.append(_subset(cand, idx))
        full_obs = np.empty((idx.size, n_bands))
        full_sig = np.empty((idx.size, n_bands))
        full_det = np.empty((idx.size, n_bands), dtype=bool)
        full_obs[:, sel_bands], full_sig[:, sel_bands], full_det[:, sel_bands] = obs[idx], sig[idx], det[idx]
        o2, s2, d2 = _observe(rng, parts[-1], others)
        full_obs[:, others], full_sig[:, others], full_det[:, others] = o2, s2, d2
        obs_parts.append(full_obs)
        sig_parts.append(full_sig)
        det_parts.append(full_det)
        have += idx.size
    log.debug("class %s: %d accepted after %d batches", "AGN" if is_agn else "SFG", have, batches)
    return _concat(parts), np.concatenate(obs_parts), np.concatenate(sig_parts), np.concatenate(det_parts)


def _build_table(
    params: dict[str, np.ndarray],
    obs: np.ndarray,
    sigma: np.ndarray,
    detected: np.ndarray,
    labels: np.ndarray,
    *,
    id_start: int,
) -> Table:
    layout = specs.load_spec("nepw_catalogue")
    missing = float(layout["missing_value"])
    n = params["z"].size
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(detected, -2.5 * np.log10(np.where(detected, obs, 1.0) / _AB_ZERO_CGS), missing)
        err = np.where(detected, _MAG_ERR_FACTOR * sigma / np.where(detected, obs, 1.0), missing)
    cols: dict[str, Any] = {
        layout["id_column"]: np.arange(id_start, id_start + n, dtype=np.int64),
        "ra": params["ra"].astype(np.float64),
        "dec": params["dec"].astype(np.float64),
        layout["redshift_column"]: params["z"].astype(np.float64),
        layout["label_column"]: labels.astype("U3"),
    }
    for j, name in enumerate(specs.band_names()):
        cols[layout["mag_column"].format(band=name)] = mag[:, j].astype(np.float32)
        cols[layout["err_column"].format(band=name)] = err[:, j].astype(np.float32)
    cols["fagn_ir"] = params["fagn_ir"].astype(np.float64)
    cols["ebv_agn"] = params["ebv_agn"].astype(np.float64)
    cols["agn_type"] = params["agn_type"].astype(np.int16)
    cols["log_mstar"] = params["log_mstar"].astype(np.float64)
    cols["log_sfr"] = params["log_sfr"].astype(np.float64)
    cols["log_lir"] = params["log_lir"].astype(np.float64)
    table = Table(cols)
    table.meta["SIMVER"] = SIM_VERSION
    return table


def _labels_of(fagn: np.ndarray) -> np.ndarray:
    threshold = float(specs.load_spec("agn_study")["fagn_ir_threshold"])
    names = {v: k for k, v in specs.load_spec("nepw_catalogue")["labels"].items()}
    return np.where(fagn >= threshold, names[1], names[0])


def _simulate(rng: np.random.Generator, n_agn: int, n_sfg: int, *, labelled: bool, id_start: int) -> Table:
    t0 = time.perf_counter()
    pa, oa, sa, da = _generate(rng, n_agn, True, labelled=labelled)
    ps, os_, ss, ds = _generate(rng, n_sfg, False, labelled=labelled)
    params = _concat([pa, ps])
    obs, sig, det = (np.concatenate(x) for x in ((oa, os_), (sa, ss), (da, ds)))
    order = rng.permutation(params["z"].size)
    params, obs, sig, det = _subset(params, order), obs[order], sig[order], det[order]
    table = _build_table(params, obs, sig, det, _labels_of(params["fagn_ir"]), id_start=id_start)
    log.info(
        "simulated %d objects (%d AGN, %d SFG%s) in %.2f s",
        len(table), n_agn, n_sfg, ", labelled selection" if labelled else "", time.perf_counter() - t0,
    )
    return table


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def simulate_population(n: int, *, agn_fraction: float, seed: int, id_start: int = 1) -> Table:
    """Simulate an AKARI-selected NEPW catalogue of ``n`` objects.

    Parameters
    ----------
    n
        Number of objects (rows).
    agn_fraction
        Expected fraction of objects labelled AGN (f_AGN,IR ≥ the ``fagn_ir_threshold`` of
        ``agn_study.yaml``); the number of AGN is Binomial(n, agn_fraction).
    seed
        Seed of ``numpy.random.default_rng``; the same seed gives a bit-identical table.
    id_start
        First value of the ``ID`` column (IDs are consecutive).

    Returns
    -------
    astropy.table.Table
        Columns ``ID``, ``ra``, ``dec`` (deg), ``z``, ``class`` ("AGN"/"SFG", the true label),
        ``{band}_mag``/``{band}_magerr`` (AB mag; −99 for both when the band is missing) for the 44
        bands, then truth: ``fagn_ir``, ``ebv_agn`` (mag), ``agn_type`` (0 none, 1, 2),
        ``log_mstar`` (M_sun), ``log_sfr`` (M_sun/yr), ``log_lir`` (rest 8–1000 µm, L_sun).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= agn_fraction <= 1.0:
        raise ValueError(f"agn_fraction must be in [0, 1], got {agn_fraction}")
    rng = np.random.default_rng(seed)
    n_agn = int(rng.binomial(n, agn_fraction))
    return _simulate(rng, n_agn, n - n_agn, labelled=False, id_start=id_start)


def simulate_labelled_set(seed: int = 0) -> Table:
    """The labelled (ground-truth) set: exactly ``labelled.n_agn`` AGN + ``labelled.n_sfg`` SFG.

    Objects pass the catalogue (AKARI) selection and the ground-truth selection: a spectroscopic
    target (r ≤ 21.5 and detected in an AKARI mid-IR band) or an X-ray source in the Chandra
    NEP-Deep area (2–10 keV flux ≥ 3e-15 erg/s/cm²). Rows are shuffled; ``class`` is "AGN"/"SFG"
    and agrees with ``fagn_ir ≥ fagn_ir_threshold``. Same columns as :func:`simulate_population`.
    """
    study = specs.load_spec("agn_study")["labelled"]
    rng = np.random.default_rng(seed)
    return _simulate(rng, int(study["n_agn"]), int(study["n_sfg"]), labelled=True, id_start=1_000_001)


def simulate_unlabelled_set(seed: int = 1, n: int | None = None) -> Table:
    """The unlabelled inference set (default ``unlabelled.n`` = 65,548 objects).

    The population AGN fraction is 0.28 (the paper's networks found 25–34 %, Table 2); ``class``
    is empty (""), the truth stays available in ``fagn_ir``.
    """
    if n is None:
        n = int(specs.load_spec("agn_study")["unlabelled"]["n"])
    table = simulate_population(n, agn_fraction=0.28, seed=seed, id_start=1)
    label_col = specs.load_spec("nepw_catalogue")["label_column"]
    table[label_col] = np.full(len(table), "", dtype="U3")
    return table


_QUICK_UNLABELLED_N = 5000


def _write(table: Table, path: Path, meta: dict[str, Any]) -> Path:
    from keras_astro.io.nepw import write_catalogue

    return write_catalogue(table, path, meta=meta)


def _header_matches(path: Path, meta: dict[str, Any]) -> bool:
    from astropy.io import fits

    if not path.is_file():
        return False
    try:
        header = fits.getheader(path, 1)
    except (OSError, ValueError, IndexError):
        return False
    return all(header.get(k) == v for k, v in meta.items())


def ensure_embedded_catalogues(
    directory: str | os.PathLike, *, quick: bool = False, seed: int = 0
) -> dict[str, Path]:
    """Write the embedded labelled and unlabelled NEPW catalogues unless they are up to date.

    Parameters
    ----------
    directory
        Target folder; ``nepw_labelled.fits`` and ``nepw_unlabelled.fits`` are written there.
    quick
        Unlabelled set of 5,000 objects instead of 65,548 (the labelled set is always complete).
    seed
        Labelled set seed; the unlabelled set uses ``seed + 1``.

    Returns
    -------
    dict
        ``{"labelled": path, "unlabelled": path}``. A file is rewritten only when it is missing or
        its FITS header (SIMVER, SIMSEED, SIMQUICK, SIMKIND) differs.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    for kind in ("labelled", "unlabelled"):
        path = directory / f"nepw_{kind}.fits"
        meta = {"SIMVER": SIM_VERSION, "SIMSEED": int(seed), "SIMQUICK": bool(quick), "SIMKIND": kind}
        if _header_matches(path, meta):
            log.info("reusing %s (SIM_VERSION %s, seed %d, quick %s)", path, SIM_VERSION, seed, quick)
        else:
            if kind == "labelled":
                table = simulate_labelled_set(seed=seed)
            else:
                table = simulate_unlabelled_set(seed=seed + 1, n=_QUICK_UNLABELLED_N if quick else None)
            _write(table, path, meta)
            log.info("wrote %s (%d rows)", path, len(table))
        out[kind] = path
    return out
