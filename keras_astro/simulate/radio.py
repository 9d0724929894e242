"""FIRST/WISE field simulator: the embedded images CLARAN trains on (Wu et al. 2019, Sec 3).

The RGZ cutouts cannot be downloaded at run time, so every subject of the *real* catalogue
(:func:`keras_astro.io.rgz.load_catalogue`) is rendered here: a 132 × 132 FIRST 1.4 GHz image in
Jy/beam and a matching WISE W1 (3.4 µm) image in DN, both on the subject's WCS
(:func:`keras_astro.io.rgz.subject_wcs`, 1.375″ pixels) and written in the layout the SkyView
client writes (:func:`keras_astro.io.skyview.write_cutout`), so the same reader serves both.

Radio sources (all numbers in ``data_specs/radio_simulator.yaml`` and ``data_specs/rgz.yaml``)
    Each catalogue source is built from beam-convolved elliptical Gaussians ("peaks": cores,
    lobes, hot spots) and, inside one component, Gaussian-profile bridges/jets between peaks:

    * components sit at their catalogue positions (``Source.ras/decs``); a 1C source's peaks
      are spread along a random position angle around its position; a 2C_3P source has one
      component with two peaks (core + lobe); the middle component of a 3C_3P source is a core;
    * sizes are chosen so the 4σ contour (the RGZ component level) spans the catalogue's
      angular extent along the source axis;
    * the faintest peak's brightness follows the 1.4 GHz source counts, N(>S) ∝ S^-1, from
      1 mJy/beam (≥ 8σ; ≥ ~13σ for multi-peak components) up to 1 Jy/beam;
    * each drawn source is checked on its noiseless model — one component stays connected at
      7σ, different components are separated at 2.5σ, and it has exactly ``num_peaks`` maxima
      above 5σ — and redrawn (up to 10 times, nudged towards the failed property) otherwise.
    The image gets FIRST-like noise: 0.15 mJy/beam rms (±8 % per field), correlated like the 5″
    beam.

Infrared
    A host galaxy per source — on the core (3C, and the core of a 2C_3P), between the lobes (2C),
    on the source (1C) — plus unrelated field sources at a few per arcmin² down to W1 ≈ 17.5,
    Gaussian PSF of 6.1″ FWHM, DN with the AllWISE zero point (MAGZP 20.5), a sky pedestal and
    correlated noise scaled to the AllWISE 5σ depth.

Determinism
    A source's shape, flux and host depend only on ``(seed, its subject's name, its catalog_id)``
    and a field's noise and unrelated IR sources only on ``(seed, crc32(subject name))``
    (``np.random.default_rng([seed, crc32(name)])``): any subset of subjects renders identically,
    and a catalogue source looks the same in its own subject, in a neighbour's 15′ field, or
    in a larger rendering.

Fig./Sec 6.2.1
    :func:`render_large_field` renders a 5× larger (15′, 660 × 660 px) field around a subject with
    the catalogue's neighbouring sources and unrelated FIRST-density compact sources outside the
    central 3′.

See ``docs/fidelity_radio_simulator.md`` for every approximation and its reason.
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import weakref
import zlib
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from scipy import ndimage
from scipy.special import erf

from keras_astro import specs
from keras_astro.io import rgz, skyview
from keras_astro.io.rgz import Source, Subject

log = logging.getLogger(__name__)

__all__ = [
    "SIM_VERSION",
    "Blob",
    "Bridge",
    "RenderedSubject",
    "SourceModel",
    "describe_model",
    "ensure_images",
    "render_large_field",
    "render_subject",
    "source_model",
    "write_subject_fits",
]

#: Version of the simulated images; bump whenever the output of a given seed changes.
SIM_VERSION = "1.0.0"

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_WINDOW = 5.5  # Gaussians are evaluated out to this many sigma (< 1e-6 of the peak beyond)


# --------------------------------------------------------------------------------------------
# parameters (data_specs/rgz.yaml + data_specs/radio_simulator.yaml)


@dataclass(frozen=True)
class _Params:
    size: int
    pix: float  # arcsec
    beam_sigma: float  # arcsec
    rms: float  # Jy/beam
    rms_ln_scatter: float
    rms_clip: tuple[float, float]
    noise_kernel_px: float
    extent_level: float  # Jy/beam (4 sigma)
    alpha: float
    peak_min: float  # Jy/beam
    peak_max: float
    floor_single: float  # Jy/beam
    floor_multi: float
    ratio_max: float
    spacing: tuple[float, float]
    saddle: tuple[float, float]
    core_sigma: tuple[float, float]  # intrinsic, arcsec
    axis_ratio: tuple[float, float]
    lobe_fraction: tuple[float, float]
    connect: float  # Jy/beam
    separate: float
    kappa: float
    max_attempts: int
    bg_density: float  # per deg^2
    bg_extent: tuple[float, float]
    ir: dict
    radio_survey: str
    ir_survey: str


@functools.lru_cache(maxsize=None)
def _params() -> _Params:
    g = specs.load_spec("rgz")["subject"]
    sim = specs.load_spec("radio_simulator")
    r = sim["radio"]
    rms = float(g["rms_mjy"]) * 1e-3
    beam_sigma = float(g["beam_arcsec"]) * _FWHM_TO_SIGMA
    pix = float(g["pixel_arcsec"])
    connect = float(r["connect_snr"]) * rms
    floor_single = max(float(r["peak_min_mjy"]) * 1e-3, float(r["peak_min_snr"]) * rms)
    # a multi-peak component needs its saddle >= connect + 1 sigma while staying <= the largest
    # saddle fraction of its faintest peak
    floor_multi = max(floor_single, (connect + rms) / float(r["saddle_fraction"][1]))
    sv = specs.load_spec("rgz")["skyview"]
    return _Params(
        size=int(g["size_px"]),
        pix=pix,
        beam_sigma=beam_sigma,
        rms=rms,
        rms_ln_scatter=float(r["rms_ln_scatter"]),
        rms_clip=(float(r["rms_clip_mjy"][0]) * 1e-3, float(r["rms_clip_mjy"][1]) * 1e-3),
        noise_kernel_px=float(r["noise_kernel_beam_fraction"]) * beam_sigma / pix,
        extent_level=float(r["extent_contour_sigma"]) * rms,
        alpha=float(r["count_alpha"]),
        peak_min=float(r["peak_min_mjy"]) * 1e-3,
        peak_max=float(r["peak_max_mjy"]) * 1e-3,
        floor_single=floor_single,
        floor_multi=floor_multi,
        ratio_max=float(r["peak_ratio_max"]),
        spacing=(float(r["peak_spacing_sigma"][0]), float(r["peak_spacing_sigma"][1])),
        saddle=(float(r["saddle_fraction"][0]), float(r["saddle_fraction"][1])),
        core_sigma=tuple(float(v) * _FWHM_TO_SIGMA for v in r["core_fwhm_arcsec"]),
        axis_ratio=(float(r["axis_ratio"][0]), float(r["axis_ratio"][1])),
        lobe_fraction=(float(r["lobe_fwhm_fraction"][0]), float(r["lobe_fwhm_fraction"][1])),
        connect=connect,
        separate=float(r["separate_snr"]) * rms,
        kappa=float(r["flatness_kappa"]),
        max_attempts=int(r["max_attempts"]),
        bg_density=float(r["background_density_deg2"]),
        bg_extent=(float(r["background_extent_arcsec"][0]), float(r["background_extent_arcsec"][1])),
        ir=dict(sim["ir"]),
        radio_survey=str(sv["radio_survey"]),
        ir_survey=str(sv["ir_survey"]),
    )


def _crc(name: str) -> int:
    return zlib.crc32(str(name).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# source models: Gaussian peaks and bridges on a local tangent plane (arcsec east/north of the
# source centre)


@dataclass(frozen=True)
class Blob:
    """A beam-convolved elliptical Gaussian: peak ``amp`` (Jy/beam) at (x, y) arcsec east/north of
    the source centre, sigmas ``sa`` along direction ``theta`` (rad from east through north) and
    ``sp`` across it (arcsec, beam included), belonging to component ``comp``."""

    x: float
    y: float
    amp: float
    sa: float
    sp: float
    theta: float
    comp: int


@dataclass(frozen=True)
class Bridge:
    """A line segment (x0, y0)–(x1, y1) convolved with a round Gaussian of sigma ``s`` (arcsec,
    beam included), surface brightness ``amp`` (Jy/beam) along its middle: a jet or bridge."""

    x0: float
    y0: float
    x1: float
    y1: float
    amp: float
    s: float
    comp: int


@dataclass(frozen=True)
class SourceModel:
    """The drawn emission of one catalogue source, and the checks it passed.

    ``host`` is the host galaxy's offset (arcsec east, north) from the source centre,
    ``n_maxima`` / ``n_components`` the maxima above 5σ and components at 5σ of the noiseless
    model, ``ok`` whether every check of the module docstring passed.
    """

    source: Source
    blobs: tuple[Blob, ...]
    bridges: tuple[Bridge, ...]
    host: tuple[float, float]
    host_mag: float
    n_maxima: int
    n_components: int
    ok: bool
    attempts: int


def _eval(blobs: Sequence[Blob], bridges: Sequence[Bridge], X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(X, Y).shape)
    for b in blobs:
        dx, dy = X - b.x, Y - b.y
        c, s = math.cos(b.theta), math.sin(b.theta)
        a = (dx * c + dy * s) / b.sa
        p = (-dx * s + dy * c) / b.sp
        out += b.amp * np.exp(-0.5 * (a * a + p * p))
    for g in bridges:
        out += _bridge_profile(g, X, Y)
    return out


def _bridge_profile(g: Bridge, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    L = math.hypot(g.x1 - g.x0, g.y1 - g.y0)
    if L == 0 or g.amp <= 0:
        return np.zeros(np.broadcast(X, Y).shape)
    ux, uy = (g.x1 - g.x0) / L, (g.y1 - g.y0) / L
    mx, my = 0.5 * (g.x0 + g.x1), 0.5 * (g.y0 + g.y1)
    t = (X - mx) * ux + (Y - my) * uy
    d = -(X - mx) * uy + (Y - my) * ux
    r2s = math.sqrt(2.0) * g.s
    return g.amp * np.exp(-0.5 * (d / g.s) ** 2) * 0.5 * (erf((t + 0.5 * L) / r2s) - erf((t - 0.5 * L) / r2s))


def _min_between(blobs, bridges, p, q, n: int = 96) -> float:
    """Minimum of the model on the segment p–q (excluding 8 % at each end)."""
    t = np.linspace(0.08, 0.92, n)
    X = p[0] + t * (q[0] - p[0])
    Y = p[1] + t * (q[1] - p[1])
    return float(_eval(blobs, bridges, X, Y).min())


def _offsets(source: Source) -> np.ndarray:
    """Component positions (n, 2) in arcsec east/north of the source centre."""
    ra_c, dec_c = source.centre
    dra = (np.asarray(source.ras) - ra_c + 180.0) % 360.0 - 180.0
    return np.stack([dra * math.cos(math.radians(dec_c)) * 3600.0, (np.asarray(source.decs) - dec_c) * 3600.0], axis=1)


def _total(s_int: float, p: _Params) -> float:
    return math.sqrt(s_int * s_int + p.beam_sigma**2)


def _w(amp: float, p: _Params) -> float:
    """Half-width of a unit-sigma Gaussian of peak ``amp`` at the extent contour."""
    return math.sqrt(2.0 * math.log(max(amp / p.extent_level, 1.0 + 1e-9)))


@dataclass
class _Knobs:
    """What the redraws nudge after a failed check."""

    dk: float = 0.0  # extra peak spacing (in sigma)
    saddle_up: float = 0.0  # extra saddle fraction
    sep_scale: float = 1.0  # factor on the separation level
    perpendicular: bool = False  # 2C_3P: put the double component's peaks across the axis


def _flux_draw(rng: np.random.Generator, n: int, p: _Params) -> tuple[float, np.ndarray]:
    """Quantile of the faintest peak in the source counts, and relative weights (min 1) of n peaks."""
    u = float(rng.random())
    w = np.exp(rng.uniform(0.0, math.log(p.ratio_max), size=n))
    w[int(rng.integers(n))] = 1.0
    return u, w / w.min()


def _fluxes(u: float, w: np.ndarray, lo: float, p: _Params) -> np.ndarray:
    """Peak brightnesses (Jy/beam): the faintest at quantile ``u`` of N(>S) ~ S^-alpha truncated to
    [lo, peak_max / max(w)], the others ``w`` times brighter."""
    lo = max(lo, p.peak_min)
    hi = p.peak_max / float(w.max())
    if lo >= hi:
        return lo * w
    ratio = (lo / hi) ** p.alpha
    return lo * (1.0 - u * (1.0 - ratio)) ** (-1.0 / p.alpha) * w


def _fit_extent(amps: np.ndarray, span_sigmas: float, extent: float, p: _Params, floor: float, lower: bool = True):
    """Sigma s (arcsec, beam included) so that the extent contour spans ``extent``:
    ``s * (span_sigmas + sum of w over the two outer peaks)`` = extent (a single peak is both).

    If that is below the beam, s = beam and (with ``lower``) the amplitudes are lowered, not below
    ``floor``, so the contour still spans the extent. Returns (s, amps)."""
    amps = np.asarray(amps, dtype=float)
    sides = np.repeat(amps, 2) if amps.size == 1 else amps

    def width(f: float) -> float:
        return sum(_w(a * f, p) for a in sides)

    s = extent / (span_sigmas + width(1.0))
    if s >= p.beam_sigma:
        return s, amps
    s = p.beam_sigma
    if not lower:
        return s, amps
    target = extent / s - span_sigmas
    lo_f, hi_f = floor / amps.min(), 1.0
    if lo_f >= hi_f:
        return s, amps  # already at the floor
    if width(lo_f) >= target:
        return s, amps * lo_f  # cannot be that compact even at the floor: as faint as allowed
    for _ in range(40):  # bisection on the amplitude factor (the width is monotonic in it)
        mid = math.sqrt(lo_f * hi_f)
        if width(mid) > target:
            hi_f = mid
        else:
            lo_f = mid
    return s, amps * lo_f


def _sized(rng, n: int, floor: float, span_sigmas: float, extent: float, p: _Params, lower: bool = True):
    """Draw n peak brightnesses and their common along-axis sigma from the extent.

    A peak must not be so flat that the noise makes extra maxima on it: its curvature
    ``amp / s^2`` must be at least ``kappa`` times the noise's ``rms / beam_sigma^2``. Where it is
    not, the source-count draw is repeated with a higher lower limit (same quantile): broad, faint
    sources are not in the visually classified selection. Returns (s, amps)."""
    u, w = _flux_draw(rng, n, p)
    lo = floor
    s, amps = p.beam_sigma, _fluxes(u, w, lo, p)
    for _ in range(60):
        amps = _fluxes(u, w, lo, p)
        s, amps = _fit_extent(amps, span_sigmas, extent, p, floor, lower)
        if float(amps.min()) >= p.kappa * p.rms * (s / p.beam_sigma) ** 2 or lo >= p.peak_max:
            break
        lo *= 1.15
    return s, amps


def _lobe_sigma(rng, s_fit: float, amps: np.ndarray, D: float, p: _Params) -> float:
    """Along-axis sigma of separated lobes: the extent fit, or a drawn resolved size (a fraction of
    the component separation) if larger, kept sharp enough for the flatness rule."""
    s_draw = _total(rng.uniform(*p.lobe_fraction) * D * _FWHM_TO_SIGMA, p)
    s_flat = p.beam_sigma * math.sqrt(max(float(amps.min()) / (p.kappa * p.rms), 1.0))
    return max(p.beam_sigma, s_fit, min(s_draw, s_flat))


def _relative(rng, ref: float, floor: float, p: _Params) -> float:
    """A core brightness within a factor ``ratio_max`` of ``ref`` (and at least ``floor``)."""
    r = math.log(p.ratio_max)
    return max(floor, ref * math.exp(rng.uniform(-r, r)))


def _lobe(x, y, amp, s_along, theta, comp, rng, p) -> Blob:
    s_int = math.sqrt(max(s_along**2 - p.beam_sigma**2, 0.0))
    q = rng.uniform(*p.axis_ratio)
    return Blob(float(x), float(y), float(amp), float(s_along), _total(q * s_int, p), float(theta), comp)


def _core(x, y, amp, comp, rng, p) -> Blob:
    s = _total(rng.uniform(*p.core_sigma), p)
    return Blob(float(x), float(y), float(amp), s, s, 0.0, comp)


def _shrunk(b: Blob, f: float, p: _Params) -> Blob:
    def t(s):
        return _total(f * math.sqrt(max(s * s - p.beam_sigma**2, 0.0)), p)

    return Blob(b.x, b.y, b.amp, t(b.sa), t(b.sp), b.theta, b.comp)


def _separate(blobs: list[Blob], p: _Params, knobs: _Knobs, floor: float) -> list[Blob]:
    """Shrink, then dim, the blobs until every pair of different components is separated."""
    level = p.separate * knobs.sep_scale
    pairs = [(i, j) for i in range(len(blobs)) for j in range(i + 1, len(blobs)) if blobs[i].comp != blobs[j].comp]
    if not pairs:
        return blobs
    for _ in range(60):
        worst = max(_min_between(blobs, (), (blobs[i].x, blobs[i].y), (blobs[j].x, blobs[j].y)) for i, j in pairs)
        if worst <= level:
            break
        if any(max(b.sa, b.sp) > p.beam_sigma * 1.01 for b in blobs):
            blobs = [_shrunk(b, 0.8, p) for b in blobs]
        elif min(b.amp for b in blobs) * 0.85 >= floor:
            blobs = [Blob(b.x, b.y, b.amp * 0.85, b.sa, b.sp, b.theta, b.comp) for b in blobs]
        else:
            break
    return blobs


def _bridges(blobs: list[Blob], chains: list[tuple[int, int]], rng, p: _Params, knobs: _Knobs) -> list[Bridge]:
    """Add a bridge between each pair of peaks of one component so its saddle is a fraction of the
    fainter peak (and at least the connection level + 1 sigma)."""
    out: list[Bridge] = []
    for i, j in chains:
        bi, bj = blobs[i], blobs[j]
        frac = float(np.clip(rng.uniform(*p.saddle) + knobs.saddle_up, 0.2, 0.75))
        target = max(frac * min(bi.amp, bj.amp), p.connect + p.rms)
        s = max(p.beam_sigma, min(bi.sp, bj.sp) * rng.uniform(0.6, 0.9))
        m0 = _min_between(blobs, out, (bi.x, bi.y), (bj.x, bj.y))
        amp = max(target - m0, 0.0)
        for _ in range(2):  # refine: the bridge's own blurred ends move the minimum
            g = Bridge(bi.x, bi.y, bj.x, bj.y, amp, s, bi.comp)
            m1 = _min_between(blobs, [*out, g], (bi.x, bi.y), (bj.x, bj.y))
            amp = max(amp + (target - m1), 0.0)
        out.append(Bridge(bi.x, bi.y, bj.x, bj.y, amp, s, bi.comp))
    return out


def _layout(source: Source, rng: np.random.Generator, knobs: _Knobs, p: _Params):
    """Draw the blobs, bridges, peak chains and host position (arcsec from the centre) of a source."""
    E = float(source.ang_extent)
    pos = _offsets(source)
    nc, npk = source.num_cpnts, source.num_peaks
    ir = p.ir
    host_jitter = rng.normal(0.0, float(ir["host_jitter_arcsec"]), size=2)
    k_lo, k_hi = p.spacing[0] + knobs.dk, p.spacing[1] + knobs.dk
    chains: list[tuple[int, int]] = []

    if nc == 1:
        phi = rng.uniform(0.0, math.pi)
        u = np.array([math.cos(phi), math.sin(phi)])
        c = pos[0]
        host = c + host_jitter
        if npk == 1:
            s, amps = _sized(rng, 1, p.floor_single, 0.0, E, p)
            blobs = [_lobe(*c, amps[0], s, phi, 0, rng, p)]
        elif npk == 2:  # two lobes joined by a bridge, symmetric about the catalogue position
            k = float(rng.uniform(k_lo, k_hi))
            s, amps = _sized(rng, 2, p.floor_multi, k, E, p)
            blobs = [_lobe(*(c + sign * 0.5 * k * s * u), amps[n], s, phi, 0, rng, p) for n, sign in enumerate((-1, 1))]
            chains = [(0, 1)]
        else:  # 1C_3P: lobe - jet - core - jet - lobe; the catalogue position is the middle of the span
            k1, k2 = rng.uniform(k_lo, k_hi, size=2)
            s, lobes = _sized(rng, 2, p.floor_multi, float(k1 + k2), E, p)
            d1, d2 = k1 * s, k2 * s
            core_xy = c - 0.5 * (d2 - d1) * u
            core_amp = _relative(rng, float(lobes.min()), p.floor_multi, p)
            blobs = [
                _core(*core_xy, core_amp, 0, rng, p),
                _lobe(*(core_xy - d1 * u), lobes[0], s, phi, 0, rng, p),
                _lobe(*(core_xy + d2 * u), lobes[1], s, phi, 0, rng, p),
            ]
            chains = [(0, 1), (0, 2)]
            host = core_xy + host_jitter
    elif nc == 2:
        v01 = pos[1] - pos[0]
        D = float(np.hypot(*v01)) or 1e-6
        u = v01 / D
        phi = math.atan2(u[1], u[0])
        perp = np.array([-u[1], u[0]])
        if npk == 2:  # two separate lobes at the catalogue positions, the host between them
            s, amps = _sized(rng, 2, p.floor_single, 0.0, max(E - D, 0.0), p, lower=False)
            s = _lobe_sigma(rng, s, amps, D, p)
            blobs = [_lobe(*pos[n], amps[n], s, phi, n, rng, p) for n in range(2)]
            blobs = _separate(blobs, p, knobs, p.floor_single)
            f = float(ir["host_axis_jitter"])
            host = 0.5 * (pos[0] + pos[1]) + rng.uniform(-f, f) * D * u + host_jitter[1] * perp
        else:  # 2C_3P: one component is lobe + core (two peaks), the other a lobe
            j = int(rng.integers(2))  # the double component
            i = 1 - j
            out = (pos[j] - pos[i]) / D  # from the single lobe towards the double component
            s, lobes = _sized(rng, 2, p.floor_multi, 0.0, max(E - D, 0.0), p, lower=False)
            s = _lobe_sigma(rng, s, lobes, D, p)
            core_amp = _relative(rng, float(lobes.min()), p.floor_multi, p)
            d = float(rng.uniform(k_lo, k_hi)) * s
            if knobs.perpendicular or D - d < 2.0 * (s + p.beam_sigma) * 1.5:
                # too close for a core between the lobes: the double lobe has two hot spots side by side
                knobs.perpendicular = True
                a = np.array([-out[1], out[0]])
                blobs = [
                    _lobe(*(pos[j] - 0.5 * d * a), core_amp, s, phi, j, rng, p),
                    _lobe(*(pos[j] + 0.5 * d * a), lobes[0], s, phi, j, rng, p),
                ]
                host = 0.5 * (pos[0] + pos[1]) + host_jitter
            else:  # lobe at the catalogue position, core (the host) on the way to the other lobe
                core_xy = pos[j] - d * out
                blobs = [_core(*core_xy, core_amp, j, rng, p), _lobe(*pos[j], lobes[0], s, phi, j, rng, p)]
                host = core_xy + host_jitter
            blobs.append(_lobe(*pos[i], lobes[1], s, phi, i, rng, p))
            blobs = _separate(blobs, p, knobs, p.floor_single)
            chains = [(0, 1)]
    else:  # 3C_3P: the component between the two farthest apart is the core (and the host)
        dd = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1))
        a_i, b_i = (int(v) for v in np.unravel_index(int(dd.argmax()), dd.shape))
        core_i = ({0, 1, 2} - {a_i, b_i}).pop()
        D = float(dd.max()) or 1e-6
        s, lobes = _sized(rng, 2, p.floor_single, 0.0, max(E - D, 0.0), p, lower=False)
        s = _lobe_sigma(rng, s, lobes, D, p)
        core_amp = _relative(rng, float(lobes.min()), p.floor_single, p)
        blobs = [_core(*pos[core_i], core_amp, core_i, rng, p)]
        for n, li in enumerate((a_i, b_i)):
            r = pos[li] - pos[core_i]
            blobs.append(_lobe(*pos[li], lobes[n], s, math.atan2(r[1], r[0]), li, rng, p))
        blobs = _separate(blobs, p, knobs, p.floor_single)
        host = pos[core_i] + host_jitter

    bridges = _bridges(blobs, chains, rng, p, knobs)
    m = float(np.clip(rng.normal(float(ir["host_mag_mean"]), float(ir["host_mag_sd"])), *ir["host_mag_clip"]))
    return blobs, bridges, chains, (float(host[0]), float(host[1])), m


def _grid(blobs: Sequence[Blob], bridges: Sequence[Bridge], pix: float, phase: float = 0.0):
    xs = [b.x for b in blobs] + [g.x0 for g in bridges] + [g.x1 for g in bridges]
    ys = [b.y for b in blobs] + [g.y0 for g in bridges] + [g.y1 for g in bridges]
    r = 5.0 * max([max(b.sa, b.sp) for b in blobs] + [g.s for g in bridges])
    x = np.arange(min(xs) - r, max(xs) + r + pix, pix) + phase * pix
    y = np.arange(min(ys) - r, max(ys) + r + pix, pix) + phase * pix
    return np.meshgrid(x, y)


def _count(img: np.ndarray, level: float) -> int:
    return int(ndimage.label(img > level)[1])


def _maxima(img: np.ndarray, level: float, footprint: int = 3) -> int:
    peaks = (img == ndimage.maximum_filter(img, size=footprint, mode="constant", cval=-np.inf)) & (img > level)
    return int(peaks.sum())


def _check(source: Source, blobs, bridges, chains, p: _Params) -> tuple[int, dict]:
    """Failed checks of a drawn source (0 = all passed) and what failed."""
    nc, npk = source.num_cpnts, source.num_peaks
    what = {"merged": False, "broken": False, "peaks": False, "faint": False, "n_maxima": 0, "n_components": 0}
    for phase in (0.0, 0.5):
        X, Y = _grid(blobs, bridges, p.pix, phase)
        img = _eval(blobs, bridges, X, Y)
        if phase == 0.0:
            what["n_maxima"] = _maxima(img, 5.0 * p.rms)
            what["n_components"] = _count(img, 5.0 * p.rms)
        what["merged"] |= _count(img, p.separate) != nc
        what["broken"] |= _count(img, p.connect) != nc
        what["peaks"] |= _maxima(img, 5.0 * p.rms) != npk or _maxima(img, p.connect) != npk
    centre = [float(_eval(blobs, bridges, np.array(b.x), np.array(b.y))) for b in blobs]
    what["faint"] = min(centre) < p.connect
    for i, j in chains:  # a clear dip between the peaks of one component
        low = min(centre[i], centre[j])
        dip = _min_between(blobs, bridges, (blobs[i].x, blobs[i].y), (blobs[j].x, blobs[j].y))
        if dip > low - max(3.0 * p.rms, 0.2 * low):
            what["peaks"] = True
    fails = sum(bool(what[k]) for k in ("merged", "broken", "peaks", "faint"))
    return fails, what


@functools.lru_cache(maxsize=16384)
def source_model(source: Source, seed: int = 0) -> SourceModel:
    """Draw (and check) the emission of one catalogue source; cached.

    The random stream is ``default_rng([seed, crc32(source.subject), source.catalog_id])``. Up to
    ``max_attempts`` draws are made, each nudged towards what the previous one failed (wider
    peak spacing, deeper or shallower saddles, smaller/fainter lobes); the first draw passing every
    check is kept, else the one failing fewest.
    """
    p = _params()
    rng = np.random.default_rng([int(seed), _crc(source.subject), int(source.catalog_id)])
    knobs = _Knobs()
    best: tuple | None = None
    for attempt in range(1, p.max_attempts + 1):
        blobs, bridges, chains, host, mag = _layout(source, rng, knobs, p)
        fails, what = _check(source, blobs, bridges, chains, p)
        if best is None or fails < best[0]:
            best = (fails, blobs, bridges, host, mag, what, attempt)
        if fails == 0:
            break
        if what["merged"]:
            knobs.sep_scale *= 0.6
            knobs.perpendicular = knobs.perpendicular or attempt >= 2
        if what["broken"]:
            knobs.saddle_up += 0.08
        if what["peaks"]:
            knobs.dk += 0.5
            knobs.saddle_up -= 0.04
    fails, blobs, bridges, host, mag, what, attempt = best
    if fails:
        log.debug(
            "source %s (%s, subject %s): checks %s still fail after %d attempts",
            source.catalog_id,
            source.label,
            source.subject,
            what,
            p.max_attempts,
        )
    return SourceModel(
        source, tuple(blobs), tuple(bridges), host, mag, what["n_maxima"], what["n_components"], fails == 0, attempt
    )


# --------------------------------------------------------------------------------------------
# rendering onto a pixel grid (FITS orientation: x = column to the west, y = row to the north)


def _add_gaussian(img: np.ndarray, x0: float, y0: float, amp: float, sa: float, sp: float, th: float) -> None:
    r = _WINDOW * max(sa, sp)
    ny, nx = img.shape
    x_lo, x_hi = max(int(math.floor(x0 - r)), 0), min(int(math.ceil(x0 + r)) + 1, nx)
    y_lo, y_hi = max(int(math.floor(y0 - r)), 0), min(int(math.ceil(y0 + r)) + 1, ny)
    if x_lo >= x_hi or y_lo >= y_hi:
        return
    dx = np.arange(x_lo, x_hi) - x0
    dy = (np.arange(y_lo, y_hi) - y0)[:, None]
    c, s = math.cos(th), math.sin(th)
    a = (dx * c + dy * s) / sa
    q = (-dx * s + dy * c) / sp
    img[y_lo:y_hi, x_lo:x_hi] += amp * np.exp(-0.5 * (a * a + q * q))


def _add_bridge(img: np.ndarray, g: Bridge, to_px) -> None:
    (x0, y0), (x1, y1) = to_px(g.x0, g.y0), to_px(g.x1, g.y1)
    s = g.s / _params().pix
    r = _WINDOW * s
    ny, nx = img.shape
    x_lo, x_hi = max(int(math.floor(min(x0, x1) - r)), 0), min(int(math.ceil(max(x0, x1) + r)) + 1, nx)
    y_lo, y_hi = max(int(math.floor(min(y0, y1) - r)), 0), min(int(math.ceil(max(y0, y1) + r)) + 1, ny)
    if x_lo >= x_hi or y_lo >= y_hi or g.amp <= 0:
        return
    X, Y = np.meshgrid(np.arange(x_lo, x_hi, dtype=float), np.arange(y_lo, y_hi, dtype=float))
    img[y_lo:y_hi, x_lo:x_hi] += _bridge_profile(Bridge(x0, y0, x1, y1, g.amp, s, g.comp), X, Y)


def _centre_px(wcs, ra: float, dec: float) -> tuple[float, float]:
    x, y = wcs.wcs_world2pix(np.array([[ra, dec]]), 0)[0]
    return float(x), float(y)


def _render_radio_source(img: np.ndarray, model: SourceModel, wcs) -> None:
    pix = _params().pix
    cx, cy = _centre_px(wcs, *model.source.centre)

    def to_px(x, y):  # east is -x (left), north is +y (up)
        return cx - x / pix, cy + y / pix

    for b in model.blobs:
        px, py = to_px(b.x, b.y)
        _add_gaussian(img, px, py, b.amp, b.sa / pix, b.sp / pix, math.pi - b.theta)
    for g in model.bridges:
        _add_bridge(img, g, to_px)


@functools.lru_cache(maxsize=8)
def _noise_norm(kernel_px: float) -> float:
    """Std of unit white noise after ``gaussian_filter(sigma=kernel_px)`` (exact, discrete)."""
    n = 2 * int(math.ceil(4.0 * kernel_px)) + 9
    delta = np.zeros(n)
    delta[n // 2] = 1.0
    k = ndimage.gaussian_filter1d(delta, kernel_px)
    return float(np.sum(k * k))  # 2-D separable: sqrt((sum k^2)^2)


def _correlated_noise(rng: np.random.Generator, shape, kernel_px: float, rms: float) -> np.ndarray:
    white = rng.standard_normal(shape)
    return ndimage.gaussian_filter(white, kernel_px, mode="wrap") * (rms / _noise_norm(kernel_px))


@functools.lru_cache(maxsize=8)
def _ir_pixel_rms(psf_px: float, kernel_px: float, flux_5sigma: float) -> float:
    """Pixel rms (DN) that gives a PSF-fit flux error of ``flux_5sigma / 5`` for a point source.

    The PSF-fit estimate F = sum(P d) / sum(P^2) of noise with pixel rms r, correlated by the
    kernel K, has error r * sqrt(sum((P*K)^2) / sum(K^2)) / sum(P^2) (P, K unit-sum Gaussians).
    """
    n = 2 * int(math.ceil(5.0 * (psf_px + kernel_px))) + 1
    delta = np.zeros((n, n))
    delta[n // 2, n // 2] = 1.0
    P = ndimage.gaussian_filter(delta, psf_px)
    PK = ndimage.gaussian_filter(P, kernel_px)
    K2 = _noise_norm(kernel_px) ** 2
    return float(flux_5sigma / 5.0 * np.sum(P * P) / math.sqrt(np.sum(PK * PK) / K2))


def _mag_to_dn(mag, ir: dict):
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - float(ir["magzp"])))


# --------------------------------------------------------------------------------------------
# fields


@dataclass
class RenderedSubject:
    """A rendered subject (or larger field).

    Attributes
    ----------
    name : subject name (FIRST designation)
    radio : (size, size) float32, Jy/beam, FITS orientation (row 0 = south/bottom)
    ir : (size, size) float32, DN (W1, MAGZP 20.5), same grid
    header : astropy.io.fits.Header with the field's celestial WCS
    n_maxima : per rendered source, the maxima above 5σ of its noiseless model (= ``num_peaks``
        when the source passed its checks)
    n_components, sources, hosts (RA, Dec deg), host_mags (W1), ok : per rendered source
    rms : radio noise rms of this field, Jy/beam; ir_rms : IR pixel noise rms, DN
    n_background : unrelated FIRST sources added (15′ fields only)
    """

    name: str
    radio: np.ndarray
    ir: np.ndarray
    header: fits.Header
    n_maxima: list[int]
    n_components: list[int] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    hosts: list[tuple[float, float]] = field(default_factory=list)
    host_mags: list[float] = field(default_factory=list)
    ok: list[bool] = field(default_factory=list)
    rms: float = 0.0
    ir_rms: float = 0.0
    n_background: int = 0
    seed: int = 0


_INDEX: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _catalogue_index(catalogue: rgz.RGZCatalogue) -> tuple[np.ndarray, np.ndarray]:
    idx = _INDEX.get(catalogue)
    if idx is None:
        idx = (np.array([s.ra for s in catalogue.subjects]), np.array([s.dec for s in catalogue.subjects]))
        _INDEX[catalogue] = idx
    return idx


def _field_sources(subject: Subject, catalogue, wcs, size: int, p: _Params) -> list[Source]:
    """The subject's own sources, then catalogue sources of other subjects inside the field
    (a source listed by several overlapping subjects is taken once)."""
    chosen = list(subject.sources)
    if catalogue is None:
        return chosen
    ra, dec = _catalogue_index(catalogue)
    half = 0.5 * size * p.pix
    radius = (math.sqrt(2.0) * half + 200.0) / 3600.0
    dra = ((ra - subject.ra + 180.0) % 360.0 - 180.0) * math.cos(math.radians(subject.dec))
    near = np.flatnonzero(np.hypot(dra, dec - subject.dec) < radius)
    centres = [s.centre for s in chosen]
    extents = [s.ang_extent for s in chosen]
    for k in near:
        other = catalogue.subjects[int(k)]
        if other.name == subject.name:
            continue
        for src in other.sources:
            x, y = _centre_px(wcs, *src.centre)
            margin = 0.5 * src.ang_extent / p.pix
            if not (-margin <= x <= size - 1 + margin and -margin <= y <= size - 1 + margin):
                continue
            ra_c, dec_c = src.centre
            dup = False
            for (ra2, dec2), e2 in zip(centres, extents):
                d = math.hypot(((ra_c - ra2 + 180) % 360 - 180) * math.cos(math.radians(dec_c)), dec_c - dec2) * 3600
                if d < max(5.0, 0.4 * max(src.ang_extent, e2)):
                    dup = True
                    break
            if not dup:
                chosen.append(src)
                centres.append(src.centre)
                extents.append(src.ang_extent)
    return chosen


def _background_sources(subject: Subject, rng, wcs, size: int, taken: list[Source], p: _Params) -> list[Source]:
    """Unrelated compact FIRST sources (FIRST density) outside the central subject area."""
    area_deg2 = (size * p.pix / 3600.0) ** 2
    n = int(rng.poisson(p.bg_density * area_deg2))
    centre = 0.5 * (size - 1)
    half_subject = 0.5 * p.size
    out: list[Source] = []
    taken_px = [(_centre_px(wcs, *s.centre), 0.5 * s.ang_extent / p.pix) for s in taken]
    for i in range(n):
        x, y = rng.uniform(-0.5, size - 0.5, size=2)
        ext = float(np.exp(rng.uniform(math.log(p.bg_extent[0]), math.log(p.bg_extent[1]))))
        if abs(x - centre) < half_subject + 10 and abs(y - centre) < half_subject + 10:
            continue
        if any(math.hypot(x - tx, y - ty) < r + 25.0 / p.pix for (tx, ty), r in taken_px):
            continue
        ra, dec = (float(v) for v in wcs.wcs_pix2world(np.array([[x, y]]), 0)[0])
        out.append(Source(10**9 + i, f"{subject.name}:background", 1, 1, (ra,), (dec,), ext, 1.0, False))
    return out


def _render_field(
    subject: Subject, *, seed: int, size: int, catalogue, background: bool, stream: int | None
) -> RenderedSubject:
    p = _params()
    ir = p.ir
    wcs = rgz.subject_wcs(subject, size=size, pixel_arcsec=p.pix)
    header = wcs.to_header()
    key = [int(seed), _crc(subject.name)] + ([] if stream is None else [int(stream)])
    rng = np.random.default_rng(key)

    sources = _field_sources(subject, catalogue, wcs, size, p)
    extra = _background_sources(subject, rng, wcs, size, sources, p) if background else []
    models = [source_model(s, seed) for s in sources]
    bg_models = [source_model(s, seed) for s in extra]

    # radio
    radio = np.zeros((size, size), dtype=np.float64)
    for m in models + bg_models:
        _render_radio_source(radio, m, wcs)
    rms = float(np.clip(p.rms * math.exp(rng.normal(0.0, p.rms_ln_scatter)), *p.rms_clip))
    radio += _correlated_noise(rng, radio.shape, p.noise_kernel_px, rms)

    # infrared: pedestal + gradient, unrelated sources, hosts, noise
    psf = float(ir["psf_fwhm_arcsec"]) * _FWHM_TO_SIGMA / p.pix  # px
    img = np.full((size, size), rng.uniform(*ir["sky_dn"]))
    gx, gy = rng.uniform(-1.0, 1.0, size=2) * float(ir["gradient_dn"])
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1) - 0.5
    img += gx * xx + gy * yy
    area = (size * p.pix / 60.0) ** 2  # arcmin^2
    slope, m_ref = float(ir["field_count_slope"]), float(ir["field_density_mag"])
    m_lo, m_hi = (float(v) for v in ir["field_mag_range"])
    c_lo, c_hi = 10.0 ** (slope * (m_lo - m_ref)), 10.0 ** (slope * (m_hi - m_ref))
    n_field = int(rng.poisson(float(ir["field_density_arcmin2"]) * (c_hi - c_lo) * area))
    mags = m_ref + np.log10(c_lo + rng.random(n_field) * (c_hi - c_lo)) / slope
    fx, fy = rng.uniform(-0.5, size - 0.5, size=(2, n_field))
    is_gal = rng.random(n_field) < float(ir["field_galaxy_fraction"])
    gsize = rng.uniform(*ir["galaxy_size_arcsec"], size=n_field) / p.pix
    q = rng.uniform(0.4, 1.0, size=n_field)
    th = rng.uniform(0.0, math.pi, size=n_field)
    for k in range(n_field):
        sa = math.hypot(psf, gsize[k]) if is_gal[k] else psf
        sp = math.hypot(psf, q[k] * gsize[k]) if is_gal[k] else psf
        flux = float(_mag_to_dn(mags[k], ir))
        _add_gaussian(img, fx[k], fy[k], flux / (2 * math.pi * sa * sp), sa, sp, th[k])
    hosts, host_mags = [], []
    h_lo, h_hi = (float(v) for v in ir["host_size_arcsec"])
    for n, m in enumerate(models + bg_models):
        ra_c, dec_c = m.source.centre
        hra = ra_c + m.host[0] / 3600.0 / math.cos(math.radians(dec_c))
        hdec = dec_c + m.host[1] / 3600.0
        x, y = _centre_px(wcs, hra, hdec)
        # brighter (nearer) hosts are more extended
        extra_s = (h_lo + (h_hi - h_lo) * float(np.clip((17.5 - m.host_mag) / 5.0, 0.0, 1.0))) / p.pix
        s = math.hypot(psf, extra_s)
        _add_gaussian(img, x, y, float(_mag_to_dn(m.host_mag, ir)) / (2 * math.pi * s * s), s, s, 0.0)
        if n < len(models):
            hosts.append((hra % 360.0, hdec))
            host_mags.append(m.host_mag)
    ir_rms = _ir_pixel_rms(psf, float(ir["noise_kernel_px"]), float(_mag_to_dn(float(ir["depth_5sigma_mag"]), ir)))
    img += _correlated_noise(rng, img.shape, float(ir["noise_kernel_px"]), ir_rms)

    return RenderedSubject(
        name=subject.name,
        radio=radio.astype(np.float32),
        ir=img.astype(np.float32),
        header=header,
        n_maxima=[m.n_maxima for m in models],
        n_components=[m.n_components for m in models],
        sources=list(sources),
        hosts=hosts,
        host_mags=host_mags,
        ok=[m.ok for m in models],
        rms=rms,
        ir_rms=ir_rms,
        n_background=len(extra),
        seed=int(seed),
    )


def render_subject(subject: Subject, *, seed: int = 0, size: int = 132, catalogue=None) -> RenderedSubject:
    """Render the FIRST and WISE W1 images of one RGZ subject.

    Parameters
    ----------
    subject
        A catalogue subject (:class:`keras_astro.io.rgz.Subject`).
    seed
        Global seed; the result depends only on it and the subject (and the sources drawn).
    size
        Image side in pixels (1.375″ each), centred on the subject (default 132 = 3′).
    catalogue
        If given, sources of *other* subjects whose emission falls in the field are drawn too
        (as the real sky would show them; they are not in this subject's labels). Default: only the
        subject's own sources, which are exactly its labelled sources.

    Returns
    -------
    RenderedSubject
    """
    return _render_field(subject, seed=seed, size=int(size), catalogue=catalogue, background=False, stream=None)


def render_large_field(
    subject: Subject, catalogue: rgz.RGZCatalogue, *, factor: int = 5, seed: int = 0, background: bool = True
) -> RenderedSubject:
    """Render a ``factor``× larger field (Sec 6.2.1: 5× = 15′, 660 × 660 px) around a subject.

    It holds the subject's sources, every catalogue source of other subjects inside the field
    (``RenderedSubject.sources`` lists them, own first) and, with ``background``, unrelated compact
    FIRST sources at the FIRST source density outside the central subject area.
    """
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    size = _params().size * int(factor)
    return _render_field(subject, seed=seed, size=size, catalogue=catalogue, background=background, stream=int(factor))


# --------------------------------------------------------------------------------------------
# files


def _file_headers(rendered: RenderedSubject) -> tuple[dict, dict]:
    p = _params()
    ir = p.ir
    common = {
        "OBJECT": rendered.name,
        "SIMULAT": (True, "simulated by keras_astro.simulate.radio"),
        "SIMVER": (SIM_VERSION, "keras_astro radio simulator version"),
        "SIMSEED": (int(rendered.seed), "simulator seed"),
        "ORIGIN": "keras_astro",
    }
    beam_deg = p.beam_sigma / _FWHM_TO_SIGMA / 3600.0
    radio = {
        **common,
        "TELESCOP": "VLA",
        "BMAJ": (beam_deg, "[deg] restoring beam FWHM"),
        "BMIN": (beam_deg, "[deg] restoring beam FWHM"),
        "BPA": (0.0, "[deg]"),
        "SIMRMS": (rendered.rms, "[Jy/beam] simulated noise rms"),
    }
    irh = {
        **common,
        "TELESCOP": "WISE",
        "MAGZP": (float(ir["magzp"]), "[mag] Vega mag of 1 DN"),
        "PSFFWHM": (float(ir["psf_fwhm_arcsec"]), "[arcsec] simulated PSF FWHM"),
        "SIMRMS": (rendered.ir_rms, "[DN] simulated pixel noise rms"),
    }
    return radio, irh


def _is_current(path: Path, seed: int) -> bool:
    """An existing file is kept if it is real (not simulated) or this simulator's with this seed."""
    if not path.exists():
        return False
    try:
        hdr = fits.getheader(path)
    except Exception as exc:  # any unreadable file is re-rendered
        log.warning("%s is unreadable (%s); rendering it again", path, exc)
        return False
    if not hdr.get("SIMULAT", False):
        return True
    return hdr.get("SIMVER") == SIM_VERSION and hdr.get("SIMSEED") == int(seed)


def write_subject_fits(subject: Subject, out_dir: str | os.PathLike, *, seed: int = 0) -> tuple[Path, Path]:
    """Render one subject and write ``out_dir/<NAME>_radio.fits`` and ``<NAME>_ir.fits``.

    The layout is :func:`keras_astro.io.skyview.write_cutout`'s (float32 primary HDU, WCS,
    ``BUNIT``, ``SURVEY``) plus ``SIMULAT``/``SIMVER``/``SIMSEED``. Files are written atomically.
    Existing files are kept when they are real cutouts or were simulated by this ``SIM_VERSION``
    with this ``seed``; stale simulated files are replaced.
    """
    out = Path(out_dir)
    radio_path, ir_path = skyview.cutout_paths(subject, out)
    need_radio, need_ir = not _is_current(radio_path, seed), not _is_current(ir_path, seed)
    if not (need_radio or need_ir):
        return radio_path, ir_path
    p = _params()
    r = render_subject(subject, seed=seed)
    h_radio, h_ir = _file_headers(r)
    if need_radio:
        skyview.write_cutout(
            radio_path,
            r.radio,
            r.header,
            survey=p.radio_survey,
            bunit=skyview.SURVEY_UNITS[p.radio_survey],
            extra=h_radio,
        )
    if need_ir:
        skyview.write_cutout(
            ir_path, r.ir, r.header, survey=p.ir_survey, bunit=skyview.SURVEY_UNITS[p.ir_survey], extra=h_ir
        )
    return radio_path, ir_path


def _write_chunk(args) -> list[tuple[str, tuple[Path, Path]]]:
    subjects, out_dir, seed = args
    return [(s.name, write_subject_fits(s, out_dir, seed=seed)) for s in subjects]


def ensure_images(
    subjects: Iterable[Subject],
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    progress: bool = False,
    workers: int = 1,
) -> dict[str, tuple[Path, Path]]:
    """Make sure every subject has its simulated (or real) radio and IR files in ``out_dir``.

    Missing or stale files are rendered (:func:`write_subject_fits`); valid ones are kept.
    ``workers`` > 1 renders in that many processes. Returns ``{name: (radio_path, ir_path)}``
    in the order of ``subjects``.
    """
    subjects = list(subjects)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, tuple[Path, Path]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(subjects), desc="simulating FIRST/WISE", unit="subject")
    if workers <= 1 or len(subjects) < 2 * workers:
        for s in subjects:
            result[s.name] = write_subject_fits(s, out, seed=seed)
            if bar is not None:
                bar.update(1)
    else:
        chunk = max(1, min(64, len(subjects) // (4 * workers)))
        chunks = [(subjects[i : i + chunk], out, seed) for i in range(0, len(subjects), chunk)]
        ctx = multiprocessing.get_context("spawn")  # safe with TensorFlow loaded in the parent
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx) as pool:
            for done in pool.map(_write_chunk, chunks):
                for name, paths in done:
                    result[name] = paths
                if bar is not None:
                    bar.update(len(done))
    if bar is not None:
        bar.close()
    return {s.name: result[s.name] for s in subjects}


def describe_model(model: SourceModel) -> dict[str, Any]:
    """A plain summary of a source model (for notebooks and debugging)."""
    return {
        "catalog_id": model.source.catalog_id,
        "label": model.source.label,
        "ok": model.ok,
        "attempts": model.attempts,
        "n_maxima": model.n_maxima,
        "n_components": model.n_components,
        "peaks_mjy": [round(b.amp * 1e3, 3) for b in model.blobs],
        "bridges_mjy": [round(g.amp * 1e3, 3) for g in model.bridges],
        "host_offset_arcsec": model.host,
        "host_w1": round(model.host_mag, 2),
    }
