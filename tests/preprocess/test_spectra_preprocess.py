"""Spectral preprocessing against independent numpy references and analytic cases."""

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest

from keras_astro import specs
from keras_astro.io import spectra_store as ss
from keras_astro.preprocess import spectra as P

ROOT = Path(__file__).resolve().parents[2]


def _reference():
    spec = importlib.util.spec_from_file_location("spectra_reference", ROOT / "benchmarks" / "spectra_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _spectra(n=6, seed=0):
    """Smooth positive spectra on the SDSS lattice with partial coverage and masked pixels."""
    rng = np.random.default_rng(seed)
    wl = specs.spectral_grid("sdss")
    x = np.log10(wl)
    f = 10 + 3 * np.sin(40 * x[None, :] + rng.uniform(0, 6, (n, 1))) + rng.normal(0, 0.2, (n, wl.size))
    iv = np.ones_like(f)
    for i in range(n):
        a, b = rng.integers(0, 300), wl.size - rng.integers(0, 300)
        iv[i, :a] = 0
        iv[i, b:] = 0
        iv[i, rng.integers(a, b, 40)] = 0
        f[i, iv[i] == 0] = 0.0
    return wl, f.astype(np.float32), iv.astype(np.float32), rng.uniform(0.05, 3.0, n)


def test_resample_matches_np_interp_over_good_pixels():
    wl, f, iv, _ = _spectra()
    grid = specs.spectral_grid("fnet")
    res = P.resample(f, wl, "fnet", ivar=iv)
    assert res.fluxes.shape == (6, 4618) and res.good_rows.all()
    for i in range(6):
        good = iv[i] > 0
        ref = np.interp(np.log10(grid), np.log10(wl[good]), f[i, good].astype(np.float64))
        np.testing.assert_allclose(res.fluxes[i], ref, rtol=1e-5, atol=1e-5)
        # flagged = outside the measured range, or next to a masked pixel
        outside = (grid < wl[good][0] - 1e-6) | (grid > wl[good][-1] + 1e-6)
        assert res.flags[i][outside].all()
        assert res.flags[i].mean() < 0.2
        assert (res.ivar[i][res.flags[i] == 1] == 0).all()


def test_thesis_grid_is_an_exact_cut_of_the_sdss_lattice():
    wl, f, iv, _ = _spectra(seed=1)
    iv[:] = 1
    res = P.resample(f, wl, "thesis", ivar=iv)
    thesis = specs.spectral_grid("thesis")
    assert thesis.size == 3736
    a = int(np.argmin(np.abs(wl - thesis[0])))
    np.testing.assert_array_equal(res.fluxes, f[:, a : a + 3736])
    assert thesis[0] == pytest.approx(3850.34, abs=0.01) and thesis[-1] == pytest.approx(9099.13, abs=0.01)


def test_fnet_grid_facts():
    g = specs.spectral_grid("fnet")
    assert g.size == 4618 and g[0] == pytest.approx(3600) and g[-1] == pytest.approx(10325)
    np.testing.assert_allclose(np.diff(np.log10(g)), np.log10(10325 / 3600) / 4617)


def test_bad_rows_are_skipped_and_reported_or_raise(caplog):
    wl, f, iv, _ = _spectra(3, seed=2)
    iv[1] = 0  # all masked
    f[2, :] = np.nan  # NaN flux everywhere
    iv[0, 1000:] = 0  # covers only the blue quarter of the grid
    with caplog.at_level(logging.WARNING):
        res = P.resample(f, wl, "fnet", ivar=iv, source="demo.h5")
    assert not res.good_rows.any()
    assert "every pixel is masked" in res.reasons[1] and "every pixel" in res.reasons[2]
    assert "covers" in res.reasons[0]
    assert "demo.h5" in caplog.text
    with pytest.raises(P.SpectrumError, match="demo.h5: spectrum 0"):
        P.resample(f, wl, "fnet", ivar=iv, on_bad="raise", source="demo.h5")


def test_and_mask_bits_mask_pixels():
    wl, f, iv, _ = _spectra(1, seed=3)
    iv[:] = 1
    am = np.zeros(f.shape, np.int32)
    am[0, 2000:2010] = 1 << 23  # BRIGHTSKY
    am[0, 3000:3010] = 1 << 5  # a harmless bit
    f2 = f.copy()
    f2[0, 2000:2010] = 1e6
    f2[0, 3000:3010] = 1e6
    res = P.resample(f2, wl, wl, ivar=iv, and_mask=am)
    assert res.flags[0, 2000:2010].all() and res.fluxes[0, 2000:2010].max() < 100
    assert not res.flags[0, 3000:3010].any() and res.fluxes[0, 3005] == 1e6


def test_shape_errors():
    wl, f, iv, _ = _spectra(2)
    with pytest.raises(P.SpectrumError, match="wavelengths has shape"):
        P.resample(f, wl[:-1], "fnet")
    with pytest.raises(P.SpectrumError, match="ivar shape"):
        P.resample(f, wl, "fnet", ivar=iv[:, :10])
    with pytest.raises(KeyError, match="unknown spectral grid"):
        P.resample(f, wl, "nope")
    with pytest.raises(P.SpectrumError, match="NaN"):
        P.fnet_normalise(np.array([[1.0, np.nan, 2.0]]))


def test_fnet_normalise_zero_mean_unit_norm():
    x = np.random.default_rng(0).normal(3, 2, (5, 100))
    y = P.fnet_normalise(x)
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(P.fnet_normalise(np.ones((1, 10))), 0)


def test_pixel_standardiser_uses_training_statistics_only():
    rng = np.random.default_rng(1)
    train, test = rng.normal(5, 2, (50, 8)), rng.normal(-3, 9, (20, 8))
    s = P.PixelStandardiser().fit(train)
    np.testing.assert_allclose(s.transform(test), (test - train.mean(0)) / train.std(0), rtol=1e-5)
    s2 = P.PixelStandardiser.from_config(s.get_config())
    np.testing.assert_allclose(s2.transform(test), s.transform(test))
    with pytest.raises(P.SpectrumError, match="not fitted"):
        P.PixelStandardiser().transform(test)
    with pytest.raises(P.SpectrumError, match="fitted on 8 pixels"):
        s.transform(test[:, :5])


def test_gaussian_smooth_matches_explicit_convolution():
    x = np.random.default_rng(2).normal(size=(2, 200))
    y = P.gaussian_smooth(x)  # default sigma = 4 px (thesis Table 6)
    k = np.exp(-0.5 * (np.arange(-16, 17) / 4.0) ** 2)
    k /= k.sum()
    ref = np.stack([np.convolve(np.pad(r, 16, mode="edge"), k, mode="valid") for r in x])
    np.testing.assert_allclose(y[:, 20:-20], ref[:, 20:-20], atol=1e-5)


def _flat_with_line(wl, z, centre, amp, sigma, cont=10.0):
    lam = centre * (1 + z)
    return cont * (1 + amp * np.exp(-0.5 * ((wl - lam) / (sigma * (1 + z))) ** 2))


def test_equivalent_width_of_a_gaussian_line_is_analytic():
    grid = specs.spectral_grid("fnet")
    names = P.line_names()
    assert len(names) == 14
    k = names.index("Hb")
    z = np.array([0.1, 0.4])
    emission = np.stack([_flat_with_line(grid, zz, 4863.0, 2.0, 3.0) for zz in z])
    absorption = np.stack([_flat_with_line(grid, zz, 4863.0, -0.5, 3.0) for zz in z])
    ew_e = P.equivalent_widths(emission, grid, z)
    ew_a = P.equivalent_widths(absorption, grid, z)
    # rest-frame EW of f = C (1 + A g) is -A sigma sqrt(2 pi)
    np.testing.assert_allclose(ew_e[:, k], -2.0 * 3.0 * np.sqrt(2 * np.pi), rtol=0.02)
    np.testing.assert_allclose(ew_a[:, k], 0.5 * 3.0 * np.sqrt(2 * np.pi), rtol=0.02)
    obs = P.equivalent_widths(emission, grid, z, frame="observed")
    np.testing.assert_allclose(obs[:, k], ew_e[:, k] * (1 + z), rtol=1e-5)
    # Lya at z = 0.1 falls below 3600 A: NaN; no other line in the spectrum: ~0
    assert np.isnan(ew_e[0, names.index("Lya")])
    others = [i for i, nm in enumerate(names) if nm not in ("Hb",)]
    finite = ew_e[:, others][np.isfinite(ew_e[:, others])]
    assert np.abs(finite).max() < 0.05


def test_equivalent_widths_match_the_per_row_reference_and_masking_gives_nan():
    ref = _reference()
    wl, f, iv, z = _spectra(8, seed=4)
    grid = specs.spectral_grid("fnet")
    res = P.resample(f, wl, grid, ivar=iv)
    ew = P.equivalent_widths(res.fluxes, grid, z, flags=res.flags)
    df = ref.frame_from_arrays(f, iv, wl, z)
    ref_f, ref_ew = ref.preprocess_per_row(df, grid, specs.spectral_lines())
    np.testing.assert_array_equal(np.isnan(ew), np.isnan(ref_ew))
    np.testing.assert_allclose(ew[np.isfinite(ew)], ref_ew[np.isfinite(ref_ew)], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(P.fnet_normalise(res.fluxes), ref_f, atol=1e-6)
    # a fully flagged line window -> NaN
    flags = res.flags.copy()
    k = P.line_names().index("Ha")
    row = int(np.nonzero(np.isfinite(ew[:, k]))[0][0])
    lam = 6565.0 * (1 + z[row])
    flags[row, np.abs(grid - lam) < 25 * (1 + z[row])] = 1
    assert np.isnan(P.equivalent_widths(res.fluxes, grid, z, flags=flags)[row, k])


def test_line_mask_hides_fnet_lines_at_their_observed_wavelengths():
    grid = specs.spectral_grid("fnet")
    z = np.array([2.9])
    mask = P.line_mask(grid, z)
    lines = specs.load_spec("spectra")["fnet_masked_lines"]
    for rest in lines["lines"].values():
        obs = rest * (1 + z[0])
        if grid[0] < obs < grid[-1]:
            assert mask[0, np.argmin(np.abs(grid - obs))]
    # about +-5000 km/s around each: width in pixels = 2 * v / (c ln10 dloglam)
    dlog = np.log10(grid[1] / grid[0])
    expected_px = 2 * 5000 / (P.C_KMS * np.log(10) * dlog)
    lya = np.abs(np.log(grid / (1216.0 * 3.9))) < 5000 / P.C_KMS
    assert abs(lya.sum() - expected_px) <= 2
    x = np.ones((1, grid.size))
    y, m = P.mask_lines(x, grid, z)
    assert (y[m] == 0).all() and (y[~m] == 1).all()


def _store(tmp_path, wl, f, iv, z, bad_row=None):
    n = len(f)
    meta = {
        "specObjID": np.arange(n, dtype=np.uint64) + np.uint64(10**18),
        "plate": np.full(n, 300),
        "mjd": np.full(n, 51666),
        "fiberid": np.arange(1, n + 1),
        "ra": np.zeros(n),
        "dec": np.zeros(n),
        "z": z,
        "zErr": np.zeros(n),
        "class": ["QSO"] * n,
        "subClass": [""] * n,
        **{f"petroMag_{b}": np.zeros(n) for b in "ugriz"},
        **{f"petroMagErr_{b}": np.zeros(n) for b in "ugriz"},
    }
    if bad_row is not None:
        iv[bad_row] = 0
    return ss.write_store(tmp_path / "raw.h5", fluxes=f, ivar=iv, wavelengths=wl, meta=meta, attrs={"grid": "sdss"})


@pytest.mark.parametrize("workers, chunk", [(1, 1000), (2, 3)])
def test_preprocess_store_streams_and_skips_bad_rows(tmp_path, workers, chunk):
    wl, f, iv, z = _spectra(10, seed=5)
    src = _store(tmp_path, wl, f, iv, z, bad_row=4)
    out = P.preprocess_store(
        src, tmp_path / "fnet.h5", grid="fnet", normalise="fnet", chunk_rows=chunk, workers=workers
    )
    assert out["n_kept"] == 9 and out["skipped"][0][0] == 10**18 + 4
    st = ss.read_store(tmp_path / "fnet.h5")
    assert st.fluxes.shape == (9, 4618) and st.equivalent_widths.shape == (9, 14)
    assert st.attrs["grid"] == "fnet" and st.pixel_flags.dtype == np.uint8
    keep = np.array([i for i in range(10) if i != 4])
    res = P.resample(f[keep], wl, "fnet", ivar=iv[keep])
    np.testing.assert_allclose(st.fluxes, P.fnet_normalise(res.fluxes), atol=1e-6)
    np.testing.assert_array_equal(st.meta["specObjID"].to_numpy(), np.uint64(10**18) + keep.astype(np.uint64))
