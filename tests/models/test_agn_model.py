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


# ---------------------------------------------------------------- fast layers (same mathematics)
from keras_astro.layers.photometry import FusedBatchNormalization, ToeplitzConv2D  # noqa: E402


def _layer_grads(layer, x, up, training=None):
    import tensorflow as tf

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training) if training is not None else layer(x)
        s = tf.reduce_sum(y * up)
    return [y.numpy()] + [g.numpy() for g in tape.gradient(s, [x, *layer.trainable_variables])]


@pytest.mark.parametrize(
    "shape, filters, kernel, padding",
    [
        ((44, 2, 1), 16, (1, 2), "same"),
        ((44, 2, 16), 32, (1, 2), "same"),
        ((44, 2, 32), 32, (1, 2), "same"),
        ((7, 5, 3), 4, (1, 3), "same"),
        ((7, 5, 3), 4, (1, 2), "same"),
        ((7, 5, 3), 4, (1, 3), "valid"),
    ],
)
def test_toeplitz_conv_matches_conv2d(rng, shape, filters, kernel, padding):
    """Forward and gradients (input, kernel, bias) equal keras.layers.Conv2D's, same weights."""
    ref = keras.layers.Conv2D(filters, kernel, padding=padding)
    fast = ToeplitzConv2D(filters, kernel, padding=padding)
    ref.build((None, *shape))
    fast.build((None, *shape))
    assert fast._toeplitz is not None  # the matmul path is taken
    w = [rng.normal(size=v.shape).astype("float32") for v in ref.weights]
    ref.set_weights(w)
    fast.set_weights(w)
    x = rng.normal(size=(23, *shape)).astype("float32")
    out_shape = ref.compute_output_shape((23, *shape))
    up = rng.normal(size=out_shape).astype("float32")
    for a, b in zip(_layer_grads(fast, x, up), _layer_grads(ref, x, up)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max()))


def test_toeplitz_conv_is_a_conv2d_with_the_same_config_and_variables():
    fast = ToeplitzConv2D(32, (1, 2), padding="same", name="c")
    ref = keras.layers.Conv2D(32, (1, 2), padding="same", name="c")
    fast.build((None, 44, 2, 16))
    ref.build((None, 44, 2, 16))
    assert isinstance(fast, keras.layers.Conv2D)
    assert fast.get_config() == ref.get_config()
    assert [(v.path, v.shape) for v in fast.weights] == [(v.path, v.shape) for v in ref.weights]
    # outside the fast path (stride 2) it is plain Conv2D
    slow = ToeplitzConv2D(4, (1, 2), strides=(1, 2), padding="same")
    slow.build((None, 6, 4, 2))
    assert slow._toeplitz is None


def test_fused_batch_norm_matches_keras(rng):
    """Training-mode output, gradients and moving statistics equal BatchNormalization's."""
    shape = (300, 44, 2, 16)
    ref, fast = keras.layers.BatchNormalization(name="bn"), FusedBatchNormalization(name="bn")
    ref.build(shape)
    fast.build(shape)
    w = [rng.normal(size=16).astype("float32") for _ in range(4)]
    w[3] = np.abs(w[3]) + 0.5
    ref.set_weights(w)
    fast.set_weights(w)
    x = (rng.normal(size=shape) * 3 + 1).astype("float32")
    up = rng.normal(size=shape).astype("float32")
    for a, b in zip(_layer_grads(fast, x, up, training=True), _layer_grads(ref, x, up, training=True)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(b).max()))
    for a, b in zip(fast.non_trainable_weights, ref.non_trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast(x, training=False).numpy(), ref(x, training=False).numpy(), rtol=1e-6, atol=1e-6)
    assert fast.get_config() == ref.get_config()


def _stock_and_fast(cfg):
    fast = build_agn_cnn(cfg)
    stock = build_agn_cnn(cfg, fast_layers=False)
    stock.set_weights(fast.get_weights())
    return stock, fast


def test_fast_and_stock_networks_agree(rng):
    """The default (fast-layer) network and the stock-Keras one: same predictions and gradients.

    The dense layers' gradients must agree tightly. Below them, a ReLU input within rounding of
    0 can switch sides between any two float32 implementations (the stock layers with and
    without XLA included: measured against a float64 reference, both move the conv/BN gradients
    by up to ~2e-3 of their scale for some initialisations), so those are compared at 1e-2 of
    the variable's scale; the per-layer tests above check the layers themselves to 1e-5. The
    conv biases feed batch norm: their true gradient is 0 and both hold rounding noise, compared
    on the scale of the largest gradient.
    """
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    cfg = AGNConfig(dropout=0.0)
    stock, fast = _stock_and_fast(cfg)
    assert isinstance(fast.get_layer("conv2"), ToeplitzConv2D) and isinstance(
        fast.get_layer("bn2"), FusedBatchNormalization
    )
    assert type(stock.get_layer("conv2")) is keras.layers.Conv2D
    x = rng.normal(size=(64, 44, 2, 1)).astype("float32")
    y = (rng.random((64, 1)) < 0.3).astype("float32")
    np.testing.assert_allclose(fast.predict(x, verbose=0), stock.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    loss = compile_agn_cnn(fast, cfg).loss

    def grads(m):
        with tf.GradientTape() as tape:
            lv = loss(y, m(x, training=True)) + tf.add_n(m.losses)
        return [g.numpy() for g in tape.gradient(lv, m.trainable_variables)]

    gf, gs = grads(fast), grads(stock)
    top = max(np.abs(g).max() for g in gs)
    for v, a, b in zip(fast.trainable_variables, gf, gs):
        if v.path.startswith("conv") and v.path.endswith("bias"):
            np.testing.assert_allclose(a, b, atol=1e-5 * top)
            continue
        scale = np.abs(b).max()
        if v.path.startswith(("fc", "p_agn")):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
        else:
            np.testing.assert_allclose(a, b, atol=1e-2 * scale)


def test_fast_layer_weights_move_to_a_stock_model(tmp_path, rng):
    """Weights move with get/set_weights; a saved fast-layer model reloads as itself."""
    m = build_agn_cnn()
    x = rng.normal(size=(8, 44, 2, 1)).astype("float32")
    stock = build_agn_cnn(fast_layers=False)
    stock.set_weights(m.get_weights())
    np.testing.assert_allclose(stock.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    m.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert type(again.get_layer("conv1")) is ToeplitzConv2D and type(again.get_layer("bn1")) is FusedBatchNormalization
    np.testing.assert_array_equal(again.predict(x, verbose=0), m.predict(x, verbose=0))
