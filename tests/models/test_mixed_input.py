import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_astro import specs
from keras_astro.models.mixed_input import (
    MissingToValue,
    MixedInputConfig,
    adapt_normalizers,
    build_mixed_input,
    tabular_columns,
)

SMALL = dict(input_length=64, n_tabular=5)


def _raw(rng, n: int, cfg: MixedInputConfig, nan_fraction: float = 0.2):
    flux = rng.normal(5.0, 3.0, size=(n, cfg.input_length)).astype("float32") * rng.uniform(0.5, 2, cfg.input_length)
    tab = rng.normal(18.0, 2.0, size=(n, cfg.n_tabular)).astype("float32")
    tab[rng.random(tab.shape) < nan_fraction] = np.nan
    tab[:, 0] = rng.uniform(0, 3, n)  # z: never missing
    return flux.astype("float32"), tab


def _std(train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """sklearn StandardScaler fitted on ``train`` applied to ``x`` (independent numpy reference)."""
    train = train.astype(np.float64)
    mean, var = train.mean(axis=0), train.var(axis=0)
    scale = np.where(var == 0, 1.0, np.sqrt(var))
    return (x.astype(np.float64) - mean) / scale


def test_tabular_columns():
    base = tabular_columns()
    assert base == [
        "z",
        "zErr",
        "petroMag_u",
        "petroMag_g",
        "petroMag_r",
        "petroMag_i",
        "petroMag_z",
        "petroMagErr_u",
        "petroMagErr_g",
        "petroMagErr_r",
        "petroMagErr_i",
        "petroMagErr_z",
    ]
    full = tabular_columns(with_equivalent_widths=True)
    assert full[:12] == base and full[12:] == [line["name"] for line in specs.spectral_lines()] and len(full) == 26
    assert MixedInputConfig().n_tabular == 12 and MixedInputConfig.for_tabular(True).n_tabular == 26


def test_layers_follow_the_authors_code():
    cfg = MixedInputConfig()
    assert (cfg.input_length, cfg.n_classes, cfg.learning_rate, cfg.batch_size) == (3736, 3, 1e-3, 32)
    m = build_mixed_input(cfg, compile=False)
    shape = {layer.name: tuple(layer.output.shape[1:]) for layer in m.layers}
    assert shape["flux"] == (3736,) and shape["tabular"] == (12,)
    assert shape["cnn_conv_1"] == (3732, 256) and shape["cnn_pool_1"] == (1866, 256)
    assert shape["cnn_conv_2"] == (1862, 128) and shape["cnn_pool_2"] == (931, 128)
    assert shape["cnn_conv_3"] == (929, 64) and shape["cnn_pool_3"] == (464, 64)
    assert shape["cnn_flatten"] == (29696,) and shape["cnn_dense_1"] == (64,) and shape["cnn_dense_2"] == (32,)
    assert shape["mlp_dense_1"] == (128,) and shape["mlp_dense_2"] == (64,)
    assert shape["concatenate"] == (96,) and shape["head_dense_1"] == (128,) and shape["class_probabilities"] == (3,)
    # conv -> pool -> dropout order and rates (MixedInputModel._build_cnn)
    names = [layer.name for layer in m.layers]
    for i in (1, 2, 3):
        assert names.index(f"cnn_conv_{i}") < names.index(f"cnn_pool_{i}") < names.index(f"cnn_dropout_{i}")
        assert m.get_layer(f"cnn_dropout_{i}").rate == 0.1 and m.get_layer(f"cnn_conv_{i}").padding == "valid"
    assert [m.get_layer(f"cnn_conv_{i}").kernel_size[0] for i in (1, 2, 3)] == [5, 5, 3]
    assert m.get_layer("cnn_dense_dropout_1").rate == 0.5 and m.get_layer("mlp_dropout_1").rate == 0.5
    for j in (1, 2):
        assert isinstance(m.get_layer(f"mlp_dense_{j}").kernel_initializer, keras.initializers.HeUniform)
    relu = [n for n in ("cnn_conv_1", "cnn_dense_1", "cnn_dense_2", "mlp_dense_1", "mlp_dense_2", "head_dense_1")]
    assert all(m.get_layer(n).get_config()["activation"] == "relu" for n in relu)
    assert m.get_layer("class_probabilities").get_config()["activation"] == "softmax"
    conv = [(1, 256, 5), (256, 128, 5), (128, 64, 3)]
    dense = [(29696, 64), (64, 32), (12, 128), (128, 64), (96, 128), (128, 3)]
    expect = sum(k * a * b + b for a, b, k in conv) + sum(a * b + b for a, b in dense)
    trainable = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
    assert trainable == expect == 2_115_555
    assert m.count_params() == expect + (2 * 3736 + 1) + (2 * 12 + 1)  # Normalization mean, variance, count


def test_missing_to_value_layer():
    x = np.array([[1.0, np.nan, -3.0], [np.nan, np.nan, 0.5]], np.float32)
    layer = MissingToValue(-99.0)
    np.testing.assert_array_equal(np.asarray(layer(x)), np.where(np.isnan(x), -99.0, x))
    again = MissingToValue.from_config(layer.get_config())
    assert again.value == -99.0


def test_standardisation_inside_matches_numpy(rng):
    cfg = MixedInputConfig(**SMALL)
    flux_tr, tab_tr = _raw(rng, 50, cfg)
    flux_te, tab_te = _raw(rng, 7, cfg)
    tab_tr[:, 3] = 4.0  # a constant column: centred, not scaled (StandardScaler's rule)
    m = build_mixed_input(cfg, adapt_data=(flux_tr, tab_tr), compile=False)
    probe = keras.Model(m.inputs, [m.get_layer("flux_standardise").output, m.get_layer("tabular_standardise").output])
    fz, tz = probe.predict({"flux": flux_te, "tabular": tab_te}, verbose=0)
    tab_tr_filled = np.where(np.isnan(tab_tr), -99.0, tab_tr)
    np.testing.assert_allclose(fz, _std(flux_tr, flux_te), rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(tz, _std(tab_tr_filled, np.where(np.isnan(tab_te), -99.0, tab_te)), rtol=2e-5, atol=2e-5)
    assert np.isfinite(tz).all()
    # NaN and an explicit -99 are the same input
    explicit = np.where(np.isnan(tab_te), -99.0, tab_te).astype("float32")
    np.testing.assert_array_equal(
        m.predict({"flux": flux_te, "tabular": tab_te}, verbose=0),
        m.predict({"flux": flux_te, "tabular": explicit}, verbose=0),
    )


def test_separate_adaptation_and_bad_inputs(rng):
    cfg = MixedInputConfig(**SMALL)
    flux, tab = _raw(rng, 20, cfg)
    fn, tn = adapt_normalizers(cfg, flux, tab)
    assert (fn.name, tn.name) == ("flux_standardise", "tabular_standardise")
    m = build_mixed_input(cfg, flux_normalizer=fn, tabular_normalizer=tn)
    assert m.get_layer("flux_standardise") is fn
    with pytest.raises(ValueError, match=r"flux_train: expected shape \(N, 64\)"):
        adapt_normalizers(cfg, flux[:, :10], tab)
    with pytest.raises(ValueError, match="tabular_train"):
        adapt_normalizers(cfg, flux, tab[:, :2])
    bad = flux.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        adapt_normalizers(cfg, bad, tab)
    with pytest.raises(ValueError, match="not both"):
        build_mixed_input(cfg, flux_normalizer=fn, tabular_normalizer=tn, adapt_data=(flux, tab))
    with pytest.raises(ValueError, match="too short"):
        MixedInputConfig(input_length=20)


def test_keras_file_and_savedmodel_take_raw_inputs(tmp_path, rng):
    cfg = MixedInputConfig(**SMALL)
    flux, tab = _raw(rng, 40, cfg)
    m = build_mixed_input(cfg, adapt_data=(flux, tab))
    m.fit({"flux": flux, "tabular": tab}, rng.integers(0, 3, 40), epochs=1, batch_size=16, verbose=0)
    expect = m.predict({"flux": flux, "tabular": tab}, verbose=0)
    assert np.isfinite(expect).all()

    m.save(tmp_path / "mixed.keras")
    again = keras.saving.load_model(tmp_path / "mixed.keras")
    np.testing.assert_allclose(again.predict({"flux": flux, "tabular": tab}, verbose=0), expect, rtol=1e-5, atol=1e-6)
    assert isinstance(again.get_layer("tabular_missing"), MissingToValue)

    m.export(str(tmp_path / "savedmodel"), verbose=False)
    sm = tf.saved_model.load(str(tmp_path / "savedmodel"))
    served = sm.serve({"flux": tf.constant(flux), "tabular": tf.constant(tab)})
    np.testing.assert_allclose(np.asarray(served), expect, rtol=1e-5, atol=1e-6)
    sig = sm.signatures["serving_default"]
    out = sig(flux=tf.constant(flux), tabular=tf.constant(tab))
    np.testing.assert_allclose(np.asarray(next(iter(out.values()))), expect, rtol=1e-5, atol=1e-6)


def test_tiny_fit_beats_chance(rng):
    keras.utils.set_random_seed(3)
    cfg = MixedInputConfig(**SMALL, conv_filters=(16, 16, 8))
    n = 240
    y = rng.integers(0, 3, n)
    pix = np.arange(cfg.input_length)
    centre = np.array([12, 32, 52])[y]
    flux = 10.0 + 8.0 * np.exp(-0.5 * ((pix[None, :] - centre[:, None]) / 3.0) ** 2)
    flux = (flux + rng.normal(0, 1.0, flux.shape)).astype("float32")
    tab = rng.normal(18, 2, (n, cfg.n_tabular)).astype("float32")
    tab[:, 0] = y * 1.0 + rng.normal(0, 0.3, n)  # 'z' carries the class too
    tab[rng.random(tab.shape) < 0.1] = np.nan
    m = build_mixed_input(cfg, adapt_data=(flux[:180], tab[:180]))
    before = m.evaluate({"flux": flux[180:], "tabular": tab[180:]}, y[180:], verbose=0)[1]
    m.fit({"flux": flux[:180], "tabular": tab[:180]}, y[:180], epochs=6, batch_size=cfg.batch_size, verbose=0)
    after = m.evaluate({"flux": flux[180:], "tabular": tab[180:]}, y[180:], verbose=0)[1]
    assert after >= 0.8 and after > before
