"""FNet (Rastegar Nia et al., Sec 3.2 / Fig. 2): architecture, implementations, training set-up."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_astro.export import export_savedmodel, predict_savedmodel
from keras_astro.layers.fft_conv import FFTConv1D
from keras_astro.models.fnet import (
    EpochStepDecay,
    FNetConfig,
    build_fnet,
    compile_fnet,
    conv_layers,
    fnet_callbacks,
)


def _spectra(rng, n, length):
    """Zero-mean, unit-norm random spectra (Sec 3.1 normalisation)."""
    x = rng.normal(size=(n, length)).astype("float32")
    x -= x.mean(axis=1, keepdims=True)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def full_direct():
    return build_fnet(FNetConfig(seed=0))


@pytest.fixture(scope="module")
def full_fft():
    return build_fnet(FNetConfig(seed=0), conv_impl="fft")


# --- the full-size network ---------------------------------------------------------------------


def test_24_convolutions_with_kernels_500_200_15(full_direct):
    convs = conv_layers(full_direct)
    assert len(convs) == 24 == FNetConfig().n_conv_layers
    assert [c.kernel_size[0] for c in convs] == [500, 200, 15] * 8
    assert all(c.padding == "same" for c in convs)
    assert [c.filters for c in convs] == [32] * 15 + [64] * 3 + [32] * 3 + [1] * 3
    shortcuts = [c for c in conv_layers(full_direct, include_shortcuts=True) if c not in convs]
    assert [(s.name, s.kernel_size[0], s.filters) for s in shortcuts] == [
        ("block1_shortcut_conv", 1, 32),
        ("block6_shortcut_conv", 1, 64),
        ("block7_shortcut_conv", 1, 32),
        ("block8_shortcut_conv", 1, 1),
    ]


def test_layer_shapes_follow_fig_2(full_direct):
    shape = {layer.name: tuple(layer.output.shape[1:]) for layer in full_direct.layers}
    assert shape["flux"] == (4618,)
    assert shape["add_channel"] == (4618, 1)
    for b, ch in zip(range(1, 9), [32] * 5 + [64, 32, 1]):
        for j in (1, 2, 3):
            assert shape[f"block{b}_conv{j}"] == (4618, ch)
        assert shape[f"block{b}_out"] == (4618, ch)
    assert shape["flatten"] == (4618,)
    assert shape["fc1"] == (796,)
    assert shape["fc2"] == (199,)
    assert shape["redshift"] == (1,)
    assert full_direct.get_layer("fc1").activation is keras.activations.relu
    assert full_direct.get_layer("redshift").activation is keras.activations.linear


def test_parameter_count_from_first_principles(full_direct):
    def conv(k, cin, cout):
        return k * cin * cout + cout

    n = 0
    cin = 1
    for cout, blocks in FNetConfig().stages:
        for i in range(blocks):
            n += conv(500, cin, cout) + conv(200, cout, cout) + conv(15, cout, cout) + 3 * 4 * cout
            if i == 0:
                n += conv(1, cin, cout) + 4 * cout
            cin = cout
    n += (4618 * 796 + 796) + (796 * 199 + 199) + (199 + 1)
    assert full_direct.count_params() == n


def test_fft_build_has_the_same_variables(full_direct, full_fft):
    assert [(v.path, v.shape) for v in full_fft.weights] == [(v.path, v.shape) for v in full_direct.weights]
    assert all(isinstance(c, FFTConv1D) for c in conv_layers(full_fft))
    assert not any(isinstance(c, FFTConv1D) for c in conv_layers(full_direct, include_shortcuts=True))
    auto = build_fnet(FNetConfig(), conv_impl="auto")
    assert [isinstance(c, FFTConv1D) for c in conv_layers(auto)] == [True, True, False] * 8


def test_full_size_fft_equals_direct_with_copied_weights(full_direct, full_fft):
    full_fft.set_weights(full_direct.get_weights())
    x = _spectra(np.random.default_rng(0), 2, 4618)
    outs = []
    for m in (full_direct, full_fft):
        names = ("block7_out", "block8_add", "redshift")
        probe = keras.Model(m.input, [m.get_layer(n).output for n in names])
        outs.append([o.numpy() for o in probe(x, training=False)])
    for want, got in zip(*outs):
        assert np.std(want) > 0
        assert np.max(np.abs(got - want)) < 1e-4 * max(1.0, np.max(np.abs(want)))


def test_he_normal_initialisation(full_direct):
    k = full_direct.get_layer("block3_conv1").get_weights()[0]  # (500, 32, 32)
    assert abs(k.std() - np.sqrt(2.0 / (500 * 32))) < 0.02 * np.sqrt(2.0 / (500 * 32))
    assert np.abs(k).max() > 2.5 * k.std()  # untruncated normal (PyTorch's kaiming_normal_)


# --- presets -----------------------------------------------------------------------------------


def test_presets():
    paper = FNetConfig.preset("paper")
    assert paper == FNetConfig()
    assert (paper.input_length, paper.kernels, paper.dense_units) == (4618, (500, 200, 15), (796, 199))
    assert paper.stages == ((32, 5), (64, 1), (32, 1), (1, 1))
    assert (paper.learning_rate, paper.beta_1, paper.beta_2, paper.weight_decay) == (2.4e-4, 0.9, 0.999, 1e-5)
    assert (paper.lr_drop_epochs, paper.lr_drop_factor, paper.lr_schedule) == ((75, 85, 90), 0.1, "step")
    caption = FNetConfig.preset("paper_caption")
    assert caption.stages == ((32, 21), (64, 1), (32, 1), (16, 1)) and caption.n_conv_layers == 72
    code = FNetConfig.preset("code")
    assert (code.learning_rate, code.lr_schedule, code.batch_size) == (2e-5, "plateau", 128)
    tiny = FNetConfig.preset("tiny", seed=3)
    assert tiny.input_length == 256 and tiny.seed == 3
    narrow = FNetConfig.preset("narrow")  # --quick: the paper's grid, kernels and 24 layers, 1/4 channels
    assert (narrow.input_length, narrow.kernels, narrow.n_conv_layers) == (4618, (500, 200, 15), 24)
    assert narrow.stages == ((8, 5), (16, 1), (8, 1), (1, 1)) and narrow.learning_rate == paper.learning_rate
    with pytest.raises(ValueError, match="unknown FNet preset"):
        FNetConfig.preset("huge")
    with pytest.raises(ValueError, match="lr_schedule"):
        FNetConfig(lr_schedule="cosine")
    with pytest.raises(ValueError, match="conv_impl"):
        build_fnet(tiny, conv_impl="winograd")


def test_paper_caption_variant_builds():
    m = build_fnet(FNetConfig.preset("paper_caption", input_length=64, kernels=(5, 3, 1), dense_units=(8, 4)))
    assert len(conv_layers(m)) == 72
    assert m.get_layer("flatten").output.shape[1:] == (64 * 16,)


# --- tiny network: implementations, training, saving ---------------------------------------------


@pytest.mark.parametrize("impl", ["fft", "auto"])
def test_weights_move_between_implementations(impl):
    cfg = FNetConfig.preset("tiny", seed=1)
    direct = build_fnet(cfg)
    other = build_fnet(cfg, conv_impl=impl)
    rng = np.random.default_rng(2)
    # Random BN statistics too, so that inference-mode BN is not the identity.
    other.set_weights(
        [w + 0.1 * rng.normal(size=w.shape).astype("float32") if w.ndim == 1 else w for w in direct.get_weights()]
    )
    other.set_weights([np.abs(w) if "variance" in v.path else w for v, w in zip(other.weights, other.get_weights())])
    direct.set_weights(other.get_weights())
    x = _spectra(rng, 6, 256)
    want = direct(x, training=False).numpy()
    np.testing.assert_allclose(other(x, training=False).numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(other(x, training=True).numpy(), direct(x, training=True).numpy(), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("stages", [None, ((4, 1), (16, 1))])
def test_channels_first_fft_model_equals_direct(stages):
    extra = {} if stages is None else {"stages": stages}
    cfg = FNetConfig.preset("tiny", seed=7, **extra)
    direct = build_fnet(cfg)
    cf = build_fnet(cfg, conv_impl="fft", data_format="channels_first")
    assert [(v.path, v.shape) for v in cf.weights] == [(v.path, v.shape) for v in direct.weights]
    assert cf.get_layer("block1_conv1").output.shape[1:] == (cfg.stages[0][0], 256)
    assert isinstance(cf.get_layer("block1_shortcut_conv"), FFTConv1D)
    rng = np.random.default_rng(8)
    cf.set_weights(
        [np.abs(w) + 0.5 if "variance" in v.path else w for v, w in zip(direct.weights, direct.get_weights())]
    )
    direct.set_weights(cf.get_weights())
    x = _spectra(rng, 4, 256)
    want = direct(x, training=False).numpy()
    np.testing.assert_allclose(cf(x, training=False).numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    with pytest.raises(ValueError, match="channels_first"):
        build_fnet(cfg, conv_impl="auto", data_format="channels_first")


def test_channel_axis_input():
    cfg = FNetConfig.preset("tiny", flat_input=False)
    m = build_fnet(cfg, conv_impl="auto")
    assert m.input_shape == (None, 256, 1)
    assert m(np.zeros((2, 256, 1), "float32")).shape == (2, 1)
    cf = build_fnet(cfg, conv_impl="fft", data_format="channels_first")
    assert cf.input_shape == (None, 256, 1) and cf(np.zeros((2, 256, 1), "float32")).shape == (2, 1)


def test_compile_fnet_settings():
    cfg = FNetConfig.preset("tiny")
    m = compile_fnet(build_fnet(cfg), cfg, steps_per_epoch=10, jit_compile=False)
    opt = m.optimizer
    assert isinstance(opt, keras.optimizers.Adam)
    assert (opt.beta_1, opt.beta_2, opt.epsilon, opt.global_clipnorm, opt.clipnorm) == (0.9, 0.999, 1e-8, 1.0, None)
    assert isinstance(opt._learning_rate, EpochStepDecay)
    assert isinstance(m.loss, keras.losses.MeanSquaredError)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        compile_fnet(build_fnet(cfg), cfg)
    assert fnet_callbacks(cfg) == []
    code = FNetConfig.preset("code")
    (cb,) = fnet_callbacks(code)
    assert isinstance(cb, keras.callbacks.ReduceLROnPlateau) and cb.factor == 0.1 and cb.monitor == "val_loss"


def test_l2_regulariser_adds_pytorch_weight_decay_to_the_gradient():
    """Sec 3.2 weight decay 1e-5 (PyTorch Adam(weight_decay)): d(penalty)/dw = 1e-5 * w on every kernel."""
    cfg = FNetConfig.preset("tiny")
    m = build_fnet(cfg, conv_impl="fft")
    kernels = [v for v in m.trainable_weights if v.path.endswith("kernel")]
    assert len(kernels) == cfg.n_conv_layers + 4 + 3  # convs, 1x1 shortcuts, dense
    conv = m.get_layer("block2_conv1")
    with tf.GradientTape() as tape:
        penalty = conv.kernel_regularizer(conv.kernel)
    np.testing.assert_allclose(tape.gradient(penalty, conv.kernel).numpy(), 1e-5 * conv.kernel.numpy(), rtol=1e-5)
    assert m.get_layer("fc1").kernel_regularizer is not None and m.get_layer("redshift").kernel_regularizer is not None


def test_step_schedule_values():
    """Sec 3.2: lr1 = 2.4e-4; after 75 epochs 0.1 lr1, after 85 0.01 lr1, after 90 0.001 lr1."""
    spe = 7
    s = EpochStepDecay(2.4e-4, (75, 85, 90), 0.1, steps_per_epoch=spe)
    steps = [0, 75 * spe - 1, 75 * spe, 85 * spe - 1, 85 * spe, 90 * spe - 1, 90 * spe, 500 * spe]
    want = [2.4e-4, 2.4e-4, 2.4e-5, 2.4e-5, 2.4e-6, 2.4e-6, 2.4e-7, 2.4e-7]
    got = [float(s(tf.constant(step, tf.int64))) for step in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(s))
    assert isinstance(again, EpochStepDecay) and again.get_config() == s.get_config()
    with pytest.raises(ValueError, match="steps_per_epoch"):
        EpochStepDecay(1e-3, (1,), 0.1, steps_per_epoch=0)


# Two blocks keep the training graphs (and their tracing time) small.
_TWO_BLOCKS = dict(stages=((4, 1), (2, 1)))
_TINY_TWO_BLOCKS = dict(input_length=256, kernels=(64, 16, 5), dense_units=(32, 8), **_TWO_BLOCKS)


def test_training_follows_the_schedule_and_round_trips(tmp_path):
    cfg = FNetConfig.preset("tiny", seed=4, lr_drop_epochs=(1, 2), **_TWO_BLOCKS)
    rng = np.random.default_rng(5)
    x = _spectra(rng, 32, 256)
    z = rng.uniform(0, 1, size=(32, 1)).astype("float32")
    m = compile_fnet(build_fnet(cfg, conv_impl="auto"), cfg, steps_per_epoch=2, jit_compile=False)
    lrs = []
    cb = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs: lrs.append(float(m.optimizer.learning_rate)))
    hist = m.fit(x, z, batch_size=16, epochs=3, verbose=0, callbacks=[cb])
    assert np.all(np.isfinite(hist.history["loss"]))
    np.testing.assert_allclose(lrs, [2.4e-4, 2.4e-5, 2.4e-6], rtol=1e-5)
    want = m(x, training=False).numpy()
    m.save(tmp_path / "fnet.keras")
    again = keras.saving.load_model(tmp_path / "fnet.keras")
    np.testing.assert_allclose(again(x, training=False).numpy(), want, rtol=1e-5, atol=1e-6)
    assert isinstance(again.optimizer._learning_rate, EpochStepDecay)
    assert isinstance(again.get_layer("block1_conv1"), FFTConv1D)

    path = export_savedmodel(again, tmp_path / "sm", input_spec=tf.TensorSpec((None, 256), tf.float32, name="flux"))
    np.testing.assert_allclose(predict_savedmodel(path, x), want, rtol=1e-5, atol=1e-6)


def test_plateau_variant_lowers_the_learning_rate():
    cfg = FNetConfig.preset("code", plateau_patience=1, plateau_monitor="loss", **_TINY_TWO_BLOCKS)
    m = compile_fnet(build_fnet(cfg, conv_impl="fft"), cfg, jit_compile=False)
    assert float(m.optimizer.learning_rate) == pytest.approx(2e-5)
    (cb,) = fnet_callbacks(cfg)
    cb.set_model(m)
    cb.on_train_begin()
    for epoch in range(2):  # no improvement in epoch 1: one reduction
        cb.on_epoch_end(epoch, {"loss": 1.0})
    assert float(m.optimizer.learning_rate) == pytest.approx(2e-6)
