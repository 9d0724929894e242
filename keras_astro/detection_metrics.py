"""CLARAN's evaluation (Wu et al. 2019, Sec 5.2-5.5 and 6.1.1), in pure numpy.

* :func:`evaluate_detections`: AP per morphology class by Eq. 12 and mAP by Eq. 14 (Table 5),
  with the precision-recall curves of Fig. 10 (:func:`plot_pr_curves`).
* :func:`components_only`: the three-class "number of components" scheme of Table 6.
* :func:`multi_source_subset`: the subjects with at least two sources (Table 7, Sec 5.4).
* :func:`box_size_correlation`: predicted versus ground-truth box widths (Table 8, Sec 5.5).
* :func:`user_filter` and :func:`user_filter_accuracy`: the post-processing filter of
  Sec 6.1.1 and the per-field score of Sec 6.1.2 (Table 9).

Inputs are per image (subject): detections ``{"boxes": (n, 4), "classes": (n,), "scores": (n,)}``
and ground truth ``{"boxes": (k, 4), "classes": (k,)}``. Boxes are ``[x1, y1, x2, y2]`` in
continuous pixels (width = x2 - x1, no "+1"); classes are 1-based indices into ``class_names``
(class 0 is background / padding and is ignored in both). :func:`unbatch_detections` and
:func:`unbatch_ground_truth` turn the detector's and the pipeline's padded batches into these
lists.

Matching (Sec 5.2, as in the PASCAL VOC evaluation): for one class, the detections of all
images are ranked by score (descending; ties keep input order: image, then position); each
detection is compared with the ground-truth boxes of that class in its own image and takes the
one of highest IoU; it is a true positive if that IoU is strictly greater than the threshold
(0.5) and the box is not yet taken, otherwise a false positive (so a second detection of an
already-found source is a false positive).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from keras_astro import specs

__all__ = [
    "average_precision",
    "box_iou",
    "box_size_correlation",
    "components_only",
    "evaluate_detections",
    "match_detections",
    "multi_source_subset",
    "plot_pr_curves",
    "unbatch_detections",
    "unbatch_ground_truth",
    "user_filter",
    "user_filter_accuracy",
]

logger = logging.getLogger(__name__)


def _evaluation_spec() -> dict:
    return specs.load_spec("claran")["evaluation"]


def _default_iou(iou_threshold: float | None) -> float:
    # Sec 5.2: a detection is a true positive iff its IoU with a ground-truth box is > 0.5
    return float(_evaluation_spec()["iou_threshold"] if iou_threshold is None else iou_threshold)


def _default_class_names(class_names: Sequence[str] | None) -> list[str]:
    # Table 3: the six morphology classes, class id k <-> class_names[k - 1]
    names = specs.load_spec("rgz")["classes"] if class_names is None else class_names
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) == 0:
        raise ValueError(f"class_names must be a non-empty sequence of names, got {names!r}")
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be unique, got {names}")
    return names


# --- validation -------------------------------------------------------------------------------


def _as_boxes(value, where: str) -> np.ndarray:
    boxes = np.asarray(value, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: 'boxes' must have shape (n, 4) [x1, y1, x2, y2], got {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{where}: 'boxes' contains NaN or inf")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        raise ValueError(f"{where}: 'boxes' must satisfy x2 >= x1 and y2 >= y1")
    return boxes


def _as_classes(value, n: int, num_classes: int, where: str) -> np.ndarray:
    raw = np.asarray(value)
    if raw.size == 0 and n == 0:
        return np.zeros(0, np.int64)
    if raw.ndim != 1 or raw.shape[0] != n:
        raise ValueError(f"{where}: 'classes' must have shape ({n},) to match 'boxes', got {raw.shape}")
    if raw.dtype.kind == "f" and not np.all(raw == np.round(raw)):
        raise ValueError(f"{where}: 'classes' must be integers")
    if raw.dtype.kind not in "iuf":
        raise ValueError(f"{where}: 'classes' must be integers, got dtype {raw.dtype}")
    classes = raw.astype(np.int64)
    if np.any(classes < 0) or np.any(classes > num_classes):
        raise ValueError(f"{where}: 'classes' must be in 0..{num_classes} (0 = padding), got {np.unique(classes)}")
    return classes


def _as_scores(value, n: int, where: str) -> np.ndarray:
    scores = np.asarray(value, dtype=np.float64)
    if scores.size == 0 and n == 0:
        return np.zeros(0)
    if scores.ndim != 1 or scores.shape[0] != n:
        raise ValueError(f"{where}: 'scores' must have shape ({n},) to match 'boxes', got {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{where}: 'scores' contains NaN or inf")
    return scores


def _check_image(item, index: int, kind: str, num_classes: int, with_scores: bool) -> dict:
    where = f"{kind}[{index}]"
    if not isinstance(item, Mapping):
        raise ValueError(f"{where} must be a dict with 'boxes' and 'classes', got {type(item).__name__}")
    need = ("boxes", "classes", "scores") if with_scores else ("boxes", "classes")
    missing = [k for k in need if k not in item]
    if missing:
        raise ValueError(f"{where} is missing {missing}")
    boxes = _as_boxes(item["boxes"], where)
    classes = _as_classes(item["classes"], len(boxes), num_classes, where)
    out = {"boxes": boxes, "classes": classes}
    if with_scores:
        out["scores"] = _as_scores(item["scores"], len(boxes), where)
    keep = classes > 0  # class 0: background / padding
    return {k: v[keep] for k, v in out.items()}


def _check_lists(detections, ground_truth, num_classes: int) -> tuple[list[dict], list[dict]]:
    if isinstance(detections, Mapping) or isinstance(ground_truth, Mapping):
        raise ValueError("detections and ground_truth must be lists with one dict per image")
    detections = list(detections)
    ground_truth = list(ground_truth)
    if len(detections) != len(ground_truth):
        raise ValueError(
            f"detections has {len(detections)} images but ground_truth has {len(ground_truth)}; "
            "they must be aligned image by image"
        )
    dets = [_check_image(d, i, "detections", num_classes, True) for i, d in enumerate(detections)]
    gts = [_check_image(g, i, "ground_truth", num_classes, False) for i, g in enumerate(ground_truth)]
    return dets, gts


# --- geometry and matching --------------------------------------------------------------------


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """Intersection over union (Sec 4.3.1) of every pair of boxes.

    Parameters
    ----------
    boxes_a, boxes_b
        (n, 4) and (m, 4) boxes ``[x1, y1, x2, y2]`` in pixels (continuous; area = w h).

    Returns
    -------
    np.ndarray
        (n, m) IoU in [0, 1]; 0 where the union is empty.
    """
    a = _as_boxes(boxes_a, "boxes_a")
    b = _as_boxes(boxes_b, "boxes_b")
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_detections(
    det_boxes: np.ndarray,
    det_scores: np.ndarray,
    gt_boxes: np.ndarray,
    iou_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy VOC matching of one class in one image.

    Parameters
    ----------
    det_boxes, det_scores
        (n, 4) detected boxes (pixels) and their P-values.
    gt_boxes
        (k, 4) ground-truth boxes of the same class (pixels).
    iou_threshold
        A detection matches when IoU > this (strict; default 0.5, Sec 5.2).

    Returns
    -------
    tp : np.ndarray
        (n,) bool, True for true positives, in the input order of the detections.
    matched_gt : np.ndarray
        (n,) int, index of the ground-truth box a true positive took, -1 otherwise.
    """
    thr = _default_iou(iou_threshold)
    det_boxes = _as_boxes(det_boxes, "det_boxes")
    gt_boxes = _as_boxes(gt_boxes, "gt_boxes")
    det_scores = _as_scores(det_scores, len(det_boxes), "det_scores")
    n = len(det_boxes)
    tp = np.zeros(n, bool)
    matched = np.full(n, -1, np.int64)
    if n == 0 or len(gt_boxes) == 0:
        return tp, matched
    iou = box_iou(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    for d in np.argsort(-det_scores, kind="stable"):
        j = int(np.argmax(iou[d]))
        if iou[d, j] > thr and not taken[j]:
            tp[d] = True
            matched[d] = j
            taken[j] = True
    return tp, matched


def average_precision(recall, precision, interpolated: bool = False) -> float:
    """Average precision of one class from its ranked precision-recall points.

    Parameters
    ----------
    recall, precision
        (L,) recall R(k) = TP(k) / |T_m| and precision P(k) = TP(k) / k (Eq. 13) after each of
        the L ranked detections.
    interpolated
        False (default): the paper's Eq. 12, ``AP = sum_k P(k) tp(k) / |T_m|``
        ``= sum_k P(k) (R(k) - R(k-1))``, the uninterpolated area under the PR curve.
        True: the PASCAL VOC 2010+ all-point interpolated AP (area under the monotone precision
        envelope), which the authors' code computes; for comparison only.

    Returns
    -------
    float
        AP in [0, 1]; 0 for empty inputs.
    """
    r = np.asarray(recall, dtype=np.float64)
    p = np.asarray(precision, dtype=np.float64)
    if r.ndim != 1 or p.ndim != 1 or r.shape != p.shape:
        raise ValueError(f"recall and precision must be 1-D of equal length, got {r.shape} and {p.shape}")
    if r.size == 0:
        return 0.0
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(p))):
        raise ValueError("recall and precision must be finite")
    if np.any(r < 0) or np.any(r > 1 + 1e-12) or np.any(p < 0) or np.any(p > 1 + 1e-12):
        raise ValueError("recall and precision must lie in [0, 1]")
    if np.any(np.diff(r) < -1e-12):
        raise ValueError("recall must be non-decreasing along the ranked detections")
    delta = np.diff(np.concatenate([[0.0], r]))
    if interpolated:
        p = np.maximum.accumulate(p[::-1])[::-1]
    return float(np.sum(p * delta))


# --- Eq. 12 / 14 ------------------------------------------------------------------------------


def _ranked_class_outcomes(dets, gts, cls: int, thr: float):
    """TP flags, scores, (image, det index, matched gt index) of class ``cls``, ranked."""
    img, idx, scores, flags, gt_idx = [], [], [], [], []
    for i, (d, g) in enumerate(zip(dets, gts)):
        dm = d["classes"] == cls
        if not np.any(dm):
            continue
        gm = np.flatnonzero(g["classes"] == cls)
        tp, matched = match_detections(d["boxes"][dm], d["scores"][dm], g["boxes"][gm], thr)
        n = int(dm.sum())
        img.append(np.full(n, i))
        idx.append(np.flatnonzero(dm))
        scores.append(d["scores"][dm])
        flags.append(tp)
        gt_idx.append(np.where(matched >= 0, gm[np.maximum(matched, 0)] if len(gm) else -1, -1))
    if not scores:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, bool), np.zeros(0), empty, empty, empty
    scores = np.concatenate(scores)
    # matching per image with its own ranking equals the global VOC pass (ground-truth boxes
    # never cross images); the global ranking only orders the PR curve
    order = np.argsort(-scores, kind="stable")
    return (
        np.concatenate(flags)[order],
        scores[order],
        np.concatenate(img)[order],
        np.concatenate(idx)[order],
        np.concatenate(gt_idx)[order],
    )


def evaluate_detections(
    detections: Sequence[Mapping],
    ground_truth: Sequence[Mapping],
    class_names: Sequence[str] | None = None,
    iou_threshold: float | None = None,
    interpolated: bool = False,
) -> dict:
    """AP per class (Eq. 12) and mAP (Eq. 14) over a test set.

    Parameters
    ----------
    detections
        One dict per image: ``boxes`` (n, 4) pixels, ``classes`` (n,) ints 1..K, ``scores`` (n,)
        P-values.
    ground_truth
        One dict per image, aligned with ``detections``: ``boxes`` (k, 4) pixels, ``classes`` (k,).
    class_names
        K names; class id k is ``class_names[k - 1]``. Default: the six RGZ morphologies
        (Table 3, ``data_specs/rgz.yaml``).
    iou_threshold
        True positive iff IoU > this (strict). Default 0.5 (Sec 5.2, ``claran.yaml``).
    interpolated
        Use the VOC all-point interpolated AP of the authors' code instead of Eq. 12.

    Returns
    -------
    dict
        ``ap``: {name: AP} (NaN for a class without ground truth); ``map``: mean AP over the
        classes that have ground truth (Eq. 14; NaN if none has); ``pr``: {name: (recall,
        precision)} arrays along the ranked detections (Fig. 10); ``n_gt``: {name: |T_m|};
        ``n_det``: {name: |L_m|}; ``n_tp``: {name: true positives}; ``iou_threshold``.

    Raises
    ------
    ValueError
        Mismatched list lengths, boxes not (n, 4), arrays of different lengths, class ids out
        of range, non-finite values.
    """
    names = _default_class_names(class_names)
    thr = _default_iou(iou_threshold)
    dets, gts = _check_lists(detections, ground_truth, len(names))
    ap, pr, n_gt, n_det, n_tp = {}, {}, {}, {}, {}
    for cls, name in enumerate(names, start=1):
        total = int(sum(int(np.sum(g["classes"] == cls)) for g in gts))
        tp, _, _, _, _ = _ranked_class_outcomes(dets, gts, cls, thr)
        cum_tp = np.cumsum(tp)
        precision = cum_tp / np.arange(1, len(tp) + 1) if len(tp) else np.zeros(0)
        recall = cum_tp / total if total > 0 else np.zeros(len(tp))
        n_gt[name] = total
        n_det[name] = int(len(tp))
        n_tp[name] = int(cum_tp[-1]) if len(tp) else 0
        pr[name] = (recall, precision)
        ap[name] = average_precision(recall, precision, interpolated) if total > 0 else float("nan")
    with_gt = [ap[n] for n in names if n_gt[n] > 0]
    absent = [n for n in names if n_gt[n] == 0]
    if absent:
        logger.info("classes without ground truth, excluded from the mAP: %s", absent)
    m = float(np.mean(with_gt)) if with_gt else float("nan")
    return {"ap": ap, "map": m, "pr": pr, "n_gt": n_gt, "n_det": n_det, "n_tp": n_tp, "iou_threshold": thr}


# --- Tables 6-8 -------------------------------------------------------------------------------


def components_only(
    detections: Sequence[Mapping],
    ground_truth: Sequence[Mapping],
    class_names: Sequence[str] | None = None,
    mapping: Mapping[str, str] | None = None,
) -> tuple[list[dict], list[dict], list[str]]:
    """Remap six morphology classes to the "number of components" classes of Table 6.

    Detections and ground truth are both recategorised by their number of components
    (1C_1P, 1C_2P, 1C_3P -> 1C; 2C_2P, 2C_3P -> 2C; 3C_3P -> 3C); boxes and scores are kept,
    so two detections of one source under e.g. 1C_1P and 1C_2P become a duplicate 1C detection
    (a false positive), exactly as re-labelling the paper's detection lists does.

    Parameters
    ----------
    detections, ground_truth
        Per-image dicts as for :func:`evaluate_detections`.
    class_names
        Names of the input class ids (default: the six RGZ classes).
    mapping
        {old name: new name}; default ``claran.yaml`` ``evaluation.components_only`` (Table 6).

    Returns
    -------
    (detections, ground_truth, new_class_names)
        New lists (inputs are not modified) with class ids into ``new_class_names`` (in order of
        first appearance in ``mapping``), ready for :func:`evaluate_detections`.
    """
    names = _default_class_names(class_names)
    mapping = dict(_evaluation_spec()["components_only"] if mapping is None else mapping)
    missing = [n for n in names if n not in mapping]
    if missing:
        raise ValueError(f"components_only mapping has no entry for classes {missing}")
    new_names: list[str] = []
    for n in names:
        if mapping[n] not in new_names:
            new_names.append(str(mapping[n]))
    lut = np.zeros(len(names) + 1, np.int64)
    for k, n in enumerate(names, start=1):
        lut[k] = new_names.index(mapping[n]) + 1
    dets, gts = _check_lists(detections, ground_truth, len(names))
    dets = [{**d, "classes": lut[d["classes"]]} for d in dets]
    gts = [{**g, "classes": lut[g["classes"]]} for g in gts]
    return dets, gts, new_names


def multi_source_subset(
    detections: Sequence[Mapping],
    ground_truth: Sequence[Mapping],
    min_sources: int = 2,
    class_names: Sequence[str] | None = None,
    return_indices: bool = False,
):
    """The subjects with at least ``min_sources`` ground-truth sources (Sec 5.4, Table 7).

    The paper's set T is "every subject in the testing set that has at least two sources"
    (250 subjects, 505 sources). Table 7 then evaluates T with the components-only classes:
    ``evaluate_detections(*components_only(*multi_source_subset(d, g)))``.

    Parameters
    ----------
    detections, ground_truth
        Per-image dicts as for :func:`evaluate_detections`.
    min_sources
        Minimum number of (non-padding) ground-truth boxes in a subject.
    class_names
        Only used to validate class ids (default: the six RGZ classes).
    return_indices
        Also return the indices of the kept images.

    Returns
    -------
    (detections, ground_truth) or (detections, ground_truth, indices)
        The validated dicts of the kept images, in input order.
    """
    if int(min_sources) != min_sources or min_sources < 1:
        raise ValueError(f"min_sources must be a positive integer, got {min_sources!r}")
    names = _default_class_names(class_names)
    dets, gts = _check_lists(detections, ground_truth, len(names))
    keep = np.array([i for i, g in enumerate(gts) if len(g["classes"]) >= min_sources], np.int64)
    logger.info(
        "multi-source subset: %d of %d subjects, %d sources",
        len(keep),
        len(gts),
        sum(len(gts[i]["classes"]) for i in keep),
    )
    out_d = [dets[i] for i in keep]
    out_g = [gts[i] for i in keep]
    return (out_d, out_g, keep) if return_indices else (out_d, out_g)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def box_size_correlation(
    detections: Sequence[Mapping],
    ground_truth: Sequence[Mapping],
    class_names: Sequence[str] | None = None,
    iou_threshold: float | None = None,
) -> dict:
    """Pearson correlation of predicted and ground-truth box sizes (Sec 5.5, Table 8).

    "the correlation coefficients between the size (width) of each CLARAN-generated box and the
    size of its matching ground-truth (DR1) box": the pairs are the true positives of the Eq. 12
    matching (same class, IoU > 0.5, each ground-truth box once); size = width x2 - x1 in pixels
    (ground-truth boxes are squares, Sec 3.3).

    Returns
    -------
    dict
        ``r``: {name: Pearson r} (NaN with fewer than two pairs or no spread); ``overall``: r
        over all pairs of all classes; ``n``: {name: pairs}; ``pairs``: {name: (predicted
        widths, ground-truth widths)} in pixels.
    """
    names = _default_class_names(class_names)
    thr = _default_iou(iou_threshold)
    dets, gts = _check_lists(detections, ground_truth, len(names))
    r, n, pairs = {}, {}, {}
    all_p, all_g = [], []
    for cls, name in enumerate(names, start=1):
        tp, _, img, det_idx, gt_idx = _ranked_class_outcomes(dets, gts, cls, thr)
        pw = np.array([np.diff(dets[i]["boxes"][j, [0, 2]])[0] for i, j in zip(img[tp], det_idx[tp])])
        gw = np.array([np.diff(gts[i]["boxes"][j, [0, 2]])[0] for i, j in zip(img[tp], gt_idx[tp])])
        pairs[name] = (pw, gw)
        n[name] = int(len(pw))
        r[name] = _pearson(pw, gw)
        all_p.append(pw)
        all_g.append(gw)
    overall = _pearson(np.concatenate(all_p), np.concatenate(all_g))
    return {"r": r, "overall": overall, "n": n, "pairs": pairs}


# --- Sec 6.1.1 --------------------------------------------------------------------------------


def user_filter(
    detections: Sequence[Mapping],
    threshold: float | None = None,
    one_source_per_field: bool = True,
) -> list[dict]:
    """The simple post-processing filter recommended in Sec 6.1.1.

    (1) reject every classification with P < ``threshold`` (0.8) unless the classification with
    the highest P is itself below 0.8 (then that one is kept); (2) assume one radio source per
    field and keep the classification with the highest P ("the source classification with the
    highest P-value is likely the correct classification"). With (2) the result is the single
    top-P detection of each field; ``one_source_per_field=False`` applies (1) alone (the
    variant of Sec 6.2.2).

    Parameters
    ----------
    detections
        Per-image dicts with ``boxes``, ``classes``, ``scores``.
    threshold
        P-value cut; default ``claran.yaml`` ``evaluation.user_filter_probability`` (0.8).
    one_source_per_field
        Apply assumption (2).

    Returns
    -------
    list of dict
        Filtered copies, sorted by descending P; an image without detections stays empty.
    """
    thr = float(_evaluation_spec()["user_filter_probability"] if threshold is None else threshold)
    if isinstance(detections, Mapping):
        raise ValueError("detections must be a list with one dict per image")
    out = []
    for i, item in enumerate(detections):
        d = _check_image(item, i, "detections", np.iinfo(np.int64).max, True)
        order = np.argsort(-d["scores"], kind="stable")
        if len(order):
            if one_source_per_field:
                order = order[:1]
            elif d["scores"][order[0]] >= thr:
                order = order[d["scores"][order] >= thr]
            else:
                order = order[:1]
        out.append({k: v[order] for k, v in d.items()})
    return out


def user_filter_accuracy(
    filtered: Sequence[Mapping],
    ground_truth: Sequence[Mapping],
    class_names: Sequence[str] | None = None,
    iou_threshold: float | None = None,
) -> dict:
    """The verification score of Sec 6.1.2 (Table 9) against the ground truth.

    "A score of one is awarded to each correct radio source classification. The total number
    of correct classifications is then divided by the total number of sources within the
    field." A classification is correct when it matches a ground-truth source of the same class
    with IoU > 0.5, each source at most once (the Sec 5.2 rule; the paper's judgement was
    visual). Fields without ground truth are skipped.

    Returns
    -------
    dict
        ``accuracy``: mean field score (the paper's 465.2 / 500 = 93.0 %); ``total_score``: sum
        of field scores (Table 9's numbers); ``n_fields``: fields scored; ``n_skipped``: fields
        without ground truth; ``field_scores``: (n_images,) with NaN for skipped fields.
    """
    names = _default_class_names(class_names)
    thr = _default_iou(iou_threshold)
    dets, gts = _check_lists(filtered, ground_truth, len(names))
    scores = np.full(len(gts), np.nan)
    for i, (d, g) in enumerate(zip(dets, gts)):
        if len(g["classes"]) == 0:
            continue
        correct = 0
        for cls in np.unique(d["classes"]):
            dm = d["classes"] == cls
            tp, _ = match_detections(d["boxes"][dm], d["scores"][dm], g["boxes"][g["classes"] == cls], thr)
            correct += int(tp.sum())
        scores[i] = correct / len(g["classes"])
    scored = scores[np.isfinite(scores)]
    return {
        "accuracy": float(scored.mean()) if len(scored) else float("nan"),
        "total_score": float(scored.sum()),
        "n_fields": int(len(scored)),
        "n_skipped": int(len(scores) - len(scored)),
        "field_scores": scores,
    }


# --- batches and plots ------------------------------------------------------------------------


def unbatch_detections(boxes, classes, scores, num_detections=None) -> list[dict]:
    """Split the detector's padded output (B, D, ...) into per-image dicts.

    Parameters
    ----------
    boxes, classes, scores
        (B, D, 4), (B, D), (B, D) arrays (e.g. from ``inference_model``).
    num_detections
        (B,) valid detections per image; default: all rows with class > 0.
    """
    boxes = np.asarray(boxes)
    classes = np.asarray(classes)
    scores = np.asarray(scores)
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (B, D, 4), got {boxes.shape}")
    if classes.shape != boxes.shape[:2] or scores.shape != boxes.shape[:2]:
        raise ValueError(f"classes {classes.shape} and scores {scores.shape} must be {boxes.shape[:2]}")
    if num_detections is None:
        num = np.full(len(boxes), boxes.shape[1])
    else:
        num = np.asarray(num_detections).astype(np.int64).reshape(-1)
        if num.shape[0] != len(boxes):
            raise ValueError(f"num_detections must be ({len(boxes)},), got {num.shape}")
    out = []
    for b in range(len(boxes)):
        n = int(num[b])
        keep = classes[b, :n] > 0
        out.append({"boxes": boxes[b, :n][keep], "classes": classes[b, :n][keep], "scores": scores[b, :n][keep]})
    return out


def unbatch_ground_truth(gt_boxes, gt_classes) -> list[dict]:
    """Split the pipeline's zero-padded (B, K, 4) / (B, K) ground truth into per-image dicts."""
    gt_boxes = np.asarray(gt_boxes)
    gt_classes = np.asarray(gt_classes)
    if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be (B, K, 4), got {gt_boxes.shape}")
    if gt_classes.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_classes must be {gt_boxes.shape[:2]}, got {gt_classes.shape}")
    keep = gt_classes > 0
    return [{"boxes": gt_boxes[b][keep[b]], "classes": gt_classes[b][keep[b]]} for b in range(len(gt_boxes))]


def plot_pr_curves(result: Mapping, path, title: str | None = None):
    """Fig. 10: one precision-recall (reliability-completeness) curve per class.

    Parameters
    ----------
    result
        The dict returned by :func:`evaluate_detections`.
    path
        Output image file (PNG by suffix); written atomically.
    title
        Figure title; default shows the mAP.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for key in ("ap", "pr", "n_gt", "map"):
        if key not in result:
            raise ValueError(f"result has no {key!r}: pass the dict returned by evaluate_detections")
    path = Path(path)
    fig = Figure(figsize=(6.0, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, (recall, precision) in result["pr"].items():
        if result["n_gt"].get(name, 0) == 0:
            continue
        p = np.asarray(precision, float)
        if p.size == 0:  # ground truth but no detection of this class: AP 0, a point at (0, 0)
            r, p = np.zeros(1), np.zeros(1)
        else:
            r = np.concatenate([[0.0], np.asarray(recall, float)])
            p = np.concatenate([p[:1], p])  # the curve starts at recall 0 with the first precision
        ax.plot(r, p, drawstyle="steps-post", label=f"{name} (AP = {result['ap'][name]:.4f})")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("Completeness (recall)")
    ax.set_ylabel("Reliability (precision)")
    ax.set_title(title if title is not None else f"mAP = {100 * result['map']:.1f} %")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix or ".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format=(path.suffix.lstrip(".") or "png"), dpi=120)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
