"""Keras callbacks shared by the studies."""

from __future__ import annotations

import logging
import math

import keras

log = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="keras_astro")
class MonitorStopping(keras.callbacks.Callback):
    """The termination condition of Chen et al. 2021, Eq. 3.

    After every epoch ``t`` the validation-fold monitor

    .. math::  \\mathrm{monitor}_t = N \\cdot \\mathrm{AGN\\ completeness} + \\mathrm{accuracy}

    is recorded; training stops when :math:`\\mathrm{monitor}_t - \\mathrm{monitor}_{t-M} < \\delta`
    (δ < 0 in Table 1: stop once the monitor has fallen by more than |δ| over M epochs). At the end
    of training the weights of the epoch with the highest monitor are restored
    (``restore_best_weights``); Algorithm 1 of the paper saves the weights of the last epoch, which
    ``restore_best_weights=False`` reproduces.

    Parameters
    ----------
    N
        Weight of the AGN completeness in the monitor.
    M
        Look-back, in epochs.
    delta
        Threshold of the monitor change (negative in Table 1).
    completeness_key, accuracy_key
        Names of the logged validation metrics.
    start_from_epoch
        Epochs before the rule (and best-weight tracking) starts; 0 follows the paper.
    restore_best_weights
        Restore the weights of the best-monitor epoch when training ends.
    """

    def __init__(
        self,
        N: float,
        M: int,
        delta: float,
        completeness_key: str = "val_agn_completeness",
        accuracy_key: str = "val_accuracy",
        start_from_epoch: int = 0,
        restore_best_weights: bool = True,
    ):
        super().__init__()
        if M < 1:
            raise ValueError(f"M must be a positive number of epochs, got {M}")
        self.N = float(N)
        self.M = int(M)
        self.delta = float(delta)
        self.completeness_key = completeness_key
        self.accuracy_key = accuracy_key
        self.start_from_epoch = int(start_from_epoch)
        self.restore_best_weights = bool(restore_best_weights)
        self.history: list[float] = []
        self.best = -math.inf
        self.best_epoch = -1
        self.stopped_epoch = -1
        self.best_weights = None

    def on_train_begin(self, logs=None):
        self.history = []
        self.best = -math.inf
        self.best_epoch = -1
        self.stopped_epoch = -1
        self.best_weights = None

    def monitor_value(self, logs: dict) -> float:
        try:
            comp = float(logs[self.completeness_key])
            acc = float(logs[self.accuracy_key])
        except KeyError as exc:
            raise KeyError(
                f"MonitorStopping needs {self.completeness_key!r} and {self.accuracy_key!r} in the "
                f"epoch logs (validation data and the Completeness/accuracy metrics); got {sorted(logs)}"
            ) from exc
        return self.N * comp + acc

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        value = self.monitor_value(logs)
        self.history.append(value)
        logs["monitor"] = value
        if epoch < self.start_from_epoch:
            return
        if value > self.best:
            self.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
        t = len(self.history) - 1
        if t - self.M >= self.start_from_epoch and value - self.history[t - self.M] < self.delta:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch >= 0:
            log.info("Eq. 3 stopping at epoch %d (best monitor %.4f at epoch %d)", self.stopped_epoch + 1, self.best, self.best_epoch + 1)
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def get_config(self):
        return {
            "N": self.N,
            "M": self.M,
            "delta": self.delta,
            "completeness_key": self.completeness_key,
            "accuracy_key": self.accuracy_key,
            "start_from_epoch": self.start_from_epoch,
            "restore_best_weights": self.restore_best_weights,
        }
