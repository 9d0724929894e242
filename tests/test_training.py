import keras
import numpy as np
import pytest

from keras_astro.models.agn import AGNConfig, build_agn_cnn, compile_agn_cnn, stopping_callback
from keras_astro.training import fit_in_memory


@pytest.fixture
def fold(rng):
    x = rng.normal(size=(120, 44, 2, 1)).astype("float32")
    y = (rng.random(120) < 0.3).astype("float32")
    x[y == 1, :, 0, 0] += 1.0
    return x[:100], y[:100], x[100:], y[100:]


def _train(fold, cfg, epochs, fast_layers=True, **kw):
    x, y, xv, yv = fold
    keras.utils.set_random_seed(0)
    m = compile_agn_cnn(build_agn_cnn(cfg, fast_layers=fast_layers), cfg)
    hist = fit_in_memory(
        m, x, y, validation_data=(xv, yv), epochs=epochs, batch_size=len(x), callbacks=[stopping_callback(cfg)], **kw
    )
    return m, hist


def test_full_batch_logs_every_epoch(fold):
    cfg = AGNConfig.preset("B", delta=-1e9, dropout=0.0)
    m, hist = _train(fold, cfg, epochs=6)
    assert sorted(hist.history) == [
        "loss",
        "monitor",
        "val_accuracy",
        "val_agn_completeness",
        "val_loss",
        "val_sfg_completeness",
    ]
    assert len(hist.history["loss"]) == 6 and all(isinstance(v, float) for v in hist.history["loss"])
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    assert all(0.0 <= v <= 1.0 for v in hist.history["val_accuracy"])


def test_fast_and_stock_layers_train_alike(fold):
    """Same initial weights, full batch, no dropout: the two layer sets follow the same path.

    Adam moves every weight by about the learning rate per step whatever the size of its
    gradient, so a weight whose gradient is near rounding level (the conv biases, which feed
    batch norm, have a true gradient of 0) can move differently under any two implementations;
    weights are therefore compared at the scale of those steps, the losses tightly.
    (Calibration: the stock layers with and without XLA differ from each other by as much,
    ~3e-4 in the epoch-4 loss, as the fast layers differ from either.)
    """
    cfg = AGNConfig.preset("B", delta=-1e9, dropout=0.0)
    epochs = 5
    fast, hf = _train(fold, cfg, epochs=epochs)
    stock, hs = _train(fold, cfg, epochs=epochs, fast_layers=False)
    np.testing.assert_allclose(hf.history["loss"], hs.history["loss"], rtol=1e-3)
    np.testing.assert_allclose(hf.history["val_loss"], hs.history["val_loss"], rtol=2e-3)
    for vf, vs in zip(fast.weights, stock.weights):
        assert vf.path == vs.path
        a, b = vf.numpy(), vs.numpy()
        np.testing.assert_allclose(a, b, atol=2 * epochs * cfg.learning_rate)


def test_eq3_stops_training(fold):
    cfg = AGNConfig.preset("B", delta=10.0, M=1)  # any change is "a fall": stop at epoch M + 1
    m, hist = _train(fold, cfg, epochs=50)
    assert len(hist.history["loss"]) == 2 and m.stop_training


def test_jit_full_batch_step_matches(fold):
    cfg = AGNConfig.preset("B", delta=-1e9, dropout=0.0)
    _, h_tf = _train(fold, cfg, epochs=3)
    _, h_xla = _train(fold, cfg, epochs=3, jit_compile=True)
    np.testing.assert_allclose(h_tf.history["loss"], h_xla.history["loss"], rtol=1e-4)
