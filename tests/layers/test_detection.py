"""CLARAN detection layers (Wu et al. 2019, Sec 4.3) against independent numpy references."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_astro.layers.detection import (
    BBOX_XFORM_CLIP,
    AnchorGenerator,
    AnchorTarget,
    ProposalLayer,
    ProposalTarget,
    RPNHead,
    box_iou,
    clip_boxes,
    decode_boxes,
    encode_boxes,
    generate_anchors,
    stateless_uniform_keys,
)

STDS = (0.1, 0.1, 0.2, 0.2)


# ------------------------------------------------------------------------------------------
# independent numpy references (loops, float64)
# ------------------------------------------------------------------------------------------
def np_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(np.asarray(a, np.float64)):
        for j, q in enumerate(np.asarray(b, np.float64)):
            iw = min(p[2], q[2]) - max(p[0], q[0])
            ih = min(p[3], q[3]) - max(p[1], q[1])
            inter = max(iw, 0.0) * max(ih, 0.0)
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


def np_encode(a: np.ndarray, b: np.ndarray, stds=(1, 1, 1, 1)) -> np.ndarray:
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    ax, ay = a[:, 0] + aw / 2, a[:, 1] + ah / 2
    bx, by = b[:, 0] + bw / 2, b[:, 1] + bh / 2
    g = np.stack([(bx - ax) / aw, (by - ay) / ah, np.log(bw / aw), np.log(bh / ah)], 1)
    return g / np.asarray(stds)


def np_decode(a: np.ndarray, d: np.ndarray, stds=(1, 1, 1, 1)) -> np.ndarray:
    a = np.asarray(a, np.float64)
    d = np.asarray(d, np.float64) * np.asarray(stds)
    aw, ah = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    ax, ay = a[:, 0] + aw / 2, a[:, 1] + ah / 2
    cx, cy = d[:, 0] * aw + ax, d[:, 1] * ah + ay
    w = np.exp(np.minimum(d[:, 2], math.log(1000 / 16))) * aw
    h = np.exp(np.minimum(d[:, 3], math.log(1000 / 16))) * ah
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def np_anchors(hh: int, ww: int, stride: float, sizes, ratios) -> np.ndarray:
    rows = []
    for i in range(hh):
        for j in range(ww):
            cx, cy = (j + 0.5) * stride, (i + 0.5) * stride
            for r in ratios:
                for s in sizes:
                    w, h = s / math.sqrt(r), s * math.sqrt(r)
                    rows.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return np.array(rows)


def np_anchor_labels(anchors, gt, cls, height, width, pos=0.7, neg=0.3, border=0.0):
    """Faster R-CNN's anchor_target_layer before sub-sampling, one image (loops)."""
    n = len(anchors)
    inside = np.array(
        [a[0] >= -border and a[1] >= -border and a[2] <= width + border and a[3] <= height + border for a in anchors]
    )
    labels = -np.ones(n, int)
    targets = np.zeros((n, 4))
    gt = gt[cls > 0]
    idx = np.flatnonzero(inside)
    if len(gt) == 0:
        labels[idx] = 0
        return labels, targets, inside
    ov = np_iou(anchors[idx], gt)
    best = ov.max(1)
    labels[idx[best < neg]] = 0
    gt_best = ov.max(0)
    for k in range(len(gt)):
        if gt_best[k] > 0:
            labels[idx[ov[:, k] == gt_best[k]]] = 1
    labels[idx[best >= pos]] = 1
    targets[idx] = np_encode(anchors[idx], gt[ov.argmax(1)])
    return labels, targets, inside


def np_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if np_iou(boxes[i : i + 1], boxes[j : j + 1])[0, 0] <= thresh]
    return keep


def np_proposals(prob, deltas, anchors, height, width, pre, post, thresh, min_size):
    boxes = np_decode(anchors, deltas)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    ok = (boxes[:, 2] - boxes[:, 0] >= min_size) & (boxes[:, 3] - boxes[:, 1] >= min_size)
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-prob[idx], kind="stable")][:pre]
    keep = np_nms(boxes[idx], prob[idx], thresh)[:post]
    return boxes[idx[keep]], prob[idx[keep]]


# ------------------------------------------------------------------------------------------
# pure functions
# ------------------------------------------------------------------------------------------
def test_paper_anchor_counts_at_600_px():
    """6 x 37^2 = 8,214 anchors, exactly 5,241 inside the 600 x 600 image (|A'|, Sec 4.3.1)."""
    anchors = generate_anchors(37, 37)
    assert anchors.shape == (8214, 4)
    a = anchors.numpy()
    inside = (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 2] <= 600) & (a[:, 3] <= 600)
    assert inside.sum() == 5241
    out = AnchorTarget()(anchors, np.zeros((1, 1, 4), np.float32), np.zeros((1, 1), np.int32), image_shape=(600, 600))
    assert int(out["inside"].numpy().sum()) == 5241
    np.testing.assert_allclose(
        a[:6], [[8 - s / 2, 8 - s / 2, 8 + s / 2, 8 + s / 2] for s in (16, 32, 64, 128, 256, 512)]
    )


def test_anchors_match_loop_reference_and_ordering():
    got = generate_anchors(3, 5, stride=8, sizes=(8, 20), ratios=(0.5, 1.0, 2.0)).numpy()
    np.testing.assert_allclose(got, np_anchors(3, 5, 8, (8, 20), (0.5, 1.0, 2.0)), rtol=0, atol=1e-5)
    layer = AnchorGenerator(stride=8, sizes=(8, 20), ratios=(0.5, 1.0, 2.0))
    assert layer.num_anchors == 6
    np.testing.assert_array_equal(layer(np.zeros((2, 3, 5, 4), np.float32)).numpy(), got)


def test_box_iou_matches_numpy(rng):
    xy = rng.uniform(0, 50, (2, 9, 2))
    wh = rng.uniform(0, 30, (2, 9, 2))
    a = np.concatenate([xy[0], xy[0] + wh[0]], 1).astype(np.float32)
    b = np.concatenate([xy[1], xy[1] + wh[1]], 1).astype(np.float32)
    b[0] = [0, 0, 0, 0]  # degenerate: IoU 0, no NaN
    b[1] = a[2]  # identical: IoU 1
    got = box_iou(a, b).numpy()
    np.testing.assert_allclose(got, np_iou(a, b), atol=1e-6)
    assert got[2, 1] == pytest.approx(1.0)
    # leading batch dimensions broadcast
    batched = box_iou(a[None], np.stack([b, b[::-1]])).numpy()
    np.testing.assert_allclose(batched[1], np_iou(a, b[::-1]), atol=1e-6)


def test_encode_decode_against_numpy_and_round_trip(rng):
    a = np.concatenate([rng.uniform(0, 100, (20, 2)), rng.uniform(0, 100, (20, 2))], 1)
    a[:, 2:] += a[:, :2] + 1.0
    b = a + rng.normal(0, 5, a.shape)
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1.0)
    a, b = a.astype(np.float32), b.astype(np.float32)
    for stds in [(1, 1, 1, 1), STDS]:
        enc = encode_boxes(a, b, stds).numpy()
        np.testing.assert_allclose(enc, np_encode(a, b, stds), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(decode_boxes(a, enc, stds).numpy(), b, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(decode_boxes(a, enc, stds).numpy(), np_decode(a, enc, stds), rtol=1e-4, atol=1e-3)
    # width / height offsets are clamped at log(1000 / 16) before the exponential
    huge = decode_boxes(np.array([[0, 0, 16, 16]], np.float32), np.array([[0, 0, 50, 50]], np.float32)).numpy()
    assert BBOX_XFORM_CLIP == pytest.approx(math.log(1000 / 16))
    np.testing.assert_allclose(huge[0, 2] - huge[0, 0], 1000.0, rtol=1e-5)


def test_clip_boxes():
    b = np.array([[-5, -3, 20, 700], [10, 20, 30, 40]], np.float32)
    np.testing.assert_array_equal(clip_boxes(b, 600, 500).numpy(), [[0, 0, 20, 600], [10, 20, 30, 40]])


def test_hash_keys_are_uniform_and_seed_dependent():
    u = stateless_uniform_keys((4, 5000), [3, 0]).numpy()
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - math.sqrt(1 / 12)) < 0.01
    v = stateless_uniform_keys((4, 5000), [3, 1]).numpy()
    assert abs(np.corrcoef(u.ravel(), v.ravel())[0, 1]) < 0.03
    np.testing.assert_array_equal(u, stateless_uniform_keys((4, 5000), [3, 0]).numpy())


# ------------------------------------------------------------------------------------------
# RPN head
# ------------------------------------------------------------------------------------------
def test_rpn_head_shapes_names_and_row_order(rng):
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    head = RPNHead(filters=6, num_anchors=3)
    logits, deltas = head(x)
    assert logits.shape == (2, 36, 2) and deltas.shape == (2, 36, 4)
    assert [head.rpn_conv.name, head.rpn_cls.name, head.rpn_reg.name] == ["rpn_conv", "rpn_cls", "rpn_reg"]
    assert head.rpn_conv.kernel.shape == (3, 3, 5, 6) and head.rpn_cls.kernel.shape == (1, 1, 6, 6)
    assert head.rpn_reg.kernel.shape == (1, 1, 6, 12)
    hidden = head.rpn_conv(x)
    assert float(np.min(hidden)) >= 0.0  # ReLU
    cls = head.rpn_cls(hidden).numpy()
    reg = head.rpn_reg(hidden).numpy()
    i, j, a = 2, 1, 2
    row = (i * 4 + j) * 3 + a
    np.testing.assert_allclose(logits.numpy()[1, row], cls[1, i, j, 2 * a : 2 * a + 2], atol=1e-6)
    np.testing.assert_allclose(deltas.numpy()[1, row], reg[1, i, j, 4 * a : 4 * a + 4], atol=1e-6)


# ------------------------------------------------------------------------------------------
# anchor target
# ------------------------------------------------------------------------------------------
def _hand_case():
    """64 x 64 image, stride 16, sizes (16, 32): 32 anchors, 20 inside (16 of 16 px, 4 of 32 px).

    gt1 = anchor 10 exactly (IoU 1). gt2 straddles anchors 28 and 30 (IoU 1/3 each, a tie for its
    best anchor, both positive although < 0.7). A class-0 box covering the image must be ignored.
    Every other inside anchor has max IoU < 0.3: 3 positives, 17 negatives, 12 ignored.
    """
    anchors = generate_anchors(4, 4, stride=16, sizes=(16, 32))
    gt = np.array([[[16, 16, 32, 32], [40, 48, 56, 64], [0, 0, 64, 64], [0, 0, 0, 0]]], np.float32)
    cls = np.array([[2, 4, 0, 0]], np.int32)
    return anchors, gt, cls


def test_anchor_target_hand_case_without_sampling():
    anchors, gt, cls = _hand_case()
    out = AnchorTarget(batch_per_image=64)(anchors, gt, cls, image_shape=(64, 64))
    labels = out["labels"].numpy()[0]
    assert out["inside"].numpy().sum() == 20
    assert sorted(np.flatnonzero(labels == 1)) == [10, 28, 30]
    assert (labels == 0).sum() == 17 and (labels == -1).sum() == 12
    assert (labels[~out["inside"].numpy()[0]] == -1).all()
    t = out["targets"].numpy()[0]
    np.testing.assert_allclose(t[[10, 28, 30]], [[0, 0, 0, 0], [0.5, 0, 0, 0], [-0.5, 0, 0, 0]], atol=1e-6)
    ref_labels, ref_targets, ref_inside = np_anchor_labels(anchors.numpy(), gt[0], cls[0], 64, 64)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(t, ref_targets, atol=1e-5)
    np.testing.assert_array_equal(out["inside"].numpy()[0], ref_inside)


def test_anchor_target_sampling_counts_and_empty_image():
    anchors, gt, cls = _hand_case()
    gt2 = np.concatenate([gt, np.zeros_like(gt)])  # second image: padding only
    cls2 = np.concatenate([cls, np.zeros_like(cls)])
    layer = AnchorTarget(batch_per_image=8, positive_fraction=0.25)  # at most 2 positives
    labels = layer(anchors, gt2, cls2, image_shape=(64, 64))["labels"].numpy()
    assert (labels[0] == 1).sum() == 2 and set(np.flatnonzero(labels[0] == 1)) <= {10, 28, 30}
    assert (labels[0] == 0).sum() == 6
    ref = np_anchor_labels(anchors.numpy(), gt[0], cls[0], 64, 64)[0]
    assert (ref[labels[0] == 0] == 0).all()
    # no valid box: every inside anchor is a negative candidate; 8 of them sampled
    assert (labels[1] == 1).sum() == 0 and (labels[1] == 0).sum() == 8
    assert layer(anchors, gt2, cls2, image_shape=(64, 64))["targets"].numpy()[1].any() == np.False_


def test_anchor_target_batch_matches_per_image_reference(rng):
    """B = 2 at the paper's 600 px geometry, integer boxes so IoU ties are exact, no sub-sampling."""
    anchors = generate_anchors(37, 37)
    gt = np.zeros((2, 4, 4), np.float32)
    cls = np.zeros((2, 4), np.int32)
    for b, k in [(0, 3), (1, 2)]:
        xy = rng.integers(0, 450, (k, 2))
        side = rng.integers(20, 150, (k, 1))
        gt[b, :k] = np.concatenate([xy, xy + side], 1)
        cls[b, :k] = rng.integers(1, 7, k)
    out = AnchorTarget(batch_per_image=10**6)(anchors, gt, cls, image_shape=(600, 600))
    for b in range(2):
        ref_labels, ref_targets, _ = np_anchor_labels(anchors.numpy(), gt[b], cls[b], 600, 600)
        np.testing.assert_array_equal(out["labels"].numpy()[b], ref_labels)
        np.testing.assert_allclose(out["targets"].numpy()[b], ref_targets, atol=1e-4)
        assert (ref_labels == 1).sum() >= cls[b].astype(bool).sum()
    # paper settings: 256 per image, at most 128 positives
    paper = AnchorTarget()(anchors, gt, cls, image_shape=(600, 600))["labels"].numpy()
    for b in range(2):
        n_pos = (paper[b] == 1).sum()
        ref_pos = (np_anchor_labels(anchors.numpy(), gt[b], cls[b], 600, 600)[0] == 1).sum()
        assert n_pos == min(ref_pos, 128) and (paper[b] == 0).sum() == 256 - n_pos


def test_anchor_target_is_seeded_and_advances():
    anchors = generate_anchors(37, 37)
    gt = np.array([[[100, 100, 180, 180]]], np.float32)
    cls = np.ones((1, 1), np.int32)
    args = (anchors, gt, cls)
    a1, a2 = AnchorTarget(seed=7), AnchorTarget(seed=7)
    first = a1(*args, image_shape=(600, 600))["labels"].numpy()
    np.testing.assert_array_equal(first, a2(*args, image_shape=(600, 600))["labels"].numpy())
    second = a1(*args, image_shape=(600, 600))["labels"].numpy()
    assert int(a1.draws.numpy()) == 2 and (first != second).any()
    fixed = [a1(*args, image_shape=(600, 600), seed=[5, 9])["labels"].numpy() for _ in range(2)]
    np.testing.assert_array_equal(fixed[0], fixed[1])
    assert int(a1.draws.numpy()) == 2
    other = AnchorTarget(seed=8)(*args, image_shape=(600, 600))["labels"].numpy()
    assert (other != first).any()


# ------------------------------------------------------------------------------------------
# proposal layer
# ------------------------------------------------------------------------------------------
def _proposal_inputs(rng, batch=2):
    anchors = generate_anchors(10, 10, stride=16, sizes=(16, 32, 64)).numpy()  # 300 anchors, 160 px
    prob = rng.random((batch, len(anchors))).astype(np.float32)
    deltas = rng.normal(0, 0.3, (batch, len(anchors), 4)).astype(np.float32)
    deltas[:, ::7, 2] = -3.0  # some boxes shrink below min_size
    return anchors, prob, deltas


@pytest.mark.parametrize("nms_iou", [0.7, 0.3])
def test_proposal_layer_matches_numpy_greedy_nms(rng, nms_iou):
    anchors, prob, deltas = _proposal_inputs(rng)
    layer = ProposalLayer(pre_nms_top_n=200, post_nms_top_n=60, nms_iou=nms_iou, min_size=4)
    out = layer(prob, deltas, anchors, image_shape=(160, 160))
    assert out["rois"].shape == (2, 60, 4) and out["valid"].shape == (2, 60)
    for b in range(2):
        ref_boxes, ref_scores = np_proposals(prob[b], deltas[b], anchors, 160, 160, 200, 60, nms_iou, 4)
        n = len(ref_boxes)
        # NMS did suppress something among the boxes that were ranked before the last kept one
        assert (prob[b] > ref_scores[-1]).sum() > n
        assert int(out["valid"].numpy()[b].sum()) == n
        np.testing.assert_allclose(out["rois"].numpy()[b, :n], ref_boxes, atol=1e-3)
        np.testing.assert_allclose(out["scores"].numpy()[b, :n], ref_scores, atol=1e-6)
        assert not out["rois"].numpy()[b, n:].any()
    # a larger post-NMS budget than survivors: padded rows are invalid
    wide = ProposalLayer(pre_nms_top_n=50, post_nms_top_n=80)(prob, deltas, anchors, image_shape=(160, 160))
    for b in range(2):
        n = len(np_proposals(prob[b], deltas[b], anchors, 160, 160, 50, 80, 0.7, 4)[0])
        assert int(wide["valid"].numpy()[b].sum()) == n < 80


def test_proposal_layer_drops_small_boxes():
    anchors = np.array([[0, 0, 16, 16], [40, 40, 56, 56]], np.float32)
    deltas = np.array([[[0, 0, -2.0, 0], [0, 0, 0, 0]]], np.float32)  # first: 2.2 px wide
    out = ProposalLayer(10, 2)(np.array([[0.9, 0.1]], np.float32), deltas, anchors, image_shape=(64, 64))
    np.testing.assert_array_equal(out["valid"].numpy(), [[True, False]])
    np.testing.assert_allclose(out["rois"].numpy()[0, 0], [40, 40, 56, 56])


def test_proposal_gradient_reaches_deltas(rng):
    anchors, prob, deltas = _proposal_inputs(rng, batch=1)
    d = tf.Variable(deltas)
    with tf.GradientTape() as tape:
        rois = ProposalLayer(100, 20)(prob, d, anchors, image_shape=(160, 160))["rois"]
        loss = tf.reduce_sum(rois)
    g = tape.gradient(loss, d).numpy()
    assert np.isfinite(g).all() and np.abs(g).sum() > 0


# ------------------------------------------------------------------------------------------
# proposal target
# ------------------------------------------------------------------------------------------
def _shift(box, dx, dy):
    return [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]


def _target_case():
    g1, g2 = [100, 100, 200, 200], [300, 300, 340, 340]
    fg = [_shift(g1, dx, 0) for dx in range(-20, 20)]  # 40 fg RoIs, IoU >= 0.67
    fg.append([100, 100, 200, 150])  # IoU exactly 0.5 -> foreground (code's >=)
    bg = [_shift(g1, 0, dy) for dy in range(55, 80)] + [_shift(g2, dx, 0) for dx in range(14, 33)]  # 44 bg
    bg.append([100, 100, 110, 200])  # IoU exactly 0.1 -> background
    ignored = [[500, 500, 560, 560], [0, 0, 30, 30], _shift(g1, 0, 95)]  # IoU < 0.1
    invalid = [g1, g1]  # would be foreground but roi_valid is False
    rois = np.array(fg + bg + ignored + invalid, np.float32)[None]
    valid = np.ones(rois.shape[:2], bool)
    valid[0, -2:] = False
    gt = np.array([[g1, g2, [0, 0, 0, 0]]], np.float32)
    cls = np.array([[3, 5, 0]], np.int32)
    return rois, valid, gt, cls, 41 + 2, 45  # fg candidates include the two gt boxes


def test_proposal_target_categories_counts_and_targets():
    rois, valid, gt, cls, n_fg, n_bg = _target_case()
    cand = np.concatenate([rois[0], gt[0, :2]])
    ov = np_iou(cand, gt[0, :2])
    max_ov, arg = ov.max(1), ov.argmax(1)
    cand_ok = np.concatenate([valid[0], [True, True]])
    assert ((max_ov >= 0.5) & cand_ok).sum() == n_fg
    assert ((max_ov >= 0.1) & (max_ov < 0.5) & cand_ok).sum() == n_bg

    for r, want_fg, want_bg in [(128, 32, 45), (16, 4, 12)]:
        out = ProposalTarget(rois_per_image=r)(rois, valid, gt, cls)
        assert out["rois"].shape == (1, r, 4) and out["targets"].shape == (1, r, 28)
        labels = out["labels"].numpy()[0]
        sv = out["sample_valid"].numpy()[0]
        boxes = out["rois"].numpy()[0]
        assert (labels > 0).sum() == want_fg and sv.sum() == want_fg + want_bg
        assert (labels[:want_fg] > 0).all() and (labels[want_fg:] == 0).all() and not sv[want_fg + want_bg :].any()
        assert not boxes[~sv].any()
        t = out["targets"].numpy()[0]
        w = out["target_weights"].numpy()[0]
        for i in range(want_fg + want_bg):
            j = int(np.flatnonzero((cand == boxes[i]).all(1))[0])  # which candidate was drawn
            assert cand_ok[j]
            if i < want_fg:
                assert max_ov[j] >= 0.5 and labels[i] == cls[0, arg[j]]
                c = labels[i]
                expect = np.zeros(28)
                expect[4 * c : 4 * c + 4] = np_encode(cand[j : j + 1], gt[0, arg[j]][None], STDS)[0]
                np.testing.assert_allclose(t[i], expect, atol=1e-4)
                np.testing.assert_array_equal(w[i], np.arange(28) // 4 == c)
            else:
                assert 0.1 <= max_ov[j] < 0.5
                assert not t[i].any() and not w[i].any()


def test_proposal_target_pads_when_few_candidates_and_without_gt():
    rois = np.array([[[100, 100, 200, 200], [100, 160, 200, 260], [0, 0, 5, 5]]], np.float32)
    valid = np.ones((1, 3), bool)
    gt = np.array([[[100, 100, 200, 200], [0, 0, 0, 0]]], np.float32)
    cls = np.array([[6, 0]], np.int32)
    out = ProposalTarget(rois_per_image=16)(rois, valid, gt, cls)
    np.testing.assert_array_equal(out["labels"].numpy()[0, :3], [6, 6, 0])  # roi 0, the gt, the bg
    assert out["sample_valid"].numpy()[0].sum() == 3 and out["rois"].shape == (1, 16, 4)
    # IoU exactly 0.5 is foreground (the code's >=), exactly 0.1 background
    edge = np.array([[[100, 100, 200, 150], [100, 100, 110, 200]]], np.float32)
    out = ProposalTarget(rois_per_image=4, fg_fraction=0.5)(edge, np.ones((1, 2), bool), gt, cls)
    np.testing.assert_array_equal(out["labels"].numpy()[0], [6, 6, 0, 0])
    np.testing.assert_array_equal(out["sample_valid"].numpy()[0], [True, True, True, False])
    np.testing.assert_allclose(out["rois"].numpy()[0, 2], [100, 100, 110, 200])
    empty = ProposalTarget(rois_per_image=16)(rois, valid, np.zeros_like(gt), np.zeros_like(cls))
    assert not empty["sample_valid"].numpy().any() and not empty["target_weights"].numpy().any()


def test_proposal_target_batched_seeded_and_gradient():
    rois, valid, gt, cls, _, _ = _target_case()
    rois2 = np.concatenate([rois, rois[:, ::-1]])
    valid2 = np.concatenate([valid, valid[:, ::-1]])
    gt2, cls2 = np.concatenate([gt, gt]), np.concatenate([cls, cls])
    a, b = ProposalTarget(seed=11), ProposalTarget(seed=11)
    oa, ob = a(rois2, valid2, gt2, cls2), b(rois2, valid2, gt2, cls2)
    for k in oa:
        np.testing.assert_array_equal(oa[k].numpy(), ob[k].numpy())
    assert (oa["labels"].numpy() > 0).sum(1).tolist() == [32, 32]
    assert (oa["rois"].numpy()[0] != a(rois2, valid2, gt2, cls2)["rois"].numpy()[0]).any()
    r = tf.Variable(rois2)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(a(r, valid2, gt2, cls2)["rois"])
    g = tape.gradient(loss, r).numpy()
    assert np.isfinite(g).all() and g.sum() > 0


# ------------------------------------------------------------------------------------------
# XLA, serialization, bad input
# ------------------------------------------------------------------------------------------
def test_layers_compile_with_xla_and_agree_with_eager(rng):
    anchors, prob, deltas = _proposal_inputs(rng)
    pl = ProposalLayer(200, 60)
    xla = tf.function(lambda p, d: pl(p, d, anchors, image_shape=(160, 160)), jit_compile=True)(prob, deltas)
    eager = pl(prob, deltas, anchors, image_shape=(160, 160))
    np.testing.assert_array_equal(xla["valid"].numpy(), eager["valid"].numpy())
    np.testing.assert_allclose(xla["rois"].numpy(), eager["rois"].numpy(), atol=1e-4)

    at = AnchorTarget(batch_per_image=64)
    gt = np.array([[[20, 20, 60, 60], [80, 30, 140, 100]]] * 2, np.float32)
    cls = np.array([[1, 2], [3, 0]], np.int32)
    fn = tf.function(lambda s: at(anchors, gt, cls, image_shape=(160, 160), seed=s), jit_compile=True)
    x_out, e_out = fn(tf.constant([4, 2])), at(anchors, gt, cls, image_shape=(160, 160), seed=[4, 2])
    np.testing.assert_array_equal(x_out["labels"].numpy(), e_out["labels"].numpy())
    np.testing.assert_allclose(x_out["targets"].numpy(), e_out["targets"].numpy(), atol=1e-5)
    before = int(at.draws.numpy())
    tf.function(lambda: at(anchors, gt, cls, image_shape=(160, 160)), jit_compile=True)()
    assert int(at.draws.numpy()) == before + 1  # the draw counter advances inside XLA too

    pt = ProposalTarget(rois_per_image=32)
    rois, valid = eager["rois"], eager["valid"]
    pfn = tf.function(lambda s: pt(rois, valid, gt, cls, seed=s), jit_compile=True)
    x_pt, e_pt = pfn(tf.constant([1, 2])), pt(rois, valid, gt, cls, seed=[1, 2])
    for k in x_pt:
        np.testing.assert_allclose(np.asarray(x_pt[k], float), np.asarray(e_pt[k], float), atol=1e-4)


def _tiny_model():
    feat = keras.Input((4, 4, 8), name="features")
    gtb = keras.Input((3, 4), name="gt_boxes")
    gtc = keras.Input((3,), dtype="int32", name="gt_classes")
    anchors = AnchorGenerator(stride=16, sizes=(16, 32))(feat)
    logits, deltas = RPNHead(filters=8, num_anchors=2)(feat)
    prob = keras.ops.softmax(logits)[..., 1]
    at = AnchorTarget(batch_per_image=8)(anchors, gtb, gtc, image_shape=(64, 64))
    props = ProposalLayer(20, 10)(prob, deltas, anchors, image_shape=(64, 64))
    pt = ProposalTarget(rois_per_image=8)(props["rois"], props["valid"], gtb, gtc)
    outputs = {"anchors_labels": at["labels"], "anchor_targets": at["targets"], "rois": props["rois"]}
    outputs.update({f"pt_{k}": v for k, v in pt.items()})
    return keras.Model([feat, gtb, gtc], outputs)


def test_layers_round_trip_through_model_save(tmp_path, rng):
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    x = [
        rng.normal(size=(2, 4, 4, 8)).astype(np.float32),
        np.array([[[16, 16, 40, 40], [8, 30, 30, 60], [0, 0, 0, 0]]] * 2, np.float32),
        np.array([[2, 5, 0], [1, 0, 0]], np.int32),
    ]
    path = tmp_path / "detection.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    got, want = again(x), model(x)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(np.asarray(got[k], float), np.asarray(want[k], float), atol=1e-5, err_msg=k)
    for cls in (AnchorGenerator, RPNHead, AnchorTarget, ProposalLayer, ProposalTarget):
        layer = next(la for la in model.layers if isinstance(la, cls))
        clone = cls.from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_inference_path_exports(tmp_path, rng):
    feat = keras.Input((4, 4, 8))
    anchors = AnchorGenerator(stride=16, sizes=(16, 32))(feat)
    logits, deltas = RPNHead(filters=8, num_anchors=2)(feat)
    props = ProposalLayer(20, 5)(keras.ops.softmax(logits)[..., 1], deltas, anchors, image_shape=(64, 64))
    model = keras.Model(feat, [props["rois"], props["scores"]])
    x = rng.normal(size=(1, 4, 4, 8)).astype(np.float32)
    model.export(str(tmp_path / "export"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "export"))
    out = served.serve(tf.constant(x))
    np.testing.assert_allclose(out[0].numpy(), model(x)[0].numpy(), atol=1e-5)


def test_bad_inputs_raise_clear_errors():
    anchors, gt, cls = _hand_case()
    with pytest.raises(ValueError, match="boxes_b"):
        box_iou(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="gt_boxes must have rank 3"):
        AnchorTarget()(anchors, gt[0], cls, image_shape=(64, 64))
    with pytest.raises(ValueError, match="gt_classes must have rank 2"):
        AnchorTarget()(anchors, gt, cls[0], image_shape=(64, 64))
    with pytest.raises(ValueError, match="image_shape is required"):
        AnchorTarget()(anchors, gt, cls)
    with pytest.raises(ValueError, match="image_shape must be"):
        AnchorTarget()(anchors, gt, cls, image_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="negative_iou <= positive_iou"):
        AnchorTarget(positive_iou=0.3, negative_iou=0.7)
    with pytest.raises(ValueError, match="fg_prob must have rank 2"):
        ProposalLayer(10, 5)(np.zeros((1, 32, 1)), np.zeros((1, 32, 4)), anchors, image_shape=(64, 64))
    with pytest.raises(ValueError, match="disagree on A"):
        ProposalLayer(10, 5)(np.zeros((1, 31)), np.zeros((1, 32, 4)), anchors, image_shape=(64, 64))
    with pytest.raises(ValueError, match="rois must have rank 3"):
        ProposalTarget()(np.zeros((5, 4)), np.ones((1, 5), bool), gt, cls)
    with pytest.raises(ValueError, match="features must have rank 4"):
        RPNHead(filters=4, num_anchors=2)(np.zeros((1, 4, 8), np.float32))
    with pytest.raises(ValueError, match="feature_map must have rank 4"):
        AnchorGenerator()(np.zeros((4, 4, 8), np.float32))
    # the same checks fire while a Functional model is being built
    with pytest.raises(ValueError, match="gt_boxes must have rank 3"):
        AnchorTarget()(keras.Input((4,)), keras.Input((4,)), keras.Input((3,)), image_shape=(64, 64))
    with pytest.raises(ValueError, match="deltas must have rank 3"):
        ProposalLayer(10, 5)(keras.Input((32,)), keras.Input((32,)), keras.Input((4,)), image_shape=(64, 64))
    with pytest.raises(ValueError, match="roi_valid must have rank 2"):
        ProposalTarget()(keras.Input((5, 4)), keras.Input((5, 1)), keras.Input((3, 4)), keras.Input((3,)))
    with pytest.raises(ValueError, match="feature_map must have rank 4"):
        AnchorGenerator()(keras.Input((4, 8)))
    with pytest.raises(ValueError, match="stds"):
        encode_boxes(np.ones((1, 4)), np.ones((1, 4)), stds=(1, 1, 0, 1))
