"""FFTConv1D against keras.layers.Conv1D and an independent numpy reference."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_astro.layers.fft_conv import (
    FFTConv1D,
    fft_conv1d,
    fft_length_for,
    frozen_kernel_spectra,
    kernel_spectrum,
    smooth_length,
)


def numpy_same_xcorr(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Keras Conv1D 'same': y[t] = sum_j x[t + j - (k-1)//2] @ w[j], zeros outside, in float64."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    k = w.shape[0]
    length = x.shape[1]
    xp = np.pad(x, ((0, 0), ((k - 1) // 2, k // 2), (0, 0)))
    y = np.zeros(x.shape[:2] + (w.shape[2],))
    for j in range(k):
        y += xp[:, j : j + length, :] @ w[j]
    return y if b is None else y + b


def _pair(rng, k, cin, cout, length, batch=2):
    x = rng.normal(size=(batch, length, cin)).astype("float32")
    w = (rng.normal(size=(k, cin, cout)) / np.sqrt(k * cin)).astype("float32")
    b = rng.normal(size=(cout,)).astype("float32")
    direct = keras.layers.Conv1D(cout, k, padding="same")
    direct.build((None, length, cin))
    direct.set_weights([w, b])
    fft = FFTConv1D(cout, k)
    fft.build((None, length, cin))
    fft.set_weights(direct.get_weights())
    return x, w, b, direct, fft


def _rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(np.asarray(b))), 1e-30)


# --- FFT lengths ------------------------------------------------------------------------------


def test_smooth_length_is_the_smallest_5_smooth_number():
    def is_smooth(m):
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        return m == 1

    for n in range(1, 3000):
        s = smooth_length(n)
        assert s >= n and is_smooth(s)
        assert not any(is_smooth(m) for m in range(n, s))
    assert smooth_length(4618 + 250) == 5000  # not 8,192
    with pytest.raises(ValueError, match=">= 1"):
        smooth_length(0)


def test_fft_length_covers_length_plus_half_kernel():
    assert fft_length_for(4618, 500) == 5000
    assert fft_length_for(4618, 200) == 4800
    assert fft_length_for(4618, 15) == 4800
    assert fft_length_for(10, 500) == 500  # room for the whole kernel


# --- values -----------------------------------------------------------------------------------


CASES = [
    # (kernel, c_in, c_out, length)
    *[
        (k, cin, cout, n)
        for k, (cin, cout), n in itertools.product((4, 15, 16), ((1, 1), (1, 32), (32, 64), (64, 1)), (257, 300))
    ],
    *[
        (k, cin, cout, n)
        for k, (cin, cout), n in itertools.product((200, 500), ((1, 1), (1, 32), (32, 64), (64, 1)), (777,))
    ],
    (500, 3, 5, 1024),
    (499, 3, 5, 1023),
    (1, 4, 6, 31),
    (2, 4, 6, 31),
    (500, 2, 3, 40),  # kernel wider than the input
    (15, 1, 1, 1),
]


@pytest.mark.parametrize("k,cin,cout,length", CASES)
def test_matches_conv1d_and_numpy(k, cin, cout, length):
    rng = np.random.default_rng(k * 1000 + cin * 10 + cout + length)
    x, w, b, direct, fft = _pair(rng, k, cin, cout, length)
    got = fft(x).numpy()
    assert got.shape == (2, length, cout)
    assert _rel(got, direct(x).numpy()) < 1e-4
    assert _rel(got, numpy_same_xcorr(x, w, b)) < 1e-4


def test_full_fnet_length_with_500_tap_kernel():
    rng = np.random.default_rng(7)
    x, w, b, direct, fft = _pair(rng, 500, 8, 8, 4618)
    assert _rel(fft(x).numpy(), direct(x).numpy()) < 1e-4
    assert _rel(fft(x).numpy(), numpy_same_xcorr(x, w, b)) < 1e-4


def test_impulse_response_is_the_kernel_in_keras_order():
    """A unit impulse at pixel t0 returns w[(k-1)//2 + t0 - t] at pixel t: cross-correlation, left pad (k-1)//2."""
    for k in (4, 5):
        w = np.arange(1, k + 1, dtype="float32").reshape(k, 1, 1)
        x = np.zeros((1, 12, 1), "float32")
        x[0, 6, 0] = 1.0
        y = fft_conv1d(x, w).numpy()[0, :, 0]
        want = np.zeros(12)
        for t in range(12):
            j = 6 - t + (k - 1) // 2
            if 0 <= j < k:
                want[t] = w[j, 0, 0]
        np.testing.assert_allclose(y, want, atol=1e-6)


def test_channels_first_and_dynamic_length():
    rng = np.random.default_rng(3)
    x, w, b, direct, _ = _pair(rng, 200, 3, 4, 640)
    cf = FFTConv1D(4, 200, data_format="channels_first")
    cf.build((None, 3, None))
    cf.set_weights([w, b])
    got = cf(np.transpose(x, (0, 2, 1))).numpy()
    assert _rel(np.transpose(got, (0, 2, 1)), direct(x).numpy()) < 1e-4

    inp = keras.Input((None, 3))
    model = keras.Model(inp, FFTConv1D(4, 200, name="c")(inp))
    model.get_layer("c").set_weights([w, b])
    f = tf.function(lambda t: model(t), input_signature=[tf.TensorSpec((None, None, 3), tf.float32)])
    for n in (640, 333):
        assert _rel(f(x[:, :n]).numpy(), direct(x[:, :n]).numpy()) < 1e-4


@pytest.mark.parametrize("k", [1, 15])
def test_channels_first_small_kernels(k):
    rng = np.random.default_rng(16 + k)
    x, w, b, direct, _ = _pair(rng, k, 5, 3, 101)
    cf = FFTConv1D(3, k, data_format="channels_first")
    cf.build((None, 5, 101))
    cf.set_weights([w, b])
    got = np.transpose(cf(np.transpose(x, (0, 2, 1))).numpy(), (0, 2, 1))
    assert _rel(got, direct(x).numpy()) < 1e-5


def test_float64_and_mixed_precision():
    rng = np.random.default_rng(4)
    x, w, b, direct, _ = _pair(rng, 64, 2, 3, 200)
    ref = numpy_same_xcorr(x, w, b)
    y64 = fft_conv1d(x.astype("float64"), w.astype("float64"), b.astype("float64"))
    assert y64.dtype == tf.float64 and _rel(y64.numpy(), ref) < 1e-10
    half = FFTConv1D(3, 64, dtype="mixed_float16")
    half.build((None, 200, 2))
    half.set_weights([w, b])
    y16 = half(x)
    assert y16.dtype == tf.float16 and _rel(y16.numpy().astype("float64"), ref) < 2e-3


def test_kernel_spectrum_is_the_reversed_kernel_transform():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(7, 2, 3)).astype("float32")
    want = np.fft.rfft(np.transpose(w[::-1], (1, 2, 0)), n=16, axis=-1)
    np.testing.assert_allclose(kernel_spectrum(w, 16).numpy(), want, atol=1e-5)


def test_short_kernels_use_the_dft_matrix_path():
    """Kernels of <= 64 taps are transformed by a DFT matmul; it must equal the rfft route."""
    from keras_astro.layers.fft_conv import _DFT_MAX_TAPS, _kernel_operand, _mixing_operand

    rng = np.random.default_rng(15)
    for k in (1, 15, 16, _DFT_MAX_TAPS):
        w = tf.constant(rng.normal(size=(k, 3, 4)).astype("float32"))
        n = fft_length_for(300, k)
        via_fft = _mixing_operand(kernel_spectrum(w, n), 3, 4)
        assert _rel(_kernel_operand(w, n, 3, 4).numpy(), via_fft.numpy()) < 1e-5


def test_jit_compiled_call_matches():
    rng = np.random.default_rng(6)
    x, _, _, direct, fft = _pair(rng, 200, 4, 4, 500)
    f = tf.function(lambda t: fft(t), jit_compile=True)
    assert _rel(f(x).numpy(), direct(x).numpy()) < 1e-4


# --- gradients --------------------------------------------------------------------------------


@pytest.mark.parametrize("k,cin,cout,length", [(15, 4, 6, 301), (200, 3, 5, 400), (500, 2, 3, 777), (16, 1, 1, 64)])
def test_gradients_match_conv1d(k, cin, cout, length):
    rng = np.random.default_rng(k + length)
    x, _, _, direct, fft = _pair(rng, k, cin, cout, length)
    x = tf.constant(x)
    probe = tf.constant(rng.normal(size=(2, length, cout)).astype("float32"))
    grads = []
    for layer in (direct, fft):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x) * probe)
        grads.append(tape.gradient(loss, [x, layer.kernel, layer.bias]))
    for g_direct, g_fft in zip(*grads):
        assert _rel(g_fft.numpy(), g_direct.numpy()) < 1e-4


def test_trains_like_conv1d():
    """A few SGD steps from the same start give the same weights with either implementation."""
    rng = np.random.default_rng(8)
    x = rng.normal(size=(8, 128, 2)).astype("float32")
    y = rng.normal(size=(8, 128, 3)).astype("float32")
    weights = []
    for cls in (keras.layers.Conv1D, FFTConv1D):
        inp = keras.Input((128, 2))
        model = keras.Model(
            inp, cls(3, 64, padding="same", kernel_initializer=keras.initializers.GlorotUniform(seed=1))(inp)
        )
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=False)
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        assert _rel(b, a) < 1e-4


# --- weights, config, serialisation -----------------------------------------------------------


def test_same_variables_as_conv1d_both_ways():
    direct = keras.layers.Conv1D(5, 9, padding="same", name="c")
    fft = FFTConv1D(5, 9, name="c")
    direct.build((None, 50, 3))
    fft.build((None, 50, 3))
    assert [(v.path, v.shape) for v in fft.weights] == [(v.path, v.shape) for v in direct.weights]
    assert [v.shape for v in fft.weights] == [(9, 3, 5), (5,)]
    rng = np.random.default_rng(9)
    fft.set_weights([rng.normal(size=(9, 3, 5)).astype("float32"), rng.normal(size=5).astype("float32")])
    direct.set_weights(fft.get_weights())
    x = rng.normal(size=(2, 50, 3)).astype("float32")
    assert _rel(fft(x).numpy(), direct(x).numpy()) < 1e-5
    nobias = FFTConv1D(5, 9, use_bias=False)
    nobias.build((None, 50, 3))
    assert len(nobias.weights) == 1


def test_config_round_trip_and_registration():
    layer = FFTConv1D(
        7, 33, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3), fft_length=512, name="x"
    )
    cfg = layer.get_config()
    assert cfg["padding"] == "same" and cfg["kernel_size"] == (33,) and cfg["fft_length"] == 512
    again = FFTConv1D.from_config(cfg)
    assert again.get_config() == cfg
    ser = keras.saving.serialize_keras_object(layer)
    assert ser["registered_name"] == "keras_astro>FFTConv1D"
    assert isinstance(keras.saving.deserialize_keras_object(ser), FFTConv1D)


def _model(rng):
    inp = keras.Input((300, 2), name="x")
    h = FFTConv1D(4, 200, activation="relu", name="fft1")(inp)
    h = FFTConv1D(1, 15, name="fft2")(h)
    out = keras.layers.Dense(1, name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    x = rng.normal(size=(5, 300, 2)).astype("float32")
    return model, x


def test_keras_file_round_trip(tmp_path):
    rng = np.random.default_rng(10)
    model, x = _model(rng)
    want = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(again.get_layer("fft1"), FFTConv1D)
    np.testing.assert_allclose(again.predict(x, verbose=0), want, rtol=1e-6, atol=1e-6)


def test_savedmodel_export_round_trip(tmp_path):
    rng = np.random.default_rng(11)
    model, x = _model(rng)
    want = model.predict(x, verbose=0)
    model.export(tmp_path / "sm", verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(reloaded.serve(tf.constant(x)).numpy(), want, rtol=1e-5, atol=1e-6)


# --- frozen kernel spectra ----------------------------------------------------------------------


def test_frozen_spectra_give_the_same_predictions_and_never_go_stale():
    rng = np.random.default_rng(12)
    model, x = _model(rng)
    want = model.predict(x, verbose=0)
    layers = [model.get_layer("fft1"), model.get_layer("fft2")]
    with frozen_kernel_spectra(model) as m:
        assert m is model and model.predict_function is None
        np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-6, atol=1e-7)
        assert all(len(layer._frozen_spectra.by_length) == 1 for layer in layers)
        traced = tf.function(lambda t: model(t, training=False))
        np.testing.assert_allclose(traced(x).numpy(), want, rtol=1e-6, atol=1e-7)
        # New weights inside the block: the graph check falls back to the new kernel's spectrum.
        new = [w * 0.5 for w in model.get_weights()]
        model.set_weights(new)
        fresh, _ = _model(rng)
        fresh.set_weights(new)
        want_new = fresh(x, training=False).numpy()
        np.testing.assert_allclose(traced(x).numpy(), want_new, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(model(x, training=False).numpy(), want_new, rtol=1e-5, atol=1e-6)
    assert all(layer._frozen_spectra is None for layer in layers) and model.predict_function is None
    np.testing.assert_allclose(model.predict(x, verbose=0), want_new, rtol=1e-5, atol=1e-6)


def test_frozen_spectra_leave_training_gradients_alone():
    rng = np.random.default_rng(13)
    x, _, _, direct, fft = _pair(rng, 64, 3, 4, 200)
    with frozen_kernel_spectra(fft):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fft(x, training=True) ** 2)
        g_fft = tape.gradient(loss, fft.kernel)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(direct(x) ** 2)
    g_direct = tape.gradient(loss, direct.kernel)
    assert _rel(g_fft.numpy(), g_direct.numpy()) < 1e-4


def test_export_inside_frozen_block(tmp_path):
    rng = np.random.default_rng(14)
    model, x = _model(rng)
    want = model(x, training=False).numpy()
    with frozen_kernel_spectra(model):
        model.export(tmp_path / "sm", verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(reloaded.serve(tf.constant(x)).numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=-3), "kernel_size"),
        (dict(kernel_size=2.5), "kernel_size"),
        (dict(kernel_size=(3, 3)), "kernel_size"),
        (dict(kernel_size=5, padding="valid"), "padding='same'"),
        (dict(kernel_size=5, padding="causal"), "padding='same'"),
        (dict(kernel_size=5, strides=2), "strides=1"),
        (dict(kernel_size=5, dilation_rate=2), "dilation_rate=1"),
        (dict(kernel_size=5, groups=2), "groups=1"),
        (dict(kernel_size=5, fft_length=0), "fft_length"),
        (dict(kernel_size=5, filters=0), "filters"),
    ],
)
def test_bad_configuration_raises(kwargs, match):
    kwargs = {"filters": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        FFTConv1D(**kwargs)


def test_too_short_fft_length_raises_on_call():
    layer = FFTConv1D(2, 9, fft_length=63)  # needs 60 + 9//2 = 64
    with pytest.raises(ValueError, match="too short"):
        layer(np.zeros((1, 60, 1), "float32"))
