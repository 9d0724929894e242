"""CLARAN evaluation (Sec 5.2-5.5, 6.1.1): Eq. 12 AP, Eq. 14 mAP, Tables 6-9 helpers."""

import numpy as np
import pytest

from keras_astro.detection_metrics import (
    average_precision,
    box_iou,
    box_size_correlation,
    components_only,
    evaluate_detections,
    multi_source_subset,
    plot_pr_curves,
    unbatch_detections,
    unbatch_ground_truth,
    user_filter,
    user_filter_accuracy,
)

NAMES = ["1C_1P", "1C_2P", "1C_3P", "2C_2P", "2C_3P", "3C_3P"]


def det(boxes, classes, scores):
    return {
        "boxes": np.asarray(boxes, float).reshape(-1, 4),
        "classes": np.asarray(classes),
        "scores": np.asarray(scores),
    }


def gt(boxes, classes):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "classes": np.asarray(classes)}


G1, G2, G3 = [0, 0, 10, 10], [100, 0, 110, 10], [200, 0, 210, 10]
EMPTY = [300, 300, 310, 310]


def _fp_tp_tp_fp_tp():
    # one image, three class-1 sources; ranked detections: FP (nothing there), TP (G1), TP (G2),
    # FP (a second hit on G1: IoU 90/110 = 0.82 but G1 is taken), TP (G3)
    d = det([EMPTY, G1, G2, [1, 0, 11, 10], G3], [1] * 5, [0.9, 0.8, 0.7, 0.6, 0.5])
    return [d], [gt([G1, G2, G3], [1, 1, 1])]


def test_hand_computed_ap_eq12_and_voc_interpolation():
    dets, gts = _fp_tp_tp_fp_tp()
    res = evaluate_detections(dets, gts, NAMES)
    # P(k) = 0, 1/2, 2/3, 2/4, 3/5; tp = 0, 1, 1, 0, 1; |T| = 3
    # Eq. 12: AP = (1/2 + 2/3 + 3/5) / 3 = (15 + 20 + 18) / 30 / 3 = 53/90 = 0.58889
    assert res["ap"]["1C_1P"] == pytest.approx(53 / 90, abs=1e-12)
    recall, precision = res["pr"]["1C_1P"]
    np.testing.assert_allclose(recall, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(precision, [0, 1 / 2, 2 / 3, 2 / 4, 3 / 5])
    assert res["n_gt"]["1C_1P"] == 3 and res["n_det"]["1C_1P"] == 5 and res["n_tp"]["1C_1P"] == 3
    # the other five classes have no ground truth: NaN, excluded from the mAP (Eq. 14)
    assert np.isnan(res["ap"]["3C_3P"]) and res["map"] == pytest.approx(53 / 90)
    # VOC all-point interpolation (authors' code): the envelope lifts P at recall 1/3 to 2/3:
    # (2/3 + 2/3 + 3/5) / 3 = 58/90 = 0.64444
    voc = evaluate_detections(dets, gts, NAMES, interpolated=True)
    assert voc["ap"]["1C_1P"] == pytest.approx(58 / 90, abs=1e-12)
    assert average_precision(recall, precision) == pytest.approx(53 / 90)
    assert average_precision(recall, precision, interpolated=True) == pytest.approx(58 / 90)


def test_ranking_is_global_across_images():
    # image 1: TP at 0.95; image 0: FP at 0.9 (IoU 25/175 with its source), TP at 0.3
    dets = [det([[5, 5, 15, 15], G1], [2, 2], [0.9, 0.3]), det([G2], [2], [0.95])]
    gts = [gt([G1], [2]), gt([G2], [2])]
    res = evaluate_detections(dets, gts, NAMES)
    # ranked TP, FP, TP with |T| = 2: AP = (1/1 + 2/3) / 2 = 5/6
    assert res["ap"]["1C_2P"] == pytest.approx(5 / 6)
    assert res["map"] == pytest.approx(5 / 6)


def test_iou_exactly_one_half_is_not_a_match():
    gts = [gt([G1], [1])]
    half = [det([[0, 0, 10, 5]], [1], [0.9])]  # IoU = 50 / 100 = 0.5
    assert box_iou(half[0]["boxes"], gts[0]["boxes"])[0, 0] == 0.5
    assert evaluate_detections(half, gts, NAMES)["ap"]["1C_1P"] == 0.0
    above = [det([[0, 0, 10, 5.1]], [1], [0.9])]  # IoU = 0.51
    assert evaluate_detections(above, gts, NAMES)["ap"]["1C_1P"] == 1.0


def test_duplicates_no_detections_perfect_and_wrong_class():
    gts = [gt([G1, G2], [1, 4]), gt([G3], [6])]
    perfect = [det([G1, G2], [1, 4], [0.99, 0.8]), det([G3], [6], [0.7])]
    res = evaluate_detections(perfect, gts, NAMES)
    assert res["ap"] == pytest.approx(
        {"1C_1P": 1.0, "1C_2P": np.nan, "1C_3P": np.nan, "2C_2P": 1.0, "2C_3P": np.nan, "3C_3P": 1.0}, nan_ok=True
    )
    assert res["map"] == 1.0
    # an exact duplicate of a found source ranks after it: TP, FP -> AP still 1 (P(1) = 1)
    dup = [det([G1, G1, G2], [1, 1, 4], [0.99, 0.98, 0.8]), det([G3], [6], [0.7])]
    r = evaluate_detections(dup, gts, NAMES)
    assert r["ap"]["1C_1P"] == 1.0 and r["n_tp"]["1C_1P"] == 1 and r["n_det"]["1C_1P"] == 2
    # a wrong-class detection at the right place is an FP of its class and a miss of the other
    wrong = [det([G1, G2], [1, 5], [0.99, 0.8]), det([G3], [6], [0.7])]
    r = evaluate_detections(wrong, gts, NAMES)
    assert r["ap"]["2C_2P"] == 0.0 and np.isnan(r["ap"]["2C_3P"]) and r["n_det"]["2C_3P"] == 1
    assert r["map"] == pytest.approx((1 + 0 + 1) / 3)
    # no detections at all: AP 0 for every class with ground truth
    none = [det(np.zeros((0, 4)), [], []), det(np.zeros((0, 4)), [], [])]
    r = evaluate_detections(none, gts, NAMES)
    assert r["ap"]["1C_1P"] == 0.0 and r["map"] == 0.0
    assert len(r["pr"]["1C_1P"][0]) == 0


def test_padding_class_zero_is_ignored():
    gts = [gt([G1, [0, 0, 0, 0]], [1, 0])]
    dets = [det([G1, [0, 0, 0, 0]], [1, 0], [0.9, 0.99])]
    res = evaluate_detections(dets, gts, NAMES)
    assert res["n_gt"]["1C_1P"] == 1 and res["ap"]["1C_1P"] == 1.0


def _voc_reference(dets, gts, cls, thr=0.5):
    """Brute force: one global ranked pass over all detections of ``cls`` (VOC style)."""
    rows = [(s, i, b) for i, d in enumerate(dets) for b, c, s in zip(d["boxes"], d["classes"], d["scores"]) if c == cls]
    rows.sort(key=lambda t: -t[0])
    taken = {i: np.zeros(int(np.sum(g["classes"] == cls)), bool) for i, g in enumerate(gts)}
    total = sum(len(v) for v in taken.values())
    tp = []
    for _, i, b in rows:
        g = gts[i]["boxes"][gts[i]["classes"] == cls]
        best, jbest = -1.0, -1
        for j, gb in enumerate(g):
            iw = max(0.0, min(b[2], gb[2]) - max(b[0], gb[0]))
            ih = max(0.0, min(b[3], gb[3]) - max(b[1], gb[1]))
            inter = iw * ih
            iou = inter / ((b[2] - b[0]) * (b[3] - b[1]) + (gb[2] - gb[0]) * (gb[3] - gb[1]) - inter)
            if iou > best:
                best, jbest = iou, j
        ok = best > thr and not taken[i][jbest]
        if ok:
            taken[i][jbest] = True
        tp.append(ok)
    hits = 0
    ap = 0.0
    for k, t in enumerate(tp, start=1):
        hits += t
        ap += t * hits / k
    return ap / total


def test_random_sets_match_a_brute_force_voc_pass():
    rng = np.random.default_rng(7)
    dets, gts = [], []
    for _ in range(12):
        k = rng.integers(1, 4)
        xy = rng.uniform(0, 500, size=(k, 2))
        g = np.concatenate([xy, xy + rng.uniform(20, 80, size=(k, 2))], axis=1)
        gc = rng.integers(1, 3, size=k)
        gts.append(gt(g, gc))
        n = rng.integers(0, 6)
        src = g[rng.integers(0, k, size=n)] + rng.normal(0, 8, size=(n, 4))
        src[:, 2:] = np.maximum(src[:, 2:], src[:, :2] + 1)
        dets.append(det(src, rng.integers(1, 3, size=n), rng.uniform(0, 1, size=n)))
    res = evaluate_detections(dets, gts, NAMES[:2])
    for cls, name in enumerate(NAMES[:2], start=1):
        assert res["ap"][name] == pytest.approx(_voc_reference(dets, gts, cls), abs=1e-12)
        assert 0 < res["ap"][name] < 1


def test_components_only_merges_peaks():
    # the source is 1C_2P; CLARAN says 1C_1P: a miss in six classes, a hit in three (Table 6)
    dets = [det([G1, G2], [1, 6], [0.9, 0.8])]
    gts = [gt([G1, G2], [2, 6])]
    six = evaluate_detections(dets, gts, NAMES)
    assert six["ap"]["1C_2P"] == 0.0 and six["map"] == pytest.approx(0.5)
    d3, g3, names3 = components_only(dets, gts, NAMES)
    assert names3 == ["1C", "2C", "3C"]
    np.testing.assert_array_equal(d3[0]["classes"], [1, 3])
    np.testing.assert_array_equal(g3[0]["classes"], [1, 3])
    three = evaluate_detections(d3, g3, names3)
    assert three["ap"] == pytest.approx({"1C": 1.0, "2C": np.nan, "3C": 1.0}, nan_ok=True)
    assert three["map"] == 1.0
    np.testing.assert_array_equal(dets[0]["classes"], [1, 6])  # inputs untouched


def test_multi_source_subset_keeps_subjects_with_two_or_more_sources():
    gts = [gt([G1], [1]), gt([G1, G2], [1, 4]), gt([G1, G2, G3], [1, 2, 6]), gt([G1, [0, 0, 0, 0]], [1, 0])]
    dets = [det([G1], [1], [0.9]) for _ in gts]
    d, g, idx = multi_source_subset(dets, gts, return_indices=True)
    np.testing.assert_array_equal(idx, [1, 2])  # padding rows do not count as sources
    assert len(d) == len(g) == 2 and sum(len(x["classes"]) for x in g) == 5
    assert len(multi_source_subset(dets, gts, min_sources=3)[1]) == 1


def test_box_size_correlation_uses_matched_pairs_only():
    widths_gt, widths_pred = [10, 20, 30], [11, 19, 30]
    gts = [gt([[0, 0, w, w]], [1]) for w in widths_gt]
    dets = [det([[0, 0, p, p]], [1], [0.9]) for p in widths_pred]
    dets[0] = det([[0, 0, 11, 11], [200, 200, 400, 400]], [1, 1], [0.9, 0.8])  # the FP is ignored
    res = box_size_correlation(dets, gts, NAMES)
    # gt deviations (-10, 0, 10), predicted (-9, -1, 10): r = 190 / sqrt(200 * 182) = 0.995859
    assert res["r"]["1C_1P"] == pytest.approx(190 / np.sqrt(200 * 182), abs=1e-12)
    assert res["n"]["1C_1P"] == 3 and np.isnan(res["r"]["2C_2P"]) and res["n"]["2C_2P"] == 0
    np.testing.assert_allclose(res["pairs"]["1C_1P"][1], widths_gt)
    assert res["overall"] == pytest.approx(res["r"]["1C_1P"])


def test_user_filter_rules():
    fields = [
        det([G1, G2, G3], [1, 2, 3], [0.5, 0.9, 0.85]),
        det([G1, G2], [4, 5], [0.3, 0.6]),  # nothing reaches 0.8: keep the best
        det(np.zeros((0, 4)), [], []),
    ]
    one = user_filter(fields, threshold=0.8)
    np.testing.assert_array_equal(one[0]["classes"], [2])
    np.testing.assert_array_equal(one[1]["classes"], [5])
    assert len(one[2]["classes"]) == 0
    many = user_filter(fields, one_source_per_field=False)  # default threshold 0.8 (claran.yaml)
    np.testing.assert_array_equal(many[0]["classes"], [2, 3])
    np.testing.assert_array_equal(many[1]["classes"], [5])
    np.testing.assert_allclose(fields[0]["scores"], [0.5, 0.9, 0.85])  # inputs untouched


def test_user_filter_accuracy_is_the_papers_field_score():
    gts = [gt([G1], [1]), gt([G1, G2], [1, 4]), gt([G1], [2]), gt(np.zeros((0, 4)), [])]
    dets = [
        det([G1, G2], [1, 3], [0.95, 0.5]),  # top: correct -> 1
        det([G2, G1], [4, 1], [0.9, 0.85]),  # one source kept, two in the field -> 1/2
        det([G1], [3], [0.99]),  # wrong class -> 0
        det([G1], [1], [0.9]),  # no ground truth: skipped
    ]
    res = user_filter_accuracy(user_filter(dets), gts, NAMES)
    np.testing.assert_allclose(res["field_scores"][:3], [1.0, 0.5, 0.0])
    assert np.isnan(res["field_scores"][3])
    assert res["total_score"] == 1.5 and res["n_fields"] == 3 and res["n_skipped"] == 1
    assert res["accuracy"] == pytest.approx(0.5)
    # without the one-source assumption both sources of field 1 are kept and found
    res2 = user_filter_accuracy(user_filter(dets, one_source_per_field=False), gts, NAMES)
    np.testing.assert_allclose(res2["field_scores"][:3], [1.0, 1.0, 0.0])


def test_unbatch_helpers():
    boxes = np.zeros((2, 3, 4))
    boxes[0, 0] = G1
    boxes[1, :2] = [G2, G3]
    classes = np.array([[1, 0, 0], [4, 6, 0]])
    scores = np.array([[0.9, 0, 0], [0.8, 0.7, 0]])
    d = unbatch_detections(boxes, classes, scores, num_detections=[1, 2])
    assert [len(x["classes"]) for x in d] == [1, 2]
    g = unbatch_ground_truth(boxes, classes)
    assert evaluate_detections(d, g, NAMES)["map"] == 1.0
    with pytest.raises(ValueError, match="boxes must be"):
        unbatch_detections(boxes[..., :3], classes, scores)


def test_plot_pr_curves_writes_a_png(tmp_path):
    dets, gts = _fp_tp_tp_fp_tp()
    res = evaluate_detections(dets, gts, NAMES)
    path = plot_pr_curves(res, tmp_path / "figs" / "pr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(ValueError, match="evaluate_detections"):
        plot_pr_curves({"ap": {}}, tmp_path / "x.png")


def test_plot_pr_curves_with_a_class_that_was_never_detected(tmp_path):
    gts = [{"boxes": np.array([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "classes": np.array([1, 2])}]
    dets = [{"boxes": np.array([[0.0, 0, 10, 10]]), "classes": np.array([1]), "scores": np.array([0.9])}]
    res = evaluate_detections(dets, gts, NAMES)
    assert res["ap"][NAMES[1]] == 0.0
    assert plot_pr_curves(res, tmp_path / "pr.png").stat().st_size > 1000


def test_bad_inputs_name_the_problem():
    dets, gts = _fp_tp_tp_fp_tp()
    with pytest.raises(ValueError, match="detections has 1 images but ground_truth has 2"):
        evaluate_detections(dets, gts * 2, NAMES)
    with pytest.raises(ValueError, match=r"detections\[0\]: 'boxes' must have shape \(n, 4\)"):
        evaluate_detections([{"boxes": np.zeros((5, 5)), "classes": [1] * 5, "scores": [0.5] * 5}], gts, NAMES)
    with pytest.raises(ValueError, match=r"ground_truth\[0\]: 'classes' must have shape \(3,\)"):
        evaluate_detections(dets, [gt([G1, G2, G3], [1, 1])], NAMES)
    with pytest.raises(ValueError, match="'scores' must have shape"):
        evaluate_detections([det([G1], [1], [0.5, 0.4])], [gt([G1], [1])], NAMES)
    with pytest.raises(ValueError, match=r"'classes' must be in 0..6"):
        evaluate_detections([det([G1], [7], [0.5])], [gt([G1], [1])], NAMES)
    with pytest.raises(ValueError, match="x2 >= x1"):
        evaluate_detections([det([[10, 0, 0, 10]], [1], [0.5])], [gt([G1], [1])], NAMES)
    with pytest.raises(ValueError, match="missing"):
        evaluate_detections([{"boxes": np.zeros((0, 4)), "classes": []}], [gt([G1], [1])], NAMES)
    with pytest.raises(ValueError, match="equal length"):
        average_precision([0.5, 1.0], [1.0])
    with pytest.raises(ValueError, match="non-decreasing"):
        average_precision([0.5, 0.2], [1.0, 1.0])
    with pytest.raises(ValueError, match="mapping has no entry"):
        components_only(dets, gts, NAMES, mapping={"1C_1P": "1C"})
