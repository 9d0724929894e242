import keras
import numpy as np
import pytest

from keras_astro.models.autoencoder import (
    AutoencoderConfig,
    build_autoencoder,
    build_autoencoder_parts,
    decoder_from,
    encoder_from,
)

# 256 pixels, pools of 2 only (the thesis's 896-pixel variant, scaled): code 8, bottleneck 4.
SMALL = dict(
    input_length=256,
    code_size=8,
    encoder_pools=(2,) * 6,
    decoder_upsampling=(2,) * 6,
    encoder_filters=(16, 16, 8, 8, 8, 1),
    decoder_filters=(1, 8, 8, 8, 16, 16),
)


def _smooth_spectra(rng, n: int, length: int) -> np.ndarray:
    """A common continuum with a broad line, plus smooth per-object changes; inside (-0.9, 0.9),
    reachable by the tanh output (standardised fluxes of similar objects look like this)."""
    x = np.linspace(0, 1, length)
    base = 0.6 * np.sin(2.5 * x) - 0.2 + 0.3 * np.exp(-0.5 * ((x - 0.6) / 0.05) ** 2)
    out = np.empty((n, length), np.float32)
    for i in range(n):
        s = base + rng.normal(0, 0.1) * (x - 0.5)
        s += rng.normal(0, 0.15) * np.exp(-0.5 * ((x - rng.uniform(0.1, 0.9)) / rng.uniform(0.05, 0.2)) ** 2)
        out[i] = s
    return np.clip(out, -0.9, 0.9)[..., None]


def _run(model: keras.Model, x) -> np.ndarray:
    """Inference without tracing a predict function (faster than ``predict`` for a few rows)."""
    return keras.ops.convert_to_numpy(model(x, training=False))


def test_shapes_follow_the_listing():
    cfg = AutoencoderConfig()
    assert (cfg.input_length, cfg.code_size, cfg.bottleneck_length) == (1792, 14, 7)
    assert cfg.encoder_filters == (256, 128, 64, 32, 32, 1) and cfg.encoder_kernels == (7, 5, 5, 3, 3, 3)
    assert cfg.encoder_pools == (4, 4, 2, 2, 2, 2) and cfg.decoder_upsampling == (2, 2, 2, 2, 4, 4)
    assert cfg.decoder_filters == (1, 32, 32, 64, 128, 256) and cfg.decoder_kernels == (3, 3, 3, 5, 5, 7)
    ae, enc, dec = build_autoencoder_parts(cfg)
    shape = {layer.name: tuple(layer.output.shape[1:]) for layer in ae.layers}
    assert shape["spectrum"] == (1792, 1)
    assert [shape[f"enc_pool_{i}"][0] for i in range(1, 6)] == [448, 112, 56, 28, 14]
    assert shape["enc_conv_6"] == (14, 1) and shape["bottleneck_pool"] == (7, 1)
    assert [shape[f"dec_upsample_{i}"][0] for i in range(1, 7)] == [14, 28, 56, 112, 448, 1792]
    assert shape["reconstruction"] == (1792, 1)
    assert ae.get_layer("reconstruction").get_config()["activation"] == "tanh"
    assert ae.get_layer("bottleneck_pool").padding == "same" and ae.get_layer("enc_pool_1").padding == "valid"
    assert all(ae.get_layer(f"{p}_conv_{i}").padding == "same" for p in ("enc", "dec") for i in range(1, 7))
    assert tuple(enc.output.shape[1:]) == (14,) and tuple(dec.input.shape[1:]) == (14,)
    assert tuple(dec.output.shape[1:]) == (1792, 1)
    enc_p = sum(
        k * a * b + b for a, b, k in [(1, 256, 7), (256, 128, 5), (128, 64, 5), (64, 32, 3), (32, 32, 3), (32, 1, 3)]
    )
    dec_p = sum(
        k * a * b + b
        for a, b, k in [(1, 1, 3), (1, 32, 3), (32, 32, 3), (32, 64, 5), (64, 128, 5), (128, 256, 7), (256, 1, 1)]
    )
    assert (
        (enc.count_params(), dec.count_params(), ae.count_params())
        == (enc_p, dec_p, enc_p + dec_p)
        == (216_417, 284_517, 500_934)
    )
    assert ae.loss == "mse"


def test_config_checks_the_layer_arithmetic():
    with pytest.raises(ValueError, match="code of 7 values, not code_size=14"):
        AutoencoderConfig(encoder_pools=(4, 4, 2, 2, 4, 2))
    with pytest.raises(ValueError, match="not input_length"):
        AutoencoderConfig(decoder_upsampling=(2, 2, 2, 2, 4, 2))
    with pytest.raises(ValueError, match="one entry per block"):
        AutoencoderConfig(encoder_kernels=(7, 5, 5))
    with pytest.raises(ValueError, match="not divisible"):
        AutoencoderConfig(input_length=1800)
    assert (
        AutoencoderConfig(
            input_length=896, code_size=28, encoder_pools=(2,) * 6, decoder_upsampling=(2,) * 6
        ).bottleneck_length
        == 14
    )


def test_halves_share_weights_and_compose(rng):
    keras.utils.set_random_seed(11)
    cfg = AutoencoderConfig(**SMALL)
    ae, enc, dec = build_autoencoder_parts(cfg)
    for name in ("enc_conv_1", "enc_conv_6"):
        assert enc.get_layer(name) is ae.get_layer(name)
    for name in ("dec_conv_1", "dec_conv_6", "reconstruction"):
        assert dec.get_layer(name) is ae.get_layer(name)
    ae_vars = {id(v) for v in ae.weights}
    assert {id(v) for v in enc.weights} <= ae_vars and {id(v) for v in dec.weights} <= ae_vars
    assert len(enc.weights) + len(dec.weights) == len(ae.weights)
    x = _smooth_spectra(rng, 32, cfg.input_length)
    w_before = [w.copy() for w in ae.get_weights()]
    ae.fit(x, x, epochs=1, batch_size=8, verbose=0)  # trains the autoencoder only
    assert not all(np.array_equal(a, b) for a, b in zip(w_before, ae.get_weights()))
    ae_enc = [w for i in range(1, 7) for w in ae.get_layer(f"enc_conv_{i}").get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(enc.get_weights(), ae_enc))  # the trained values
    code_after = _run(enc, x)
    probe = keras.Model(ae.input, ae.get_layer("enc_conv_6").output)
    np.testing.assert_allclose(code_after, _run(probe, x)[..., 0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_run(dec, code_after), _run(ae, x), rtol=1e-5, atol=1e-6)
    pair = build_autoencoder(cfg)
    assert len(pair) == 2 and tuple(pair[1].output.shape[1:]) == (8,)


def test_training_reduces_mse_on_smooth_spectra(rng):
    keras.utils.set_random_seed(7)
    cfg = AutoencoderConfig(**SMALL)
    ae, _ = build_autoencoder(cfg)
    x = _smooth_spectra(rng, 96, cfg.input_length)
    before = ae.evaluate(x, x, verbose=0)
    ae.fit(x, x, epochs=12, batch_size=cfg.batch_size, verbose=0)
    after = ae.evaluate(x, x, verbose=0)
    assert after < 0.9 * before  # seed 7: ~0.4; a dead 1-filter ReLU bottleneck (thesis layers) gives ~0.86


def test_keras_file_round_trip_and_flat_input(tmp_path, rng):
    cfg = AutoencoderConfig(**SMALL)
    ae, enc = build_autoencoder(cfg)
    x = _smooth_spectra(rng, 16, cfg.input_length)
    ae.fit(x, x, epochs=1, batch_size=8, verbose=0)
    ae.save(tmp_path / "ae.keras")
    again = keras.saving.load_model(tmp_path / "ae.keras")
    np.testing.assert_allclose(_run(again, x), _run(ae, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_run(encoder_from(again), x), _run(enc, x), rtol=1e-5, atol=1e-6)
    code = _run(enc, x)
    np.testing.assert_allclose(_run(decoder_from(again), code), _run(ae, x), rtol=1e-5, atol=1e-6)

    flat, flat_enc, flat_dec = build_autoencoder_parts(AutoencoderConfig(**SMALL, flat_input=True))
    assert flat.input_shape == (None, 256) and flat.output_shape == (None, 256)
    flat.set_weights(ae.get_weights())
    np.testing.assert_allclose(_run(flat, x[..., 0]), _run(ae, x)[..., 0], rtol=1e-5, atol=1e-6)
    assert tuple(flat_enc.output.shape[1:]) == (8,) and tuple(flat_dec.output.shape[1:]) == (256,)
