import importlib.util

import keras
import keras_tuner as kt
import numpy as np
import pytest

from keras_astro.models.spectral_cnn import (
    BEST_HPARAMS,
    BEST_TRIAL_AS_TUNED,
    INPUT_LENGTH,
    SpectralCNNHyperModel,
    SpectralCNNSpace,
    build_spectral_cnn,
    flatten_length,
    min_input_length,
    resolve_hparams,
    tuner_settings,
)

# The thesis's counts, kernels and pools with narrow layers, so that any point builds in ms.
SMALL = dict(conv_filters=(4, 8), deep_conv_filters=(4, 6), filters_default=8, dense_nodes=(8, 16), nodes_default=8)


def _arch(model: keras.Model) -> list[tuple]:
    """Layer-by-layer description: class, name and the settings that define the architecture."""
    keys = ("filters", "kernel_size", "padding", "pool_size", "units", "rate", "activation", "target_shape")
    out = []
    for layer in model.layers:
        cfg = layer.get_config()
        out.append((type(layer).__name__, layer.name, tuple((k, str(cfg[k])) for k in keys if k in cfg)))
    return out


def _random_point(hypermodel: SpectralCNNHyperModel, seed: int) -> kt.HyperParameters:
    """A point drawn the way keras-tuner's RandomSearchOracle draws one (active values only)."""
    space = kt.HyperParameters()
    hypermodel.build(space)
    hps = kt.HyperParameters()
    for i, h in enumerate(space.space):
        hps.merge([h])
        if hps.is_active(h):
            hps.values[h.name] = h.random_sample(seed * 1000 + i)
    return hps


def test_search_space_is_the_appendix_code():
    s = SpectralCNNSpace()
    assert s.n_conv_layers == (2, 6) and s.n_dense_layers == (2, 6) and s.max_pool_size == (1, 4)
    assert s.filter_choices(1) == s.filter_choices(3) == (64, 128, 256, 512)
    assert s.filter_choices(4) == s.filter_choices(6) == (64, 128, 256)
    assert s.kernel_sizes == (3, 5, 7) and s.dense_nodes == (64, 128, 256, 512)
    assert s.learning_rates == (1e-3, 1e-4)
    assert (s.conv_dropout, s.dense_dropout, s.pool_after_conv_layers) == (0.1, 0.5, (2, 3, 4))
    assert s.conv_padding == "valid" and s.dense_activation == "relu"
    t = tuner_settings()
    assert (t["algorithm"], t["objective"], t["max_trials"], t["epochs"], t["batch_size"]) == (
        "RandomSearch",
        "val_accuracy",
        40,
        12,
        32,
    )
    assert t["early_stopping"] == {"monitor": "val_accuracy", "patience": 4} and t["retrain_epochs"] == 60
    assert min_input_length() == 964 < INPUT_LENGTH == 3736


def test_best_hparams_are_table_5_trial_13():
    conv = [(256, 7), (64, 7), (512, 3), (128, 5), (128, 7), (256, 3)]
    expect = {"n_conv_layers": 6, "max_pool_size": 3, "n_dense_layers": 6, "learning_rate": 1e-4}
    for i, (f, k) in enumerate(conv, start=1):
        expect[f"conv_layer_{i}_filters"], expect[f"conv_layer_{i}_kernel_size"] = f, k
    for j, u in enumerate([512, 512, 128, 256, 256], start=1):
        expect[f"dense_layer_{j}_nodes"] = u
    assert BEST_HPARAMS == expect
    assert resolve_hparams(BEST_HPARAMS) == expect  # every value active and inside the space
    assert BEST_TRIAL_AS_TUNED["n_conv_layers"] == 5 and "conv_layer_6_filters" not in BEST_TRIAL_AS_TUNED
    # The tuner's own record of the trial lists conv_layer_6 too; as an inactive value it is ignored.
    tuned_with_listed = {**BEST_HPARAMS, "n_conv_layers": 5}
    assert resolve_hparams(tuned_with_listed) == resolve_hparams(BEST_TRIAL_AS_TUNED)


def test_best_model_shapes_and_parameter_count():
    m = build_spectral_cnn(BEST_HPARAMS, compile=False)
    shape = {layer.name: tuple(layer.output.shape[1:]) for layer in m.layers}
    assert shape["flux"] == (3736, 1)
    assert shape["conv_layer_1"] == (3730, 256) and shape["conv_layer_2"] == (3724, 64)
    assert shape["max_pool_2"] == (1241, 64) and shape["max_pool_3"] == (413, 512) and shape["max_pool_4"] == (136, 128)
    assert "max_pool_1" not in shape and "max_pool_5" not in shape and "max_pool_6" not in shape
    assert shape["conv_layer_6"] == (128, 256) and shape["flatten"] == (32768,)
    assert [shape[f"dense_layer_{j}"][0] for j in range(1, 6)] == [512, 512, 128, 256, 256]
    assert shape["class_probabilities"] == (3,)
    conv = [(1, 256, 7), (256, 64, 7), (64, 512, 3), (512, 128, 5), (128, 128, 7), (128, 256, 3)]
    dense = [(32768, 512), (512, 512), (512, 128), (128, 256), (256, 256), (256, 3)]
    expect = sum(k * cin * cout + cout for cin, cout, k in conv) + sum(a * b + b for a, b in dense)
    assert m.count_params() == expect == 17_962_435
    assert flatten_length(BEST_HPARAMS, INPUT_LENGTH) == 128
    assert build_spectral_cnn(BEST_TRIAL_AS_TUNED, compile=False).count_params() == 9_606_339


def test_default_point_and_compile_settings():
    m = build_spectral_cnn({}, input_length=964, space=SMALL)
    names = [layer.name for layer in m.layers]
    assert names == [
        "flux",
        "conv_layer_1",
        "conv_dropout_1",
        "conv_layer_2",
        "conv_dropout_2",
        "flatten",
        "dense_layer_1",
        "dense_dropout_1",
        "class_probabilities",
    ]  # defaults: 2 conv, pool 1, 1 dense
    assert float(keras.ops.convert_to_numpy(m.optimizer.learning_rate)) == pytest.approx(1e-3)
    assert m.loss == "sparse_categorical_crossentropy"
    one_hot = build_spectral_cnn(BEST_HPARAMS, input_length=964, one_hot_labels=True)
    assert one_hot.loss == "categorical_crossentropy"
    assert float(keras.ops.convert_to_numpy(one_hot.optimizer.learning_rate)) == pytest.approx(1e-4)


def test_hypermodel_and_builder_build_the_same_architecture():
    hm = SpectralCNNHyperModel(964, 3, space=SMALL)
    for seed in range(6):
        hps = _random_point(hm, seed)
        a, b = hm.build(hps), build_spectral_cnn(hps.values, input_length=964, space=SMALL)
        c = build_spectral_cnn(hps, input_length=964, space=SMALL)
        assert _arch(a) == _arch(b) == _arch(c)
        assert a.count_params() == b.count_params() == c.count_params()
        lr = [float(keras.ops.convert_to_numpy(m.optimizer.learning_rate)) for m in (a, b)]
        assert lr[0] == pytest.approx(lr[1]) == pytest.approx(hps.values["learning_rate"])
        n_conv, n_dense = hps.values["n_conv_layers"], hps.values["n_dense_layers"]
        assert sum(isinstance(layer, keras.layers.Conv1D) for layer in a.layers) == n_conv
        assert sum(isinstance(layer, keras.layers.Dense) for layer in a.layers) == n_dense  # incl. softmax


def test_tuner_trials_list_only_active_hyperparameters(tmp_path, monkeypatch):
    if importlib.util.find_spec("tensorboard") is None:
        # keras-tuner 1.4.8 imports tensorboard in every trial on the TF backend (for its HParams
        # callback, used only with a TensorBoard callback); TF 2.21 no longer installs it.
        monkeypatch.setattr(kt.Tuner, "_configure_tensorboard_dir", lambda self, *args, **kwargs: None)
    keras.utils.set_random_seed(0)
    hm = SpectralCNNHyperModel(964, 3, space=SMALL)
    tuner = kt.RandomSearch(
        hm, objective="val_accuracy", max_trials=3, seed=1, directory=tmp_path, project_name="cnn", overwrite=True
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 964, 1)).astype("float32")
    y = rng.integers(0, 3, 24)
    tuner.search(x[:16], y[:16], epochs=1, batch_size=8, validation_data=(x[16:], y[16:]), verbose=0)
    trials = list(tuner.oracle.trials.values())
    assert len(trials) == 3
    for trial in trials:
        v = trial.hyperparameters.values
        n_conv, n_dense = v["n_conv_layers"], v["n_dense_layers"]
        conv_keys = {k for k in v if k.startswith("conv_layer_")}
        dense_keys = {k for k in v if k.startswith("dense_layer_")}
        assert conv_keys == {f"conv_layer_{i}_{p}" for i in range(1, n_conv + 1) for p in ("filters", "kernel_size")}
        assert dense_keys == {f"dense_layer_{j}_nodes" for j in range(1, n_dense)}
        assert "max_pool_size" in v and "learning_rate" in v
        assert resolve_hparams(v, space=SMALL) == v
    best = tuner.get_best_hyperparameters(1)[0]
    rebuilt = build_spectral_cnn(best.values, input_length=964, space=SMALL)
    assert _arch(rebuilt) == _arch(tuner.hypermodel.build(best))


def test_flat_input_is_the_same_network(rng):
    point = {"n_conv_layers": 3, "max_pool_size": 2, "n_dense_layers": 3}
    a = build_spectral_cnn(point, input_length=964, space=SMALL, compile=False)
    b = build_spectral_cnn(point, input_length=964, space=SMALL, compile=False, flat_input=True)
    assert b.input_shape == (None, 964) and b.get_layer("add_channel").output.shape[1:] == (964, 1)
    b.set_weights(a.get_weights())
    x = rng.normal(size=(4, 964)).astype("float32")
    np.testing.assert_allclose(b.predict(x, verbose=0), a.predict(x[..., None], verbose=0), rtol=1e-6, atol=1e-7)


def test_bad_points_and_inputs_raise():
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        build_spectral_cnn({"n_conv": 3})
    with pytest.raises(ValueError, match="conv_layer_4_filters"):
        resolve_hparams({"n_conv_layers": 4, "conv_layer_4_filters": 512})  # layers >= 4 stop at 256
    with pytest.raises(ValueError, match="n_conv_layers"):
        resolve_hparams({"n_conv_layers": 7})
    with pytest.raises(ValueError, match="too short"):
        build_spectral_cnn(BEST_HPARAMS, input_length=200)
    with pytest.raises(ValueError, match="at least 964"):
        SpectralCNNHyperModel(900, 3)
    with pytest.raises(ValueError, match="unknown search-space fields"):
        SpectralCNNHyperModel(3736, 3, space={"filters": (8,)})
    assert SpectralCNNHyperModel(100, 3, space={"n_conv_layers": (2, 2), "max_pool_size": (1, 2)}).input_length == 100


def test_keras_file_round_trip(tmp_path, rng):
    m = build_spectral_cnn({"n_conv_layers": 4, "max_pool_size": 3, "n_dense_layers": 3}, input_length=964, space=SMALL)
    x = rng.normal(size=(8, 964, 1)).astype("float32")
    m.fit(x, rng.integers(0, 3, 8), epochs=1, verbose=0)
    m.save(tmp_path / "cnn.keras")
    again = keras.saving.load_model(tmp_path / "cnn.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
