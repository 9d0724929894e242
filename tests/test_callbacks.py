import keras
import numpy as np
import pytest

from keras_astro.callbacks import MonitorStopping


def _tiny_model():
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    return m


def _drive(cb, comps, accs):
    """Feed epoch logs to the callback, tagging the weights with the epoch number."""
    model = _tiny_model()
    cb.set_model(model)
    model.stop_training = False
    cb.on_train_begin()
    last = -1
    for epoch, (c, a) in enumerate(zip(comps, accs)):
        model.layers[-1].kernel.assign(np.full((3, 1), float(epoch), "float32"))
        cb.on_epoch_end(epoch, {"val_agn_completeness": c, "val_accuracy": a})
        last = epoch
        if model.stop_training:
            break
    cb.on_train_end()
    return model, last


def test_monitor_is_N_completeness_plus_accuracy():
    cb = MonitorStopping(N=3.0, M=4, delta=-0.15)
    _drive(cb, [0.5, 0.8], [0.6, 0.7])
    assert cb.history == pytest.approx([3 * 0.5 + 0.6, 3 * 0.8 + 0.7])


def test_stops_when_monitor_falls_more_than_delta_over_M_epochs():
    # preset B: N = 3, M = 4, delta = -0.15. Monitor rises, then completeness drops by 0.06
    # (monitor -0.18) within 4 epochs -> stop at that epoch.
    comps = [0.80, 0.82, 0.84, 0.86, 0.86, 0.86, 0.85, 0.84, 0.80, 0.80, 0.80]
    accs = [0.80] * len(comps)
    cb = MonitorStopping(N=3.0, M=4, delta=-0.15)
    model, last = _drive(cb, comps, accs)
    mon = [3 * c + a for c, a in zip(comps, accs)]
    expected = next(t for t in range(4, len(mon)) if mon[t] - mon[t - 4] < -0.15)
    assert cb.stopped_epoch == expected == last == 8
    # best monitor at epoch 3 (first 0.86): its weights are restored
    assert cb.best_epoch == 3
    np.testing.assert_array_equal(model.layers[-1].kernel.numpy(), np.full((3, 1), 3.0))


def test_does_not_stop_on_small_fluctuations():
    comps = [0.8, 0.79, 0.81, 0.8, 0.79, 0.8, 0.81, 0.8]
    cb = MonitorStopping(N=1.5, M=4, delta=-0.10)
    _, last = _drive(cb, comps, [0.8] * len(comps))
    assert cb.stopped_epoch == -1 and last == len(comps) - 1


def test_restore_last_weights_option():
    comps = [0.9, 0.5, 0.4, 0.3, 0.2, 0.1]
    cb = MonitorStopping(N=1.0, M=1, delta=-0.05, restore_best_weights=False)
    model, last = _drive(cb, comps, [0.5] * len(comps))
    assert last == 1
    np.testing.assert_array_equal(model.layers[-1].kernel.numpy(), np.full((3, 1), 1.0))


def test_warm_up_epochs_are_ignored():
    comps = [0.9, 0.1, 0.1, 0.1, 0.5, 0.6, 0.7]
    cb = MonitorStopping(N=1.0, M=1, delta=-0.05, start_from_epoch=3)
    _, last = _drive(cb, comps, [0.5] * len(comps))
    assert cb.stopped_epoch == -1 and cb.best_epoch == 6 and last == 6


def test_missing_metric_names_what_is_needed():
    cb = MonitorStopping(N=1.0, M=2, delta=-0.1)
    cb.set_model(_tiny_model())
    cb.on_train_begin()
    with pytest.raises(KeyError, match="val_agn_completeness"):
        cb.on_epoch_end(0, {"loss": 1.0})


def test_bad_M_raises():
    with pytest.raises(ValueError):
        MonitorStopping(N=1, M=0, delta=-0.1)
