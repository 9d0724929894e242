"""Metrics: numpy implementations (used for reports) and their in-graph Keras counterparts.

AGN study (Chen et al. 2021, Sec 3.2): AGN completeness = TP/(TP+FN) (Eq. 4), SFG completeness =
TN/(TN+FP) (Eq. 5), accuracy = (TP+TN)/total (Eq. 6), and the ROC curve / AUC (Eq. 7).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def binary_rates(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AGN completeness, SFG completeness and accuracy at ``threshold`` (Eqs. 4–6).

    ``y_true`` holds 1 for AGN, 0 for SFG; ``y_score`` the network's sigmoid output. An object is
    called an AGN when its score exceeds ``threshold``, as in Keras' BinaryAccuracy, so the
    in-graph metrics and these agree.
    """
    y = np.asarray(y_true).astype(int).ravel()
    pred = (np.asarray(y_score, dtype=float).ravel() > threshold).astype(int)
    tp = int(np.sum((pred == 1) & (y == 1)))
    tn = int(np.sum((pred == 0) & (y == 0)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    return {
        "agn_completeness": tp / (tp + fn) if tp + fn else float("nan"),
        "sfg_completeness": tn / (tn + fp) if tn + fp else float("nan"),
        "accuracy": (tp + tn) / len(y) if len(y) else float("nan"),
    }


def roc_curve(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, true-positive rate and thresholds, sweeping the threshold from high to low.

    Ties in the score are treated as one step. The curve starts at (0, 0).
    """
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(y_score, dtype=float).ravel()
    if y.min(initial=0) < 0 or y.max(initial=0) > 1:
        raise ValueError("y_true must hold 0/1 labels")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    P, N = y.sum(), len(y) - y.sum()
    if P == 0 or N == 0:
        raise ValueError("ROC needs both classes present")
    tpr = np.r_[0.0, tps / P]
    fpr = np.r_[0.0, fps / N]
    thr = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thr


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve (trapezoidal rule over :func:`roc_curve`)."""
    fpr, tpr, _ = roc_curve(y_true, y_score)
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def classification_report(y_true: np.ndarray, y_score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """The four metrics of Table 1: AGN/SFG completeness, accuracy and ROC AUC (fractions)."""
    out = binary_rates(y_true, y_score, threshold)
    out["roc_auc"] = roc_auc(y_true, y_score)
    return out


@keras.saving.register_keras_serializable(package="keras_astro")
class Completeness(keras.metrics.Metric):
    """Completeness of one class (true-positive rate of ``positive``): Eq. 4 or Eq. 5.

    ``positive=1`` gives the AGN completeness, ``positive=0`` the SFG completeness.
    """

    def __init__(self, positive: int = 1, threshold: float = 0.5, name: str | None = None, dtype=None):
        super().__init__(name=name or ("agn_completeness" if positive == 1 else "sfg_completeness"), dtype=dtype)
        if positive not in (0, 1):
            raise ValueError(f"positive must be 0 or 1, got {positive}")
        self.positive = int(positive)
        self.threshold = float(threshold)
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        pred = ops.cast(ops.reshape(y_pred, (-1,)) > self.threshold, "float32")
        if self.positive == 0:
            y_true, pred = 1.0 - y_true, 1.0 - pred
        self.hits.assign_add(ops.sum(y_true * pred))
        self.total.assign_add(ops.sum(y_true))

    def result(self):
        return ops.divide_no_nan(self.hits, self.total)

    def reset_state(self):
        self.hits.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "positive": self.positive, "threshold": self.threshold}


# --- FNet (Rastegar Nia et al.): velocity accuracy of redshifts (Sec 4, Eq. 1) ------------------

C_KMS = 299_792.458


def delta_v(z_pred: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    """Velocity difference Δv = c (z_pred − z_true) / (1 + z_true), km/s (FNet Eq. 1)."""
    zp = np.asarray(z_pred, dtype=np.float64).ravel()
    zt = np.asarray(z_true, dtype=np.float64).ravel()
    if zp.shape != zt.shape:
        raise ValueError(f"z_pred has {zp.size} values, z_true {zt.size}")
    return C_KMS * (zp - zt) / (1.0 + zt)


def dv_accuracy(z_pred: np.ndarray, z_true: np.ndarray, threshold_kms: float = 6000.0) -> float:
    """Fraction of objects with |Δv| below ``threshold_kms`` (FNet: 6,000 / 12,000 / 30,000 km/s)."""
    dv = delta_v(z_pred, z_true)
    return float(np.mean(np.abs(dv) < threshold_kms)) if dv.size else float("nan")


def dv_accuracy_curve(z_pred: np.ndarray, z_true: np.ndarray, thresholds_kms: np.ndarray) -> np.ndarray:
    """Accuracy as a function of the |Δv| threshold (FNet Fig. 4c)."""
    adv = np.sort(np.abs(delta_v(z_pred, z_true)))
    return np.searchsorted(adv, np.asarray(thresholds_kms, dtype=np.float64), side="left") / max(adv.size, 1)


@keras.saving.register_keras_serializable(package="keras_astro")
class DeltaVAccuracy(keras.metrics.Metric):
    """In-graph |Δv| < threshold accuracy for a model whose output is redshift scaled to [0, 1].

    ``z = z_min + y (z_max − z_min)`` undoes the training set's min/max scaling (FNet code) for both
    the label and the prediction; with ``z_min = 0, z_max = 1`` the values are redshifts already.
    """

    def __init__(self, threshold_kms: float = 6000.0, z_min: float = 0.0, z_max: float = 1.0, name=None, **kwargs):
        super().__init__(name=name or f"dv_acc_{int(threshold_kms)}", **kwargs)
        self.threshold_kms = float(threshold_kms)
        self.z_min = float(z_min)
        self.z_max = float(z_max)
        self.hits = self.add_variable(shape=(), initializer="zeros", name="hits")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        span = self.z_max - self.z_min
        zt = self.z_min + ops.reshape(ops.cast(y_true, "float32"), (-1,)) * span
        zp = self.z_min + ops.reshape(ops.cast(y_pred, "float32"), (-1,)) * span
        hit = ops.cast(ops.abs(C_KMS * (zp - zt) / (1.0 + zt)) < self.threshold_kms, "float32")
        if sample_weight is not None:
            w = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            self.hits.assign_add(ops.sum(hit * w))
            self.count.assign_add(ops.sum(w))
        else:
            self.hits.assign_add(ops.sum(hit))
            self.count.assign_add(ops.cast(ops.size(hit), "float32"))

    def result(self):
        return ops.divide_no_nan(self.hits, self.count)

    def reset_state(self):
        self.hits.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold_kms": self.threshold_kms, "z_min": self.z_min, "z_max": self.z_max}
