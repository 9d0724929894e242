"""Bad-input sweep over the preprocessing functions (issue 8): NaN/inf values, wrong shapes and dtypes.

Contract: a function either returns what it promises (shape, dtype, finite values where the
docstring says so) or raises its module's documented error — ``SpectrumError`` (spectra),
``FusionError`` (radio), ``ValueError`` (photometry) — raised by keras_astro itself with a
message, never an exception leaked from numpy/scipy/OpenCV, never a NaN/inf that slips through.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from keras_astro import specs
from keras_astro.preprocess import photometry as PH
from keras_astro.preprocess import radio as R
from keras_astro.preprocess import spectra as SP

pytestmark = pytest.mark.fuzz

FUZZ = settings.get_profile("keras_astro_fuzz")

N, M, K = 3, 40, 16
WL = np.geomspace(4000.0, 6000.0, M)
GRID = np.geomspace(4200.0, 5800.0, K)
SPECIALS = (np.nan, np.inf, -np.inf)
GOOD_DTYPES = ("float32", "float64", "float32", "float64", "int16", "float16", "bool", "object")
BAD_DTYPES = ("complex64", "U3", "S4")


@st.composite
def arrays(draw, shape, *, lo=-1e4, hi=1e4, specials=True, dtypes=GOOD_DTYPES, bad_dtypes=BAD_DTYPES, wrong_shapes=()):
    """An array of ``shape`` with at most one fault: a wrong shape, a non-real dtype, or NaN/inf values.

    Half the draws are clean, so valid inputs are exercised as often as broken ones.
    """
    faults = ["none"] * 3 + ["shape"] * bool(wrong_shapes) + ["dtype"] * bool(bad_dtypes) + ["special"] * specials
    fault = draw(st.sampled_from(faults), label="fault")
    if fault == "shape":
        shape = draw(st.sampled_from(list(wrong_shapes)), label="shape")
    dtype = draw(st.sampled_from(bad_dtypes if fault == "dtype" else dtypes), label="dtype")
    a = draw(hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_nan=False)), label="values")
    if fault == "special" and a.size:
        k = draw(st.integers(1, max(1, a.size // 4)))
        idx = draw(st.lists(st.integers(0, a.size - 1), min_size=k, max_size=k))
        a.flat[idx] = draw(st.sampled_from(SPECIALS), label="special")
    if dtype == "object":
        return a.astype(object)
    if dtype in ("U3", "S4"):
        return a.astype(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        return a.astype(dtype)


def _wl(draw):
    kind = draw(st.sampled_from(["ok", "ok", "ok", "nan", "reversed", "short", "flat"]), label="wavelengths")
    wl = WL.copy()
    if kind == "nan":
        wl[draw(st.integers(0, M - 1))] = np.nan
    elif kind == "reversed":
        wl = wl[::-1].copy()
    elif kind == "short":
        wl = wl[:-1]
    elif kind == "flat":
        wl[5] = wl[4]
    return wl, kind


# ----------------------------------------------------------------------------------------------
# spectra


@FUZZ
@given(data=st.data())
def test_resample(fuzz, data):
    f = data.draw(arrays((N, M), wrong_shapes=[(M,), (N, M + 1), (N, M, 1), (), (N, 0)]), label="fluxes")
    wl, _ = _wl(data.draw)
    iv = data.draw(st.none() | arrays((N, M), lo=-1, hi=1e3, wrong_shapes=[(N, M - 1)]), label="ivar")
    am = data.draw(
        st.none() | arrays((N, M), lo=0, hi=2**30, dtypes=("int32", "int64", "float32"), bad_dtypes=("U3",)),
        label="and_mask",
    )

    def valid(res):
        rows = 1 if np.ndim(f) == 1 else np.shape(f)[0]
        assert res.fluxes.shape == (rows, K) and res.fluxes.dtype == np.float32
        assert res.flags.shape == (rows, K) and res.flags.dtype == np.uint8
        good = res.good_rows
        assert np.isfinite(res.fluxes[good]).all(), "a resampled good row holds NaN/inf"
        assert (res.fluxes[~good] == 0).all() and (res.flags[~good] == 1).all()
        assert np.isfinite(res.ivar).all() and (res.ivar >= 0).all()

    fuzz.check(
        "preprocess.spectra.resample",
        lambda: SP.resample(f, wl, GRID, ivar=iv, and_mask=am, source="fuzz"),
        allowed=(SP.SpectrumError,),
        names=None,
        case=f"fluxes {getattr(f, 'dtype', '?')}{np.shape(f)}",
        changed_ok=valid,
        message_check=fuzz.raised_by_package,
    )


@FUZZ
@given(data=st.data())
def test_fnet_normalise(fuzz, data):
    f = data.draw(arrays((N, M), wrong_shapes=[(M,), (N, M, 1), (), (N, 0), (0, M)]), label="fluxes")

    def valid(out):
        assert out.dtype == np.float32 and np.isfinite(out).all()
        assert out.shape == (np.atleast_2d(f).shape if np.ndim(f) <= 2 else None)
        norms = np.linalg.norm(out.astype(np.float64), axis=1)
        assert np.all((np.abs(norms - 1) < 1e-3) | (norms < 1e-6))
        assert np.all(np.abs(out.astype(np.float64).mean(axis=1)) < 1e-3)

    fuzz.check(
        "preprocess.spectra.fnet_normalise",
        lambda: SP.fnet_normalise(f),
        allowed=(SP.SpectrumError,),
        names=None,
        case=f"{getattr(f, 'dtype', '?')}{np.shape(f)}",
        changed_ok=valid,
        message_check=fuzz.raised_by_package,
    )


@FUZZ
@given(data=st.data())
def test_pixel_standardiser(fuzz, data):
    train = data.draw(arrays((N, M), wrong_shapes=[(1, M), (M,), (N, M, 1)]), label="train")
    test = data.draw(arrays((2, M), wrong_shapes=[(2, M + 1), (M,), (2, M, 2)]), label="test")

    def run():
        return SP.PixelStandardiser().fit(train).transform(test)

    def valid(out):
        assert out.dtype == np.float32 and out.shape == np.atleast_2d(test).shape and np.isfinite(out).all()

    fuzz.check(
        "preprocess.spectra.PixelStandardiser",
        run,
        allowed=(SP.SpectrumError,),
        names=None,
        case=f"train {getattr(train, 'dtype', '?')}{np.shape(train)}, test {getattr(test, 'dtype', '?')}{np.shape(test)}",
        changed_ok=valid,
        message_check=fuzz.raised_by_package,
    )


@FUZZ
@given(data=st.data())
def test_gaussian_smooth(fuzz, data):
    f = data.draw(arrays((N, M), wrong_shapes=[(M,), (N, M, 1), ()]), label="fluxes")
    sigma = data.draw(st.sampled_from([None, 4.0, 0.5, 0.0, -1.0, np.nan, np.inf, 1e9]), label="sigma")

    def valid(out):
        assert out.dtype == np.float32 and out.shape == np.atleast_2d(f).shape and np.isfinite(out).all()

    fuzz.check(
        "preprocess.spectra.gaussian_smooth",
        lambda: SP.gaussian_smooth(f, sigma),
        allowed=(SP.SpectrumError,),
        names=None,
        case=f"{getattr(f, 'dtype', '?')}{np.shape(f)} sigma={sigma}",
        changed_ok=valid,
        message_check=fuzz.raised_by_package,
    )


@FUZZ
@given(data=st.data())
def test_equivalent_widths(fuzz, data):
    wl = specs.spectral_grid("thesis")[::8]
    m = wl.size
    f = data.draw(arrays((N, m), lo=-10, hi=100, wrong_shapes=[(m,), (N, m + 1)]), label="fluxes")
    z = data.draw(
        st.sampled_from([0.05, -0.5, -1.0, -2.0, 10.0]) | arrays((N,), lo=-1, hi=3, wrong_shapes=[(N + 1,), (N, 1)]),
        label="z",
    )
    flags = data.draw(
        st.none() | arrays((N, m), lo=0, hi=1, dtypes=("uint8", "bool", "float32"), bad_dtypes=()), label="flags"
    )

    def valid(out):
        assert out.shape == (np.atleast_2d(f).shape[0], len(SP.line_names())) and out.dtype == np.float32
        assert not np.isinf(out).any(), "an equivalent width is infinite"

    fuzz.check(
        "preprocess.spectra.equivalent_widths",
        lambda: SP.equivalent_widths(f, wl, z, flags=flags),
        allowed=(SP.SpectrumError,),
        names=None,
        case=f"fluxes {getattr(f, 'dtype', '?')}{np.shape(f)}, z {np.shape(z)}",
        changed_ok=valid,
        message_check=fuzz.raised_by_package,
    )


@FUZZ
@given(data=st.data())
def test_mask_lines_and_bad_pixels(fuzz, data):
    f = data.draw(arrays((N, M), wrong_shapes=[(M,), (N, M + 1)]), label="fluxes")
    z = data.draw(
        st.sampled_from([2.9, np.nan, np.inf, -1.0, -3.0]) | arrays((N,), lo=0, hi=5, wrong_shapes=[(N + 1,)]),
        label="z",
    )
    wl = WL * 0.5  # 2000-3000 A: the UV lines at z ~ 1-3
    which = data.draw(st.sampled_from(["mask_lines", "bad_pixel_mask"]), label="function")
    if which == "mask_lines":

        def call():
            return SP.mask_lines(f, wl, z)

        def valid(out):
            masked, mask = out
            assert mask.dtype == bool and masked.shape == mask.shape == np.atleast_2d(f).shape

    else:
        iv = data.draw(arrays((N, M), lo=-1, hi=10, wrong_shapes=[(N, M - 1), (M,)]), label="ivar")
        am = data.draw(
            st.none() | arrays((N, M), lo=0, hi=2**30, dtypes=("int32", "float32"), bad_dtypes=("U3",)), label="mask"
        )

        def call():
            return SP.bad_pixel_mask(f, iv, am)

        def valid(out):
            assert out.dtype == bool and out.shape == np.shape(f)

    fuzz.check(
        f"preprocess.spectra.{which}",
        call,
        allowed=(SP.SpectrumError,),
        names=None,
        case=f"fluxes {getattr(f, 'dtype', '?')}{np.shape(f)}, z {z if np.ndim(z) == 0 else np.shape(z)}",
        changed_ok=valid,
        message_check=fuzz.raised_by_package,
    )


# ----------------------------------------------------------------------------------------------
# radio / IR fusion (CLARAN)

IMG = (24, 24)
IMG_WRONG = [(24, 23), (24,), (1, 24, 24), (2, 24, 24), (0, 0), (1, 1), (24, 1)]


@FUZZ
@given(data=st.data())
def test_fuse(fuzz, data):
    radio = data.draw(arrays(IMG, wrong_shapes=IMG_WRONG, specials=True), label="radio")
    ir = data.draw(st.none() | arrays(IMG, wrong_shapes=IMG_WRONG, specials=True), label="ir")
    if data.draw(st.booleans(), label="blank"):
        radio = np.full(np.shape(radio), 3.0)
    method = data.draw(st.sampled_from(["F", "D1", "D2", "D3", "D4", "d4", "X"]), label="method")

    def valid(out):
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        assert out.shape[:2] == np.shape(radio)[:2]

    fuzz.check(
        "preprocess.radio.fuse",
        lambda: R.fuse(radio, ir, method, subject="FUZZ"),
        allowed=(R.FusionError,),
        names=None,
        case=f"{method}: radio {getattr(radio, 'dtype', '?')}{np.shape(radio)}, ir {None if ir is None else np.shape(ir)}",
        changed_ok=valid,
        message_check=fuzz.raised_by_package,
    )


RADIO_HELPERS = (
    "zscale_linear",
    "log_minmax",
    "colourise",
    "mad_sigma",
    "radio_contours",
    "hull_mask",
    "resize_with_boxes",
    "hflip_with_boxes",
    "zero_centre",
    "channel_mean",
)


@pytest.mark.parametrize("which", RADIO_HELPERS)
@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 2))
@given(data=st.data())
def test_radio_helpers(fuzz, which, data):
    img = data.draw(arrays(IMG, wrong_shapes=IMG_WRONG, specials=True), label="image")
    rgb = data.draw(
        arrays((*IMG, 3), lo=0, hi=255, wrong_shapes=[(*IMG, 4), IMG, (0, 0, 3)], specials=True), label="rgb"
    )
    boxes = data.draw(arrays((2, 4), lo=-5, hi=30, wrong_shapes=[(5,), (2, 3), (0, 4)], specials=True), label="boxes")
    calls = {
        "zscale_linear": (lambda: R.zscale_linear(img), lambda o: np.isfinite(o).all() and o.shape == np.shape(img)),
        "log_minmax": (lambda: R.log_minmax(img), lambda o: np.isfinite(o).all() and o.shape == np.shape(img)),
        "colourise": (
            lambda: R.colourise(img, "cool"),
            lambda o: o.dtype == np.uint8 and o.shape == (*np.shape(img), 3),
        ),
        "mad_sigma": (lambda: R.mad_sigma(img), lambda o: np.isfinite(o) and o >= 0),
        "radio_contours": (lambda: R.radio_contours(img), lambda o: isinstance(o, list)),
        "hull_mask": (
            lambda: R.hull_mask(R.radio_contours(img), np.shape(img)),
            lambda o: o.dtype == bool and o.shape == np.shape(img),
        ),
        "resize_with_boxes": (
            lambda: R.resize_with_boxes(rgb, boxes, 48),
            lambda o: o[0].shape[:2] == (48, 48) and o[1].shape[1:] == (4,) and np.isfinite(o[1]).all(),
        ),
        "hflip_with_boxes": (
            lambda: R.hflip_with_boxes(rgb, boxes),
            lambda o: o[0].shape == np.shape(rgb) and np.isfinite(o[1]).all(),
        ),
        "zero_centre": (
            lambda: R.zero_centre(rgb),
            lambda o: o.dtype == np.float32 and o.shape == np.shape(rgb) and np.isfinite(o).all(),
        ),
        "channel_mean": (lambda: R.channel_mean([rgb, rgb]), lambda o: o.shape == (3,) and np.isfinite(o).all()),
    }
    call, ok = calls[which]

    def valid(out):
        assert ok(out), f"{which} returned an invalid result"

    fuzz.check(
        f"preprocess.radio.{which}",
        call,
        allowed=(R.FusionError,),
        names=None,
        case=f"image {getattr(img, 'dtype', '?')}{np.shape(img)}, rgb {np.shape(rgb)}, boxes {np.shape(boxes)}",
        changed_ok=valid,
        message_check=fuzz.raised_by_package,
    )


# ----------------------------------------------------------------------------------------------
# photometry (AGN)

NB = len(specs.agn_bands())


@FUZZ
@given(data=st.data())
def test_missing_band_filler(fuzz, data):
    def phot(label, rows):
        x = data.draw(
            arrays(
                (rows, NB, 2),
                lo=0.01,
                hi=30,
                specials=False,
                wrong_shapes=[(rows, NB), (rows, NB - 1, 2), (rows, NB, 2, 1)],
            ),
            label=label,
        )
        if x.dtype.kind == "f" and x.ndim >= 2:
            miss = data.draw(hnp.arrays(bool, x.shape[:2]), label=f"{label} missing")
            x[miss] = np.nan
            if data.draw(st.booleans(), label=f"{label} odd"):
                x.flat[data.draw(st.integers(0, x.size - 1))] = data.draw(st.sampled_from(SPECIALS), label="value")
        return x

    strategy = data.draw(st.sampled_from(PH.STRATEGIES), label="strategy")
    train, x = phot("train", 6), phot("x", 3)

    def run():
        return PH.MissingBandFiller(strategy).fit(train).transform(x)

    def valid(out):
        assert out.dtype == np.float32 and out.shape == np.shape(x)  # any band count (zero / band_median)
        assert np.isfinite(out).all(), "a missing band was not filled, or an inf got through"

    fuzz.check(
        "preprocess.photometry.MissingBandFiller",
        run,
        allowed=(ValueError,),
        names=None,
        case=f"{strategy}: train {getattr(train, 'dtype', '?')}{np.shape(train)}, x {np.shape(x)}",
        changed_ok=valid,
        message_check=fuzz.raised_by_package,
    )
