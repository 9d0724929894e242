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


# --- detection losses (CLARAN Eq. 4, 6, 9, 10) -----------------------------------------------
from keras_astro.losses import (  # noqa: E402
    SmoothL1Loss,
    masked_sparse_softmax_cross_entropy,
    smooth_l1,
    weighted_smooth_l1,
)


def smooth_l1_reference(x, sigma):
    s2 = sigma**2
    return np.where(np.abs(x) < 1 / s2, 0.5 * s2 * x**2, np.abs(x) - 0.5 / s2)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_smooth_l1_matches_numpy(rng, sigma):
    x = rng.normal(scale=0.6, size=(7, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(smooth_l1(x, sigma)), smooth_l1_reference(x, sigma), rtol=1e-6, atol=1e-7)


def test_smooth_l1_sigma1_is_huber(rng):
    x = rng.normal(size=(50,)).astype("float32")
    huber = float(keras.losses.Huber(delta=1.0)(np.zeros_like(x), x))
    np.testing.assert_allclose(float(np.mean(np.asarray(smooth_l1(x, 1.0)))), huber, rtol=1e-5)


def test_smooth_l1_is_continuous_at_the_knee():
    for sigma in (1.0, 3.0):
        k = 1 / sigma**2
        a, b = np.asarray(smooth_l1(np.array([k - 1e-4, k + 1e-4], "float32"), sigma))
        assert abs(a - b) < 1e-3


def test_weighted_smooth_l1_masks_and_normalises(rng):
    t = rng.normal(size=(2, 5, 4)).astype("float32")
    p = rng.normal(size=(2, 5, 4)).astype("float32")
    w = (rng.random((2, 5, 1)) < 0.5).astype("float32") * np.ones((1, 1, 4), "float32")
    got = float(weighted_smooth_l1(t, p, w, sigma=3.0, normalizer=7.0))
    np.testing.assert_allclose(got, (w * smooth_l1_reference(p - t, 3.0)).sum() / 7.0, rtol=1e-5)
    assert float(weighted_smooth_l1(t, p, np.zeros_like(w), normalizer=0.0)) == 0.0


def test_masked_softmax_cross_entropy_matches_numpy(rng):
    logits = rng.normal(size=(3, 6, 7)).astype("float32")
    labels = rng.integers(-1, 7, size=(3, 6)).astype("int32")
    mask = labels >= 0
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ref = -np.take_along_axis(logp, np.maximum(labels, 0)[..., None], -1)[..., 0][mask].mean()
    np.testing.assert_allclose(float(masked_sparse_softmax_cross_entropy(labels, logits, mask)), ref, rtol=1e-5)
    assert float(masked_sparse_softmax_cross_entropy(labels, logits, np.zeros_like(mask))) == 0.0


def test_smooth_l1_loss_class_and_round_trip(rng):
    t = rng.normal(size=(8, 28)).astype("float32")
    p = rng.normal(size=(8, 28)).astype("float32")
    loss = SmoothL1Loss(sigma=1.0)
    np.testing.assert_allclose(float(loss(t, p)), smooth_l1_reference(p - t, 1.0).sum(-1).mean(), rtol=1e-5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(SmoothL1Loss(sigma=3.0)))
    assert isinstance(again, SmoothL1Loss) and again.sigma == 3.0
    with pytest.raises(ValueError):
        SmoothL1Loss(sigma=0.0)
