"""In-graph missing-band imputation for exported AGN models (Chen et al. 2021, Sec 2.2)."""

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


@keras.saving.register_keras_serializable(package="keras_astro")
class ToeplitzConv2D(keras.layers.Conv2D):
    """A ``Conv2D`` with (1 × k) kernels on a narrow image, computed as one matrix product.

    The AGN network of Chen et al. (2021) convolves (44, 2, C) images with (1 × 2) kernels and
    'same' padding: per image row, out[w=0] = x[0]·K[0] + x[1]·K[1] and out[w=1] = x[1]·K[0]
    (zero padding on the right). With the row's W·C_in values as one vector this is a single
    product with the block-Toeplitz matrix [[K0, 0], [K1, K0]] of shape (W·C_in, W·C_out); for
    C = 1…32 one large matmul is much faster on CPU than the generic convolution kernels.

    The layer *is* a :class:`keras.layers.Conv2D`: same constructor, config, variables (kernel
    (1, k, C_in, C_out), bias (C_out,)) and mathematics, so weights move freely between the two.
    Any case outside the fast path (kernel height ≠ 1, strides or dilation ≠ 1, groups,
    channels_first, unknown width or a kernel wider than the image) uses ``Conv2D.call``.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self._toeplitz = None
        width = input_shape[2] if self.data_format == "channels_last" else None
        kh, kw = self.kernel_size
        fast = (
            self.data_format == "channels_last"
            and width is not None
            and kh == 1
            and kw <= int(width)
            and tuple(self.strides) == (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.groups == 1
            and self.padding in ("same", "valid")
        )
        if fast:
            w_in = int(width)
            if self.padding == "same":
                w_out, left = w_in, (kw - 1) // 2
            else:
                w_out, left = w_in - kw + 1, 0
            # shift[j, wi, wo] = 1 where input column wi meets kernel tap j at output column wo
            shift = np.zeros((kw, w_in, w_out), np.float32)
            for j in range(kw):
                for wo in range(w_out):
                    wi = wo + j - left
                    if 0 <= wi < w_in:
                        shift[j, wi, wo] = 1.0
            self._toeplitz = (shift, w_in, w_out)

    def _dense_kernel(self):
        """The (W·C_in, W_out·C_out) block-Toeplitz matrix built from ``kernel``."""
        shift, w_in, w_out = self._toeplitz
        k = ops.cast(self.kernel[0], self.compute_dtype)  # (kw, C_in, C_out)
        c_in, c_out = k.shape[1], k.shape[2]
        blocks = ops.einsum("jio,jab->iaob", ops.convert_to_tensor(shift, self.compute_dtype), k)
        return ops.reshape(blocks, (w_in * c_in, w_out * c_out))

    def call(self, inputs):
        if getattr(self, "_toeplitz", None) is None:
            return super().call(inputs)
        _, w_in, w_out = self._toeplitz
        rows = ops.shape(inputs)[1]
        c_in = inputs.shape[-1]
        y = ops.matmul(ops.reshape(inputs, (-1, w_in * c_in)), self._dense_kernel())
        if self.use_bias:
            y = y + ops.tile(ops.cast(self.bias, y.dtype), (w_out,))
        y = ops.reshape(y, (-1, rows, w_out, self.filters))
        return self.activation(y) if self.activation is not None else y
