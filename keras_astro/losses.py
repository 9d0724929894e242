"""Losses shared by the studies."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_astro")
class BinaryFocalLoss(keras.losses.Loss):
    """Binary focal loss of Chen et al. 2021, Eq. 2, in its intended form.

    .. math::

        L = -y\\,\\alpha (1-p)^\\gamma \\log p - (1-y)(1-\\alpha)\\, p^\\gamma \\log(1-p)

    Eq. 2 as printed has γ where the label y belongs (``-γα(1-p)^γ log p - (1-γ)(1-α)p^γ
    log(1-p)``), which for γ = 2 gives SFGs a negative weight; the text around it (y = 1 AGN,
    y = 0 SFG, "a modified cross-entropy", Lin et al. 2017) fixes the intended form above, which
    is what this class computes (see shared/reference/originals.md §1 and docs/fidelity.md).

    Parameters
    ----------
    alpha
        Weight of the positive (AGN) class, in [0, 1]. Table 1 uses 0.99.
    gamma
        Focusing exponent, > 0. Table 1 uses 2.
    from_logits
        Whether predictions are logits rather than sigmoid probabilities.
    epsilon
        Probabilities are clipped to [epsilon, 1 - epsilon] before the logarithms.
    """

    def __init__(
        self,
        alpha: float = 0.99,
        gamma: float = 2.0,
        from_logits: bool = False,
        epsilon: float = 1e-7,
        reduction: str = "sum_over_batch_size",
        name: str = "focal_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.from_logits = bool(from_logits)
        self.epsilon = float(epsilon)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), y_pred.dtype)
        p = ops.sigmoid(y_pred) if self.from_logits else y_pred
        p = ops.clip(p, self.epsilon, 1.0 - self.epsilon)
        pos = -y_true * self.alpha * ops.power(1.0 - p, self.gamma) * ops.log(p)
        neg = -(1.0 - y_true) * (1.0 - self.alpha) * ops.power(p, self.gamma) * ops.log(1.0 - p)
        return ops.mean(pos + neg, axis=-1)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(alpha=self.alpha, gamma=self.gamma, from_logits=self.from_logits, epsilon=self.epsilon)
        return cfg


# --------------------------------------------------------------------------------------------
# Detection losses (CLARAN, Wu et al. 2019, Sec 4.3-4.4, Eq. 4, 6, 9, 10)
# --------------------------------------------------------------------------------------------


def smooth_l1(x, sigma: float = 1.0):
    """Element-wise smooth-L1 (Huber) of Faster R-CNN, as in the CLARAN code.

    .. math::

        \\mathrm{smooth}_{L1}(x) = \\begin{cases} 0.5\\,(\\sigma x)^2 & |x| < 1/\\sigma^2 \\\\
        |x| - 0.5/\\sigma^2 & \\text{otherwise} \\end{cases}

    ``sigma = 3`` for the RPN (Eq. 6), ``sigma = 1`` for the RoI head (Eq. 10). With ``sigma = 1``
    this is Huber's loss with δ = 1. ``x`` is the difference prediction − target (any shape,
    dimensionless box deltas); the result has the shape of ``x``.
    """
    x = ops.convert_to_tensor(x)
    sigma2 = float(sigma) ** 2
    ax = ops.abs(x)
    return ops.where(ax < 1.0 / sigma2, 0.5 * sigma2 * ops.square(x), ax - 0.5 / sigma2)


def weighted_smooth_l1(y_true, y_pred, weights, sigma: float = 1.0, normalizer=1.0):
    """``sum(weights * smooth_l1(y_pred - y_true, sigma)) / normalizer`` — a scalar.

    The form of Eq. 6 and Eq. 10: ``weights`` is 1 on the four coordinates that enter the loss
    (positive anchors; the true class's columns of a foreground RoI) and 0 elsewhere, and
    ``normalizer`` is the number of sampled anchors or RoIs (clamped to at least 1).
    """
    y_pred = ops.convert_to_tensor(y_pred)
    dtype = y_pred.dtype
    y_true = ops.cast(y_true, dtype)
    weights = ops.cast(weights, dtype)
    total = ops.sum(weights * smooth_l1(y_pred - y_true, sigma))
    return total / ops.maximum(ops.cast(normalizer, dtype), ops.cast(1.0, dtype))


def masked_sparse_softmax_cross_entropy(labels, logits, mask):
    """Mean softmax cross-entropy over the entries where ``mask`` is true — a scalar (Eq. 4, Eq. 9).

    ``labels`` (...,) int class indices (any value where ``mask`` is false), ``logits``
    (..., C), ``mask`` (...,) bool. Returns 0 when nothing is selected.
    """
    logits = ops.convert_to_tensor(logits)
    mask = ops.cast(mask, logits.dtype)
    labels = ops.where(ops.cast(mask, "bool"), ops.cast(labels, "int32"), ops.zeros_like(labels, "int32"))
    ce = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    ce = ops.cast(ce, logits.dtype)
    return ops.sum(ce * mask) / ops.maximum(ops.sum(mask), ops.cast(1.0, logits.dtype))


@keras.saving.register_keras_serializable(package="keras_astro")
class SmoothL1Loss(keras.losses.Loss):
    """Smooth-L1 box-regression loss, summed over the last axis (the 4 or 4·C box deltas).

    ``loss(y_true, y_pred)`` per row is ``Σ_j smooth_l1(y_pred_j − y_true_j, sigma)``; Keras'
    reduction then averages over the rows (Eq. 10 with |M| rows). Use
    :func:`weighted_smooth_l1` for the masked forms of Eq. 6 / Eq. 10.

    Parameters
    ----------
    sigma
        Transition at ``|x| = 1/sigma²``; 3 for the RPN, 1 for the RoI head (authors' code).
    """

    def __init__(self, sigma: float = 1.0, reduction: str = "sum_over_batch_size", name: str = "smooth_l1", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        return ops.sum(smooth_l1(y_pred - y_true, self.sigma), axis=-1)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(sigma=self.sigma)
        return cfg
