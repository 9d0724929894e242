"""Detection layers of CLARAN (Wu et al. 2019, Sec 4.3): anchors, box coder, RPN and targets.

Everything here runs inside the TensorFlow graph (no ``tf.py_function``, no numpy in ``call``), is
batched over the images of a batch (B = 1 is the paper's case, B > 1 works), has static output
shapes so a Functional model that uses it builds, and compiles with
``tf.function(jit_compile=True)``.

Geometry (shared CLARAN contract): boxes are ``[x1, y1, x2, y2]`` float32 in pixels of the
network input image, top-left origin, *continuous* coordinates: width = x2 - x1 and centre =
(x1 + x2) / 2 (no Caffe "+1"). Anchor centres sit at ((j + 0.5) * stride, (i + 0.5) * stride).
With a 600 x 600 input and stride 16 (37 x 37 feature map) this gives 6 * 37^2 = 8,214 anchors of
which exactly 5,241 lie inside the image, the paper's |A'| (Sec 4.3.1, Eq. 6); Faster R-CNN's
Caffe convention (centres at 7.5 + 16 j, widths s - 1, test x2 < W) gives the same 5,241.

Pieces
------
* :func:`generate_anchors`, :func:`box_iou`, :func:`encode_boxes` (Eq. 5 / 7),
  :func:`decode_boxes` (Eq. 3), :func:`clip_boxes`: small pure tensor functions.
* :class:`AnchorGenerator`: feature map -> the (A, 4) anchor grid (Sec 4.3.1).
* :class:`RPNHead`: RPN_Conv, Anchor_Cls_Conv, Anchor_Reg_Conv (Table 4 layers 18-19).
* :class:`AnchorTarget`: Anchor_Target (Table 4 layer 20, Sec 4.3.1).
* :class:`ProposalLayer`: RoI_Proposal (Table 4 layer 21, Sec 4.3.2).
* :class:`ProposalTarget`: RoI_Proposal_Target (Table 4 layer 22, Sec 4.3.2).

Randomness (anchor and RoI sub-sampling) is stateless: each call draws uniform keys from a
counter-based integer hash of (layer seed, draw counter, element index), where the draw counter is
a non-trainable int32 weight incremented on every call, so successive training steps draw
different samples while a rerun from the same layer seed reproduces them. An explicit ``seed``
call argument (shape (2,) int) overrides the counter and leaves it untouched. The hash
(:func:`stateless_uniform_keys`) replaces ``tf.random.stateless_uniform`` because TensorFlow's
Philox streams differ between XLA-compiled and ordinary kernels; with the hash, eager, graph and
``jit_compile=True`` calls draw exactly the same samples.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from keras_astro import specs

logger = logging.getLogger(__name__)

_SPEC = specs.load_spec("claran")
_RPN = _SPEC["rpn"]
_PROP = _SPEC["proposals"]
_PT = _SPEC["proposal_target"]

#: Anchor sizes in input pixels: base 16 x scales (1, 2, 4, 8, 16, 32) (Sec 4.3.1).
DEFAULT_ANCHOR_SIZES: tuple[float, ...] = tuple(float(_RPN["anchor_base"] * s) for s in _RPN["anchor_scales"])
#: Anchor aspect ratios (height / width); squares only (Sec 4.3.1).
DEFAULT_ANCHOR_RATIOS: tuple[float, ...] = tuple(float(r) for r in _RPN["anchor_ratios"])
#: Feature stride of Conv5_3: 2^4 after four 2 x 2 max-pools (Sec 4.3.1).
DEFAULT_STRIDE: int = int(_SPEC["backbone"]["feature_stride"])
#: Box-regression target standard deviations of the RoI head (originals.md, Faster R-CNN code).
DEFAULT_TARGET_STDS: tuple[float, ...] = tuple(float(s) for s in _PT["target_stds"])
#: RNG seed of the authors' code (originals.md).
DEFAULT_SEED: int = int(_SPEC["training"]["seed"])
#: Upper bound of the decoded log width / height offsets, log(1000 / 16) (Faster R-CNN's
#: ``bbox_transform_inv`` clamp, not in the paper): keeps exp() finite for wild early deltas.
BBOX_XFORM_CLIP: float = math.log(1000.0 / 16.0)

_UNIT_STDS = (1.0, 1.0, 1.0, 1.0)


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _static_shape(x: Any) -> tuple | None:
    """The static shape of a tensor or KerasTensor as a tuple, or None if the rank is unknown."""
    shape = x.shape
    if isinstance(shape, tf.TensorShape):
        return None if shape.rank is None else tuple(shape.as_list())
    return tuple(shape)


def _check_rank(x: Any, rank: int, name: str, layout: str, last: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` has the static rank (and last dimension) expected."""
    shape = _static_shape(x)
    if shape is None:
        return
    if len(shape) != rank:
        raise ValueError(f"{name} must have rank {rank} with shape {layout}; got shape {shape}")
    if last is not None and shape[-1] is not None and shape[-1] != last:
        raise ValueError(f"{name} must have shape {layout} (last dimension {last}); got shape {shape}")


def _check_boxes(x: tf.Tensor, name: str) -> None:
    r = x.shape.rank
    if r is not None and r < 1:
        raise ValueError(f"{name} must have shape (..., 4) with [x1, y1, x2, y2]; got a scalar")
    if r is not None and x.shape[-1] is not None and x.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4) with [x1, y1, x2, y2]; got shape {tuple(x.shape)}")


def _as_float_boxes(x: Any, name: str) -> tf.Tensor:
    t = tf.cast(tf.convert_to_tensor(x), tf.float32)
    _check_boxes(t, name)
    return t


def _stds_tensor(stds: Sequence[float], name: str = "stds") -> tf.Tensor:
    s = [float(v) for v in stds]
    if len(s) != 4 or any(v <= 0 for v in s):
        raise ValueError(f"{name} must be 4 positive numbers (x, y, w, h); got {stds!r}")
    return tf.constant(s, tf.float32)


def _image_hw(image_shape: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """(height, width) of the network input as float32 scalars from ints or a (2,) tensor."""
    if image_shape is None:
        raise ValueError("image_shape is required: the (height, width) of the network input in pixels")
    if isinstance(image_shape, dict) and "value" in image_shape:  # a serialized tuple
        image_shape = image_shape["value"]
    if isinstance(image_shape, (tuple, list)):
        if len(image_shape) != 2:
            raise ValueError(f"image_shape must be (height, width); got {image_shape!r}")
        h, w = image_shape
        return tf.cast(tf.convert_to_tensor(h), tf.float32), tf.cast(tf.convert_to_tensor(w), tf.float32)
    t = tf.convert_to_tensor(image_shape)
    if t.shape.rank != 1 or (t.shape[0] is not None and t.shape[0] != 2):
        raise ValueError(f"image_shape must be (height, width), a (2,) tensor; got shape {tuple(t.shape)}")
    t = tf.cast(t, tf.float32)
    return t[0], t[1]


# --------------------------------------------------------------------------------------------
# pure tensor functions
# --------------------------------------------------------------------------------------------
def generate_anchors(
    feature_height: int | tf.Tensor,
    feature_width: int | tf.Tensor,
    stride: float = DEFAULT_STRIDE,
    sizes: Sequence[float] = DEFAULT_ANCHOR_SIZES,
    ratios: Sequence[float] = DEFAULT_ANCHOR_RATIOS,
) -> tf.Tensor:
    """The anchor grid of a feature map (Sec 4.3.1).

    Parameters
    ----------
    feature_height, feature_width
        Feature-map size H, W in cells (ints or scalar int tensors).
    stride
        Input pixels per feature cell (16 for Conv5_3 of VGG-16).
    sizes
        Anchor side lengths in input pixels for ratio 1 (area = size^2 for every ratio).
    ratios
        Aspect ratios height / width (Faster R-CNN's convention); anchor width = size / sqrt(r),
        height = size * sqrt(r).

    Returns
    -------
    tf.Tensor
        (H * W * k, 4) float32 ``[x1, y1, x2, y2]`` in input pixels, k = len(ratios) * len(sizes),
        centres at ((j + 0.5) * stride, (i + 0.5) * stride); row index (i * W + j) * k + a with
        anchor index a = ratio_index * len(sizes) + size_index.
    """
    sizes = [float(s) for s in sizes]
    ratios = [float(r) for r in ratios]
    if not sizes or not ratios or min(sizes) <= 0 or min(ratios) <= 0:
        raise ValueError(f"anchor sizes and ratios must be non-empty and positive; got {sizes!r}, {ratios!r}")
    if float(stride) <= 0:
        raise ValueError(f"stride must be positive; got {stride!r}")
    ws = [s / math.sqrt(r) for r in ratios for s in sizes]
    hs = [s * math.sqrt(r) for r in ratios for s in sizes]
    half_w = 0.5 * tf.constant(ws, tf.float32)  # (k,)
    half_h = 0.5 * tf.constant(hs, tf.float32)
    cy = (tf.cast(tf.range(feature_height), tf.float32) + 0.5) * float(stride)  # (H,)
    cx = (tf.cast(tf.range(feature_width), tf.float32) + 0.5) * float(stride)  # (W,)
    cy = cy[:, None, None]
    cx = cx[None, :, None]
    x1 = cx - half_w
    y1 = cy - half_h
    x2 = cx + half_w
    y2 = cy + half_h
    shape = tf.shape(x1 + y1)  # (H, W, k)
    boxes = tf.stack([tf.broadcast_to(v, shape) for v in (x1, y1, x2, y2)], axis=-1)
    return tf.reshape(boxes, (-1, 4))


def box_iou(boxes_a: tf.Tensor, boxes_b: tf.Tensor) -> tf.Tensor:
    """Pairwise intersection over union of ``[x1, y1, x2, y2]`` boxes.

    Parameters
    ----------
    boxes_a
        (..., N, 4) boxes in pixels.
    boxes_b
        (..., M, 4) boxes in pixels; leading dimensions broadcast against those of ``boxes_a``.

    Returns
    -------
    tf.Tensor
        (..., N, M) float32 IoU in [0, 1]; 0 where the union is empty (degenerate boxes).
    """
    a = _as_float_boxes(boxes_a, "boxes_a")
    b = _as_float_boxes(boxes_b, "boxes_b")
    if a.shape.rank is not None and a.shape.rank < 2:
        raise ValueError(f"boxes_a must have shape (..., N, 4); got shape {tuple(a.shape)}")
    if b.shape.rank is not None and b.shape.rank < 2:
        raise ValueError(f"boxes_b must have shape (..., M, 4); got shape {tuple(b.shape)}")
    a = a[..., :, None, :]
    b = b[..., None, :, :]
    iw = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    ih = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = iw * ih
    area_a = tf.maximum(a[..., 2] - a[..., 0], 0.0) * tf.maximum(a[..., 3] - a[..., 1], 0.0)
    area_b = tf.maximum(b[..., 2] - b[..., 0], 0.0) * tf.maximum(b[..., 3] - b[..., 1], 0.0)
    union = area_a + area_b - inter
    return tf.math.divide_no_nan(inter, union)


def _centre_size(boxes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_boxes(anchors: tf.Tensor, boxes: tf.Tensor, stds: Sequence[float] = _UNIT_STDS) -> tf.Tensor:
    """Regression targets S^-1(b; a) of Eq. 5 / Eq. 7, divided by ``stds``.

    Parameters
    ----------
    anchors
        (..., 4) reference boxes a (anchors or proposals) in pixels, positive width and height.
    boxes
        (..., 4) target boxes b in pixels (broadcast against ``anchors``).
    stds
        Divisors of (g1, g2, g3, g4); (1, 1, 1, 1) for the RPN, (0.1, 0.1, 0.2, 0.2) for the head.

    Returns
    -------
    tf.Tensor
        (..., 4) float32 ``((bx - ax) / aw, (by - ay) / ah, log(bw / aw), log(bh / ah)) / stds``
        (dimensionless). Degenerate boxes give non-finite values; callers mask them.
    """
    a = _as_float_boxes(anchors, "anchors")
    b = _as_float_boxes(boxes, "boxes")
    ax, ay, aw, ah = _centre_size(a)
    bx, by, bw, bh = _centre_size(b)
    g = tf.stack([(bx - ax) / aw, (by - ay) / ah, tf.math.log(bw / aw), tf.math.log(bh / ah)], axis=-1)
    return g / _stds_tensor(stds)


def decode_boxes(anchors: tf.Tensor, deltas: tf.Tensor, stds: Sequence[float] = _UNIT_STDS) -> tf.Tensor:
    """Apply offsets to reference boxes, S(d; a) of Eq. 3 (``deltas`` multiplied by ``stds`` first).

    Parameters
    ----------
    anchors
        (..., 4) reference boxes in pixels.
    deltas
        (..., 4) offsets (d1, d2, d3, d4), broadcast against ``anchors``; d3 and d4 are clamped
        at log(1000 / 16) before the exponential (Faster R-CNN's guard).
    stds
        Multipliers undoing the target normalisation of :func:`encode_boxes`.

    Returns
    -------
    tf.Tensor
        (..., 4) float32 boxes ``[x1, y1, x2, y2]`` in pixels (not clipped).
    """
    a = _as_float_boxes(anchors, "anchors")
    d = _as_float_boxes(deltas, "deltas") * _stds_tensor(stds)
    ax, ay, aw, ah = _centre_size(a)
    cx = d[..., 0] * aw + ax
    cy = d[..., 1] * ah + ay
    w = tf.exp(tf.minimum(d[..., 2], BBOX_XFORM_CLIP)) * aw
    h = tf.exp(tf.minimum(d[..., 3], BBOX_XFORM_CLIP)) * ah
    return tf.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def clip_boxes(boxes: tf.Tensor, height: float | tf.Tensor, width: float | tf.Tensor) -> tf.Tensor:
    """Clip ``[x1, y1, x2, y2]`` boxes to the image: x into [0, width], y into [0, height] (pixels)."""
    b = _as_float_boxes(boxes, "boxes")
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    x1 = tf.clip_by_value(b[..., 0], 0.0, w)
    y1 = tf.clip_by_value(b[..., 1], 0.0, h)
    x2 = tf.clip_by_value(b[..., 2], 0.0, w)
    y2 = tf.clip_by_value(b[..., 3], 0.0, h)
    return tf.stack([x1, y1, x2, y2], axis=-1)


def _mix32(x: tf.Tensor) -> tf.Tensor:
    """The "lowbias32" integer finaliser (C. Wellons): a bijective avalanche hash on uint32."""
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))
    x = x * tf.constant(0x7FEB352D, tf.uint32)
    x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(15, tf.uint32)))
    x = x * tf.constant(0x846CA68B, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


def stateless_uniform_keys(shape: Any, seed: Any) -> tf.Tensor:
    """Uniform [0, 1) float32 keys from a (2,) int seed, identical under XLA and without it.

    Element n (row-major) gets ``mix(mix(n ^ s) ^ mix(s))`` with ``s = mix(seed[1] ^ mix(seed[0]))``
    and ``mix`` the lowbias32 hash, keeping the top 24 bits. Good enough for random sub-sampling;
    not a cryptographic or statistical-grade generator.
    """
    seed = tf.bitcast(tf.cast(tf.convert_to_tensor(seed), tf.int32), tf.uint32)
    base = _mix32(tf.bitwise.bitwise_xor(seed[1], _mix32(seed[0])))
    base2 = _mix32(base)
    shape = tf.convert_to_tensor(shape, tf.int32)
    idx = tf.cast(tf.range(tf.reduce_prod(shape)), tf.uint32)
    h = _mix32(tf.bitwise.bitwise_xor(_mix32(tf.bitwise.bitwise_xor(idx, base)), base2))
    u = tf.cast(tf.bitwise.right_shift(h, tf.constant(8, tf.uint32)), tf.float32) * (2.0**-24)
    return tf.reshape(u, shape)


def _rank_within(mask: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
    """Per row, the 0-based rank of each ``mask`` element by ascending ``keys`` (others rank last)."""
    masked = tf.where(mask, keys, tf.fill(tf.shape(keys), 2.0))  # keys in [0, 1)
    order = tf.argsort(masked, axis=-1, stable=True)
    return tf.argsort(order, axis=-1, stable=True)


def _iou_with_valid_gt(boxes: tf.Tensor, gt_boxes: tf.Tensor, gt_valid: tf.Tensor) -> tf.Tensor:
    """(B, N, K) IoU with padding gt set to -1 so that it never wins a max."""
    iou = box_iou(boxes, gt_boxes)
    return tf.where(gt_valid[:, None, :], iou, tf.fill(tf.shape(iou), -1.0))


# --------------------------------------------------------------------------------------------
# layers
# --------------------------------------------------------------------------------------------
class _SeededSampler(keras.layers.Layer):
    """Base of the target layers: a layer seed plus a non-trainable draw counter."""

    def __init__(self, seed: int = DEFAULT_SEED, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(seed)
        self.draws = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
            name="draws",
        )

    def _draw_seed(self, seed: Any) -> tf.Tensor:
        if seed is not None:
            s = tf.cast(tf.convert_to_tensor(seed), tf.int32)
            if s.shape.rank == 0:
                return tf.stack([s, tf.zeros_like(s)])
            if s.shape.rank != 1 or (s.shape[0] is not None and s.shape[0] != 2):
                raise ValueError(f"seed must be an int or a (2,) int tensor; got shape {tuple(s.shape)}")
            return s
        step = tf.convert_to_tensor(self.draws.value)
        self.draws.assign_add(1)
        return tf.stack([tf.constant(self.seed, tf.int32), step])


@keras.saving.register_keras_serializable(package="keras_astro")
class AnchorGenerator(keras.layers.Layer):
    """The fixed anchor grid of a feature map (Sec 4.3.1): 6 square anchors 16...512 px per cell.

    Parameters
    ----------
    stride
        Input pixels per feature cell.
    sizes
        Anchor sizes in input pixels.
    ratios
        Aspect ratios (height / width).

    Call
    ----
    ``feature_map`` (B, H, W, C) -> (H * W * k, 4) float32 anchors (no batch axis; see
    :func:`generate_anchors` for the ordering).
    """

    def __init__(
        self,
        stride: float = DEFAULT_STRIDE,
        sizes: Sequence[float] = DEFAULT_ANCHOR_SIZES,
        ratios: Sequence[float] = DEFAULT_ANCHOR_RATIOS,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.stride = float(stride)
        self.sizes = [float(s) for s in sizes]
        self.ratios = [float(r) for r in ratios]
        generate_anchors(1, 1, self.stride, self.sizes, self.ratios)  # validates the arguments

    @property
    def num_anchors(self) -> int:
        """Anchors per feature cell, k."""
        return len(self.sizes) * len(self.ratios)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"feature_map must have rank 4 with shape (B, H, W, C); got shape {tuple(input_shape)}")
        h, w = input_shape[1], input_shape[2]
        n = None if h is None or w is None else int(h) * int(w) * self.num_anchors
        return (n, 4)

    def call(self, feature_map):
        x = tf.convert_to_tensor(feature_map)
        _check_rank(x, 4, "feature_map", "(B, H, W, C)")
        h = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
        w = x.shape[2] if x.shape[2] is not None else tf.shape(x)[2]
        return generate_anchors(h, w, self.stride, self.sizes, self.ratios)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(stride=self.stride, sizes=list(self.sizes), ratios=list(self.ratios))
        return cfg


@keras.saving.register_keras_serializable(package="keras_astro")
class RPNHead(keras.layers.Layer):
    """Region proposal head (Table 4 layers 18-19): RPN_Conv, Anchor_Cls_Conv, Anchor_Reg_Conv.

    ``rpn_conv`` is a 3 x 3 convolution with ReLU, ``rpn_cls`` a 1 x 1 convolution with 2k filters
    (background, source logits per anchor) and ``rpn_reg`` a 1 x 1 convolution with 4k filters
    (Eq. 3 offsets per anchor). Kernels start as truncated Gaussians of standard deviation
    ``kernel_stddev`` (0.01, Sec 4.1), biases at zero.

    Parameters
    ----------
    filters
        Channels of RPN_Conv (512).
    num_anchors
        Anchors per cell, k (6).
    kernel_stddev
        Initial kernel standard deviation.

    Call
    ----
    ``features`` (B, H, W, C) -> ``(logits (B, H*W*k, 2), deltas (B, H*W*k, 4))``. Channel
    ``a * m + c`` of a cell is value c of anchor a, so the rows line up with
    :func:`generate_anchors`.
    """

    def __init__(
        self,
        filters: int = int(_RPN["conv_filters"]),
        num_anchors: int = len(DEFAULT_ANCHOR_SIZES),
        kernel_stddev: float = 0.01,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(filters) < 1 or int(num_anchors) < 1:
            raise ValueError(f"filters and num_anchors must be positive; got {filters!r}, {num_anchors!r}")
        self.filters = int(filters)
        self.num_anchors = int(num_anchors)
        self.kernel_stddev = float(kernel_stddev)

        def init():
            return keras.initializers.TruncatedNormal(stddev=self.kernel_stddev)

        self.rpn_conv = keras.layers.Conv2D(
            self.filters, 3, padding="same", activation="relu", kernel_initializer=init(), name="rpn_conv"
        )
        self.rpn_cls = keras.layers.Conv2D(2 * self.num_anchors, 1, kernel_initializer=init(), name="rpn_cls")
        self.rpn_reg = keras.layers.Conv2D(4 * self.num_anchors, 1, kernel_initializer=init(), name="rpn_reg")

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(f"features must have rank 4 with shape (B, H, W, C); got shape {tuple(input_shape)}")
        self.rpn_conv.build(input_shape)
        mid = (*input_shape[:3], self.filters)
        self.rpn_cls.build(mid)
        self.rpn_reg.build(mid)
        self.built = True

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        n = None if h is None or w is None else int(h) * int(w) * self.num_anchors
        return (input_shape[0], n, 2), (input_shape[0], n, 4)

    def call(self, features):
        x = tf.convert_to_tensor(features)
        _check_rank(x, 4, "features", "(B, H, W, C)")
        hidden = self.rpn_conv(x)
        b = tf.shape(x)[0]
        logits = tf.reshape(self.rpn_cls(hidden), (b, -1, 2))
        deltas = tf.reshape(self.rpn_reg(hidden), (b, -1, 4))
        n = None
        if x.shape[1] is not None and x.shape[2] is not None:
            n = x.shape[1] * x.shape[2] * self.num_anchors
        logits.set_shape((x.shape[0], n, 2))
        deltas.set_shape((x.shape[0], n, 4))
        return logits, deltas

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, num_anchors=self.num_anchors, kernel_stddev=self.kernel_stddev)
        return cfg


@keras.saving.register_keras_serializable(package="keras_astro")
class AnchorTarget(_SeededSampler):
    """Anchor_Target (Sec 4.3.1): objectness labels and Eq. 5 targets for every anchor.

    Per image: anchors crossing the image border by more than ``allowed_border`` pixels are
    ignored (label -1, never sampled; |A'| = 5,241 at 600 px). Of the inside anchors, one whose
    highest IoU with the valid ground-truth boxes is below ``negative_iou`` is negative (0); one
    with IoU >= ``positive_iou`` with some box, or one that has a box's highest IoU among all inside
    anchors (all anchors sharing that maximum, as Faster R-CNN's code; only when that maximum is
    > 0), is positive (1; positive wins over negative). Then at most
    ``int(positive_fraction * batch_per_image)`` positives are kept at random, and negatives fill
    the batch up to ``batch_per_image``; the rest become -1. Padding boxes (class 0) are ignored;
    an image without any valid box has all its inside anchors as negative candidates.

    Parameters
    ----------
    positive_iou, negative_iou
        tau = 0.7 and 1 - tau = 0.3.
    batch_per_image
        Sampled anchors per image, 256.
    positive_fraction
        Maximum fraction of positives, 0.5.
    allowed_border
        Pixels an anchor may stick out of the image and still count as inside, 0.
    seed
        Layer seed of the stateless sampling.

    Call
    ----
    ``anchors`` (A, 4), ``gt_boxes`` (B, K, 4), ``gt_classes`` (B, K) int (0 = padding),
    ``image_shape`` (height, width) ints or a (2,) tensor, optional ``seed`` (2,) int.
    Returns a dict: ``labels`` (B, A) int32 in {1, 0, -1}; ``targets`` (B, A, 4) Eq. 5 deltas
    (unnormalised) to each anchor's best-IoU valid box, zero for outside anchors and images
    without boxes; ``inside`` (B, A) bool. All outputs carry no gradient.
    """

    def __init__(
        self,
        positive_iou: float = float(_RPN["positive_iou"]),
        negative_iou: float = float(_RPN["negative_iou"]),
        batch_per_image: int = int(_RPN["batch_per_image"]),
        positive_fraction: float = float(_RPN["positive_fraction"]),
        allowed_border: float = float(_RPN["allowed_border"]),
        seed: int = DEFAULT_SEED,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        if not 0.0 <= float(negative_iou) <= float(positive_iou) <= 1.0:
            raise ValueError(
                f"need 0 <= negative_iou <= positive_iou <= 1; got negative_iou={negative_iou!r}, "
                f"positive_iou={positive_iou!r}"
            )
        if int(batch_per_image) < 1 or not 0.0 <= float(positive_fraction) <= 1.0:
            raise ValueError(
                f"batch_per_image must be >= 1 and positive_fraction in [0, 1]; got {batch_per_image!r}, "
                f"{positive_fraction!r}"
            )
        self.positive_iou = float(positive_iou)
        self.negative_iou = float(negative_iou)
        self.batch_per_image = int(batch_per_image)
        self.positive_fraction = float(positive_fraction)
        self.allowed_border = float(allowed_border)

    @property
    def max_positives(self) -> int:
        """Positives kept per image at most, int(positive_fraction * batch_per_image) (128)."""
        return int(self.positive_fraction * self.batch_per_image)

    @staticmethod
    def _check_inputs(anchors, gt_boxes, gt_classes) -> None:
        _check_rank(anchors, 2, "anchors", "(A, 4)", 4)
        _check_rank(gt_boxes, 3, "gt_boxes", "(B, K, 4)", 4)
        _check_rank(gt_classes, 2, "gt_classes", "(B, K)")

    def compute_output_spec(self, anchors, gt_boxes, gt_classes, image_shape=None, seed=None):
        self._check_inputs(anchors, gt_boxes, gt_classes)
        b = gt_boxes.shape[0]
        a = anchors.shape[0]
        return {
            "labels": keras.KerasTensor((b, a), dtype="int32"),
            "targets": keras.KerasTensor((b, a, 4), dtype="float32"),
            "inside": keras.KerasTensor((b, a), dtype="bool"),
        }

    def call(self, anchors, gt_boxes, gt_classes, image_shape=None, seed=None):
        anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)
        gt_boxes = tf.cast(tf.convert_to_tensor(gt_boxes), tf.float32)
        gt_classes = tf.convert_to_tensor(gt_classes)
        self._check_inputs(anchors, gt_boxes, gt_classes)
        h, w = _image_hw(image_shape)
        gt_valid = tf.cast(gt_classes, tf.int32) > 0  # (B, K)
        batch = tf.shape(gt_boxes)[0]
        n_anchors = tf.shape(anchors)[0]

        border = self.allowed_border
        inside1 = (
            (anchors[:, 0] >= -border)
            & (anchors[:, 1] >= -border)
            & (anchors[:, 2] <= w + border)
            & (anchors[:, 3] <= h + border)
        )  # (A,)
        inside = tf.broadcast_to(inside1[None, :], (batch, n_anchors))

        iou = _iou_with_valid_gt(anchors[None], gt_boxes, gt_valid)  # (B, A, K), padding -1
        max_iou = tf.reduce_max(iou, axis=-1)  # (B, A); -1 without valid gt
        argmax = tf.argmax(iou, axis=-1, output_type=tf.int32)
        # highest IoU of each gt box over the inside anchors, and the anchors that reach it
        iou_in = tf.where(inside[:, :, None], iou, tf.fill(tf.shape(iou), -1.0))
        gt_max = tf.reduce_max(iou_in, axis=1, keepdims=True)  # (B, 1, K)
        is_best = tf.reduce_any((iou_in == gt_max) & (gt_max > 0.0) & gt_valid[:, None, :], axis=-1)

        negative = inside & (max_iou < self.negative_iou)
        positive = inside & ((max_iou >= self.positive_iou) | is_best)
        negative = negative & ~positive

        keys = stateless_uniform_keys(tf.shape(max_iou), self._draw_seed(seed))
        pos_keep = positive & (_rank_within(positive, keys) < self.max_positives)
        n_pos = tf.reduce_sum(tf.cast(pos_keep, tf.int32), axis=1, keepdims=True)
        neg_keep = negative & (_rank_within(negative, keys) < self.batch_per_image - n_pos)
        labels = tf.where(pos_keep, 1, tf.where(neg_keep, 0, -1))
        labels = tf.cast(labels, tf.int32)

        matched = tf.gather(gt_boxes, argmax, batch_dims=1)  # (B, A, 4)
        has_gt = inside & tf.reduce_any(gt_valid, axis=1, keepdims=True)
        targets = encode_boxes(anchors[None], matched)
        targets = tf.where(has_gt[..., None], targets, tf.zeros_like(targets))
        return {
            "labels": tf.stop_gradient(labels),
            "targets": tf.stop_gradient(targets),
            "inside": tf.stop_gradient(inside),
        }

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            positive_iou=self.positive_iou,
            negative_iou=self.negative_iou,
            batch_per_image=self.batch_per_image,
            positive_fraction=self.positive_fraction,
            allowed_border=self.allowed_border,
            seed=self.seed,
        )
        return cfg


@keras.saving.register_keras_serializable(package="keras_astro")
class ProposalLayer(keras.layers.Layer):
    """RoI_Proposal (Sec 4.3.2): decode, clip, drop small boxes, top-M, NMS, keep top-P.

    Every anchor is shifted by its offsets (Eq. 3) and clipped to the image; boxes narrower or
    lower than ``min_size`` pixels get score -inf (shapes do not change); the
    ``pre_nms_top_n`` highest source scores go through greedy NMS at ``nms_iou``
    (``tf.image.non_max_suppression_padded``, which suppresses at IoU >= threshold) and the first
    ``post_nms_top_n`` survivors are returned, padded.

    Parameters
    ----------
    pre_nms_top_n
        M: 6,000 in the paper (12,000 in the code's training setting).
    post_nms_top_n
        P: 2,000 for training, 5 for testing.
    nms_iou
        NMS threshold, 0.7.
    min_size
        Minimum width and height in input pixels, 4.

    Call
    ----
    ``fg_prob`` (B, A) source probabilities (softmax(o_p)[1]), ``deltas`` (B, A, 4), ``anchors``
    (A, 4), ``image_shape`` (height, width). Returns a dict: ``rois`` (B, P, 4) in pixels,
    ``scores`` (B, P), ``valid`` (B, P) bool; padded rows are zero and invalid. ``rois`` keep
    their gradient with respect to ``deltas`` (the model decides whether to stop it).
    """

    def __init__(
        self,
        pre_nms_top_n: int,
        post_nms_top_n: int,
        nms_iou: float = float(_PROP["nms_iou"]),
        min_size: float = float(_PROP["min_size"]),
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(pre_nms_top_n) < 1 or int(post_nms_top_n) < 1:
            raise ValueError(
                f"pre_nms_top_n and post_nms_top_n must be >= 1; got {pre_nms_top_n!r}, {post_nms_top_n!r}"
            )
        if not 0.0 < float(nms_iou) <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1]; got {nms_iou!r}")
        self.pre_nms_top_n = int(pre_nms_top_n)
        self.post_nms_top_n = int(post_nms_top_n)
        self.nms_iou = float(nms_iou)
        self.min_size = float(min_size)

    @staticmethod
    def _check_inputs(fg_prob, deltas, anchors) -> list[int]:
        """Check ranks and agreement on A; return the static values of A found."""
        _check_rank(fg_prob, 2, "fg_prob", "(B, A)")
        _check_rank(deltas, 3, "deltas", "(B, A, 4)", 4)
        _check_rank(anchors, 2, "anchors", "(A, 4)", 4)
        shapes = [_static_shape(t) for t in (fg_prob, deltas, anchors)]
        dims = [s[i] if s is not None else None for s, i in zip(shapes, (1, 1, 0))]
        n_static = [d for d in dims if d is not None]
        if len(set(n_static)) > 1:
            raise ValueError(
                f"fg_prob (B, A), deltas (B, A, 4) and anchors (A, 4) disagree on A: shapes {shapes[0]}, "
                f"{shapes[1]}, {shapes[2]}"
            )
        return n_static

    def compute_output_spec(self, fg_prob, deltas, anchors, image_shape=None):
        self._check_inputs(fg_prob, deltas, anchors)
        b = fg_prob.shape[0]
        p = self.post_nms_top_n
        return {
            "rois": keras.KerasTensor((b, p, 4), dtype="float32"),
            "scores": keras.KerasTensor((b, p), dtype="float32"),
            "valid": keras.KerasTensor((b, p), dtype="bool"),
        }

    def call(self, fg_prob, deltas, anchors, image_shape=None):
        scores = tf.cast(tf.convert_to_tensor(fg_prob), tf.float32)
        deltas = tf.cast(tf.convert_to_tensor(deltas), tf.float32)
        anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)
        n_static = self._check_inputs(scores, deltas, anchors)
        h, w = _image_hw(image_shape)
        boxes = clip_boxes(decode_boxes(anchors[None], deltas), h, w)  # (B, A, 4)
        big = (boxes[..., 2] - boxes[..., 0] >= self.min_size) & (boxes[..., 3] - boxes[..., 1] >= self.min_size)
        scores = tf.where(big, scores, tf.fill(tf.shape(scores), float("-inf")))

        if n_static:
            k = min(self.pre_nms_top_n, n_static[0])
        else:
            k = tf.minimum(self.pre_nms_top_n, tf.shape(scores)[1])
        top_scores, top_idx = tf.math.top_k(scores, k=k, sorted=True)
        top_boxes = tf.gather(boxes, top_idx, batch_dims=1)  # (B, k, 4)
        usable = tf.math.is_finite(top_scores)
        # padded NMS treats an all-zero box as absent: zero the dropped ones; [y1, x1, y2, x2] order
        yx = tf.gather(top_boxes, [1, 0, 3, 2], axis=-1)
        yx = tf.where(usable[..., None], yx, tf.zeros_like(yx))
        nms_scores = tf.where(usable, top_scores, tf.zeros_like(top_scores))
        sel, n_valid = tf.image.non_max_suppression_padded(
            tf.stop_gradient(yx),
            tf.stop_gradient(nms_scores),
            max_output_size=self.post_nms_top_n,
            iou_threshold=self.nms_iou,
            pad_to_max_output_size=True,
            sorted_input=True,
            canonicalized_coordinates=True,
        )
        valid = tf.range(self.post_nms_top_n)[None, :] < n_valid[:, None]
        rois = tf.gather(top_boxes, sel, batch_dims=1)
        out_scores = tf.gather(top_scores, sel, batch_dims=1)
        rois = tf.where(valid[..., None], rois, tf.zeros_like(rois))
        out_scores = tf.where(valid, out_scores, tf.zeros_like(out_scores))
        return {"rois": rois, "scores": out_scores, "valid": valid}

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            pre_nms_top_n=self.pre_nms_top_n,
            post_nms_top_n=self.post_nms_top_n,
            nms_iou=self.nms_iou,
            min_size=self.min_size,
        )
        return cfg


@keras.saving.register_keras_serializable(package="keras_astro")
class ProposalTarget(_SeededSampler):
    """RoI_Proposal_Target (Sec 4.3.2): sample 128 RoIs per image with class and Eq. 7 targets.

    Per image the candidates are the valid proposals plus the valid ground-truth boxes (as Faster
    R-CNN's code). Each candidate's target is the valid gt box of highest IoU. Foreground: IoU
    >= ``fg_iou`` (the code's ``>=``; the paper writes "> 0.5"); background: IoU in
    [``bg_iou_low``, ``bg_iou_high``). Up to round(``fg_fraction`` * ``rois_per_image``) = 32
    foreground RoIs are drawn at random, background RoIs fill the rest; when there are not enough
    candidates the remaining rows are padding (``sample_valid`` False, zero box, label 0, zero
    targets and weights); nothing is drawn twice. Rows are ordered foreground, background,
    padding. An image without valid boxes yields only padding.

    Parameters
    ----------
    num_classes
        Classes including background, 7.
    rois_per_image
        |M| = 128.
    fg_fraction
        0.25 (foreground : background about 1 : 3).
    fg_iou, bg_iou_low, bg_iou_high
        0.5, 0.1, 0.5.
    stds
        Target normalisation (0.1, 0.1, 0.2, 0.2); means are 0.
    seed
        Layer seed of the stateless sampling.

    Call
    ----
    ``rois`` (B, P, 4), ``roi_valid`` (B, P) bool, ``gt_boxes`` (B, K, 4), ``gt_classes`` (B, K)
    int (0 = padding), optional ``seed`` (2,) int. Returns a dict: ``rois`` (B, R, 4),
    ``labels`` (B, R) int32 (0 = background), ``targets`` (B, R, 4 * num_classes) Eq. 7 / stds in
    the four columns of the true class, ``target_weights`` (B, R, 4 * num_classes) 1 on those
    columns of foreground RoIs, ``sample_valid`` (B, R) bool. Only ``rois`` carries a gradient
    (to the input rois).
    """

    def __init__(
        self,
        num_classes: int = int(_SPEC["num_classes"]),
        rois_per_image: int = int(_PT["rois_per_image"]),
        fg_fraction: float = float(_PT["fg_fraction"]),
        fg_iou: float = float(_PT["fg_iou"]),
        bg_iou_low: float = float(_PT["bg_iou_low"]),
        bg_iou_high: float = float(_PT["bg_iou_high"]),
        stds: Sequence[float] = DEFAULT_TARGET_STDS,
        seed: int = DEFAULT_SEED,
        **kwargs,
    ):
        super().__init__(seed=seed, **kwargs)
        if int(num_classes) < 2 or int(rois_per_image) < 1 or not 0.0 <= float(fg_fraction) <= 1.0:
            raise ValueError(
                f"need num_classes >= 2, rois_per_image >= 1 and fg_fraction in [0, 1]; got {num_classes!r}, "
                f"{rois_per_image!r}, {fg_fraction!r}"
            )
        if not 0.0 <= float(bg_iou_low) <= float(bg_iou_high) <= 1.0:
            raise ValueError(f"need 0 <= bg_iou_low <= bg_iou_high <= 1; got {bg_iou_low!r}, {bg_iou_high!r}")
        _stds_tensor(stds)
        self.num_classes = int(num_classes)
        self.rois_per_image = int(rois_per_image)
        self.fg_fraction = float(fg_fraction)
        self.fg_iou = float(fg_iou)
        self.bg_iou_low = float(bg_iou_low)
        self.bg_iou_high = float(bg_iou_high)
        self.stds = [float(s) for s in stds]

    @property
    def max_foreground(self) -> int:
        """Foreground RoIs per image at most, round(fg_fraction * rois_per_image) (32)."""
        return int(round(self.fg_fraction * self.rois_per_image))

    @staticmethod
    def _check_inputs(rois, roi_valid, gt_boxes, gt_classes) -> None:
        _check_rank(rois, 3, "rois", "(B, P, 4)", 4)
        _check_rank(roi_valid, 2, "roi_valid", "(B, P)")
        _check_rank(gt_boxes, 3, "gt_boxes", "(B, K, 4)", 4)
        _check_rank(gt_classes, 2, "gt_classes", "(B, K)")

    def compute_output_spec(self, rois, roi_valid, gt_boxes, gt_classes, seed=None):
        self._check_inputs(rois, roi_valid, gt_boxes, gt_classes)
        b = rois.shape[0]
        r = self.rois_per_image
        c4 = 4 * self.num_classes
        return {
            "rois": keras.KerasTensor((b, r, 4), dtype="float32"),
            "labels": keras.KerasTensor((b, r), dtype="int32"),
            "targets": keras.KerasTensor((b, r, c4), dtype="float32"),
            "target_weights": keras.KerasTensor((b, r, c4), dtype="float32"),
            "sample_valid": keras.KerasTensor((b, r), dtype="bool"),
        }

    def call(self, rois, roi_valid, gt_boxes, gt_classes, seed=None):
        rois = tf.cast(tf.convert_to_tensor(rois), tf.float32)
        roi_valid = tf.cast(tf.convert_to_tensor(roi_valid), tf.bool)
        gt_boxes = tf.cast(tf.convert_to_tensor(gt_boxes), tf.float32)
        gt_classes = tf.cast(tf.convert_to_tensor(gt_classes), tf.int32)
        self._check_inputs(rois, roi_valid, gt_boxes, gt_classes)
        gt_valid = gt_classes > 0
        cand = tf.concat([rois, gt_boxes], axis=1)  # (B, N, 4), N = P + K
        cand_valid = tf.concat([roi_valid, gt_valid], axis=1)
        iou = _iou_with_valid_gt(tf.stop_gradient(cand), gt_boxes, gt_valid)  # (B, N, K)
        max_iou = tf.reduce_max(iou, axis=-1)
        argmax = tf.argmax(iou, axis=-1, output_type=tf.int32)
        fg = cand_valid & (max_iou >= self.fg_iou)
        bg = cand_valid & (max_iou >= self.bg_iou_low) & (max_iou < self.bg_iou_high) & ~fg

        keys = stateless_uniform_keys(tf.shape(max_iou), self._draw_seed(seed))
        fg_keep = fg & (_rank_within(fg, keys) < self.max_foreground)
        n_fg = tf.reduce_sum(tf.cast(fg_keep, tf.int32), axis=1, keepdims=True)
        bg_keep = bg & (_rank_within(bg, keys) < self.rois_per_image - n_fg)

        # order: kept foreground (random), kept background (random), the rest
        priority = tf.where(fg_keep, keys, tf.where(bg_keep, 1.0 + keys, 3.0 + keys))
        n_cand = cand.shape[1]
        r = self.rois_per_image
        k = min(r, n_cand) if n_cand is not None else tf.minimum(r, tf.shape(cand)[1])
        _, order = tf.math.top_k(-priority, k=k, sorted=True)  # (B, k)
        in_range = tf.range(r)[None, :] < tf.shape(order)[1]
        order = tf.pad(order, [[0, 0], [0, r - k if n_cand is not None else r - tf.shape(order)[1]]])
        order.set_shape((rois.shape[0], r))
        sample_fg = tf.gather(fg_keep, order, batch_dims=1) & in_range
        sample_valid = (sample_fg | tf.gather(bg_keep, order, batch_dims=1)) & in_range

        out_rois = tf.gather(cand, order, batch_dims=1)
        out_rois = tf.where(sample_valid[..., None], out_rois, tf.zeros_like(out_rois))
        gt_idx = tf.gather(argmax, order, batch_dims=1)
        labels = tf.where(sample_fg, tf.gather(gt_classes, gt_idx, batch_dims=1), 0)
        matched = tf.gather(gt_boxes, gt_idx, batch_dims=1)
        deltas = encode_boxes(tf.stop_gradient(out_rois), matched, self.stds)  # (B, R, 4)
        deltas = tf.where(sample_fg[..., None], deltas, tf.zeros_like(deltas))
        onehot = tf.one_hot(labels, self.num_classes, dtype=tf.float32) * tf.cast(sample_fg, tf.float32)[..., None]
        shape = tf.concat([tf.shape(labels), [4 * self.num_classes]], axis=0)
        targets = tf.reshape(onehot[..., None] * deltas[..., None, :], shape)
        weights = tf.reshape(tf.tile(onehot[..., None], [1, 1, 1, 4]), shape)
        targets.set_shape((rois.shape[0], r, 4 * self.num_classes))
        weights.set_shape((rois.shape[0], r, 4 * self.num_classes))
        return {
            "rois": out_rois,
            "labels": tf.stop_gradient(tf.cast(labels, tf.int32)),
            "targets": tf.stop_gradient(targets),
            "target_weights": tf.stop_gradient(weights),
            "sample_valid": tf.stop_gradient(sample_valid),
        }

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            num_classes=self.num_classes,
            rois_per_image=self.rois_per_image,
            fg_fraction=self.fg_fraction,
            fg_iou=self.fg_iou,
            bg_iou_low=self.bg_iou_low,
            bg_iou_high=self.bg_iou_high,
            stds=list(self.stds),
            seed=self.seed,
        )
        return cfg


__all__ = [
    "BBOX_XFORM_CLIP",
    "DEFAULT_ANCHOR_RATIOS",
    "DEFAULT_ANCHOR_SIZES",
    "DEFAULT_STRIDE",
    "DEFAULT_TARGET_STDS",
    "AnchorGenerator",
    "AnchorTarget",
    "ProposalLayer",
    "ProposalTarget",
    "RPNHead",
    "box_iou",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "generate_anchors",
    "stateless_uniform_keys",
]
