import numpy as np
import pytest
from astropy.table import Table

from keras_astro import specs
from keras_astro.io.nepw import (
    CatalogueError,
    CatalogueLayout,
    catalogue_to_photometry,
    load_photometry,
    validate_photometry_array,
    write_catalogue,
)


def make_table(n=6, seed=0):
    rng = np.random.default_rng(seed)
    t = Table()
    t["ID"] = np.arange(n)
    t["z"] = rng.uniform(0.1, 1.0, n)
    t["class"] = np.array(["AGN", "SFG"] * (n // 2) + ["SFG"] * (n % 2))
    for b in specs.band_names():
        t[f"{b}_mag"] = rng.uniform(18, 24, n)
        t[f"{b}_magerr"] = rng.uniform(0.01, 0.2, n)
    t["HSC_g_mag"][1] = -99.0
    t["HSC_g_magerr"][1] = -99.0
    return t


@pytest.mark.parametrize("suffix", [".fits", ".csv"])
def test_round_trip_to_the_44x2_array(tmp_path, suffix):
    t = make_table()
    path = write_catalogue(t, tmp_path / f"cat{suffix}", meta={"simver": "1"})
    phot = load_photometry(path, require_labels=True)
    assert phot.values.shape == (6, 44, 2) and phot.values.dtype == np.float32
    np.testing.assert_allclose(phot.values[0, 3, 0], t["HSC_z_mag"][0], rtol=1e-6)
    np.testing.assert_allclose(phot.values[2, 43, 1], t["PACS_160_magerr"][2], rtol=1e-6)
    assert np.isnan(phot.values[1, 0]).all()  # the -99 band is missing
    assert phot.labels.tolist() == [1, 0, 1, 0, 1, 0]
    np.testing.assert_allclose(phot.redshift, t["z"])
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_missing_columns_are_named():
    t = make_table()
    t.remove_columns(["AKARI_L18W_mag", "WISE_W2_magerr"])
    with pytest.raises(CatalogueError, match="AKARI_L18W_mag") as err:
        catalogue_to_photometry(t)
    assert "WISE_W2_magerr" in str(err.value)


def test_nan_magnitude_with_an_error_is_rejected():
    t = make_table()
    t["SPIRE_250_mag"][2] = np.nan
    with pytest.raises(CatalogueError, match=r"'SPIRE_250_mag' has NaN magnitudes \(rows \[2\]\)"):
        catalogue_to_photometry(t)


def test_negative_errors_are_rejected():
    t = make_table()
    t["GALEX_NUV_magerr"][4] = -0.05
    with pytest.raises(CatalogueError, match="'GALEX_NUV_magerr' has negative or zero errors"):
        catalogue_to_photometry(t)


def test_magnitude_without_error_is_rejected():
    t = make_table()
    t["IRAC1_magerr"][0] = -99.0
    with pytest.raises(CatalogueError, match="'IRAC1_magerr' has no error"):
        catalogue_to_photometry(t)


def test_unknown_labels_are_rejected():
    t = make_table()
    t["class"][0] = "QSO"
    with pytest.raises(CatalogueError, match="unknown labels"):
        catalogue_to_photometry(t)


def test_column_map_reads_other_names():
    t = make_table()
    t.rename_column("HSC_r_mag", "rmag_hsc")
    layout = CatalogueLayout.default({"HSC_r_mag": "rmag_hsc"})
    phot = catalogue_to_photometry(t, layout=layout)
    np.testing.assert_allclose(phot.values[:, 1, 0], t["rmag_hsc"], rtol=1e-6)


def test_masked_values_are_missing(tmp_path):
    t = Table(make_table(), masked=True)
    t["WISE_W4_mag"].mask[3] = True
    t["WISE_W4_magerr"].mask[3] = True
    phot = catalogue_to_photometry(t)
    assert np.isnan(phot.values[3, 24]).all()


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(CatalogueError, match="unknown catalogue format"):
        write_catalogue(make_table(), tmp_path / "cat.txt")
    with pytest.raises(FileNotFoundError):
        load_photometry(tmp_path / "nope.fits")


@pytest.mark.parametrize("shape", [(5, 43, 2), (5, 44, 3), (44, 2)])
def test_wrong_band_count_is_rejected(shape):
    with pytest.raises(CatalogueError, match=r"expected shape \(N, 44, 2\)"):
        validate_photometry_array(np.ones(shape))


def test_array_half_missing_band_is_rejected():
    x = np.ones((3, 44, 2), np.float32)
    x[1, 7, 0] = np.nan
    with pytest.raises(CatalogueError, match="row 1"):
        validate_photometry_array(x)
    x[1, 7, 1] = np.nan
    validate_photometry_array(x)
    x[2, 3, 1] = -1
    with pytest.raises(CatalogueError, match="expected > 0"):
        validate_photometry_array(x)
