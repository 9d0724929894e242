"""Layers of the AGN network of Chen et al. 2021 (Sec 2.2, 2.3).

* :class:`PhotometryImputer`: in-graph missing-band imputation for exported models (Sec 2.2).
* :class:`ToeplitzConv2D` and :class:`FusedBatchNormalization`: drop-in subclasses of
  ``keras.layers.Conv2D`` and ``keras.layers.BatchNormalization`` with the same variables,
  configuration and mathematics, computed by faster CPU kernels for the network's (44, 2, C)
  feature maps (docs/fidelity.md).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_astro.preprocess.photometry import STRATEGIES


@keras.saving.register_keras_serializable(package="keras_astro")
class PhotometryImputer(keras.layers.Layer):
    """Fill missing bands of raw (N, n_bands, 2) photometry and add the channel axis.

    Input: magnitudes and errors, a missing band being NaN (or ``missing_value``) in both. Output:
    (N, n_bands, 2, 1) float32, the network's input image. The arithmetic is that of
    :class:`keras_astro.preprocess.photometry.MissingBandFiller` (the numpy reference).

    Parameters
    ----------
    strategy
        ``"zero"``, ``"band_median"`` or ``"neighbour_median"``.
    fill_values
        (n_bands, 2) per-band values for ``band_median`` (and the fallback of ``neighbour_median``).
    neighbours
        (n_bands, 2k) neighbour indices (−1 = none) for ``neighbour_median``.
    missing_value
        A sentinel that also marks a missing band (catalogues use −99).
    """

    def __init__(
        self,
        strategy: str = "zero",
        fill_values=None,
        neighbours=None,
        missing_value: float = -99.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
        self.strategy = strategy
        self.fill_values = None if fill_values is None else np.asarray(fill_values, np.float32).tolist()
        self.neighbours = None if neighbours is None else np.asarray(neighbours, np.int32).tolist()
        self.missing_value = float(missing_value)
        if strategy != "zero" and fill_values is None:
            raise ValueError(f"strategy {strategy!r} needs fill_values (band medians of the training set)")
        if strategy == "neighbour_median" and neighbours is None:
            raise ValueError("strategy 'neighbour_median' needs the neighbour index table")

    def compute_output_shape(self, input_shape):
        return (*input_shape, 1)

    def call(self, x):
        x = ops.cast(x, "float32")
        miss = ops.logical_or(ops.isnan(x), ops.equal(x, self.missing_value))
        miss = ops.logical_or(miss[..., 0], miss[..., 1])  # (N, B)
        miss2 = ops.stack([miss, miss], axis=-1)
        if self.strategy == "zero":
            out = ops.where(miss2, ops.zeros_like(x), x)
        else:
            fill = ops.broadcast_to(ops.convert_to_tensor(self.fill_values, "float32"), ops.shape(x))
            out = ops.where(miss2, fill, x)
            if self.strategy == "neighbour_median":
                out = ops.where(miss2, self._neighbour_median(x, miss, fill), out)
        return ops.expand_dims(out, -1)

    def _neighbour_median(self, x, miss, fill):
        nb = np.asarray(self.neighbours, np.int32)
        valid_slot = nb >= 0  # (B, K)
        idx = np.where(valid_slot, nb, 0)
        g = ops.take(x, idx.reshape(-1), axis=1)  # (N, B*K, 2)
        g = ops.reshape(g, (-1, nb.shape[0], nb.shape[1], 2))
        gm = ops.take(miss, idx.reshape(-1), axis=1)
        gm = ops.reshape(gm, (-1, nb.shape[0], nb.shape[1]))
        ok = ops.logical_and(ops.logical_not(gm), ops.convert_to_tensor(valid_slot))  # (N, B, K)
        count = ops.sum(ops.cast(ok, "int32"), axis=-1)  # (N, B)
        big = ops.full_like(g, np.float32(3.0e38))
        vals = ops.where(ops.expand_dims(ok, -1), g, big)
        vals = ops.sort(ops.moveaxis(vals, 2, 3), axis=-1)  # (N, B, 2, K) ascending, invalid last
        c = ops.expand_dims(count, -1)  # (N, B, 1)
        lo = ops.maximum((c - 1) // 2, 0)
        hi = ops.maximum(c // 2, 0)
        lo = ops.broadcast_to(ops.expand_dims(lo, -1), (*ops.shape(vals)[:3], 1))
        hi = ops.broadcast_to(ops.expand_dims(hi, -1), (*ops.shape(vals)[:3], 1))
        v_lo = ops.take_along_axis(vals, lo, axis=-1)[..., 0]
        v_hi = ops.take_along_axis(vals, hi, axis=-1)[..., 0]
        med = 0.5 * (v_lo + v_hi)
        return ops.where(ops.expand_dims(count > 0, -1), med, fill)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            strategy=self.strategy,
            fill_values=self.fill_values,
            neighbours=self.neighbours,
            missing_value=self.missing_value,
        )
        return cfg


def _tf_backend() -> bool:
    return keras.backend.backend() == "tensorflow"


@keras.saving.register_keras_serializable(package="keras_astro")
class ToeplitzConv2D(keras.layers.Conv2D):
    """A ``Conv2D`` with (1 × k) kernels on a narrow image, computed as one matrix product.

    The AGN network convolves (44, 2, C) feature maps with (1 × 2) kernels and 'same' padding:
    per image row, out[w=0] = x[0]·K[0] + x[1]·K[1] and out[w=1] = x[1]·K[0] (TensorFlow pads
    the right). Taking the row's W·C_in values as one vector, this is a single product with the
    block-Toeplitz matrix [[K0, 0], [K1, K0]] of shape (W·C_in, W·C_out), built from the kernel
    variable on every call; the reshapes are free in NHWC. For C = 1…32 one large matmul is
    much faster on CPU than the generic (oneDNN/Eigen) convolution kernels.

    The layer *is* a :class:`keras.layers.Conv2D`: same constructor, config, variables (kernel
    (1, k, C_in, C_out), bias (C_out,)) and mathematics, so weights move freely between the
    two. Under the TensorFlow backend the gradient is written out explicitly (the same
    products autodiff forms, with the bias gradient as a matrix–vector product instead of a
    column reduction). Anything outside the fast path (kernel height ≠ 1, strides or dilation
    ≠ 1, groups, channels_first, unknown width, a kernel wider than the image, quantisation)
    falls back to ``Conv2D.call``.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self._toeplitz = None
        if self.data_format != "channels_last" or input_shape[2] is None:
            return
        kh, kw = self.kernel_size
        w_in = int(input_shape[2])
        if not (
            kh == 1
            and kw <= w_in
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.groups == 1
            and self.padding in ("same", "valid")
        ):
            return
        w_out, left = (w_in, (kw - 1) // 2) if self.padding == "same" else (w_in - kw + 1, 0)
        # shift[j, wi, wo] = 1 where kernel tap j reads input column wi for output column wo
        shift = np.zeros((kw, w_in, w_out), np.float32)
        for j in range(kw):
            for wo in range(w_out):
                wi = wo + j - left
                if 0 <= wi < w_in:
                    shift[j, wi, wo] = 1.0
        self._toeplitz = (shift, w_in, w_out)

    def dense_kernel(self):
        """The (W·C_in, W_out·C_out) block-Toeplitz matrix equivalent to ``kernel``."""
        shift, w_in, w_out = self._toeplitz
        k = ops.cast(self.kernel[0], self.compute_dtype)  # (kw, C_in, C_out)
        blocks = ops.einsum("jio,jab->iaob", ops.convert_to_tensor(shift, self.compute_dtype), k)
        return ops.reshape(blocks, (w_in * k.shape[1], w_out * k.shape[2]))

    def call(self, inputs):
        if getattr(self, "_toeplitz", None) is None or getattr(self, "quantization_mode", None) is not None:
            return super().call(inputs)
        _, w_in, w_out = self._toeplitz
        rows = inputs.shape[1] if inputs.shape[1] is not None else ops.shape(inputs)[1]
        x = ops.reshape(inputs, (-1, w_in * inputs.shape[-1]))
        big = self.dense_kernel()
        if not self.use_bias:
            y = ops.matmul(x, big)
        elif _tf_backend():
            y = _matmul_bias(x, big, ops.cast(self.bias, big.dtype), w_out)
        else:
            y = ops.matmul(x, big) + ops.tile(ops.cast(self.bias, big.dtype), (w_out,))
        y = ops.reshape(y, (-1, rows, w_out, self.filters))
        return self.activation(y) if self.activation is not None else y


def _matmul_bias(x, w, b, repeats: int):
    """x @ w + tile(b, repeats) with the gradient written out (TensorFlow backend)."""
    import tensorflow as tf

    @tf.custom_gradient
    def f(x, w, b):
        y = tf.matmul(x, w) + tf.tile(b, [repeats])

        def grad(dy):
            dx = tf.matmul(dy, w, transpose_b=True)
            dw = tf.matmul(x, dy, transpose_a=True)
            # column sums as a matrix-vector product: much faster than reduce_sum(axis=0) on CPU
            col = tf.matmul(tf.ones([1, tf.shape(dy)[0]], dy.dtype), dy)
            db = tf.reduce_sum(tf.reshape(col, [repeats, -1]), axis=0)
            return dx, dw, db

        return y, grad

    return f(x, w, b)


@keras.saving.register_keras_serializable(package="keras_astro")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """A ``BatchNormalization`` whose training step uses TensorFlow's fused kernel.

    In training, Keras 3 normalises with ``ops.moments`` and ``tf.nn.batch_normalization``:
    about ten elementwise passes and column reductions over the (N, 44, 2, C) feature map,
    forward and backward. ``FusedBatchNormV3`` (oneDNN on x86, fused with the following ReLU by
    Grappler) computes the same thing — batch mean, biased batch variance, (x − μ)/√(σ² + ε)·γ +
    β, the exact gradient through μ and σ² — in one pass each way. The moving averages are
    updated as Keras does, with the biased variance (the fused kernel returns the unbiased one,
    rescaled here by (n − 1)/n).

    Same constructor, config, variables and mathematics as ``keras.layers.BatchNormalization``;
    inference, masks, renorm, synchronised BN, ``center``/``scale`` off, inputs that are not
    4-D channels-last float32 or bfloat16, and non-TensorFlow backends use the Keras implementation.
    """

    def _fused_ok(self, inputs, training, mask) -> bool:
        return bool(
            training
            and self.trainable
            and mask is None
            and _tf_backend()
            and not self.renorm
            and not self.synchronized
            and self.center
            and self.scale
            and len(inputs.shape) == 4
            and self.axis in (3, -1)
            and keras.backend.standardize_dtype(inputs.dtype) in ("float32", "bfloat16")
            and keras.backend.standardize_dtype(self.gamma.dtype) == "float32"
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fused_ok(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        y, mean, var, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=tf.convert_to_tensor(self.gamma),
            offset=tf.convert_to_tensor(self.beta),
            mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32),
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
        )
        y = tf.cast(y, self.compute_dtype)
        n = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        var = var * ((n - 1.0) / tf.maximum(n, 1.0))
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + var * (1.0 - self.momentum))
        return y
