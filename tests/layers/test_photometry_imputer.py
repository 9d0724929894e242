import keras
import numpy as np
import pytest

from keras_astro.layers import PhotometryImputer
from keras_astro.preprocess.photometry import MissingBandFiller, band_medians, neighbour_index


def _layer_for(filler):
    return PhotometryImputer(
        filler.strategy,
        fill_values=None if filler.strategy == "zero" else filler.medians,
        neighbours=neighbour_index(filler.k) if filler.strategy == "neighbour_median" else None,
    )


@pytest.mark.parametrize("strategy", ["zero", "band_median", "neighbour_median"])
def test_layer_equals_numpy_reference(raw_photometry, strategy):
    filler = MissingBandFiller(strategy).fit(raw_photometry)
    ref = filler.transform(raw_photometry)
    out = np.asarray(_layer_for(filler)(raw_photometry))
    assert out.shape == (60, 44, 2, 1)
    np.testing.assert_allclose(out[..., 0], ref, rtol=0, atol=1e-6)
    assert not np.isnan(out).any()


def test_zero_strategy_is_the_papers_default(raw_photometry):
    out = MissingBandFiller("zero").transform(raw_photometry)
    miss = np.isnan(raw_photometry)
    assert (out[miss] == 0).all()
    np.testing.assert_array_equal(out[~miss], raw_photometry[~miss])


def test_band_median_by_hand():
    x = np.full((3, 44, 2), np.nan, np.float32)
    x[:, 0, :] = [[20, 0.1], [22, 0.3], [np.nan, np.nan]]
    med = band_medians(x)
    np.testing.assert_allclose(med[0], [21.0, 0.2])
    out = MissingBandFiller("band_median").fit(x).transform(x)
    np.testing.assert_allclose(out[2, 0], [21.0, 0.2])


def test_neighbour_median_uses_the_objects_own_neighbours():
    nb = neighbour_index(2)
    j = 10
    x = np.full((1, 44, 2), np.nan, np.float32)
    neighbours = nb[j][nb[j] >= 0]
    x[0, neighbours[:3], 0] = [18.0, 19.0, 23.0]
    x[0, neighbours[:3], 1] = [0.1, 0.2, 0.3]
    filler = MissingBandFiller("neighbour_median").fit(np.nan_to_num(x, nan=25.0) * 0 + 25.0)
    out = filler.transform(x)
    np.testing.assert_allclose(out[0, j], [19.0, 0.2])


def test_neighbour_index_is_sorted_by_wavelength():
    from keras_astro import specs

    wl = np.array([b.wavelength_um for b in specs.agn_bands()])
    nb = neighbour_index(2)
    order = np.argsort(wl, kind="stable")
    shortest = order[0]
    assert (nb[shortest][:2] == -1).all() or (nb[shortest] >= 0).sum() == 2
    mid = order[20]
    assert set(nb[mid]) == set(order[[18, 19, 21, 22]])


def test_sentinel_minus_99_counts_as_missing():
    x = np.full((2, 44, 2), 20.0, np.float32)
    x[0, 5] = -99.0
    out = np.asarray(PhotometryImputer("zero")(x))
    assert (out[0, 5] == 0).all() and (out[1, 5] == 20).all()


def test_round_trip_in_a_saved_model(tmp_path, raw_photometry):
    filler = MissingBandFiller("neighbour_median").fit(raw_photometry)
    inp = keras.Input((44, 2))
    model = keras.Model(inp, _layer_for(filler)(inp))
    model.save(tmp_path / "imp.keras")
    again = keras.saving.load_model(tmp_path / "imp.keras")
    np.testing.assert_array_equal(again.predict(raw_photometry, verbose=0), model.predict(raw_photometry, verbose=0))


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="unknown strategy"):
        PhotometryImputer("mean")
    with pytest.raises(ValueError, match="fill_values"):
        PhotometryImputer("band_median")
    with pytest.raises(RuntimeError, match="fit"):
        MissingBandFiller("band_median").transform(np.zeros((1, 44, 2)))
