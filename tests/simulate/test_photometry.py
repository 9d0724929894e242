"""Tests of the embedded NEPW photometry simulator (keras_astro.simulate.photometry)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from astropy.io import fits

from keras_astro import specs
from keras_astro.simulate import photometry as sim

BANDS = specs.band_names()
BAND_INDEX = {name: i for i, name in enumerate(BANDS)}
MISSING = float(specs.load_spec("nepw_catalogue")["missing_value"])
THRESHOLD = float(specs.load_spec("agn_study")["fagn_ir_threshold"])
C_AA = 2.99792458e18
AB0 = 3631.0e-23


@pytest.fixture(scope="module")
def population():
    return sim.simulate_population(3000, agn_fraction=0.3, seed=11)


@pytest.fixture(scope="module")
def labelled():
    return sim.simulate_labelled_set(seed=0)


def _as_array(table, name):
    return np.asarray(table[name])


# ------------------------------------------------------------------------------------------
# Layout and determinism
# ------------------------------------------------------------------------------------------
def test_column_order_and_types(population):
    cols = population.colnames
    assert cols[:5] == ["ID", "ra", "dec", "z", "class"]
    expected = [c for b in BANDS for c in (f"{b}_mag", f"{b}_magerr")]
    assert cols[5 : 5 + 2 * len(BANDS)] == expected
    assert cols[5 + 2 * len(BANDS)] == "fagn_ir"
    assert population["ID"].dtype == np.int64
    assert len(np.unique(population["ID"])) == len(population)
    assert set(np.unique(_as_array(population, "class"))) <= {"AGN", "SFG"}


def test_same_seed_is_bit_identical_other_seed_differs():
    a = sim.simulate_population(400, agn_fraction=0.3, seed=3)
    b = sim.simulate_population(400, agn_fraction=0.3, seed=3)
    c = sim.simulate_population(400, agn_fraction=0.3, seed=4)
    assert a.colnames == b.colnames
    for name in a.colnames:
        assert np.array_equal(_as_array(a, name), _as_array(b, name)), name
    assert not np.array_equal(_as_array(a, "z"), _as_array(c, "z"))
    assert not np.array_equal(_as_array(a, "HSC_r_mag"), _as_array(c, "HSC_r_mag"))


def test_empty_and_single_class_populations():
    empty = sim.simulate_population(0, agn_fraction=0.3, seed=0)
    assert len(empty) == 0 and empty.colnames[:5] == ["ID", "ra", "dec", "z", "class"]
    only_sfg = sim.simulate_population(20, agn_fraction=0.0, seed=0)
    assert np.all(_as_array(only_sfg, "class") == "SFG")


def test_population_agn_fraction_follows_request():
    t = sim.simulate_population(2000, agn_fraction=0.6, seed=8)
    frac = np.mean(_as_array(t, "fagn_ir") >= THRESHOLD)
    assert abs(frac - 0.6) < 0.05
    assert np.all((_as_array(t, "class") == "AGN") == (_as_array(t, "fagn_ir") >= THRESHOLD))


# ------------------------------------------------------------------------------------------
# Labelled / unlabelled sets
# ------------------------------------------------------------------------------------------
def test_labelled_set_counts_and_labels(labelled):
    study = specs.load_spec("agn_study")["labelled"]
    cls = _as_array(labelled, "class")
    assert len(labelled) == study["n"]
    assert np.sum(cls == "AGN") == study["n_agn"]
    assert np.sum(cls == "SFG") == study["n_sfg"]
    fagn = _as_array(labelled, "fagn_ir")
    assert np.all((cls == "AGN") == (fagn >= THRESHOLD))
    assert np.all((fagn >= 0) & (fagn < 1))
    # rows are shuffled: the AGN are not all at the start or the end
    first = np.flatnonzero(cls == "AGN")
    assert first.min() < 100 and first.max() > len(labelled) - 100
    assert len(np.unique(labelled["ID"])) == len(labelled)


def test_labelled_redshift_distributions(labelled):
    z = _as_array(labelled, "z")
    agn = _as_array(labelled, "class") == "AGN"
    sfg_z = z[~agn]
    assert 0.2 < np.median(sfg_z) < 0.8  # Fig. 4: SFGs mostly 0.05 < z < 1.2
    assert np.mean(sfg_z < 1.5) > 0.9
    assert np.median(z[agn]) > np.median(sfg_z)
    assert z[agn].max() > 2.5  # AGN reach high redshift


def test_unlabelled_set_has_empty_class():
    t = sim.simulate_unlabelled_set(seed=1, n=1500)
    assert len(t) == 1500
    assert np.all(_as_array(t, "class") == "")
    frac = np.mean(_as_array(t, "fagn_ir") >= THRESHOLD)
    assert 0.2 < frac < 0.36


def test_positions_inside_the_nepw_field(population):
    ra, dec = np.radians(_as_array(population, "ra")), np.radians(_as_array(population, "dec"))
    ra0, dec0 = math.radians(270.0), math.radians(66.56)
    cos_d = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    sep = np.degrees(np.arccos(np.clip(cos_d, -1, 1)))
    radius = math.sqrt(5.4 / math.pi)
    assert sep.max() <= radius * 1.01
    assert np.median(sep) > 0.5 * radius  # uniform in the disc: median at 0.71 R


# ------------------------------------------------------------------------------------------
# Photometry: missing values, limits, errors
# ------------------------------------------------------------------------------------------
def test_missing_bands_and_detection_limits(population):
    for band in specs.agn_bands():
        mag = _as_array(population, f"{band.name}_mag")
        err = _as_array(population, f"{band.name}_magerr")
        missing = mag == MISSING
        assert np.array_equal(missing, err == MISSING), band.name
        det = ~missing
        assert np.all(np.isfinite(mag[det])) and np.all(err[det] > 0), band.name
        if det.any():
            assert mag[det].max() < band.limit_mag + 0.5, band.name
            # SNR >= 5 → σ_mag <= 1.0857 / 5
            assert err[det].max() <= 2.5 / math.log(10) / 5 + 1e-4, band.name
    # AKARI-selected catalogue: every object is detected in at least one AKARI band
    akari = [b.name for b in specs.agn_bands() if b.instrument == "AKARI IRC"]
    det_akari = np.column_stack([_as_array(population, f"{b}_mag") > MISSING for b in akari])
    assert det_akari.any(axis=1).all()


def test_shallow_bands_detect_only_a_bright_subset(population):
    frac = {b: np.mean(_as_array(population, f"{b}_mag") > MISSING) for b in BANDS}
    assert frac["HSC_i"] > 0.6 and frac["AKARI_N3"] > 0.5
    for shallow in ("IRAC4", "WISE_W2", "SPIRE_500"):
        assert frac[shallow] < 0.1, shallow


def test_errors_grow_towards_the_limit(population):
    checked = 0
    for band in specs.agn_bands():
        mag = _as_array(population, f"{band.name}_mag")
        err = _as_array(population, f"{band.name}_magerr")
        det = mag > MISSING
        near = det & (mag > band.limit_mag - 0.5)
        bright = det & (mag < band.limit_mag - 3.0)
        if near.sum() >= 20 and bright.sum() >= 20:
            assert np.median(err[near]) > np.median(err[bright]), band.name
            assert np.median(err[near]) > 0.1, band.name
            checked += 1
    assert checked >= 5


# ------------------------------------------------------------------------------------------
# Synthetic photometry against independent references
# ------------------------------------------------------------------------------------------
def test_flat_fnu_spectrum_gives_its_ab_magnitude_in_every_band():
    wave = np.geomspace(100.0, 2.0e7, 5000)
    fnu = np.full(wave.size, AB0 * 10 ** (-0.4 * 20.0))
    mags = sim.synthetic_ab_magnitudes(wave, fnu)
    assert mags.shape == (len(BANDS),)
    np.testing.assert_allclose(mags, 20.0, atol=0.01)


def _template_lnu(k):
    path = sim._kcorrect_data_dir() / "templates" / "kcorrect-default-v4.fits"
    with fits.open(path) as hdul:
        wave = np.asarray(hdul["FLUX"].data["wave"][0], dtype=float)
        flam = np.asarray(hdul["FLUX"].data["flux"][0][k], dtype=float)
    lnu = 4 * math.pi * (10 * 3.0856775814913673e18) ** 2 * flam * wave**2 / C_AA
    return wave, flam, lnu


@pytest.mark.parametrize("band", ["AKARI_N2", "AKARI_N3"])
def test_table_at_z0_matches_direct_tophat_integral(band):
    spec = specs.agn_bands()[BAND_INDEX[band]].filter
    assert spec.startswith("tophat:")
    lo_um, hi_um = (float(v) for v in spec.split(":")[1].split("-"))
    table = sim.band_flux_table([0.0])
    comps = sim.table_components()
    for k in range(5):
        wave, _, lnu = _template_lnu(k)
        m = (wave >= lo_um * 1e4) & (wave <= hi_um * 1e4)
        direct = np.trapezoid(lnu[m] / wave[m], wave[m]) / math.log(hi_um / lo_um)
        ours = table[0, comps.index(f"stellar_{k}"), BAND_INDEX[band]]
        assert abs(2.5 * math.log10(ours / direct)) < 0.01, (band, k)


def test_speclite_band_matches_speclite_photometry():
    import astropy.units as u
    import speclite.filters

    wave, flam, lnu = _template_lnu(2)
    scale = 1e-12  # any flux scale
    ours = sim.synthetic_ab_magnitudes(wave, lnu * scale)[BAND_INDEX["HSC_g"]]
    filt = speclite.filters.load_filter("hsc2017-g")
    flam_obs = lnu * scale * C_AA / wave**2  # erg/s/cm²/Å
    ref = filt.get_ab_magnitude(flam_obs * u.erg / (u.s * u.cm**2 * u.AA), wave * u.AA)
    assert abs(ours - ref) < 0.01


def test_power_law_colours_do_not_depend_on_redshift():
    wave = np.geomspace(100.0, 2.0e7, 20000)
    fnu = 1e-28 * (wave / 1e4) ** 1.5  # f_ν ∝ ν^-1.5
    m0 = sim.synthetic_ab_magnitudes(wave, fnu, 0.0)
    for z in (0.7, 2.3):
        mz = sim.synthetic_ab_magnitudes(wave, fnu, z)
        colour0, colourz = m0 - m0[0], mz - mz[0]
        np.testing.assert_allclose(colourz, colour0, atol=1e-3)
        assert not np.allclose(mz, m0, atol=0.1)  # magnitudes themselves do change


def test_4000A_break_moves_redwards_with_redshift():
    wave, _, lnu = _template_lnu(3)  # old stellar population
    g, r = BAND_INDEX["HSC_g"], BAND_INDEX["HSC_r"]
    low = sim.synthetic_ab_magnitudes(wave, lnu, 0.05)
    high = sim.synthetic_ab_magnitudes(wave, lnu, 0.4)
    assert (high[g] - high[r]) > (low[g] - low[r]) + 0.5


def test_igm_absorbs_blueward_of_lyman_alpha():
    wave = np.geomspace(100.0, 2.0e7, 20000)
    fnu = np.full(wave.size, 1e-29)
    u_band = BAND_INDEX["MegaCam_u"]
    clear = sim.synthetic_ab_magnitudes(wave, fnu, 3.5, igm=False)
    absorbed = sim.synthetic_ab_magnitudes(wave, fnu, 3.5, igm=True)
    assert absorbed[u_band] > clear[u_band] + 1.0  # u samples rest < 912 Å at z = 3.5
    assert abs(absorbed[BAND_INDEX["HSC_z"]] - clear[BAND_INDEX["HSC_z"]]) < 1e-6


def test_table_at_z1_matches_direct_redshifted_integral():
    wave, _, lnu = _template_lnu(0)
    z = 1.0
    lo_um, hi_um = 1.9, 2.8  # AKARI N2 top-hat → rest 0.95–1.4 µm
    m = (wave * (1 + z) >= lo_um * 1e4) & (wave * (1 + z) <= hi_um * 1e4)
    # f_ν,obs ∝ (1+z) L_ν(λ_obs/(1+z)); photon-counting mean over d ln λ_obs = d ln λ_rest
    direct = (1 + z) * np.trapezoid(lnu[m] / wave[m], wave[m]) / math.log(hi_um / lo_um)
    ours = sim.band_flux_table([z])[0, sim.table_components().index("stellar_0"), BAND_INDEX["AKARI_N2"]]
    assert abs(2.5 * math.log10(ours / direct)) < 0.01


def test_simulated_fluxes_follow_distance_and_redshift():
    from astropy.cosmology import Planck18

    z = np.array([0.1, 0.5, 1.0, 2.0, 3.0, 4.0])
    n = z.size
    n_torus = len([c for c in sim.table_components() if c.startswith("torus_")])
    coef = np.zeros((n, 5))
    coef[:, 3] = 1.0e10  # M_sun formed in template 3, nothing else
    params = {
        "z": z, "coef": coef, "l_sf": np.zeros(n), "q_pah": np.zeros(n),
        "dust_it": np.zeros(n, dtype=int), "dust_wt": np.zeros(n),
        "w_torus": np.zeros((n, n_torus)), "l_disc": np.zeros(n), "ebv_agn": np.zeros(n),
    }
    flux = sim._true_fluxes(params, np.arange(len(BANDS)))
    d_l = Planck18.luminosity_distance(z).to_value("cm")
    ref = 1.0e10 * sim.band_flux_table(z)[:, sim.table_components().index("stellar_3"), :]
    ref = ref / (4 * math.pi * d_l**2)[:, None]
    ok = ref > AB0 * 10 ** (-0.4 * 40.0)  # ignore bands far below the Lyman limit (mag > 40)
    dmag = 2.5 * np.log10(flux[ok] / ref[ok])
    assert np.median(np.abs(dmag)) < 0.01
    assert np.max(np.abs(dmag)) < 0.1


def test_band_flux_table_shape_and_cache():
    z = [0.0, 0.5, 1.0]
    t1 = sim.band_flux_table(z)
    t2 = sim.band_flux_table(np.array(z))
    assert t1 is t2
    assert t1.shape == (3, len(sim.table_components()), len(BANDS))
    assert not t1.flags.writeable
    assert np.all(t1 >= 0)
    with pytest.raises(ValueError):
        sim.band_flux_table([5.5])


# ------------------------------------------------------------------------------------------
# Physics of the AGN label
# ------------------------------------------------------------------------------------------
def test_fagn_is_the_torus_share_of_the_8_1000um_luminosity():
    rng = np.random.default_rng(5)
    p = sim._draw_candidates(rng, 500, True)
    comps = sim._components()
    ir_d = comps.l_ir[comps.dust]
    dust_ir = (1 - p["dust_wt"]) * ir_d[p["dust_it"]] + p["dust_wt"] * ir_d[p["dust_it"] + 1]
    host = p["l_sf"] * ((1 - p["q_pah"]) * dust_ir + p["q_pah"] * comps.l_ir[comps.pah])
    host += p["coef"] @ comps.l_ir[comps.stellar]
    torus = p["w_torus"] @ comps.l_ir[comps.torus]
    np.testing.assert_allclose(torus / (torus + host), p["fagn_ir"], rtol=1e-10)
    assert np.all(p["fagn_ir"] >= THRESHOLD)


def test_agn_are_redder_in_the_near_and_mid_infrared(labelled):
    agn = _as_array(labelled, "class") == "AGN"
    for blue, red in (("AKARI_N2", "AKARI_N4"), ("IRAC1", "IRAC2")):
        a, b = _as_array(labelled, f"{blue}_mag"), _as_array(labelled, f"{red}_mag")
        ok = (a > MISSING) & (b > MISSING)
        colour = a - b
        assert np.median(colour[ok & agn]) > np.median(colour[ok & ~agn]) + 0.2, (blue, red)


def test_optically_hidden_agn_exist(labelled):
    agn = _as_array(labelled, "class") == "AGN"
    ebv = _as_array(labelled, "ebv_agn")
    assert np.mean(ebv[agn] > 0.4) > 0.1  # type-2-like AGN, visible only in the mid-IR


# ------------------------------------------------------------------------------------------
# Catalogue files
# ------------------------------------------------------------------------------------------
def test_ensure_embedded_catalogues_writes_once(tmp_path):
    paths = sim.ensure_embedded_catalogues(tmp_path, quick=True, seed=0)
    assert set(paths) == {"labelled", "unlabelled"}
    assert paths["labelled"].name == "nepw_labelled.fits"
    assert paths["unlabelled"].name == "nepw_unlabelled.fits"
    mtimes = {k: os.stat(p).st_mtime_ns for k, p in paths.items()}
    header = fits.getheader(paths["unlabelled"], 1)
    assert header["SIMVER"] == sim.SIM_VERSION and header["SIMSEED"] == 0 and header["SIMQUICK"]
    assert fits.getheader(paths["labelled"], 1)["NAXIS2"] == specs.load_spec("agn_study")["labelled"]["n"]
    assert header["NAXIS2"] == 5000

    again = sim.ensure_embedded_catalogues(tmp_path, quick=True, seed=0)
    assert again == paths
    assert {k: os.stat(p).st_mtime_ns for k, p in again.items()} == mtimes

    # a different seed invalidates the files
    sim.ensure_embedded_catalogues(tmp_path, quick=True, seed=1)
    assert fits.getheader(paths["labelled"], 1)["SIMSEED"] == 1
    assert fits.getheader(paths["unlabelled"], 1)["SIMSEED"] == 1
    data = fits.getdata(paths["labelled"], 1)
    n_agn = specs.load_spec("agn_study")["labelled"]["n_agn"]
    assert int(np.sum(np.char.strip(data["class"].astype(str)) == "AGN")) == n_agn
