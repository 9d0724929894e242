"""CLARAN: the Faster R-CNN radio-source detector of Wu et al. 2019 (Sec 4, Table 4).

Three networks share the VGG-16 feature map (Table 4):

* *ConvNet* (layers 1-17): VGG-16 ``conv1_1`` … ``conv5_3`` with four 2×2 max pools, stride 16:
  a 600×600×3 BGR zero-centred image becomes a 37×37×512 feature map F (Sec 4.1-4.2). The first
  four convolutions stay frozen at their ImageNet values (Sec 5.1, Fig. 8).
* *LocNet* (layers 18-22): the RPN (3×3×512 conv, then 1×1 convs with 2k objectness logits and 4k
  anchor deltas, k = 6 square anchors of 16…512 px, Sec 4.3.1), the anchor target (Eq. 4-6), the
  proposal layer (decode, min size 4 px, top-M, NMS 0.7, top-P; Sec 4.3.2) and the proposal target
  (128 RoIs, foreground IoU > 0.5, background [0.1, 0.5), 1:3, Eq. 7).
* *RecNet* (layers 23-29): ST-RoI pooling (Eq. 8, 7×7×512), FC6 4096 + dropout, FC7 4096 +
  dropout, FC_Cls_Score (7) and FC_Reg_Pred (28) (Sec 4.4).

Training minimises Eq. 11, the sum of Eq. 4 (RPN softmax CE over the sampled anchors), Eq. 6
(RPN smooth-L1, σ = 3, positive anchors), Eq. 9 (RoI softmax CE over the 128 sampled RoIs) and
Eq. 10 (class-specific RoI smooth-L1, σ = 1), plus an optional L2 weight decay, with momentum SGD
(Sec 5). Everything runs inside the TensorFlow graph (no ``py_function``), so
``compile(jit_compile=True)`` and ``tf.distribute`` strategies apply.

Gradient paths
--------------
* Eq. 4 / Eq. 6 → RPN head → backbone (anchor labels and targets are constants).
* Eq. 9 / Eq. 10 → RecNet head → ST-RoI pooling → (a) the feature map F → backbone, and (b) the
  coordinates of the sampled RoIs: the boxes fed to ST-RoI pooling are never
  ``stop_gradient``-ed and Eq. 8 is differentiable in them (Sec 4.4). Where (b) goes next is
  ``ClaranConfig.roi_gradient_to_rpn``:

  - ``False`` (default): nowhere — the proposals are treated as constants of the step, which is
    what the authors' code does (its proposal and proposal-target layers are ``tf.py_func`` ops,
    through which no gradient passes), and Faster R-CNN's "approximate joint training".
  - ``True``: on through the proposal target's and the proposal layer's gathers into the Eq. 3
    decoding of the RPN deltas, i.e. into ``rpn_reg`` and the shared convolutions.

  The *selection* of RoIs (top-M, NMS, random fg/bg sampling) is an index computation and has no
  gradient in either case, nor do the RoI labels, the Eq. 7 regression targets and the anchor
  targets (``stop_gradient``), nor the ground-truth boxes the proposal target appends to the
  candidates, nor the objectness probabilities that rank the proposals.

Public API: :class:`ClaranConfig`, :func:`build_vgg16_backbone`, :func:`build_rcnn_head`,
:func:`load_vgg16_weights`, :class:`ClaranDetector`, :func:`build_claran`,
:func:`claran_optimizer`, :func:`compile_claran`, :func:`inference_model`,
:func:`paper_parameter_count`, :func:`layer_table`, and the layers
:class:`ObjectnessProbability` and :class:`ClaranDetectionOutput`.

>>> det = compile_claran(build_claran(ClaranConfig.small()))          # doctest: +SKIP
>>> det.fit(rgz_dataset(root, "train", image_size=128), epochs=1)     # doctest: +SKIP
>>> inference_model(det).export("claran_savedmodel")                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from keras_astro import specs
from keras_astro.layers.detection import (
    AnchorGenerator,
    AnchorTarget,
    ProposalLayer,
    ProposalTarget,
    RPNHead,
    clip_boxes,
    decode_boxes,
)
from keras_astro.layers.roi_pool import STRoIPooling
from keras_astro.losses import masked_sparse_softmax_cross_entropy, weighted_smooth_l1

log = logging.getLogger(__name__)

__all__ = [
    "CLASS_NAMES",
    "LOSS_NAMES",
    "PAPER_PARAMETER_COUNT",
    "ClaranConfig",
    "ClaranDetectionOutput",
    "ClaranDetector",
    "ObjectnessProbability",
    "build_claran",
    "build_rcnn_head",
    "build_vgg16_backbone",
    "claran_optimizer",
    "compile_claran",
    "inference_model",
    "layer_table",
    "load_vgg16_weights",
    "paper_parameter_count",
]

_SPEC = specs.load_spec("claran")
_BACKBONE = _SPEC["backbone"]
_RPN = _SPEC["rpn"]
_PROP = _SPEC["proposals"]
_PT = _SPEC["proposal_target"]
_HEAD = _SPEC["head"]
_TRAIN = _SPEC["training"]
_EVAL = _SPEC["evaluation"]

#: Morphology classes 1..6 (Table 3); class 0 is the background.
CLASS_NAMES: tuple[str, ...] = tuple(str(c) for c in specs.load_spec("rgz")["classes"])

#: Table 4's parameter count (conv kernels without biases + FC layers with biases).
PAPER_PARAMETER_COUNT: int = int(_SPEC["reported"]["parameter_count"])

RPN_REG_NORMALIZERS: tuple[str, ...] = ("sampled", "inside")


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ClaranConfig:
    """Hyper-parameters of CLARAN; defaults are the paper's (``data_specs/claran.yaml``).

    Values neither the paper nor the authors' code fixes are marked *(ours)*.

    Attributes
    ----------
    input_size
        Side of the square network input in pixels, 600 (Sec 4.1, Table 4 layer 0).
    num_classes
        Background + 6 morphology classes = 7 (Table 4 layer 28).
    backbone_filters, convs_per_block
        VGG-16 configuration D, (64, 128, 256, 512, 512) × (2, 2, 3, 3, 3) (Table 4 layers 1-17).
    frozen_layers
        Convolutions kept at their pre-trained values: conv1_1, conv1_2, conv2_1, conv2_2 (Sec 5.1).
    feature_stride
        2⁴ = 16 px per feature-map cell (Sec 4.3.1).
    backbone_init
        Kernel initialiser of the backbone when no VGG-16 weights are loaded *(ours: He normal;
        the paper always starts from ImageNet weights, and the code's truncated-normal 0.01 does
        not train a 13-layer stack from scratch)*.
    rpn_filters
        RPN_Conv width, 512 (Table 4 layer 18).
    anchor_sizes, anchor_ratios
        Anchor sides 16·(1, 2, 4, 8, 16, 32) px, square only (Sec 4.3.1).
    rpn_positive_iou, rpn_negative_iou
        τ = 0.7 and 1 − τ = 0.3 (Sec 4.3.1).
    rpn_batch_per_image, rpn_positive_fraction
        B = 256 anchors per image, up to half positive (Sec 4.3.1).
    allowed_border
        Anchors crossing the image border by more than this are ignored (0; |A′| = 5,241).
    rpn_sigma
        Smooth-L1 σ of Eq. 6 (3, authors' code).
    rpn_reg_normalizer
        Denominator of Eq. 6: ``"sampled"`` — the number of sampled anchors (≤ B = 256), what the
        authors' code does (outside weights 1/num_examples); ``"inside"`` — |A′|, the number of
        anchors inside the image (5,241 at 600 px), as Eq. 6 is printed.
    proposal_min_size
        Proposals smaller than 4×4 px are dropped (Sec 4.3.2).
    pre_nms_top_n_train, post_nms_top_n_train
        M = 12,000 (code's training default; the paper's M = 6,000 is the test value) and
        P = 2,000 (Sec 4.3.2).
    pre_nms_top_n_test, post_nms_top_n_test
        M = 6,000 and P = 5 (Sec 4.3.2).
    proposal_nms_iou
        0.7 (Sec 4.3.2).
    rois_per_image, fg_fraction, fg_iou, bg_iou_low, bg_iou_high
        |M| = 128 RoIs, 1:3 foreground:background, IoU > 0.5 foreground, [0.1, 0.5) background.
    bbox_stds
        Eq. 7 targets are divided by (0.1, 0.1, 0.2, 0.2) (authors' code).
    rcnn_sigma
        Smooth-L1 σ of Eq. 10 (1, authors' code).
    pool_size
        ST-RoI output 7×7 (Sec 4.4).
    fc_units, dropout
        FC6/FC7 widths 4096 and dropout rate 0.5 (keep probability 0.5; Sec 4.4, code).
    init_std, bbox_pred_init_std
        Truncated-normal initialisation of the new layers (RPN, FC6, FC7, cls_score): σ = 0.01
        (Sec 4.1); bbox_pred σ = 0.001 (code). FC6/FC7 are not taken from VGG-16 (the code skips
        them when loading the pre-trained model).
    roi_gradient_to_rpn
        Continue the Eq. 9/10 gradient that ST-RoI pooling passes to the RoI coordinates into the
        RPN deltas (see the module docstring). ``False`` as in the authors' code, where it stops
        at the proposal layers' ``tf.py_func``. *(ours: ``True`` is the fully joint reading of
        Sec 4.4; on the small preset it makes training diverge within a few hundred steps)*
    learning_rate, momentum, lr_decay, lr_decay_steps, steps
        Momentum SGD 0.9, lr 1e-3 × 0.1 every 50,000 iterations, 80,000 iterations (Sec 5).
    weight_decay
        L2 factor λ (adds λ·w to each kernel's gradient; biases are not decayed). 5e-4 is the
        Faster R-CNN default *(assumption: neither the paper nor the CLARAN code — which defines
        no regulariser — uses one; set 0 to match the code)*.
    seed
        RNG seed of the sampling layers, dropout and initialisers (3, originals.md).
    test_nms_iou, score_threshold
        Test-time per-class NMS 0.3 and score threshold 0.05 (code).
    max_detections
        Rows D of the padded detection outputs; ``None`` → (num_classes − 1) · post_nms_top_n_test
        (30 for the paper: every class of every test proposal). *(ours)*
    """

    input_size: int = int(_SPEC["input_size"])
    num_classes: int = int(_SPEC["num_classes"])
    backbone_filters: tuple[int, ...] = tuple(int(f) for f in _BACKBONE["filters"])
    convs_per_block: tuple[int, ...] = tuple(int(n) for n in _BACKBONE["convs_per_block"])
    frozen_layers: tuple[str, ...] = tuple(str(n) for n in _BACKBONE["frozen"])
    feature_stride: int = int(_BACKBONE["feature_stride"])
    backbone_init: str = "he_normal"
    rpn_filters: int = int(_RPN["conv_filters"])
    anchor_sizes: tuple[float, ...] = tuple(float(_RPN["anchor_base"]) * s for s in _RPN["anchor_scales"])
    anchor_ratios: tuple[float, ...] = _floats(_RPN["anchor_ratios"])
    rpn_positive_iou: float = float(_RPN["positive_iou"])
    rpn_negative_iou: float = float(_RPN["negative_iou"])
    rpn_batch_per_image: int = int(_RPN["batch_per_image"])
    rpn_positive_fraction: float = float(_RPN["positive_fraction"])
    allowed_border: float = float(_RPN["allowed_border"])
    rpn_sigma: float = float(_RPN["smooth_l1_sigma"])
    rpn_reg_normalizer: str = "sampled"
    proposal_min_size: float = float(_PROP["min_size"])
    pre_nms_top_n_train: int = int(_PROP["pre_nms_top_n_train"])
    post_nms_top_n_train: int = int(_PROP["post_nms_top_n_train"])
    pre_nms_top_n_test: int = int(_PROP["pre_nms_top_n_test"])
    post_nms_top_n_test: int = int(_PROP["post_nms_top_n_test"])
    proposal_nms_iou: float = float(_PROP["nms_iou"])
    rois_per_image: int = int(_PT["rois_per_image"])
    fg_fraction: float = float(_PT["fg_fraction"])
    fg_iou: float = float(_PT["fg_iou"])
    bg_iou_low: float = float(_PT["bg_iou_low"])
    bg_iou_high: float = float(_PT["bg_iou_high"])
    bbox_stds: tuple[float, ...] = _floats(_PT["target_stds"])
    rcnn_sigma: float = float(_PT["smooth_l1_sigma"])
    pool_size: int = int(_HEAD["pool_size"])
    fc_units: int = int(_HEAD["fc_units"])
    dropout: float = float(_HEAD["dropout"])
    init_std: float = 0.01
    bbox_pred_init_std: float = 0.001
    roi_gradient_to_rpn: bool = False
    learning_rate: float = float(_TRAIN["learning_rate"])
    momentum: float = float(_TRAIN["momentum"])
    lr_decay: float = float(_TRAIN["lr_decay"])
    lr_decay_steps: int = int(_TRAIN["lr_decay_steps"])
    steps: int = int(_TRAIN["steps"])
    weight_decay: float = float(_TRAIN["weight_decay"])
    seed: int = int(_TRAIN["seed"])
    test_nms_iou: float = float(_EVAL["test_nms_iou"])
    score_threshold: float = float(_EVAL["score_threshold"])
    max_detections: int | None = None

    def __post_init__(self):
        def bad(field: str, expected: str):
            raise ValueError(f"ClaranConfig.{field} must be {expected}, got {getattr(self, field)!r}")

        if len(self.backbone_filters) != 5 or len(self.convs_per_block) != 5:
            bad("backbone_filters", "5 VGG-16 blocks (with convs_per_block of length 5)")
        if any(int(f) < 1 for f in self.backbone_filters) or any(int(n) < 1 for n in self.convs_per_block):
            bad("backbone_filters", "positive filter and conv counts")
        if self.feature_stride != 16:
            bad("feature_stride", "16 (four 2×2 max pools)")
        if self.input_size < self.feature_stride:
            bad("input_size", f">= {self.feature_stride} px")
        if self.num_classes < 2:
            bad("num_classes", ">= 2 (background + at least one class)")
        names = set(self.conv_names)
        if not set(self.frozen_layers) <= names:
            bad("frozen_layers", f"a subset of {self.conv_names}")
        if not self.anchor_sizes or min(self.anchor_sizes) <= 0:
            bad("anchor_sizes", "positive anchor sides in pixels")
        if not self.anchor_ratios or min(self.anchor_ratios) <= 0:
            bad("anchor_ratios", "positive aspect ratios")
        if not 0 <= self.rpn_negative_iou <= self.rpn_positive_iou <= 1:
            bad("rpn_negative_iou", "<= rpn_positive_iou, both in [0, 1]")
        if self.rpn_reg_normalizer not in RPN_REG_NORMALIZERS:
            bad("rpn_reg_normalizer", f"one of {RPN_REG_NORMALIZERS}")
        if self.post_nms_top_n_train > self.pre_nms_top_n_train or self.post_nms_top_n_test > self.pre_nms_top_n_test:
            bad("post_nms_top_n_train", "<= pre_nms_top_n (train and test)")
        if min(self.post_nms_top_n_test, self.post_nms_top_n_train, self.rois_per_image, self.rpn_batch_per_image) < 1:
            bad("rois_per_image", "positive (also post_nms_top_n_* and rpn_batch_per_image)")
        if not 0 <= self.bg_iou_low <= self.bg_iou_high <= self.fg_iou + 1e-9 <= 1 + 1e-9:
            bad("bg_iou_low", "<= bg_iou_high <= fg_iou, all in [0, 1]")
        if len(self.bbox_stds) != 4 or min(self.bbox_stds) <= 0:
            bad("bbox_stds", "4 positive numbers")
        if not 0 <= self.dropout < 1:
            bad("dropout", "in [0, 1)")
        if self.weight_decay < 0:
            bad("weight_decay", ">= 0")
        if self.max_detections is not None and self.max_detections < 1:
            bad("max_detections", ">= 1 or None")

    # ------------------------------------------------------------------ presets
    @classmethod
    def paper(cls, **overrides: Any) -> "ClaranConfig":
        """The paper's network and training set-up (Table 4, Sec 4-5)."""
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides: Any) -> "ClaranConfig":
        """A CPU-sized CLARAN through the same code paths *(ours)*.

        128-px input (8×8 feature map), VGG widths ÷ 8 (8, 16, 32, 64, 64), RPN 64 filters,
        anchors of 16-128 px, FC6/FC7 256 units, 64 anchors and 32 RoIs per image, 256/64
        proposals before/after NMS in training and 256/5 at test time, and a learning rate of
        3e-3 (a from-scratch network needs more than fine-tuning's 1e-3; 1e-2 is unstable).
        """
        base: dict[str, Any] = dict(
            input_size=128,
            backbone_filters=(8, 16, 32, 64, 64),
            rpn_filters=64,
            anchor_sizes=(16.0, 32.0, 64.0, 128.0),
            fc_units=256,
            rpn_batch_per_image=64,
            rois_per_image=32,
            pre_nms_top_n_train=256,
            post_nms_top_n_train=64,
            pre_nms_top_n_test=256,
            post_nms_top_n_test=5,
            learning_rate=3e-3,
        )
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> "ClaranConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClaranConfig":
        """Inverse of :meth:`to_dict` (lists from JSON become tuples); unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown ClaranConfig field(s) {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # ------------------------------------------------------------------ derived
    @property
    def conv_names(self) -> tuple[str, ...]:
        """``conv1_1`` … ``conv5_3`` (Table 4 layers 1-17 without the pools)."""
        return tuple(f"conv{b}_{c}" for b, n in enumerate(self.convs_per_block, 1) for c in range(1, n + 1))

    @property
    def num_anchors(self) -> int:
        """k anchors per feature-map cell (6 in the paper)."""
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    @property
    def feature_size(self) -> int:
        """Side of the conv5_3 feature map: four floor-halvings of the input (600 → 37)."""
        s = self.input_size
        for _ in range(4):
            s //= 2
        return s

    @property
    def detections_per_image(self) -> int:
        """D, the padded number of detection rows of :func:`inference_model`."""
        if self.max_detections is not None:
            return int(self.max_detections)
        return (self.num_classes - 1) * self.post_nms_top_n_test


# ====================================================================================== backbone


def _initializer(name: str, seed: int | None):
    return keras.initializers.get({"class_name": name, "config": {"seed": seed}})


def build_vgg16_backbone(config: ClaranConfig | None = None, name: str = "vgg16") -> keras.Model:
    """The ConvNet of Table 4 (layers 1-17): VGG-16 ``conv1_1`` … ``conv5_3`` and ``pool1`` … ``pool4``.

    3×3 'same' convolutions with ReLU, 2×2/2 'valid' max pools (600 → 300 → 150 → 75 → 37); no
    pool after conv5_3. ``config.frozen_layers`` (conv1_1, conv1_2, conv2_1, conv2_2) are built
    with ``trainable=False`` (Sec 5.1).

    Returns
    -------
    keras.Model mapping (B, S, S, 3) BGR zero-centred images (S = ``config.input_size`` px) to the
    (B, S/16, S/16, C5) feature map F.
    """
    cfg = config or ClaranConfig()
    inp = keras.Input(shape=(cfg.input_size, cfg.input_size, 3), name="image")
    x = inp
    seed = cfg.seed
    for b, (filters, n) in enumerate(zip(cfg.backbone_filters, cfg.convs_per_block), start=1):
        for c in range(1, n + 1):
            lname = f"conv{b}_{c}"
            x = layers.Conv2D(
                int(filters),
                3,
                padding="same",
                activation="relu",
                kernel_initializer=_initializer(cfg.backbone_init, seed),
                name=lname,
                trainable=lname not in cfg.frozen_layers,
            )(x)
            seed += 1
        if b < len(cfg.backbone_filters):
            x = layers.MaxPooling2D(2, strides=2, padding="valid", name=f"pool{b}")(x)
    return keras.Model(inp, x, name=name)


def build_rcnn_head(config: ClaranConfig | None = None, name: str = "rcnn_head") -> keras.Model:
    """RecNet after ST-RoI pooling (Table 4 layers 24-28): FC6, Dropout6, FC7, Dropout7, cls, reg.

    Input (B, R, pool, pool, C5) pooled RoI features; outputs ``[cls_score (B, R, num_classes),
    bbox_pred (B, R, 4·num_classes)]`` (logits and Eq. 7 deltas divided by ``bbox_stds``). The
    flatten is row-major over (row, column, channel). cls_score and bbox_pred compute in float32
    under a mixed-precision policy.
    """
    cfg = config or ClaranConfig()
    p, c5, nc = cfg.pool_size, int(cfg.backbone_filters[-1]), cfg.num_classes
    inp = keras.Input(shape=(None, p, p, c5), name="roi_features")
    tn = keras.initializers.TruncatedNormal

    x = layers.Reshape((-1, p * p * c5), name="flatten")(inp)
    x = layers.Dense(
        cfg.fc_units, activation="relu", kernel_initializer=tn(0.0, cfg.init_std, seed=cfg.seed), name="fc6"
    )(x)
    x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="drop6")(x)
    x = layers.Dense(
        cfg.fc_units, activation="relu", kernel_initializer=tn(0.0, cfg.init_std, seed=cfg.seed + 1), name="fc7"
    )(x)
    x = layers.Dropout(cfg.dropout, seed=cfg.seed + 1, name="drop7")(x)
    cls = layers.Dense(
        nc, kernel_initializer=tn(0.0, cfg.init_std, seed=cfg.seed + 2), dtype="float32", name="cls_score"
    )(x)
    reg = layers.Dense(
        4 * nc, kernel_initializer=tn(0.0, cfg.bbox_pred_init_std, seed=cfg.seed + 3), dtype="float32", name="bbox_pred"
    )(x)
    return keras.Model(inp, [cls, reg], name=name)


# ====================================================================================== weights

_VGG_WEIGHTS_HELP = (
    "No weights can be downloaded here: fetch Keras' ImageNet VGG-16 on a machine with network "
    "access, e.g. `keras.applications.VGG16(weights='imagenet', include_top=False)"
    ".save_weights('vgg16_notop.weights.h5')` (or the file "
    "'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5' from keras-applications), copy it here "
    "and pass its local path."
)


def _keras_name_to_table4(name: str) -> str | None:
    """``block3_conv2`` (keras.applications) or ``conv3_2`` (ours / the authors' .npy) → ``conv3_2``."""
    import re

    m = re.fullmatch(r"block(\d)_conv(\d)", name) or re.fullmatch(r"conv(\d)_(\d)", name)
    return f"conv{m.group(1)}_{m.group(2)}" if m else None


def _read_h5_convs(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Kernels and biases of the 13 VGG convolutions in a Keras HDF5 weights file.

    Legacy ``.h5`` files (keras-applications' downloads) name the groups after the layers
    (``block1_conv1/block1_conv1/kernel:0``). Keras 3 ``.weights.h5`` files name them after the
    layer class in tracking order (``layers/conv2d``, ``layers/conv2d_1``, …), so there the
    convolutions are taken in that order.
    """
    import re

    import h5py

    named: dict[str, dict[str, np.ndarray]] = {}
    positional: dict[str, dict[int, dict[str, np.ndarray]]] = {}

    def arrays(group) -> dict[str, np.ndarray] | None:
        found: list[np.ndarray] = []
        group.visititems(lambda _n, obj: found.append(np.asarray(obj)) if isinstance(obj, h5py.Dataset) else None)
        kernels = [a for a in found if a.ndim == 4]
        biases = [a for a in found if a.ndim == 1]
        if len(kernels) != 1:
            return None
        return {"kernel": kernels[0], "bias": biases[0] if len(biases) == 1 else None}

    def visit(name: str, obj):
        if not isinstance(obj, h5py.Group):
            return
        parent, _, base = name.rpartition("/")
        key = _keras_name_to_table4(base)
        if key is not None and key not in named:
            a = arrays(obj)
            if a is not None:
                named[key] = a
            return
        m = re.fullmatch(r"conv2d(?:_(\d+))?", base)
        if m:
            a = arrays(obj)
            if a is not None:
                positional.setdefault(parent, {})[int(m.group(1) or 0)] = a

    with h5py.File(path, "r") as fh:
        fh.visititems(visit)
    if named:
        return named
    for group in positional.values():
        if len(group) >= 13:
            ordered = [group[i] for i in sorted(group)][:13]
            names = [f"conv{b}_{c}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for c in range(1, n + 1)]
            return dict(zip(names, ordered))
    return {}


def _read_npy_convs(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """The authors' converted VGG-16 ``.npy`` (a pickled dict ``{conv1_1: {weights, biases}}``)."""
    data = np.load(path, allow_pickle=True, encoding="latin1").item()
    found = {}
    for name, d in data.items():
        key = _keras_name_to_table4(str(name))
        if key is not None and "weights" in d:
            found[key] = {
                "kernel": np.asarray(d["weights"]),
                "bias": np.asarray(d.get("biases")) if "biases" in d else None,
            }
    return found


def load_vgg16_weights(backbone: keras.Model, path: str | os.PathLike) -> list[str]:
    """Copy pre-trained VGG-16 convolution weights from a local file into the CLARAN backbone.

    Reads ``conv1_1`` … ``conv5_3`` (named ``block1_conv1`` … ``block5_conv3`` in
    keras.applications files, ``conv1_1`` … in ours and in the authors' ``VGG_imagenet.npy``)
    from a Keras HDF5 weights file — legacy ``.h5`` (e.g.
    ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``) or Keras 3 ``.weights.h5`` — or from
    the authors' ``.npy``. The fully connected fc1/fc2 layers are not used: like the authors'
    code, FC6/FC7 start from their random initialisation. The weights expect BGR images minus the
    ImageNet means (what :func:`keras_astro.pipelines.rgz.rgz_dataset` produces).

    Parameters
    ----------
    backbone
        :func:`build_vgg16_backbone`'s model, or a :class:`ClaranDetector` (its ``backbone``).
    path
        Local file. Nothing is downloaded.

    Returns
    -------
    The loaded layer names, in network order.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist (the message says how to obtain the file).
    ValueError
        The file lacks some of the backbone's convolutions, or a kernel's shape differs (e.g. the
        ImageNet file with the ``small`` preset's narrower backbone).
    """
    if isinstance(backbone, ClaranDetector):
        backbone = backbone.backbone
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VGG-16 weights file {str(path)!r} does not exist. {_VGG_WEIGHTS_HELP}")
    try:
        found = _read_npy_convs(path) if path.suffix == ".npy" else _read_h5_convs(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable VGG-16 weights file (HDF5 .h5/.weights.h5 or .npy): {exc}") from exc
    convs = [ly for ly in backbone.layers if isinstance(ly, layers.Conv2D)]
    missing = [ly.name for ly in convs if ly.name not in found]
    if missing:
        raise ValueError(
            f"{path}: no weights for {missing}; found conv layers {sorted(found)} "
            "(expected block<b>_conv<c> or conv<b>_<c> groups of a VGG-16 file)"
        )
    for ly in convs:
        k, b = found[ly.name]["kernel"], found[ly.name]["bias"]
        want = tuple(ly.kernel.shape)
        if tuple(k.shape) != want:
            raise ValueError(f"{path}: {ly.name} kernel has shape {tuple(k.shape)}, the backbone expects {want}")
        if b is None or tuple(b.shape) != tuple(ly.bias.shape):
            raise ValueError(f"{path}: {ly.name} bias missing or of the wrong shape (expected {tuple(ly.bias.shape)})")
    for ly in convs:
        ly.kernel.assign(found[ly.name]["kernel"].astype(np.float32))
        ly.bias.assign(found[ly.name]["bias"].astype(np.float32))
    log.info("loaded VGG-16 weights for %d convolutions from %s", len(convs), path)
    return [ly.name for ly in convs]


# ====================================================================================== layers


@keras.saving.register_keras_serializable(package="keras_astro")
class ObjectnessProbability(keras.layers.Layer):
    """Anchor_Cls_Softmax (Table 4 layer 20): (B, A, 2) logits → (B, A) source probability softmax(o_p)[1]."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def call(self, logits):
        return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)[..., 1]


@keras.saving.register_keras_serializable(package="keras_astro")
class ClaranDetectionOutput(keras.layers.Layer):
    """Test-time post-processing of the authors' code: per-class boxes, threshold, per-class NMS.

    For each RoI p (Table 4 layer 21 output at test time) and each morphology class c = 1…C−1:
    the class's box is p shifted by its deltas ``bbox_pred[4c:4c+4] · stds`` (Eq. 3), clipped to
    the image, and scored by ``softmax(cls_score)[c]`` (Table 4 layer 29). Per class, boxes with a
    score ≤ ``score_threshold`` are dropped and greedy NMS at ``nms_iou`` (0.3) runs
    (``tf.image.non_max_suppression_padded``); the survivors of all classes are sorted by score
    and the first ``max_detections`` are returned, zero-padded.

    Call
    ----
    ``rois`` (B, P, 4) px, ``roi_valid`` (B, P) bool, ``cls_score`` (B, P, C) logits,
    ``bbox_pred`` (B, P, 4C). Returns a dict: ``boxes`` (B, D, 4) float32 ``[x1, y1, x2, y2]``
    px, ``classes`` (B, D) int32 in 1…C−1 (0 = padding), ``scores`` (B, D) float32,
    ``num_detections`` (B,) int32.
    """

    def __init__(
        self,
        num_classes: int,
        image_size: tuple[int, int],
        stds=(0.1, 0.1, 0.2, 0.2),
        score_threshold: float = 0.05,
        nms_iou: float = 0.3,
        max_detections: int = 30,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2 (background + classes), got {num_classes}")
        if int(max_detections) < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        if not 0 < float(nms_iou) <= 1:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou}")
        self.num_classes = int(num_classes)
        self.image_size = tuple(int(v) for v in image_size)
        self.stds = tuple(float(v) for v in stds)
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)

    def compute_output_spec(self, rois, roi_valid, cls_score, bbox_pred):
        b, d = rois.shape[0], self.max_detections
        return {
            "boxes": keras.KerasTensor((b, d, 4), dtype="float32"),
            "classes": keras.KerasTensor((b, d), dtype="int32"),
            "scores": keras.KerasTensor((b, d), dtype="float32"),
            "num_detections": keras.KerasTensor((b,), dtype="int32"),
        }

    def call(self, rois, roi_valid, cls_score, bbox_pred):
        rois = tf.cast(rois, tf.float32)
        cls_score = tf.cast(cls_score, tf.float32)
        bbox_pred = tf.cast(bbox_pred, tf.float32)
        roi_valid = tf.cast(roi_valid, tf.bool)
        nc = self.num_classes
        n_rois = rois.shape[1] if rois.shape[1] is not None else tf.shape(rois)[1]
        batch = tf.shape(rois)[0]
        probs = tf.nn.softmax(cls_score, axis=-1)[:, :, 1:]  # (B, P, C-1)
        deltas = tf.reshape(bbox_pred, [batch, n_rois, nc, 4])[:, :, 1:, :]
        boxes = clip_boxes(decode_boxes(rois[:, :, None, :], deltas, self.stds), *self.image_size)
        scores = tf.where(roi_valid[..., None], probs, tf.zeros_like(probs))
        boxes_t = tf.transpose(boxes, [0, 2, 1, 3])  # (B, C-1, P, 4)
        scores_t = tf.transpose(scores, [0, 2, 1])  # (B, C-1, P)
        max_per_class = rois.shape[1] if rois.shape[1] is not None else self.max_detections
        yx = tf.gather(boxes_t, [1, 0, 3, 2], axis=-1)  # the NMS op's [y1, x1, y2, x2]
        sel, n_sel = tf.image.non_max_suppression_padded(
            yx,
            scores_t,
            max_output_size=max_per_class,
            iou_threshold=self.nms_iou,
            score_threshold=self.score_threshold,
            pad_to_max_output_size=True,
            canonicalized_coordinates=True,
        )
        sel_boxes = tf.gather(boxes_t, sel, batch_dims=2)  # (B, C-1, m, 4)
        sel_scores = tf.gather(scores_t, sel, batch_dims=2)
        valid = (tf.range(max_per_class)[None, None, :] < n_sel[..., None]) & (sel_scores > self.score_threshold)
        classes = tf.broadcast_to(tf.range(1, nc, dtype=tf.int32)[None, :, None], tf.shape(valid))
        m = (nc - 1) * max_per_class
        flat_boxes = tf.reshape(sel_boxes, [batch, m, 4])
        flat_scores = tf.reshape(sel_scores, [batch, m])
        flat_valid = tf.reshape(valid, [batch, m])
        flat_classes = tf.reshape(classes, [batch, m])
        key = tf.where(flat_valid, flat_scores, -tf.ones_like(flat_scores))
        d = min(self.max_detections, m)
        top, idx = tf.math.top_k(key, k=d, sorted=True)
        keep = top >= 0.0
        out_boxes = tf.where(keep[..., None], tf.gather(flat_boxes, idx, batch_dims=1), 0.0)
        out_classes = tf.where(keep, tf.gather(flat_classes, idx, batch_dims=1), 0)
        out_scores = tf.where(keep, top, 0.0)
        if d < self.max_detections:
            pad = self.max_detections - d
            out_boxes = tf.pad(out_boxes, [[0, 0], [0, pad], [0, 0]])
            out_classes = tf.pad(out_classes, [[0, 0], [0, pad]])
            out_scores = tf.pad(out_scores, [[0, 0], [0, pad]])
        return {
            "boxes": out_boxes,
            "classes": out_classes,
            "scores": out_scores,
            "num_detections": tf.reduce_sum(tf.cast(keep, tf.int32), axis=1),
        }

    def get_config(self):
        cfg = super().get_config()
        cfg.update(
            num_classes=self.num_classes,
            image_size=list(self.image_size),
            stds=list(self.stds),
            score_threshold=self.score_threshold,
            nms_iou=self.nms_iou,
            max_detections=self.max_detections,
        )
        return cfg


# ====================================================================================== detector

LOSS_NAMES: tuple[str, ...] = ("loss", "rpn_cls_loss", "rpn_reg_loss", "rcnn_cls_loss", "rcnn_reg_loss")


def _unpack_batch(data) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(images, gt_boxes, gt_classes)`` from the forms a training batch may take."""
    if isinstance(data, dict):
        try:
            return data["images"], data["gt_boxes"], data["gt_classes"]
        except KeyError:
            raise ValueError(
                f"a CLARAN batch dict needs images, gt_boxes, gt_classes; got keys {sorted(data)}"
            ) from None
    if isinstance(data, (tuple, list)):
        if len(data) == 3:
            return data[0], data[1], data[2]
        if len(data) == 2 and isinstance(data[1], dict):
            return data[0], data[1]["boxes"], data[1]["classes"]
        if len(data) == 2 and isinstance(data[1], (tuple, list)) and len(data[1]) == 2:
            return data[0], data[1][0], data[1][1]
    raise ValueError(
        "a CLARAN batch is (images (B,S,S,3), gt_boxes (B,K,4), gt_classes (B,K)) as produced by "
        f"keras_astro.pipelines.rgz.rgz_dataset; got {type(data).__name__}"
    )


@keras.saving.register_keras_serializable(package="keras_astro")
class ClaranDetector(keras.Model):
    """CLARAN (Table 4): backbone, RPN, anchor/proposal targets, ST-RoI pooling and RecNet head.

    ``detector(images)`` returns test-time detections (see :class:`ClaranDetectionOutput`);
    ``fit`` / ``evaluate`` on ``(images, gt_boxes, gt_classes)`` batches
    (:func:`keras_astro.pipelines.rgz.rgz_dataset`) optimise / report Eq. 11 and its four terms.

    Attributes
    ----------
    config
        The :class:`ClaranConfig`.
    backbone, head
        Functional models (:func:`build_vgg16_backbone`, :func:`build_rcnn_head`).
    rpn_head, anchor_generator, anchor_target, proposal_train, proposal_test, proposal_target,
    roi_pool, objectness, postprocess
        The layers of Table 4 (layers 18-23 and the test-time post-processing).

    Notes
    -----
    ``train_step`` reports (epoch means of) ``loss`` = Eq. 11 = ``rpn_cls_loss`` (Eq. 4) +
    ``rpn_reg_loss`` (Eq. 6) + ``rcnn_cls_loss`` (Eq. 9) + ``rcnn_reg_loss`` (Eq. 10), and
    ``l2_loss`` = ½ λ Σ‖kernel‖² over the trainable kernels; the optimised objective is
    ``loss + l2_loss``. Normalisations: Eq. 4 by the number of sampled anchors, Eq. 6 by
    ``config.rpn_reg_normalizer``, Eq. 9 and Eq. 10 by the number of sampled RoIs, each summed
    over the images of the batch. Under ``tf.distribute`` the per-replica objective is divided by
    the number of replicas before the gradients are summed.
    """

    def __init__(self, config: ClaranConfig | dict | None = None, **kwargs):
        kwargs.setdefault("name", "claran")
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = ClaranConfig.from_dict(config)
        cfg = config or ClaranConfig()
        self.config = cfg
        s = cfg.input_size
        self.backbone = build_vgg16_backbone(cfg)
        self.rpn_head = RPNHead(
            filters=cfg.rpn_filters, num_anchors=cfg.num_anchors, kernel_stddev=cfg.init_std, name="rpn_head"
        )
        self.anchor_generator = AnchorGenerator(
            cfg.feature_stride, cfg.anchor_sizes, cfg.anchor_ratios, dtype="float32", name="anchors"
        )
        self.objectness = ObjectnessProbability(name="rpn_cls_prob")
        self.anchor_target = AnchorTarget(
            positive_iou=cfg.rpn_positive_iou,
            negative_iou=cfg.rpn_negative_iou,
            batch_per_image=cfg.rpn_batch_per_image,
            positive_fraction=cfg.rpn_positive_fraction,
            allowed_border=cfg.allowed_border,
            seed=cfg.seed,
            dtype="float32",
            name="anchor_target",
        )
        common = dict(nms_iou=cfg.proposal_nms_iou, min_size=cfg.proposal_min_size, dtype="float32")
        self.proposal_train = ProposalLayer(
            cfg.pre_nms_top_n_train, cfg.post_nms_top_n_train, name="proposal_train", **common
        )
        self.proposal_test = ProposalLayer(cfg.pre_nms_top_n_test, cfg.post_nms_top_n_test, name="proposal", **common)
        self.proposal_target = ProposalTarget(
            num_classes=cfg.num_classes,
            rois_per_image=cfg.rois_per_image,
            fg_fraction=cfg.fg_fraction,
            fg_iou=cfg.fg_iou,
            bg_iou_low=cfg.bg_iou_low,
            bg_iou_high=cfg.bg_iou_high,
            stds=cfg.bbox_stds,
            seed=cfg.seed + 1,
            dtype="float32",
            name="proposal_target",
        )
        self.roi_pool = STRoIPooling(cfg.pool_size, 1.0 / cfg.feature_stride, name="st_roi_pool")
        self.head = build_rcnn_head(cfg)
        self.postprocess = ClaranDetectionOutput(
            num_classes=cfg.num_classes,
            image_size=(s, s),
            stds=cfg.bbox_stds,
            score_threshold=cfg.score_threshold,
            nms_iou=cfg.test_nms_iou,
            max_detections=cfg.detections_per_image,
            name="detections",
        )
        self.loss_trackers = [keras.metrics.Mean(name=n) for n in (*LOSS_NAMES, "l2_loss")]
        self.rpn_head.build(self.backbone.output.shape)
        self.build((None, s, s, 3))

    # ------------------------------------------------------------------ keras plumbing
    def build(self, input_shape=None):
        if not self.rpn_head.built:
            self.rpn_head.build(self.backbone.output.shape)
        self.built = True

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable, "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ClaranDetector":
        config = dict(config)
        return cls(ClaranConfig.from_dict(config.pop("config")), **config)

    @property
    def metrics(self):
        return list(self.loss_trackers)

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.config.input_size, self.config.input_size)

    # ------------------------------------------------------------------ inference
    def call(self, images, training: bool = False):
        """Detections for (B, S, S, 3) BGR zero-centred images; see :class:`ClaranDetectionOutput`."""
        features = self.backbone(images, training=training)
        logits, deltas = self.rpn_head(features)
        anchors = self.anchor_generator(features)
        props = self.proposal_test(self.objectness(logits), deltas, anchors, image_shape=self.image_shape)
        pooled = self.roi_pool([features, props["rois"]])
        cls_score, bbox_pred = self.head(pooled, training=training)
        return self.postprocess(props["rois"], props["valid"], cls_score, bbox_pred)

    # ------------------------------------------------------------------ training
    def compute_losses(self, images, gt_boxes, gt_classes, training: bool = False) -> dict[str, tf.Tensor]:
        """The four losses of Eq. 11 and their sum for one batch (float32 scalars).

        ``training`` switches dropout; the sampling (anchor and RoI targets, training proposal
        counts) is the same in both cases.
        """
        cfg = self.config
        images = tf.convert_to_tensor(images)
        gt_boxes = tf.cast(gt_boxes, tf.float32)
        gt_classes = tf.cast(gt_classes, tf.int32)
        features = self.backbone(images, training=training)
        logits, deltas = self.rpn_head(features)
        logits = tf.cast(logits, tf.float32)
        deltas = tf.cast(deltas, tf.float32)
        anchors = self.anchor_generator(features)

        # LocNet: Eq. 4 and Eq. 6 over the anchors Anchor_Target sampled
        at = self.anchor_target(anchors, gt_boxes, gt_classes, image_shape=self.image_shape)
        rpn_cls, rpn_reg = self.rpn_losses(logits, deltas, at)

        # proposals: the selection carries no gradient; the box coordinates do (module docstring)
        fg_prob = tf.stop_gradient(self.objectness(logits))
        prop_deltas = deltas if cfg.roi_gradient_to_rpn else tf.stop_gradient(deltas)
        props = self.proposal_train(fg_prob, prop_deltas, anchors, image_shape=self.image_shape)
        pt = self.proposal_target(props["rois"], props["valid"], gt_boxes, gt_classes)
        rcnn_cls, rcnn_reg = self.rcnn_losses(features, pt["rois"], pt, training=training)
        total = rpn_cls + rpn_reg + rcnn_cls + rcnn_reg
        return {
            "loss": total,
            "rpn_cls_loss": rpn_cls,
            "rpn_reg_loss": rpn_reg,
            "rcnn_cls_loss": rcnn_cls,
            "rcnn_reg_loss": rcnn_reg,
        }

    def rpn_losses(self, logits, deltas, targets: dict[str, tf.Tensor]):
        """Eq. 4 and Eq. 6 from RPN outputs (B, A, 2), (B, A, 4) and AnchorTarget's ``targets``.

        Eq. 4: mean softmax cross-entropy over the sampled anchors (label 0 or 1). Eq. 6:
        Σ smooth-L1(σ = ``rpn_sigma``) over the 4 deltas of the positive anchors, divided by the
        number of sampled anchors (``rpn_reg_normalizer="sampled"``, the code) or of anchors
        inside the image (``"inside"``, |A′| as printed).
        """
        cfg = self.config
        logits = tf.cast(logits, tf.float32)
        deltas = tf.cast(deltas, tf.float32)
        labels = targets["labels"]
        sampled = labels >= 0
        rpn_cls = masked_sparse_softmax_cross_entropy(labels, logits, sampled)
        if cfg.rpn_reg_normalizer == "sampled":
            n_reg = tf.reduce_sum(tf.cast(sampled, tf.float32))
        else:
            n_reg = tf.reduce_sum(tf.cast(targets["inside"], tf.float32))
        pos_w = tf.cast(labels == 1, tf.float32)[..., None] * tf.ones([1, 1, 4], tf.float32)
        rpn_reg = weighted_smooth_l1(targets["targets"], deltas, pos_w, sigma=cfg.rpn_sigma, normalizer=n_reg)
        return rpn_cls, rpn_reg

    def rcnn_losses(self, features, rois, targets: dict[str, tf.Tensor], training: bool = False):
        """Eq. 9 and Eq. 10 for RoIs ``rois`` (B, R, 4) px with ProposalTarget's ``targets``.

        ``rois`` enter ST-RoI pooling as they are (no ``stop_gradient``), so the losses are
        differentiable with respect to the box coordinates (Sec 4.4).
        """
        cfg = self.config
        pt = targets
        pooled = self.roi_pool([features, rois])
        cls_score, bbox_pred = self.head(pooled, training=training)
        cls_score = tf.cast(cls_score, tf.float32)
        bbox_pred = tf.cast(bbox_pred, tf.float32)
        valid = pt["sample_valid"]
        rcnn_cls = masked_sparse_softmax_cross_entropy(pt["labels"], cls_score, valid)
        n_rois = tf.reduce_sum(tf.cast(valid, tf.float32))
        rcnn_reg = weighted_smooth_l1(
            pt["targets"], bbox_pred, pt["target_weights"], sigma=cfg.rcnn_sigma, normalizer=n_rois
        )
        return rcnn_cls, rcnn_reg

    def weight_decay_loss(self) -> tf.Tensor:
        """½ λ Σ‖W‖² over the trainable conv and dense kernels (biases excluded); 0 if λ = 0."""
        if not self.config.weight_decay:
            return tf.constant(0.0, tf.float32)
        kernels = [v for v in self.trainable_weights if v.path.endswith("kernel")]
        total = tf.add_n([tf.reduce_sum(tf.square(tf.cast(v.value, tf.float32))) for v in kernels])
        return 0.5 * self.config.weight_decay * total

    def _update_trackers(self, losses: dict[str, tf.Tensor], l2: tf.Tensor) -> dict[str, tf.Tensor]:
        values = {**losses, "l2_loss": l2}
        for m in self.loss_trackers:
            m.update_state(values[m.name])
        return {m.name: m.result() for m in self.loss_trackers}

    def train_step(self, data):
        images, gt_boxes, gt_classes = _unpack_batch(data)
        with tf.GradientTape() as tape:
            losses = self.compute_losses(images, gt_boxes, gt_classes, training=True)
            l2 = self.weight_decay_loss()
            objective = losses["loss"] + l2
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            if replicas > 1:
                objective = objective / float(replicas)
            if self.optimizer is not None:
                objective = self.optimizer.scale_loss(objective)
        weights = self.trainable_weights
        grads = tape.gradient(objective, weights)
        self.optimizer.apply_gradients(zip(grads, weights))
        return self._update_trackers(losses, l2)

    def test_step(self, data):
        images, gt_boxes, gt_classes = _unpack_batch(data)
        losses = self.compute_losses(images, gt_boxes, gt_classes, training=False)
        return self._update_trackers(losses, self.weight_decay_loss())


def build_claran(config: ClaranConfig | None = None) -> ClaranDetector:
    """Build (uncompiled) CLARAN; all weights exist afterwards, no forward pass is run."""
    return ClaranDetector(config or ClaranConfig())


def claran_optimizer(config: ClaranConfig | None = None) -> keras.optimizers.SGD:
    """Momentum SGD (0.9) with lr 1e-3 × 0.1 every 50,000 steps (Sec 5; staircase decay)."""
    cfg = config or ClaranConfig()
    schedule = keras.optimizers.schedules.ExponentialDecay(
        cfg.learning_rate, decay_steps=cfg.lr_decay_steps, decay_rate=cfg.lr_decay, staircase=True
    )
    return keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.momentum)


def compile_claran(
    detector: ClaranDetector, optimizer: keras.optimizers.Optimizer | None = None, *, jit_compile: bool | str = False
) -> ClaranDetector:
    """Compile with :func:`claran_optimizer` (or ``optimizer``); the losses live in ``train_step``."""
    detector.compile(optimizer=optimizer or claran_optimizer(detector.config), jit_compile=jit_compile)
    return detector


def inference_model(detector: ClaranDetector, name: str = "claran_inference") -> keras.Model:
    """A Functional image → detections model sharing the detector's layers and weights.

    image (B, S, S, 3) → backbone → RPN → proposals (pre-NMS ``pre_nms_top_n_test`` = 6,000,
    NMS 0.7, post-NMS ``post_nms_top_n_test`` = 5) → ST-RoI pooling → RecNet head →
    :class:`ClaranDetectionOutput` (per-class decoding with stds (0.1, 0.1, 0.2, 0.2), clipping,
    score > 0.05, per-class NMS 0.3, D = ``config.detections_per_image`` rows). Outputs a dict
    ``boxes`` (B, D, 4) float32 px, ``classes`` (B, D) int32, ``scores`` (B, D) float32,
    ``num_detections`` (B,) int32. Exportable with ``model.export(path)``.
    """
    cfg = detector.config
    image = keras.Input(shape=(cfg.input_size, cfg.input_size, 3), name="image")
    features = detector.backbone(image)
    logits, deltas = detector.rpn_head(features)
    anchors = detector.anchor_generator(features)
    props = detector.proposal_test(detector.objectness(logits), deltas, anchors, image_shape=detector.image_shape)
    pooled = detector.roi_pool([features, props["rois"]])
    cls_score, bbox_pred = detector.head(pooled)
    out = detector.postprocess(props["rois"], props["valid"], cls_score, bbox_pred)
    return keras.Model(image, out, name=name)


# ====================================================================================== Table 4


def _conv_layers(detector: ClaranDetector) -> list[layers.Conv2D]:
    convs = [ly for ly in detector.backbone.layers if isinstance(ly, layers.Conv2D)]
    return convs + [detector.rpn_head.rpn_conv, detector.rpn_head.rpn_cls, detector.rpn_head.rpn_reg]


def _dense_layers(detector: ClaranDetector) -> list[layers.Dense]:
    return [ly for ly in detector.head.layers if isinstance(ly, layers.Dense)]


def paper_parameter_count(detector: ClaranDetector) -> int:
    """Parameters counted as Table 4 does: conv kernels *without* biases + FC layers *with* biases.

    136,777,443 for the paper preset (``PAPER_PARAMETER_COUNT``); Keras' ``count_params()``
    also counts the 4,890 conv biases (and the samplers' two int counters are not weights of
    the network).
    """
    n = sum(int(np.prod(c.kernel.shape)) for c in _conv_layers(detector))
    n += sum(int(np.prod(w.shape)) for d in _dense_layers(detector) for w in d.weights)
    return n


def layer_table(detector: ClaranDetector) -> list[dict[str, Any]]:
    """Rows in the layout of Table 4, computed from the built model at ``config.input_size``.

    Each row: ``layer`` (Table 4 number), ``name`` (Keras layer name), ``function`` (Table 4's
    name), ``filter`` (kernel/pool size tuple or None), ``activation``, ``stride``, ``output``
    (per-image output shape; RoI rows use ``R`` = rois_per_image of training), ``params``
    (Table 4's way: conv kernels, FC weights + biases).
    """
    cfg = detector.config
    s = cfg.input_size
    rows: list[dict[str, Any]] = [
        dict(
            layer=0,
            name="image",
            function="Input",
            filter=(s, s, 3),
            activation=None,
            stride=None,
            output=(s, s, 3),
            params=0,
        )
    ]
    n = 0
    for ly in detector.backbone.layers:
        if isinstance(ly, layers.Conv2D):
            n += 1
            b, c = ly.name[4:].split("_")
            rows.append(
                dict(
                    layer=n,
                    name=ly.name,
                    function=f"Conv{b}_{c}",
                    filter=tuple(int(v) for v in ly.kernel.shape),
                    activation="ReLU",
                    stride=1,
                    output=tuple(int(v) for v in ly.output.shape[1:]),
                    params=int(np.prod(ly.kernel.shape)),
                )
            )
        elif isinstance(ly, layers.MaxPooling2D):
            n += 1
            rows.append(
                dict(
                    layer=n,
                    name=ly.name,
                    function=f"MaxPool_{ly.name[4:]}",
                    filter=(2, 2, int(ly.output.shape[-1])),
                    activation=None,
                    stride=2,
                    output=tuple(int(v) for v in ly.output.shape[1:]),
                    params=0,
                )
            )
    f = cfg.feature_size
    k = cfg.num_anchors
    a = f * f * k
    rh = detector.rpn_head
    r = cfg.rois_per_image
    p = cfg.pool_size
    c5 = int(cfg.backbone_filters[-1])
    nc = cfg.num_classes

    def conv_row(layer, conv, function, act):
        return dict(
            layer=layer,
            name=conv.name,
            function=function,
            filter=tuple(int(v) for v in conv.kernel.shape),
            activation=act,
            stride=1,
            output=(f, f, int(conv.kernel.shape[-1])),
            params=int(np.prod(conv.kernel.shape)),
        )

    rows += [
        conv_row(18, rh.rpn_conv, "RPN_Conv", "ReLU"),
        conv_row(19, rh.rpn_cls, "Anchor_Cls_Conv", None),
        dict(
            layer=20,
            name=detector.objectness.name,
            function="Anchor_Cls_Softmax",
            filter=None,
            activation=None,
            stride=None,
            output=(a, 2),
            params=0,
        ),
        dict(
            layer=20,
            name=detector.anchor_target.name,
            function="Anchor_Target",
            filter=None,
            activation=None,
            stride=None,
            output=(a, 4),
            params=0,
        ),
        conv_row(19, rh.rpn_reg, "Anchor_Reg_Conv", None),
        dict(
            layer=21,
            name=detector.proposal_train.name,
            function="RoI_Proposal",
            filter=None,
            activation=None,
            stride=None,
            output=(cfg.post_nms_top_n_train, 4),
            params=0,
        ),
        dict(
            layer=22,
            name=detector.proposal_target.name,
            function="RoI_Proposal_Target",
            filter=None,
            activation=None,
            stride=None,
            output=(r, 4 * nc),
            params=0,
        ),
        dict(
            layer=23,
            name=detector.roi_pool.name,
            function="ST_RoI_Pool",
            filter=None,
            activation=None,
            stride=None,
            output=(r, p, p, c5),
            params=0,
        ),
    ]
    functions = {
        "fc6": ("FC_6", 24, "ReLU"),
        "fc7": ("FC_7", 26, "ReLU"),
        "cls_score": ("FC_Cls_Score", 28, None),
        "bbox_pred": ("FC_Reg_Pred", 28, None),
    }
    for ly in detector.head.layers:
        if isinstance(ly, layers.Dense):
            fn, num, act = functions[ly.name]
            rows.append(
                dict(
                    layer=num,
                    name=ly.name,
                    function=fn,
                    filter=tuple(int(v) for v in ly.kernel.shape),
                    activation=act,
                    stride=None,
                    output=(r, int(ly.kernel.shape[-1])),
                    params=sum(int(np.prod(w.shape)) for w in ly.weights),
                )
            )
        elif isinstance(ly, layers.Dropout):
            num = 25 if ly.name == "drop6" else 27
            rows.append(
                dict(
                    layer=num,
                    name=ly.name,
                    function=f"DropOut_{ly.name[-1]}",
                    filter=None,
                    activation=None,
                    stride=None,
                    output=(r, cfg.fc_units),
                    params=0,
                )
            )
    rows.append(
        dict(
            layer=29,
            name="cls_prob",
            function="Cls_SoftMax",
            filter=None,
            activation=None,
            stride=None,
            output=(r, nc),
            params=0,
        )
    )
    return rows
