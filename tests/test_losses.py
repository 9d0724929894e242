import keras
import numpy as np
import pytest

from keras_astro.losses import BinaryFocalLoss


def focal_reference(y, p, alpha, gamma):
    """Eq. 2 of Chen et al. 2021 in its intended form, in plain numpy."""
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.mean(-y * alpha * (1 - p) ** gamma * np.log(p) - (1 - y) * (1 - alpha) * p**gamma * np.log(1 - p))


@pytest.mark.parametrize("alpha,gamma", [(0.99, 2.0), (0.25, 0.0), (0.5, 1.5)])
def test_matches_numpy_reference(rng, alpha, gamma):
    y = (rng.random((64, 1)) < 0.3).astype("float32")
    p = rng.uniform(0.001, 0.999, size=(64, 1)).astype("float32")
    got = float(BinaryFocalLoss(alpha=alpha, gamma=gamma)(y, p))
    np.testing.assert_allclose(got, focal_reference(y, p, alpha, gamma), rtol=1e-5)


def test_agrees_with_keras_class_balanced_focal_crossentropy(rng):
    y = (rng.random((128, 1)) < 0.2).astype("float32")
    p = rng.uniform(0.01, 0.99, size=(128, 1)).astype("float32")
    ours = float(BinaryFocalLoss(alpha=0.99, gamma=2.0)(y, p))
    ref = float(keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.99, gamma=2.0)(y, p))
    np.testing.assert_allclose(ours, ref, rtol=1e-4)


def test_gamma_zero_alpha_half_is_half_cross_entropy(rng):
    y = (rng.random((50, 1)) < 0.5).astype("float32")
    p = rng.uniform(0.05, 0.95, size=(50, 1)).astype("float32")
    bce = float(keras.losses.BinaryCrossentropy()(y, p))
    np.testing.assert_allclose(float(BinaryFocalLoss(alpha=0.5, gamma=0.0)(y, p)), 0.5 * bce, rtol=1e-4)


def test_alpha_up_weights_missed_agn():
    loss = BinaryFocalLoss(alpha=0.99, gamma=2.0)
    missed_agn = float(loss(np.array([[1.0]]), np.array([[0.1]])))
    false_agn = float(loss(np.array([[0.0]]), np.array([[0.9]])))
    assert missed_agn > 50 * false_agn


def test_from_logits_equals_sigmoid_input(rng):
    y = (rng.random((20, 1)) < 0.5).astype("float32")
    z = rng.normal(size=(20, 1)).astype("float32")
    a = float(BinaryFocalLoss(from_logits=True)(y, z))
    b = float(BinaryFocalLoss()(y, 1 / (1 + np.exp(-z))))
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_serialization_round_trip():
    loss = BinaryFocalLoss(alpha=0.9, gamma=3.0)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, BinaryFocalLoss) and again.alpha == 0.9 and again.gamma == 3.0


@pytest.mark.parametrize("kw", [{"alpha": 1.5}, {"alpha": -0.1}, {"gamma": -1.0}])
def test_bad_parameters_raise(kw):
    with pytest.raises(ValueError):
        BinaryFocalLoss(**kw)
