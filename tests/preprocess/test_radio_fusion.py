"""CLARAN fusion (F, D1-D4), contours, hull, resize/flip with boxes (Sec 3.4), against numpy references."""

import matplotlib
import numpy as np
import pytest

from keras_astro.preprocess import radio as R


def _blob(shape, x, y, amp, sigma=2.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return amp * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2)


def _field(seed=0):
    rng = np.random.default_rng(seed)
    radio = rng.normal(0, 1.5e-4, (132, 132))
    radio += _blob(radio.shape, 40, 30, 0.01) + _blob(radio.shape, 90, 100, 0.02)  # FITS rows: 30 and 100
    ir = rng.normal(100, 2, (132, 132)) + _blob(radio.shape, 65, 65, 300, 2.5)
    return radio, ir


def test_log_minmax_is_ds9_log():
    img = np.array([[0.0, 0.5, 1.0, 2.0]])
    got = R.log_minmax(img)
    x = img / 2.0
    np.testing.assert_allclose(got, np.log10(1000 * x + 1) / 3.0)
    assert got[0, 0] == 0 and got[0, -1] == pytest.approx(np.log10(1001) / 3)  # DS9: slightly above 1


def test_colourise_matches_matplotlib():
    x = np.linspace(0, 1, 11)
    for cmap in ("cool", "hot"):
        ref = matplotlib.colormaps[cmap](x)[:, :3] * 255
        assert np.abs(R.colourise(x, cmap).astype(float) - ref).max() <= 0.5


def test_mad_sigma_recovers_gaussian_noise():
    x = np.random.default_rng(1).normal(3.0, 0.15, 200_000)
    assert R.mad_sigma(x) == pytest.approx(0.15, rel=0.02)


def test_contours_and_hull():
    radio, _ = _field()
    png = radio[::-1]
    cs = R.radio_contours(png)
    assert len(cs) == 2
    hull = R.hull_mask(cs, png.shape)
    # both blobs (PNG rows 131-30=101 and 131-100=31) and the midpoint between them are inside
    assert hull[101, 40] and hull[31, 90] and hull[66, 65]
    assert not hull[5, 5] and not hull[125, 125]
    assert not R.hull_mask([], (10, 10)).any()


def test_fuse_orientation_and_each_dataset():
    radio, ir = _field()
    imgs = {m: R.fuse(radio, ir, m, subject="S") for m in R.DATASETS}
    for m, im in imgs.items():
        assert im.shape == (132, 132, 3) and im.dtype == np.uint8, m
    # FITS row 100 (near the top of the sky) is PNG row 31; the bright blob is cool-map magenta (high R, B)
    d1 = imgs["D1"]
    assert d1[31, 90, 0] > 200 and d1[31, 90, 2] > 200
    assert d1[31, 90, 0] > d1[100, 90, 0]
    # D2: red channel = min(255, D1 red + IR grey)
    ir_grey = np.round(R.zscale_linear(ir[::-1]) * 255).astype(int)
    np.testing.assert_array_equal(imgs["D2"][..., 0], np.clip(d1[..., 0].astype(int) + ir_grey, 0, 255))
    np.testing.assert_array_equal(imgs["D2"][..., 1:], d1[..., 1:])
    # D3 has contour pixels in the contour colour; D4 = D3 inside the hull, fill colour outside
    d3, d4 = imgs["D3"], imgs["D4"]
    assert (np.all(d3 == R.CONTOUR_RGB, axis=-1)).sum() > 10
    hull = R.hull_mask(R.radio_contours(radio[::-1]), (132, 132))
    np.testing.assert_array_equal(d4[hull], d3[hull])
    assert (d4[~hull] == np.array([213, 45, 14], np.uint8)).all()


@pytest.mark.parametrize(
    "radio, match",
    [
        (np.full((132, 132), np.nan), "all NaN"),
        (np.zeros((132, 132)), "blank"),
        (np.zeros((4, 132, 132)), "2-D"),
    ],
)
def test_bad_images_name_the_subject(radio, match):
    with pytest.raises(R.FusionError, match=f"FIRSTJ1.*{match}"):
        R.fuse(radio, None, "F", subject="FIRSTJ1")


def test_fuse_needs_ir_and_known_method():
    radio, ir = _field()
    with pytest.raises(R.FusionError, match="needs the IR"):
        R.fuse(radio, None, "D3", subject="x")
    with pytest.raises(R.FusionError, match="unknown data set"):
        R.fuse(radio, ir, "D9", subject="x")
    with pytest.raises(R.FusionError, match="differ in size"):
        R.fuse(radio, ir[:100], "D2", subject="x")


def _centroid(img):
    g = img.astype(float).sum(-1) if img.ndim == 3 else img.astype(float)
    g = np.where(g > 0.5 * g.max(), g, 0)
    yy, xx = np.mgrid[: g.shape[0], : g.shape[1]]
    return (xx * g).sum() / g.sum() + 0.5, (yy * g).sum() / g.sum() + 0.5


def test_resize_and_flip_keep_boxes_on_the_emission():
    img = np.zeros((132, 132, 3), np.uint8)
    img[20:30, 100:120] = 255  # emission box [100, 20, 120, 30] in continuous pixel coordinates
    box = np.array([[100, 20, 120, 30]], np.float32)
    big, bb = R.resize_with_boxes(img, box)
    assert big.shape == (600, 600, 3)
    np.testing.assert_allclose(bb[0], box[0] * 600 / 132, rtol=1e-6)
    cx, cy = _centroid(big)
    assert bb[0, 0] < cx < bb[0, 2] and bb[0, 1] < cy < bb[0, 3]
    f, fb = R.hflip_with_boxes(big, bb)
    cx, cy = _centroid(f)
    assert fb[0, 0] < cx < fb[0, 2] and fb[0, 0] == pytest.approx(600 - bb[0, 2])
    f2, fb2 = R.hflip_with_boxes(f, fb)
    np.testing.assert_array_equal(f2, big)
    np.testing.assert_allclose(fb2, bb)


def test_zero_centre_is_bgr_minus_means():
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = 200  # red
    out = R.zero_centre(img)
    np.testing.assert_allclose(out[0, 0], [0 - 103.939, 0 - 116.779, 200 - 123.68], rtol=1e-6)
    np.testing.assert_allclose(R.channel_mean([img, img]), [200, 0, 0])
