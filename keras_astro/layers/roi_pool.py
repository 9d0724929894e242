"""Spatial-transformer RoI pooling of CLARAN (Wu et al. 2019, Sec 4.4, Eq. 8).

CLARAN replaces Faster R-CNN's RoI max pooling by the two operations of a spatial transformer
network (Jaderberg et al. 2015): the affine grid generator :math:`\\mathcal{T}_\\theta` of Eq. 8
and the bilinear sampler :math:`\\mathcal{B}`. Both are differentiable, so the loss reaches the
proposal box coordinates as well as the feature map F.

Coordinate conventions (the decisions Eq. 8 leaves open, fixed here)
--------------------------------------------------------------------
* A RoI ``[x1, y1, x2, y2]`` is given in continuous pixels of the network input image (top-left
  origin, ``width = x2 - x1``; package-wide geometry, ``data_specs/claran.yaml``). It is scaled
  by ``spatial_scale`` (1/16, the VGG-16 stride of Sec 4.3.1) into continuous units of F.
* Continuous feature coordinates: feature pixel ``j`` covers ``[j, j + 1)``, its centre is
  ``j + 0.5``. With a stride of 16 this is image pixel ``16 j + 8``, the centre used by the
  anchors (``keras_astro.layers.detection.generate_anchors``).
* Normalised coordinates (STN): ``u = 2 X / w_F - 1``, so -1 and +1 are the outer *edges* of F
  (the "align_corners=False" convention). This is exactly what Eq. 8 implies: its first row
  maps u^f = -1 to ``2 x1 / w_F - 1`` and u^f = +1 to ``2 x2 / w_F - 1``, i.e. the box edges.
* The regular grid G on the output f (Eq. 8's ``(u_i^f, v_i^f)``) is the centres of the
  ``pool_size x pool_size`` bins of the normalised square, ``u_k = (2 k + 1) / pool_size - 1``.
  The same half-pixel convention on both sides means a box covering all of F samples the bin
  centres of all of F, and with ``pool_size = w_F`` reproduces F exactly; a box whose edges lie
  on feature-pixel edges and spans ``pool_size`` pixels returns those pixels unchanged.
* Sampling (STN Eq. 5): ``V = sum_nm U_nm max(0, 1 - |x - m|) max(0, 1 - |y - n|)`` with pixel
  index coordinates ``x = X - 0.5``; pixels outside F count as zero ("zeros" padding, the STN's
  own kernel). A sample point half a pixel outside the last centre therefore sees a weight that
  fades linearly to zero, and the gradient with respect to the box stays non-zero there.

The sampler is written with four gathers and bilinear weights (not ``tf.image.crop_and_resize``),
so the box gradient is the STN's: d out / d x = sum of the corner values times d weight / d x.
Arithmetic is float32 (float64 when the features are float64); bfloat16/float16 features are
read, interpolated in float32 and returned in their own dtype. The box coordinates never pass
through a low-precision dtype (a 600-px coordinate in bfloat16 would be off by up to 2 px).
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["STRoIPooling", "normalised_output_grid", "roi_affine_theta", "st_roi_pool"]

#: Default output size (Sec 4.4: ST_RoI_Pool -> 7 x 7 x 512; ``head.pool_size`` in claran.yaml).
DEFAULT_POOL_SIZE = 7
#: Default scale from image pixels to conv5_3 pixels: 1 / feature stride (Sec 4.3.1: 2^4 = 16;
#: ``backbone.feature_stride`` in claran.yaml).
DEFAULT_SPATIAL_SCALE = 1.0 / 16.0


def _work_dtype(dtype: tf.DType) -> tf.DType:
    return tf.float64 if dtype == tf.float64 else tf.float32


def _check_pool_size(pool_size: int) -> int:
    if isinstance(pool_size, bool) or int(pool_size) != pool_size or int(pool_size) < 1:
        raise ValueError(f"pool_size must be a positive integer, got {pool_size!r}")
    return int(pool_size)


def _check_spatial_scale(spatial_scale: float) -> float:
    spatial_scale = float(spatial_scale)
    if not spatial_scale > 0:
        raise ValueError(f"spatial_scale must be > 0 (feature px per image px), got {spatial_scale!r}")
    return spatial_scale


def _static_or_dynamic(x: tf.Tensor, axis: int):
    d = x.shape[axis]
    return d if d is not None else tf.shape(x)[axis]


def normalised_output_grid(pool_size: int, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """The regular grid G of Eq. 8 along one axis of the output f.

    Parameters
    ----------
    pool_size
        Number of output bins per side (7 in the paper).
    dtype
        Floating dtype of the result.

    Returns
    -------
    tf.Tensor
        (pool_size,) bin centres in normalised coordinates, ``(2 k + 1) / pool_size - 1``
        (dimensionless, in (-1, 1)).
    """
    pool_size = _check_pool_size(pool_size)
    k = tf.range(pool_size, dtype=dtype)
    return (2.0 * k + 1.0) / tf.cast(pool_size, dtype) - 1.0


def roi_affine_theta(
    rois: tf.Tensor,
    feature_height,
    feature_width,
    spatial_scale: float = DEFAULT_SPATIAL_SCALE,
) -> tf.Tensor:
    """The affine matrices theta of Eq. 8, one per RoI.

    Parameters
    ----------
    rois
        (..., 4) boxes ``[x1, y1, x2, y2]`` in input-image pixels.
    feature_height, feature_width
        h_F and w_F, the size of the feature map F in feature pixels (37 x 37 in the paper).
    spatial_scale
        Feature pixels per image pixel (1/16).

    Returns
    -------
    tf.Tensor
        (..., 2, 3) ``[[(x2 - x1)/w_F, 0, (x1 + x2 - w_F)/w_F], [0, (y2 - y1)/h_F,
        (y1 + y2 - h_F)/h_F]]`` with the box in feature pixels; it maps normalised output
        coordinates ``(u^f, v^f, 1)`` to normalised coordinates ``(u^F, v^F)`` of F.
    """
    spatial_scale = _check_spatial_scale(spatial_scale)
    rois = tf.convert_to_tensor(rois)
    dtype = _work_dtype(rois.dtype)
    rois = tf.cast(rois, dtype) * tf.cast(spatial_scale, dtype)
    w_f = tf.cast(feature_width, dtype)
    h_f = tf.cast(feature_height, dtype)
    x1, y1, x2, y2 = tf.unstack(rois, num=4, axis=-1)
    zero = tf.zeros_like(x1)
    row_u = tf.stack([(x2 - x1) / w_f, zero, (x1 + x2 - w_f) / w_f], axis=-1)
    row_v = tf.stack([zero, (y2 - y1) / h_f, (y1 + y2 - h_f) / h_f], axis=-1)
    return tf.stack([row_u, row_v], axis=-2)


def _bilinear_sample(features: tf.Tensor, x: tf.Tensor, y: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Sample (B, H, W, C) ``features`` at pixel-index coordinates ``x``, ``y`` of shape (B, ...).

    Pixel ``(n, m)`` sits at ``(y, x) = (n, m)``; pixels outside the map are zero. Returns
    (B, ..., C) in ``dtype``.
    """
    height = _static_or_dynamic(features, 1)
    width = _static_or_dynamic(features, 2)
    channels = features.shape[-1]
    batch = _static_or_dynamic(features, 0)
    flat = tf.reshape(features, [batch, -1, channels if channels is not None else tf.shape(features)[-1]])

    x0 = tf.floor(x)
    y0 = tf.floor(y)
    # the fractional parts carry the gradient with respect to the sample position (and the box)
    fx = x - tf.stop_gradient(x0)
    fy = y - tf.stop_gradient(y0)
    x0i = tf.cast(tf.stop_gradient(x0), tf.int32)
    y0i = tf.cast(tf.stop_gradient(y0), tf.int32)
    sample_shape = tf.shape(x)

    out = None
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        yi = y0i + dy
        y_ok = tf.logical_and(yi >= 0, yi < height)
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            xi = x0i + dx
            ok = tf.logical_and(y_ok, tf.logical_and(xi >= 0, xi < width))
            idx = tf.clip_by_value(yi, 0, height - 1) * width + tf.clip_by_value(xi, 0, width - 1)
            idx = tf.reshape(idx, [batch, -1])
            vals = tf.gather(flat, idx, batch_dims=1)  # (B, S, C)
            vals = tf.reshape(tf.cast(vals, dtype), tf.concat([sample_shape, [-1]], axis=0))
            weight = tf.where(ok, wx * wy, tf.zeros_like(wx))
            term = vals * weight[..., None]
            out = term if out is None else out + term
    return out


def st_roi_pool(
    features: tf.Tensor,
    rois: tf.Tensor,
    pool_size: int = DEFAULT_POOL_SIZE,
    spatial_scale: float = DEFAULT_SPATIAL_SCALE,
) -> tf.Tensor:
    """ST-RoI pooling (Sec 4.4): Eq. 8 affine grid plus bilinear sampling, batched.

    Parameters
    ----------
    features
        (B, H, W, C) feature map F (conv5_3), any floating dtype.
    rois
        (B, N, 4) boxes ``[x1, y1, x2, y2]`` in continuous input-image pixels (top-left origin).
        Padding boxes are allowed; they are sampled like any other box and should be masked
        downstream.
    pool_size
        Output bins per side (7).
    spatial_scale
        Feature pixels per image pixel (1/16).

    Returns
    -------
    tf.Tensor
        (B, N, pool_size, pool_size, C) in the dtype of ``features``. Output bin ``(i, j)`` is F
        sampled at row ``y1' + (i + 0.5) (y2' - y1') / pool_size`` and column
        ``x1' + (j + 0.5) (x2' - x1') / pool_size`` (continuous feature coordinates, primes =
        scaled box), zero outside F. Differentiable with respect to ``features`` and ``rois``.

    Raises
    ------
    ValueError
        If ``features`` is not rank 4, ``rois`` is not (B, N, 4), or the batch sizes differ.
    """
    pool_size = _check_pool_size(pool_size)
    spatial_scale = _check_spatial_scale(spatial_scale)
    features = tf.convert_to_tensor(features)
    rois = tf.convert_to_tensor(rois)
    if features.shape.rank is not None and features.shape.rank != 4:
        raise ValueError(f"features must be (B, H, W, C), got shape {features.shape}")
    if rois.shape.rank is not None and (rois.shape.rank != 3 or rois.shape[-1] not in (None, 4)):
        raise ValueError(f"rois must be (B, N, 4) boxes [x1, y1, x2, y2], got shape {rois.shape}")
    if features.shape[0] is not None and rois.shape[0] is not None and features.shape[0] != rois.shape[0]:
        raise ValueError(f"features batch {features.shape[0]} != rois batch {rois.shape[0]}")
    if not features.dtype.is_floating:
        raise ValueError(f"features must be floating point, got {features.dtype.name}")

    dtype = _work_dtype(features.dtype)
    height = _static_or_dynamic(features, 1)
    width = _static_or_dynamic(features, 2)
    rois = tf.cast(rois, _work_dtype(rois.dtype) if rois.dtype.is_floating else tf.float32)
    theta = tf.cast(roi_affine_theta(rois, height, width, spatial_scale), dtype)  # (B, N, 2, 3)

    grid = normalised_output_grid(pool_size, dtype)
    gv, gu = tf.meshgrid(grid, grid, indexing="ij")  # (P, P): row i -> v, column j -> u
    g = tf.stack([gu, gv, tf.ones_like(gu)], axis=0)  # (3, P, P)
    src = tf.einsum("bnkl,lij->bnkij", theta, g)  # (B, N, 2, P, P) normalised (u^F, v^F)
    w_f = tf.cast(width, dtype)
    h_f = tf.cast(height, dtype)
    # normalised -> continuous feature coordinates -> pixel-index coordinates (centre of j at j)
    x = (src[:, :, 0] + 1.0) * (w_f / 2.0) - 0.5
    y = (src[:, :, 1] + 1.0) * (h_f / 2.0) - 0.5
    out = _bilinear_sample(features, x, y, dtype)
    return tf.cast(out, features.dtype)


@keras.saving.register_keras_serializable(package="keras_astro")
class STRoIPooling(keras.layers.Layer):
    """ST_RoI_Pool (Table 4 layer 23): crop and resample each RoI of F to a fixed grid.

    ``call([features, rois])`` with features (B, H, W, C) and rois (B, N, 4) in input-image
    pixels returns (B, N, pool_size, pool_size, C); see :func:`st_roi_pool` for the
    mathematics and conventions. Under a mixed-precision policy the features are cast to the
    compute dtype but the boxes are kept in float32 (the layer does not autocast its inputs).

    Parameters
    ----------
    pool_size
        Output bins per side (Sec 4.4: 7).
    spatial_scale
        Feature pixels per image pixel (1 / 16 for VGG-16 conv5_3).
    """

    def __init__(
        self,
        pool_size: int = DEFAULT_POOL_SIZE,
        spatial_scale: float = DEFAULT_SPATIAL_SCALE,
        **kwargs,
    ):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.pool_size = _check_pool_size(pool_size)
        self.spatial_scale = _check_spatial_scale(spatial_scale)

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2:
            raise ValueError(f"STRoIPooling expects [features, rois], got input shapes {input_shape}")
        self.built = True

    def compute_output_shape(self, input_shape):
        f_shape, r_shape = input_shape
        return (f_shape[0], r_shape[1], self.pool_size, self.pool_size, f_shape[-1])

    def call(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError("STRoIPooling.call expects [features, rois]")
        features, rois = inputs
        features = tf.cast(features, self.compute_dtype)
        rois = tf.cast(rois, tf.float64 if rois.dtype == tf.float64 else tf.float32)
        return st_roi_pool(features, rois, self.pool_size, self.spatial_scale)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool_size=self.pool_size, spatial_scale=self.spatial_scale)
        return cfg
