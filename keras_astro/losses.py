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
