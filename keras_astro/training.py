"""Epoch loops for small in-memory data sets.

Chen et al. (2021) train for thousands of epochs on 1,683 objects per fold, evaluating the Eq. 3
monitor on the validation fold after every epoch. ``keras.Model.fit`` spends most of such an epoch
in per-epoch bookkeeping, so :func:`fit_in_memory` keeps both folds on the device as tensors, runs
each training step as one compiled function (XLA for mini-batches), computes the validation
metrics in the graph, and only returns to Python once per epoch to drive ordinary Keras callbacks
(``keras.callbacks.CallbackList``; ``model.stop_training`` is honoured, ``model.history`` is set).

Under a strategy with more than one replica (Mirrored, MultiWorkerMirrored) the same call falls
back to ``model.fit`` on a cached, sharded ``tf.data`` pipeline, which Keras distributes.
"""

from __future__ import annotations

import logging
from typing import Iterable

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from keras_astro.distribute import global_batch_size
from keras_astro.pipelines.photometry import photometry_dataset

log = logging.getLogger(__name__)


def _val_logs(model: keras.Model, x_val, y_val) -> dict:
    """Validation loss and metrics, computed in the graph on the whole validation fold."""
    p = model(x_val, training=False)
    loss = model.loss(y_val, p)
    y = tf.reshape(tf.cast(y_val, tf.float32), [-1])
    pred = tf.cast(tf.reshape(p, [-1]) > 0.5, tf.float32)
    agn = tf.math.divide_no_nan(tf.reduce_sum(y * pred), tf.reduce_sum(y))
    sfg = tf.math.divide_no_nan(tf.reduce_sum((1 - y) * (1 - pred)), tf.reduce_sum(1 - y))
    acc = tf.reduce_mean(tf.cast(tf.equal(pred, y), tf.float32))
    return {"val_loss": loss, "val_agn_completeness": agn, "val_sfg_completeness": sfg, "val_accuracy": acc}


def fit_in_memory(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    validation_data: tuple[np.ndarray, np.ndarray],
    epochs: int,
    batch_size: int,
    callbacks: Iterable[keras.callbacks.Callback] = (),
    seed: int = 0,
    strategy: tf.distribute.Strategy | None = None,
    progress: bool = False,
    description: str = "epochs",
    jit_compile: bool | str = "auto",
) -> keras.callbacks.History:
    """Train a compiled binary classifier for up to ``epochs`` epochs on in-memory arrays.

    Parameters
    ----------
    model
        A compiled Keras model (optimizer and loss set), built inside ``strategy.scope()``.
    x, y
        Training inputs and 0/1 labels.
    validation_data
        ``(x_val, y_val)``; logged every epoch as ``val_loss``, ``val_agn_completeness``,
        ``val_sfg_completeness`` and ``val_accuracy``.
    batch_size
        Per-replica batch size; the global batch is scaled by the number of replicas.
    callbacks
        Keras callbacks (e.g. :class:`keras_astro.callbacks.MonitorStopping`). With a
        :class:`keras_astro.callbacks.BackupAndResume` first in the list, a restarted call
        continues from the backed-up epoch (same weights, optimiser, dropout seeds and batch order).
    progress
        Show a tqdm bar over epochs.
    jit_compile
        XLA-compile the training step. ``"auto"`` compiles mini-batch steps on a GPU only. On CPU
        TensorFlow's own (oneDNN) kernels are faster for both: several times for full batches of
        thousands, and about 2x for the quick schedule's batches of 128 including the per-fold
        compilation (benchmarks/agn_cv.py ``--quick``, docs/fidelity.md).

    Returns
    -------
    keras.callbacks.History
        Also available as ``model.history``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if model.optimizer is None or model.loss is None:
        raise ValueError("fit_in_memory needs a compiled model (optimizer and loss)")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32).reshape(-1, 1)
    xv, yv = (np.asarray(validation_data[0], np.float32), np.asarray(validation_data[1], np.float32).reshape(-1, 1))
    gbs = global_batch_size(batch_size, strategy)
    if strategy.num_replicas_in_sync > 1:
        return _fit_distributed(model, x, y, xv, yv, epochs, gbs, list(callbacks), seed, progress)

    cb = keras.callbacks.CallbackList(list(callbacks), add_history=True, add_progbar=False, model=model, epochs=epochs, verbose=0)
    n = len(x)
    steps = -(-n // gbs)
    xt, yt = tf.constant(x), tf.constant(y)
    xvt, yvt = tf.constant(xv), tf.constant(yv)
    trainable = model.trainable_variables
    if not model.optimizer.built:
        with strategy.scope():  # e.g. OneDeviceStrategy on a one-GPU machine
            model.optimizer.build(trainable)
    seed_t = tf.constant(int(seed), tf.int64)
    if jit_compile == "auto":
        jit = steps > 1 and bool(tf.config.list_logical_devices("GPU"))
    else:
        jit = bool(jit_compile)

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            pred = model(xb, training=True)
            loss = model.compute_loss(x=xb, y=yb, y_pred=pred, training=True)
        grads = tape.gradient(loss, trainable)
        model.optimizer.apply(grads, trainable)
        return loss

    keys = ("loss", "val_loss", "val_agn_completeness", "val_sfg_completeness", "val_accuracy")

    @tf.function
    def run_epoch(epoch):
        """One epoch and the validation logs, returned as one (5,) tensor (a single host sync).

        The mini-batch order is a function of (seed, epoch) only, so a resumed run
        (:class:`keras_astro.callbacks.BackupAndResume`) sees the batches an uninterrupted one would.
        """
        total = tf.constant(0.0)
        if steps == 1:  # full batch: one step on the whole fold, order is irrelevant
            total += train_step(xt, yt)
        else:
            order = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([seed_t, epoch])))
            for b in tf.range(steps):
                idx = order[b * gbs : tf.minimum((b + 1) * gbs, n)]
                total += train_step(tf.gather(xt, idx), tf.gather(yt, idx))
        logs = _val_logs(model, xvt, yvt)
        logs["loss"] = total / tf.cast(steps, tf.float32)
        return tf.stack([tf.cast(logs[k], tf.float32) for k in keys])

    model.stop_training = False
    cb.on_train_begin()
    start = int(getattr(model, "_initial_epoch", None) or 0)  # set by BackupAndResume on a restart
    bar = tqdm(total=epochs, initial=min(start, epochs), desc=description, disable=not progress, leave=False)
    epoch = start - 1
    for epoch in range(start, epochs):
        cb.on_epoch_begin(epoch)
        logs = dict(zip(keys, run_epoch(tf.constant(epoch, tf.int64)).numpy().tolist()))
        cb.on_epoch_end(epoch, logs)
        bar.update(1)
        if "monitor" in logs:
            bar.set_postfix(monitor=f"{logs['monitor']:.3f}", refresh=False)
        if model.stop_training:
            break
    bar.close()
    cb.on_train_end({"epochs": epoch + 1})
    return model.history


def _fit_distributed(model, x, y, xv, yv, epochs, gbs, callbacks, seed, progress):
    """Fallback for multi-replica strategies: Keras ``fit`` on cached, sharded datasets."""
    train = photometry_dataset(x, y[:, 0], batch_size=gbs, shuffle=True, seed=seed)
    val = photometry_dataset(xv, yv[:, 0], batch_size=max(gbs, 256))
    return model.fit(train, validation_data=val, epochs=epochs, callbacks=callbacks, verbose=1 if progress else 0)
