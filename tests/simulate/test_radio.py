"""Tests of the FIRST/WISE field simulator (keras_astro.simulate.radio).

The central test measures the simulator's *own output* the way an astronomer would: 5σ islands
(σ = MAD / 0.6745 of the radio image, ``scipy.ndimage.label``) and local maxima above 5σ
(``scipy.ndimage.maximum_filter``) in each source's Sec 3.3 box, compared with the class.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from keras_astro.io import rgz, skyview
from keras_astro.simulate import radio

log = logging.getLogger(__name__)

SIZE = 132
PIX = 1.375  # arcsec, data_specs/rgz.yaml
BEAM_PX = 5.0 / PIX  # FIRST beam FWHM in pixels


@pytest.fixture(scope="module")
def catalogue() -> rgz.RGZCatalogue:
    return rgz.load_catalogue()


@pytest.fixture(scope="module")
def sample(catalogue):
    """20 subjects per class (by their first source), rendered once."""
    subjects = catalogue.stratified_subset(20, seed=0)
    return [(s, radio.render_subject(s, seed=0)) for s in subjects]


def mad_sigma(img: np.ndarray) -> float:
    return float(np.median(np.abs(img - np.median(img))) / 0.6745)


def region_mask(subject, source, size: int = SIZE, margin: float = 2.5) -> np.ndarray:
    """Pixels (FITS orientation) inside the source's box grown by ``margin`` px, plus discs of one
    beam FWHM around its catalogue component positions.

    The box has a top-left origin in continuous coordinates (pixel i spans [i, i+1]); FITS row r
    (row 0 at the bottom) spans PNG y in [size - r - 1, size - r].
    """
    x1, y1, x2, y2 = rgz.source_box(subject, source, size=size)
    centres = np.arange(size) + 0.5
    cols = (centres >= x1 - margin) & (centres <= x2 + margin)
    png_y = size - centres  # PNG y of the centre of FITS row r
    rows = (png_y >= y1 - margin) & (png_y <= y2 + margin)
    mask = rows[:, None] & cols[None, :]
    px, py = rgz.sky_to_pixel(subject, np.array(source.ras), np.array(source.decs), size=size)
    yy, xx = np.mgrid[0:size, 0:size]
    for x, y in zip(px, py):  # PNG continuous -> FITS pixel indices
        mask |= np.hypot(xx - (x - 0.5), yy - (size - y - 0.5)) <= BEAM_PX
    return mask


def measure(img: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    """(components, maxima) at 5σ inside ``mask``: islands touching it, maxima lying in it."""
    sigma = mad_sigma(img)
    labels, _ = ndimage.label(img > 5 * sigma)
    is_max = (img == ndimage.maximum_filter(img, size=3, mode="constant", cval=-np.inf)) & (img > 5 * sigma)
    return len(np.unique(labels[mask & (labels > 0)])), int((is_max & mask).sum())


# ------------------------------------------------------------------------------------------
# the morphology test of the issue


def test_components_and_peaks_match_the_class(sample):
    per_class: dict[str, list[tuple[bool, bool]]] = {}
    single: list[tuple[bool, bool]] = []
    for subject, r in sample:
        for src in subject.sources:
            n_comp, n_max = measure(r.radio, region_mask(subject, src))
            hit = (n_comp == src.num_cpnts, n_max == src.num_peaks)
            per_class.setdefault(src.label, []).append(hit)
            if len(subject.sources) == 1:
                single.append(hit)
    allhits = np.array([h for hits in per_class.values() for h in hits])
    comp_frac, peak_frac = allhits.mean(axis=0)
    table = {k: tuple(round(float(f), 3) for f in np.mean(v, axis=0)) for k, v in sorted(per_class.items())}
    single_frac = np.mean(single, axis=0)
    msg = (
        f"measured on {len(allhits)} sources: components {comp_frac:.3f}, peaks {peak_frac:.3f}; "
        f"single-source subjects {single_frac.round(3).tolist()}; per class (components, peaks) {table}"
    )
    print(msg)  # noqa: T201 - reported with pytest -s
    log.info(msg)
    # measured: 0.992 / 1.000 here (seed 0); 0.99-1.00 / 0.99-1.00 for seeds 1-3 and on 1,284 sources
    # (200 per class). Misses are neighbouring sources reaching into a box and 2C/3C sources too
    # compact for their components to be separated at the beam.
    assert comp_frac >= 0.95, msg
    assert peak_frac >= 0.95, msg
    for label, (c, p) in table.items():
        assert c >= 0.85 and p >= 0.85, f"{label}: {msg}"


def test_placed_maxima_are_the_class(sample):
    """The noiseless models carry num_peaks maxima and num_cpnts components for almost every source."""
    models = [radio.source_model(s, 0) for subject, _ in sample for s in subject.sources]
    ok = np.mean([m.ok for m in models])
    n_max = np.mean([m.n_maxima == m.source.num_peaks for m in models])
    n_comp = np.mean([m.n_components == m.source.num_cpnts for m in models])
    assert ok >= 0.95 and n_max >= 0.97 and n_comp >= 0.97, (ok, n_max, n_comp)
    for subject, r in sample:
        assert len(r.n_maxima) == len(subject.sources) == len(r.sources) == len(r.hosts)
        assert r.n_maxima == [radio.source_model(s, 0).n_maxima for s in subject.sources]


def test_flux_distribution(sample):
    peaks = np.array([b.amp for subject, _ in sample for s in subject.sources for b in radio.source_model(s, 0).blobs])
    assert peaks.min() >= 1e-3 - 1e-9  # FIRST catalogue limit, Jy/beam
    assert peaks.max() <= 1.0 + 1e-9
    assert np.mean(peaks > 5 * 0.15e-3) == 1.0
    assert 2e-3 < np.median(peaks) < 50e-3  # mJy-level sources, a tail to hundreds of mJy
    assert np.mean(peaks > 20e-3) > 0.05


# ------------------------------------------------------------------------------------------
# determinism


def test_deterministic_and_subset_independent(catalogue):
    a, b = catalogue.subjects[10], catalogue.subjects[2000]
    first = radio.render_subject(a, seed=3)
    radio.render_subject(b, seed=3)  # render something else in between
    radio.source_model.cache_clear()  # and forget every cached source
    again = radio.render_subject(a, seed=3)
    np.testing.assert_array_equal(first.radio, again.radio)
    np.testing.assert_array_equal(first.ir, again.ir)
    assert first.n_maxima == again.n_maxima and first.hosts == again.hosts
    other = radio.render_subject(a, seed=4)
    assert not np.array_equal(first.radio, other.radio)
    assert first.radio.dtype == np.float32 and first.ir.dtype == np.float32
    assert first.radio.shape == first.ir.shape == (SIZE, SIZE)


# ------------------------------------------------------------------------------------------
# geometry, noise and the IR host


def test_fits_wcs_round_trip(catalogue, tmp_path):
    """The flux-weighted centroid of a compact source sits at the WCS pixel of its position."""
    picks = [s for s in catalogue.subjects if len(s.sources) == 1 and s.sources[0].label == "1C_1P"][:8]
    for subject in picks:
        radio_path, ir_path = radio.write_subject_fits(subject, tmp_path)
        image, header = skyview.read_cutout(radio_path, subject=subject.name)
        w = WCS(header)
        assert header["CTYPE1"] == "RA---SIN" and header["CDELT2"] * 3600 == pytest.approx(PIX)
        assert header["NAXIS1"] == header["NAXIS2"] == SIZE
        x, y = w.wcs_world2pix([list(subject.sources[0].centre)], 0)[0]
        sigma = mad_sigma(image)
        labels, _ = ndimage.label(image > 5 * sigma)
        lab = labels[int(round(y)), int(round(x))]
        assert lab > 0
        yy, xx = np.nonzero(labels == lab)
        wts = image[yy, xx] - 5 * sigma
        cx, cy = np.sum(xx * wts) / wts.sum(), np.sum(yy * wts) / wts.sum()
        assert math.hypot(cx - x, cy - y) < 0.6, (subject.name, cx, cy, x, y)
        # the same pixel in PNG (top-left) coordinates is what io.rgz.sky_to_pixel gives
        px, py = rgz.sky_to_pixel(subject, *subject.sources[0].centre)
        assert px[0] - 0.5 == pytest.approx(x, abs=1e-6) and SIZE - py[0] - 0.5 == pytest.approx(y, abs=1e-6)
        ir, ir_header = skyview.read_cutout(ir_path)
        assert WCS(ir_header).wcs.compare(w.wcs)


def test_noise_rms_and_correlation(sample):
    rms, lag1, lag3 = [], [], []
    for subject, r in sample[:40]:
        free = np.ones((SIZE, SIZE), bool)
        for src in subject.sources:
            free &= ~ndimage.binary_dilation(region_mask(subject, src, margin=12.0), iterations=6)
        free &= np.abs(r.radio) < 8 * r.rms  # and any bright wing
        if free.sum() < 3000:
            continue
        vals = r.radio[free]
        rms.append(vals.std())
        assert vals.std() == pytest.approx(r.rms, rel=0.1)
        both = free[:, 1:] & free[:, :-1]
        lag1.append(np.corrcoef(r.radio[:, 1:][both], r.radio[:, :-1][both])[0, 1])
        both3 = free[:, 3:] & free[:, :-3]
        lag3.append(np.corrcoef(r.radio[:, 3:][both3], r.radio[:, :-3][both3])[0, 1])
    assert len(rms) >= 20
    assert np.mean(rms) == pytest.approx(0.15e-3, rel=0.08)
    assert 0.12e-3 <= min(rms) and max(rms) <= 0.21e-3
    # beam-correlated noise: autocorrelation Gaussian with the beam's FWHM (sigma 1.54 px)
    s = BEAM_PX / (2 * math.sqrt(2 * math.log(2)))
    assert np.mean(lag1) == pytest.approx(math.exp(-1 / (2 * s * s)), abs=0.05)
    assert np.mean(lag3) == pytest.approx(math.exp(-9 / (2 * s * s)), abs=0.05)


def _axis(src):
    ra_c, dec_c = src.centre
    pos = np.stack(
        [
            ((np.array(src.ras) - ra_c + 180) % 360 - 180) * math.cos(math.radians(dec_c)) * 3600,
            (np.array(src.decs) - dec_c) * 3600,
        ],
        axis=1,
    )
    return pos


def test_host_galaxy_positions(sample):
    checked = {label: 0 for label in rgz.class_names()}
    for subject, r in sample:
        for src, (hra, hdec) in zip(subject.sources, r.hosts):
            ra_c, dec_c = src.centre
            h = np.array(
                [((hra - ra_c + 180) % 360 - 180) * math.cos(math.radians(dec_c)) * 3600, (hdec - dec_c) * 3600]
            )
            pos = _axis(src)
            model = radio.source_model(src, 0)
            if src.num_cpnts == 1:
                if src.num_peaks == 3:  # on the core (the first blob), itself near the source centre
                    core = np.array([model.blobs[0].x, model.blobs[0].y])
                    assert np.hypot(*(h - core)) < 4.5
                else:
                    assert np.hypot(*(h - pos[0])) < 4.5, src
            elif src.num_cpnts == 2:  # between the two components, near their axis
                d = pos[1] - pos[0]
                t = float((h - pos[0]) @ d / (d @ d))
                off = abs(float(np.cross(d, h - pos[0]))) / np.hypot(*d)
                assert 0.0 < t < 1.0 and off < 4.5 + 0.5 * model.blobs[0].sa * (src.num_peaks == 3), (src, t, off)
                if src.num_peaks == 2:
                    assert 0.3 < t < 0.7
            else:  # on the middle component (the core)
                dd = np.hypot(*(pos[:, None] - pos[None]).transpose(2, 0, 1))
                i, j = np.unravel_index(dd.argmax(), dd.shape)
                core = pos[3 - i - j]
                assert np.hypot(*(h - core)) < 4.5
            checked[src.label] += 1
    assert all(n >= 15 for n in checked.values()), checked


def test_bright_host_is_visible_in_ir(sample):
    seen = []
    for _, r in sample:
        w = WCS(r.header)
        for (hra, hdec), mag in zip(r.hosts, r.host_mags):
            if mag > 15.0:
                continue
            x, y = w.wcs_world2pix([[hra, hdec]], 0)[0]
            ix, iy = int(round(x)), int(round(y))
            if not (3 <= ix < SIZE - 3 and 3 <= iy < SIZE - 3):
                continue
            sky = np.median(r.ir)
            seen.append(r.ir[iy - 1 : iy + 2, ix - 1 : ix + 2].max() - sky > 5 * r.ir_rms)
    assert len(seen) >= 20 and np.mean(seen) == 1.0


def test_ir_field_sources_density(sample):
    """A few unrelated W1 sources per arcmin² to the AllWISE 5σ depth (W1 ≈ 16.9): count 5σ peaks
    of the PSF-matched-filtered image, less the hosts."""
    psf = 6.1 / (2 * math.sqrt(2 * math.log(2))) / PIX
    counts = []
    for _, r in sample[:30]:
        img = ndimage.gaussian_filter(r.ir, psf)
        thr = np.median(img) + 5 * mad_sigma(img)
        peaks = (img == ndimage.maximum_filter(img, size=5)) & (img > thr)
        counts.append(peaks.sum() - len(r.hosts))
    per_arcmin2 = np.mean(counts) / (SIZE * PIX / 60) ** 2
    assert 1.0 < per_arcmin2 < 4.0, per_arcmin2


# ------------------------------------------------------------------------------------------
# the 15' fields of Sec 6.2.1


def test_large_field_has_size_and_neighbours(catalogue):
    subject = catalogue["FIRSTJ001432.7+120521"]
    neighbour = catalogue["FIRSTJ001433.6+120803"]  # 2.7' north
    r = radio.render_large_field(subject, catalogue, seed=0)
    assert r.radio.shape == r.ir.shape == (660, 660)
    w = WCS(r.header)
    assert r.header["CRPIX1"] == pytest.approx(330.5) and r.header["CRVAL1"] == pytest.approx(subject.ra)
    corners = w.wcs_pix2world([[-0.5, -0.5], [659.5, 659.5]], 0)
    assert abs(corners[1, 1] - corners[0, 1]) * 60 == pytest.approx(15.125, abs=0.01)  # 5 x 3.025'
    assert r.sources[: len(subject.sources)] == list(subject.sources)
    assert set(neighbour.sources) <= set(r.sources)
    sigma = mad_sigma(r.radio)
    for src in neighbour.sources:  # the neighbour's emission is there
        for ra, dec in zip(src.ras, src.decs):
            x, y = w.wcs_world2pix([[ra, dec]], 0)[0]
            ix, iy = int(round(x)), int(round(y))
            assert r.radio[iy - 2 : iy + 3, ix - 2 : ix + 3].max() > 5 * sigma
    assert len(r.n_maxima) == len(r.sources) and r.n_background >= 0
    # the subject's own sources look the same as in its 3' rendering (up to the noise)
    small = radio.render_subject(subject, seed=0)
    for src in subject.sources:
        x, y = w.wcs_world2pix([list(src.centre)], 0)[0]
        xs, ys = WCS(small.header).wcs_world2pix([list(src.centre)], 0)[0]
        big_val = r.radio[int(round(y)), int(round(x))]
        small_val = small.radio[int(round(ys)), int(round(xs))]
        assert abs(big_val - small_val) < 8 * 0.2e-3
    # unrelated FIRST-density sources only outside the central subject
    again = radio.render_large_field(subject, catalogue, seed=0, background=False)
    assert again.n_background == 0
    diff = np.abs(r.radio - again.radio) > 1e-9
    c = slice(330 - 66, 330 + 66)
    assert r.n_background == 0 or diff.any()
    # without background the fields differ only by noise realisation: the centre has no extra source
    assert r.radio[c, c].max() == pytest.approx(again.radio[c, c].max(), rel=0.05)


def test_render_subject_with_catalogue_adds_neighbours(catalogue):
    subject = catalogue["FIRSTJ001432.7+120521"]
    own = radio.render_subject(subject)
    assert own.sources == list(subject.sources)
    big = radio.render_subject(subject, size=400, catalogue=catalogue)
    assert big.radio.shape == (400, 400) and len(big.sources) > len(subject.sources)


# ------------------------------------------------------------------------------------------
# files


def test_write_subject_fits_layout_and_skips(catalogue, tmp_path):
    subject = catalogue.subjects[5]
    radio_path, ir_path = radio.write_subject_fits(subject, tmp_path, seed=2)
    assert radio_path.name == f"{subject.name}_radio.fits" and ir_path.name == f"{subject.name}_ir.fits"
    assert (radio_path, ir_path) == skyview.cutout_paths(subject, tmp_path)
    r = radio.render_subject(subject, seed=2)
    for path, survey, unit, data in (
        (radio_path, "VLA FIRST (1.4 GHz)", "JY/BEAM", r.radio),
        (ir_path, "WISE 3.4", "DN", r.ir),
    ):
        with fits.open(path) as hdul:
            assert len(hdul) == 1 and hdul[0].header["BITPIX"] == -32
            hdr = hdul[0].header
            assert hdr["SURVEY"] == survey and hdr["BUNIT"] == unit
            assert hdr["SIMULAT"] is True and hdr["SIMVER"] == radio.SIM_VERSION and hdr["SIMSEED"] == 2
            assert hdr["OBJECT"] == subject.name
        image, _ = skyview.read_cutout(path)
        np.testing.assert_array_equal(image, data)  # FITS orientation, float32, as rendered
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".fits"]

    # a second call keeps the files; another seed replaces them; a real cutout is never replaced
    mtime = radio_path.stat().st_mtime_ns
    radio.write_subject_fits(subject, tmp_path, seed=2)
    assert radio_path.stat().st_mtime_ns == mtime
    radio.write_subject_fits(subject, tmp_path, seed=5)
    assert fits.getheader(radio_path)["SIMSEED"] == 5
    real_header = fits.getheader(radio_path)
    for key in ("SIMULAT", "SIMVER", "SIMSEED"):
        del real_header[key]
    fits.PrimaryHDU(fits.getdata(radio_path), real_header).writeto(radio_path, overwrite=True)
    radio.write_subject_fits(subject, tmp_path, seed=7)
    assert "SIMULAT" not in fits.getheader(radio_path)
    assert fits.getheader(ir_path)["SIMSEED"] == 7


def test_ensure_images(catalogue, tmp_path):
    subjects = catalogue.stratified_subset(2, seed=1)
    out = radio.ensure_images(subjects, tmp_path, seed=0)
    assert list(out) == [s.name for s in subjects]
    assert all(p.exists() and q.exists() for p, q in out.values())
    # processes give the same files as one process
    out2 = radio.ensure_images(subjects, tmp_path / "w2", seed=0, workers=2)
    for name in out:
        for a, b in zip(out[name], out2[name]):
            np.testing.assert_array_equal(fits.getdata(a), fits.getdata(b))
