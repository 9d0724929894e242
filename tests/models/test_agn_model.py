import keras
import numpy as np
import pytest

from keras_astro.models.agn import AGNConfig, build_agn_cnn, compile_agn_cnn, stopping_callback


def test_layer_shapes_follow_sec_2_3():
    m = build_agn_cnn()
    shape = {layer.name: tuple(layer.output.shape[1:]) for layer in m.layers}
    assert shape["photometry"] == (44, 2, 1)
    assert shape["conv1"] == (44, 2, 16)
    assert shape["conv2"] == (44, 2, 32)
    assert shape["conv3"] == (44, 2, 32)
    assert shape["flatten"] == (2816,)
    assert shape["fc1"] == (64,)
    assert shape["fc2"] == (16,)
    assert shape["p_agn"] == (1,)
    for i in (1, 2, 3):
        assert m.get_layer(f"conv{i}").kernel_size == (1, 2)
        assert m.get_layer(f"conv{i}").padding == "same"


def test_parameter_count_from_first_principles():
    m = build_agn_cnn()
    conv = (1 * 2 * 1 * 16 + 16) + (1 * 2 * 16 * 32 + 32) + (1 * 2 * 32 * 32 + 32)
    bn = 4 * (16 + 32 + 32)
    dense = (2816 * 64 + 64) + (64 * 16 + 16) + (16 + 1)
    assert m.count_params() == conv + bn + dense == 184_849


def test_output_is_a_probability(rng):
    m = build_agn_cnn()
    p = m.predict(rng.normal(size=(8, 44, 2, 1)).astype("float32"), verbose=0)
    assert p.shape == (8, 1) and np.all((p > 0) & (p < 1))


def test_presets_are_table_1():
    a, b, c = (AGNConfig.preset(k) for k in "ABC")
    assert (a.alpha, a.gamma, a.M, a.N, a.delta) == (0.99, 2.0, 4, 1.5, -0.10)
    assert (b.alpha, b.gamma, b.M, b.N, b.delta) == (0.99, 2.0, 4, 3.0, -0.15)
    assert (c.alpha, c.gamma, c.M, c.N, c.delta) == (0.99, 2.0, 6, 5.0, -0.20)
    assert AGNConfig() == b
    assert stopping_callback(c).M == 6
    with pytest.raises(ValueError, match="Table 1"):
        AGNConfig.preset("D")


def test_compiled_model_round_trips_through_keras_file(tmp_path, rng):
    m = compile_agn_cnn(build_agn_cnn(AGNConfig.preset("A")))
    x = rng.normal(size=(16, 44, 2, 1)).astype("float32")
    y = (rng.random(16) < 0.5).astype("float32")
    m.fit(x, y, epochs=1, verbose=0)
    m.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    assert again.loss.alpha == 0.99
