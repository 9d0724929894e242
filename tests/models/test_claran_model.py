"""CLARAN (Wu et al. 2019, Sec 4-5, Table 4): architecture, losses, training, export, learnability."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_astro.models.claran import (
    PAPER_PARAMETER_COUNT,
    ClaranConfig,
    ClaranDetectionOutput,
    ClaranDetector,
    build_claran,
    build_vgg16_backbone,
    compile_claran,
    inference_model,
    layer_table,
    load_vgg16_weights,
    paper_parameter_count,
)

# Table 4, last column (the paper's reference, typed in from the table)
TABLE4_PARAMS = {
    "conv1_1": 1_728, "conv1_2": 36_864, "conv2_1": 73_728, "conv2_2": 147_456,
    "conv3_1": 294_912, "conv3_2": 589_824, "conv3_3": 589_824,
    "conv4_1": 1_179_648, "conv4_2": 2_359_296, "conv4_3": 2_359_296,
    "conv5_1": 2_359_296, "conv5_2": 2_359_296, "conv5_3": 2_359_296,
    "rpn_conv": 2_359_296, "rpn_cls": 6_144, "rpn_reg": 12_288,
    "fc6": 102_764_544, "fc7": 16_781_312, "cls_score": 28_679, "bbox_pred": 114_716,
}  # fmt: skip
TABLE4_OUTPUT = {"conv1_2": (600, 600, 64), "pool1": (300, 300, 64), "conv2_2": (300, 300, 128),
                 "pool2": (150, 150, 128), "conv3_3": (150, 150, 256), "pool3": (75, 75, 256),
                 "conv4_3": (75, 75, 512), "pool4": (37, 37, 512), "conv5_3": (37, 37, 512)}  # fmt: skip
FROZEN = ("conv1_1", "conv1_2", "conv2_1", "conv2_2")


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def paper():
    """The paper's 137M-parameter detector, built but never run."""
    return build_claran(ClaranConfig.paper())


def _synthetic_subjects(n=6, size=128, seed=0, amp=120.0):
    """Zero-centred (n, size, size, 3) images with 1-2 bright sources of classes 1-3.

    Class 1: a disc 20 px across; class 2: a 36-px square; class 3: a 48 × 20 px ellipse. Boxes
    are the sources' exact extents ``[x1, y1, x2, y2]`` (continuous pixels).
    """
    rng = np.random.default_rng(seed)
    imgs = np.zeros((n, size, size, 3), np.float32)
    boxes = np.zeros((n, 2, 4), np.float32)
    cls = np.zeros((n, 2), np.int32)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    sizes = {1: (20, 20), 2: (36, 36), 3: (48, 20)}
    for i in range(n):
        placed = []
        for j in range(1 + i % 2):
            c = int(rng.integers(1, 4))
            w, h = sizes[c]
            for _ in range(100):
                x1, y1 = rng.uniform(4, size - w - 4), rng.uniform(4, size - h - 4)
                b = np.array([x1, y1, x1 + w, y1 + h])
                if all(b[0] > p[2] + 4 or b[2] < p[0] - 4 or b[1] > p[3] + 4 or b[3] < p[1] - 4 for p in placed):
                    break
            placed.append(b)
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            if c == 2:
                m = (np.abs(xx - cx) <= w / 2) & (np.abs(yy - cy) <= h / 2)
            else:
                m = ((xx - cx) / (w / 2)) ** 2 + ((yy - cy) / (h / 2)) ** 2 <= 1
            imgs[i][m] = amp
            boxes[i, j], cls[i, j] = b, c
    imgs += rng.normal(scale=0.05 * amp, size=imgs.shape).astype(np.float32)
    return imgs - imgs.mean(), boxes, cls


@pytest.fixture(scope="module")
def subjects():
    return _synthetic_subjects()


@pytest.fixture(scope="module")
def trained(subjects):
    """The small preset trained for 200 steps (batches of 2) on the six synthetic subjects."""
    imgs, boxes, cls = subjects
    keras.utils.set_random_seed(0)
    det = compile_claran(build_claran(ClaranConfig.small()))
    ds = tf.data.Dataset.from_tensor_slices((imgs, boxes, cls)).repeat().batch(2)
    hist = det.fit(ds, steps_per_epoch=50, epochs=4, verbose=0, shuffle=False).history
    return det, hist


@pytest.fixture(scope="module")
def small(trained):
    return trained[0]


# ---------------------------------------------------------------------------------- numpy refs


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _mean_ap(dets, gts, thr=0.5):
    """Eq. 12 / Eq. 14 with greedy matching by score (IoU > thr, duplicates are false positives)."""
    aps = []
    for c in sorted({int(c) for _, gc in gts for c in gc}):
        n_gt = sum(int((gc == c).sum()) for _, gc in gts)
        ranked = sorted(
            ((s, i, b) for i, (bb, cc, ss) in enumerate(dets) for b, k, s in zip(bb, cc, ss) if k == c),
            key=lambda t: -t[0],
        )
        used = [np.zeros(len(gc), bool) for _, gc in gts]
        tp = []
        for _, i, b in ranked:
            gb, gc = gts[i]
            ious = [_iou(b, g) if k == c else -1.0 for g, k in zip(gb, gc)]
            j = int(np.argmax(ious)) if ious else -1
            hit = j >= 0 and ious[j] > thr and not used[i][j]
            if hit:
                used[i][j] = True
            tp.append(float(hit))
        tp = np.array(tp)
        precision = np.cumsum(tp) / np.arange(1, len(tp) + 1) if len(tp) else tp
        aps.append(float((precision * tp).sum() / n_gt))
    return float(np.mean(aps))


def _decode_np(roi, d, stds):
    d = d * np.asarray(stds)
    w, h = roi[2] - roi[0], roi[3] - roi[1]
    cx, cy = roi[0] + w / 2 + d[0] * w, roi[1] + h / 2 + d[1] * h
    w2, h2 = w * np.exp(min(d[2], np.log(1000 / 16))), h * np.exp(min(d[3], np.log(1000 / 16)))
    return np.array([cx - w2 / 2, cy - h2 / 2, cx + w2 / 2, cy + h2 / 2])


def _postprocess_np(rois, valid, logits, deltas, nc, size, stds, thr, nms_iou):
    """Faster R-CNN's test.py logic, per image: per-class decode, clip, threshold, greedy NMS."""
    out = []
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    for c in range(1, nc):
        cand = []
        for r in range(len(rois)):
            if not valid[r] or p[r, c] <= thr:
                continue
            box = np.clip(_decode_np(rois[r], deltas[r, 4 * c : 4 * c + 4], stds), 0, size)
            cand.append((p[r, c], box))
        cand.sort(key=lambda t: -t[0])
        keep = []
        for s, b in cand:
            if all(_iou(b, kb) <= nms_iou for _, kb in keep):
                keep.append((s, b))
        out += [(s, c, b) for s, b in keep]
    return sorted(out, key=lambda t: -t[0])


# ---------------------------------------------------------------------------------- Table 4


def test_paper_parameter_count_is_table4s(paper):
    assert paper_parameter_count(paper) == PAPER_PARAMETER_COUNT == sum(TABLE4_PARAMS.values()) == 136_777_443
    conv_biases = (2 * 64 + 2 * 128 + 3 * 256 + 3 * 512 + 3 * 512) + (512 + 12 + 24)
    assert paper.count_params() == PAPER_PARAMETER_COUNT + conv_biases + 2  # + conv biases + 2 draw counters


def test_layer_table_matches_table4(paper):
    rows = layer_table(paper)
    by_name = {r["name"]: r for r in rows}
    for name, n in TABLE4_PARAMS.items():
        assert by_name[name]["params"] == n, name
    for name, shape in TABLE4_OUTPUT.items():
        assert by_name[name]["output"] == shape, name
    assert by_name["conv1_1"]["filter"] == (3, 3, 3, 64) and by_name["conv5_3"]["filter"] == (3, 3, 512, 512)
    assert by_name["rpn_cls"]["filter"] == (1, 1, 512, 12) and by_name["rpn_reg"]["filter"] == (1, 1, 512, 24)
    assert by_name["fc6"]["filter"] == (25_088, 4096) and by_name["bbox_pred"]["output"] == (128, 28)
    assert by_name["st_roi_pool"]["output"] == (128, 7, 7, 512)
    assert [r["layer"] for r in rows if r["name"].startswith(("conv", "pool"))] == list(range(1, 18))
    assert sum(r["params"] for r in rows) == PAPER_PARAMETER_COUNT
    assert paper.backbone.compute_output_shape((1, 600, 600, 3)) == (1, 37, 37, 512)
    logits, deltas = paper.rpn_head.compute_output_shape((1, 37, 37, 512))
    assert logits == (1, 6 * 37 * 37, 2) and deltas == (1, 8_214, 4)


def test_first_four_convolutions_are_frozen(paper):
    convs = [ly for ly in paper.backbone.layers if isinstance(ly, keras.layers.Conv2D)]
    assert [c.name for c in convs if not c.trainable] == list(FROZEN)
    trainable = {v.path for v in paper.trainable_weights}
    assert not any(n in p.split("/") for p in trainable for n in FROZEN)
    assert any("conv3_1" in p.split("/") for p in trainable) and any("rpn_conv" in p.split("/") for p in trainable)
    # Fig. 8's "low-level kernels": 259,776 kernel weights (its caption prints 259,716)
    assert sum(int(np.prod(c.kernel.shape)) for c in convs if not c.trainable) == 259_776


def test_config_presets_and_validation():
    p, s = ClaranConfig.paper(), ClaranConfig.small()
    assert p.input_size == 600 and p.feature_size == 37 and p.num_anchors == 6 and p.detections_per_image == 30
    assert p.anchor_sizes == (16, 32, 64, 128, 256, 512) and p.bbox_stds == (0.1, 0.1, 0.2, 0.2)
    assert (p.rois_per_image, p.post_nms_top_n_train, p.post_nms_top_n_test) == (128, 2000, 5)
    assert s.input_size == 128 and s.feature_size == 8 and s.backbone_filters == (8, 16, 32, 64, 64)
    assert ClaranConfig.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="frozen_layers"):
        ClaranConfig(frozen_layers=("conv9_9",))
    with pytest.raises(ValueError, match="rpn_reg_normalizer"):
        ClaranConfig(rpn_reg_normalizer="all")
    with pytest.raises(ValueError, match="unknown ClaranConfig"):
        ClaranConfig.from_dict({"bogus": 1})


# ---------------------------------------------------------------------------------- VGG weights


def test_load_vgg16_weights_from_local_files(paper, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.h5.*No weights can be downloaded"):
        load_vgg16_weights(paper, tmp_path / "no_such.h5")
    keras.utils.set_random_seed(7)
    vgg = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    ref = {ly.name: [w.copy() for w in ly.get_weights()] for ly in vgg.layers if ly.weights}
    # Keras 3 .weights.h5 (what keras.applications.VGG16(...).save_weights writes)
    path = tmp_path / "vgg16_notop.weights.h5"
    vgg.save_weights(path)
    loaded = load_vgg16_weights(paper, path)
    assert loaded[0] == "conv1_1" and len(loaded) == 13
    np.testing.assert_array_equal(paper.backbone.get_layer("conv5_3").kernel.numpy(), ref["block5_conv3"][0])
    np.testing.assert_array_equal(paper.backbone.get_layer("conv1_1").bias.numpy(), ref["block1_conv1"][1])
    # legacy HDF5 layout of keras-applications' vgg16_..._notop.h5, and the authors' .npy dict
    import h5py

    legacy = tmp_path / "legacy_notop.h5"
    with h5py.File(legacy, "w") as fh:
        for name, (k, b) in ref.items():
            g = fh.create_group(name).create_group(name)
            g["kernel:0"], g["bias:0"] = k + 1.0, b
    load_vgg16_weights(paper.backbone, legacy)
    np.testing.assert_array_equal(paper.backbone.get_layer("conv3_2").kernel.numpy(), ref["block3_conv2"][0] + 1.0)
    npy = tmp_path / "VGG_imagenet.npy"
    table = {f"conv{n[5]}_{n[-1]}": {"weights": k - 1.0, "biases": b} for n, (k, b) in ref.items()}
    np.save(npy, {**table, "fc6": {"weights": np.zeros(1)}}, allow_pickle=True)
    load_vgg16_weights(paper, npy)
    np.testing.assert_array_equal(paper.backbone.get_layer("conv4_1").kernel.numpy(), ref["block4_conv1"][0] - 1.0)
    with pytest.raises(ValueError, match="conv1_1 kernel has shape"):
        load_vgg16_weights(build_vgg16_backbone(ClaranConfig.small()), path)


# ---------------------------------------------------------------------------------- losses


def test_rpn_and_rcnn_losses_match_numpy(small, rng):
    b, a = 2, 40
    logits = rng.normal(size=(b, a, 2)).astype("float32")
    deltas = rng.normal(scale=0.3, size=(b, a, 4)).astype("float32")
    labels = rng.choice([-1, 0, 1], size=(b, a), p=[0.5, 0.3, 0.2]).astype("int32")
    targets = rng.normal(scale=0.3, size=(b, a, 4)).astype("float32")
    inside = rng.random((b, a)) < 0.8
    at = {"labels": labels, "targets": targets, "inside": inside}
    cls, reg = (float(v) for v in small.rpn_losses(logits, deltas, at))
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    s = labels >= 0
    np.testing.assert_allclose(
        cls, -np.take_along_axis(logp, np.maximum(labels, 0)[..., None], -1)[..., 0][s].mean(), rtol=1e-5
    )
    x = deltas - targets
    sl1 = np.where(np.abs(x) < 1 / 9, 4.5 * x**2, np.abs(x) - 0.5 / 9)  # sigma = 3
    np.testing.assert_allclose(reg, (sl1 * (labels == 1)[..., None]).sum() / s.sum(), rtol=1e-5)
    inside_cfg = ClaranDetector(ClaranConfig.small(rpn_reg_normalizer="inside"))
    np.testing.assert_allclose(
        float(inside_cfg.rpn_losses(logits, deltas, at)[1]),
        (sl1 * (labels == 1)[..., None]).sum() / inside.sum(),
        rtol=1e-5,
    )

    # Eq. 9 / Eq. 10 on hand-made RoI targets
    cfg, r, nc = small.config, 6, small.config.num_classes
    feats = rng.normal(size=(1, cfg.feature_size, cfg.feature_size, cfg.backbone_filters[-1])).astype("float32")
    rois = np.array(
        [[[8, 8, 40, 40], [30, 20, 90, 60], [0, 0, 128, 128], [50, 50, 70, 70], [10, 60, 50, 120], [0, 0, 0, 0]]],
        "float32",
    )
    lab = np.array([[2, 0, 5, 0, 1, 0]], "int32")
    valid = np.array([[True, True, True, True, True, False]])
    tgt = np.zeros((1, r, 4 * nc), "float32")
    w = np.zeros_like(tgt)
    for i in range(r):
        if lab[0, i] > 0:
            tgt[0, i, 4 * lab[0, i] : 4 * lab[0, i] + 4] = rng.normal(size=4)
            w[0, i, 4 * lab[0, i] : 4 * lab[0, i] + 4] = 1.0
    pt = {"labels": lab, "targets": tgt, "target_weights": w, "sample_valid": valid}
    cls, reg = (float(v) for v in small.rcnn_losses(feats, rois, pt))
    score, pred = (np.asarray(t) for t in small.head(small.roi_pool([feats, rois])))
    z = score[0] - score[0].max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    np.testing.assert_allclose(cls, -logp[np.arange(r), lab[0]][valid[0]].mean(), rtol=1e-5)
    x = pred[0] - tgt[0]
    sl1 = np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)  # sigma = 1
    np.testing.assert_allclose(reg, (sl1 * w[0]).sum() / valid.sum(), rtol=1e-5)


def test_gradient_reaches_roi_coordinates(small, subjects, rng):
    cfg = small.config
    feats = tf.constant(
        rng.normal(size=(1, cfg.feature_size, cfg.feature_size, cfg.backbone_filters[-1])).astype("float32")
    )
    rois = tf.Variable([[[8.0, 8.0, 40.0, 44.0], [30.0, 20.0, 90.0, 60.0]]])
    pt = {
        "labels": np.array([[1, 0]], "int32"),
        "targets": np.tile(np.eye(1, 4 * cfg.num_classes, 4, dtype="float32"), (1, 2, 1)),
        "target_weights": np.tile(np.eye(1, 4 * cfg.num_classes, 4, dtype="float32"), (1, 2, 1)),
        "sample_valid": np.array([[True, True]]),
    }
    with tf.GradientTape() as tape:
        loss = tf.add_n(small.rcnn_losses(feats, rois, pt))
    g = tape.gradient(loss, rois).numpy()
    assert np.isfinite(g).all() and (np.abs(g) > 0).all()
    # where it goes next: into the RPN deltas only with roi_gradient_to_rpn=True
    imgs, boxes, cls = (t[:1] for t in subjects)
    for flag in (False, True):
        det = ClaranDetector(ClaranConfig.small(roi_gradient_to_rpn=flag))
        with tf.GradientTape() as tape:
            losses = det.compute_losses(imgs, boxes, cls, training=False)
            rcnn = losses["rcnn_cls_loss"] + losses["rcnn_reg_loss"]
        g = tape.gradient(rcnn, det.rpn_head.rpn_reg.kernel)
        assert (g is not None and float(tf.reduce_max(tf.abs(g))) > 0) == flag


# ---------------------------------------------------------------------------------- training


def _write_rgz_folder(root, imgs_u8, boxes, classes):
    """A two-subject data set in the layout ``keras-astro rgz build`` writes (132 × 132 PNGs)."""
    names = ["1C_1P", "1C_2P", "1C_3P", "2C_2P", "2C_3P", "3C_3P"]
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    subjects = []
    for i, img in enumerate(imgs_u8):
        name = f"FIRSTJ0000{i}"
        (root / "images" / f"{name}.png").write_bytes(tf.io.encode_png(img).numpy())
        keep = classes[i] > 0
        ann = {
            "boxes": boxes[i][keep].tolist(),
            "labels": [names[c - 1] for c in classes[i][keep]],
            "width": 132,
            "height": 132,
        }
        (root / "annotations" / f"{name}.json").write_text(json.dumps(ann))
        subjects.append(name)
    (root / "train.txt").write_text("\n".join(subjects) + "\n")


def test_one_train_step_on_the_rgz_pipeline(tmp_path, rng):
    from keras_astro.pipelines.rgz import rgz_dataset

    imgs = rng.integers(0, 60, size=(2, 132, 132, 3)).astype("uint8")
    imgs[0, 30:60, 40:70] = 250
    imgs[1, 70:110, 10:40] = 250
    boxes = np.array([[[40, 30, 70, 60], [0, 0, 0, 0]], [[10, 70, 40, 110], [80, 10, 100, 30]]], "float32")
    classes = np.array([[1, 0], [4, 2]], "int32")
    _write_rgz_folder(tmp_path, imgs, boxes, classes)
    ds = rgz_dataset(tmp_path, "train", image_size=128, batch_size=1)

    keras.utils.set_random_seed(3)
    det = compile_claran(build_claran(ClaranConfig.small()))
    before = {v.path: v.numpy().copy() for v in det.weights}
    hist = det.fit(ds.take(1), epochs=1, verbose=0, shuffle=False).history
    assert set(hist) == {"loss", "rpn_cls_loss", "rpn_reg_loss", "rcnn_cls_loss", "rcnn_reg_loss", "l2_loss"}
    assert all(np.isfinite(v[0]) for v in hist.values())
    parts = sum(hist[k][0] for k in ("rpn_cls_loss", "rpn_reg_loss", "rcnn_cls_loss", "rcnn_reg_loss"))
    np.testing.assert_allclose(hist["loss"][0], parts, rtol=1e-5)
    after = {v.path: v.numpy() for v in det.weights}
    for v in det.backbone.weights:
        frozen = any(n in v.path.split("/") for n in FROZEN)
        assert np.array_equal(before[v.path], after[v.path]) == frozen, v.path
    for layer in ("rpn_conv", "rpn_cls", "fc6", "cls_score"):
        assert any(not np.array_equal(before[p], after[p]) for p in after if layer in p.split("/")), layer
    assert int(det.anchor_target.draws.numpy()) == 1 and int(det.proposal_target.draws.numpy()) == 1
    res = det.evaluate(ds.take(1), verbose=0, return_dict=True)
    assert all(np.isfinite(v) for v in res.values()) and "rcnn_reg_loss" in res


@pytest.mark.skipif(
    not os.environ.get("KERAS_ASTRO_SLOW_TESTS"), reason="XLA-compiling the train step takes 20-45 s on 2 CPU cores"
)
def test_train_step_under_jit_compile(subjects):
    imgs, boxes, cls = (t[:2] for t in subjects)
    keras.utils.set_random_seed(4)
    det = compile_claran(build_claran(ClaranConfig.small()), jit_compile=True)
    hist = det.fit(
        tf.data.Dataset.from_tensors((imgs, boxes, cls)).repeat(), steps_per_epoch=2, verbose=0, shuffle=False
    )
    assert all(np.isfinite(v[0]) for v in hist.history.values())


# ---------------------------------------------------------------------------------- inference


def test_inference_under_jit_compile_matches(small, subjects):
    imgs = subjects[0][:2]
    inf = inference_model(small)
    ref = inf(imgs)
    out = tf.function(inf, jit_compile=True)(tf.constant(imgs))
    assert int(ref["num_detections"][0]) > 0
    for k in ("classes", "num_detections"):
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(ref[k]), err_msg=k)
    np.testing.assert_allclose(np.asarray(out["boxes"]), np.asarray(ref["boxes"]), atol=1e-3)
    np.testing.assert_allclose(np.asarray(out["scores"]), np.asarray(ref["scores"]), atol=1e-5)


def test_detection_output_matches_numpy(rng):
    nc, p, size, stds = 4, 6, 100, (0.1, 0.1, 0.2, 0.2)
    layer = ClaranDetectionOutput(nc, (size, size), stds, score_threshold=0.05, nms_iou=0.3, max_detections=20)
    xy = rng.uniform(0, 70, size=(2, p, 2))
    rois = np.concatenate([xy, xy + rng.uniform(8, 40, size=(2, p, 2))], -1).astype("float32")
    rois[:, 1] = rois[:, 0] + rng.normal(scale=1.5, size=(2, 4))  # near-duplicates for NMS to remove
    valid = np.ones((2, p), bool)
    valid[1, -2:] = False
    logits = rng.normal(scale=2.0, size=(2, p, nc)).astype("float32")
    deltas = rng.normal(scale=1.0, size=(2, p, 4 * nc)).astype("float32")
    out = {k: np.asarray(v) for k, v in layer(rois, valid, logits, deltas).items()}
    assert out["boxes"].shape == (2, 20, 4) and out["classes"].dtype == np.int32
    for i in range(2):
        ref = _postprocess_np(rois[i], valid[i], logits[i], deltas[i], nc, size, stds, 0.05, 0.3)
        n = int(out["num_detections"][i])
        assert n == len(ref) > 0
        np.testing.assert_allclose(out["scores"][i, :n], [r[0] for r in ref], rtol=1e-5)
        np.testing.assert_array_equal(out["classes"][i, :n], [r[1] for r in ref])
        np.testing.assert_allclose(out["boxes"][i, :n], np.stack([r[2] for r in ref]), rtol=1e-4, atol=1e-3)
        assert not out["boxes"][i, n:].any() and not out["classes"][i, n:].any()


def test_keras_round_trip_gives_identical_detections(small, subjects, tmp_path):
    imgs = subjects[0][:2]
    ref = small(imgs)
    path = tmp_path / "claran.keras"
    small.save(path)
    again = keras.saving.load_model(path)
    assert isinstance(again, ClaranDetector) and again.config == small.config
    assert int(again.anchor_target.draws.numpy()) == int(small.anchor_target.draws.numpy()) > 0
    assert int(ref["num_detections"][0]) > 0
    out = again(imgs)
    for k in ref:
        np.testing.assert_array_equal(np.asarray(out[k]), np.asarray(ref[k]), err_msg=k)


def test_inference_model_export_and_reload(small, subjects, tmp_path):
    imgs = subjects[0][:2]
    inf = inference_model(small)
    ref = {k: np.asarray(v) for k, v in inf(imgs).items()}
    assert ref["boxes"].shape == (2, 30, 4) and ref["num_detections"].shape == (2,)
    direct = small(imgs)
    for k in ref:
        np.testing.assert_array_equal(ref[k], np.asarray(direct[k]), err_msg=k)
    inf.export(str(tmp_path / "sm"), verbose=False)
    sm = tf.saved_model.load(str(tmp_path / "sm"))
    out = sm.serve(tf.constant(imgs))
    for k in ref:
        np.testing.assert_allclose(np.asarray(out[k]), ref[k], rtol=1e-5, atol=1e-4, err_msg=k)
    inf.save(tmp_path / "inf.keras")
    again = keras.saving.load_model(tmp_path / "inf.keras")
    for k, v in again(imgs).items():
        np.testing.assert_array_equal(np.asarray(v), ref[k], err_msg=k)


def test_mixed_bfloat16_inference(subjects):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        det = build_claran(ClaranConfig.small())
        inf = inference_model(det)
        assert det.backbone.get_layer("conv3_1").compute_dtype == "bfloat16"
        out = inf(subjects[0][:1])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out["boxes"].dtype == tf.float32 and out["scores"].dtype == tf.float32
    assert out["classes"].dtype == tf.int32 and np.isfinite(out["boxes"].numpy()).all()
    assert keras.mixed_precision.global_policy().name == "float32"


# ---------------------------------------------------------------------------------- learnability


def test_small_preset_learns_synthetic_subjects(trained, subjects):
    """200 steps on six 128-px subjects with 9 sources of three shapes → mAP ≥ 0.9 on them."""
    det, hist = trained
    imgs, boxes, cls = subjects
    assert hist["loss"][-1] < 0.6 * hist["loss"][0]
    assert int(det.anchor_target.draws.numpy()) == 200 == int(det.optimizer.iterations.numpy())
    out = {k: np.asarray(v) for k, v in det.predict(imgs, batch_size=len(imgs), verbose=0).items()}
    dets = [
        (out["boxes"][i, :n], out["classes"][i, :n], out["scores"][i, :n]) for i, n in enumerate(out["num_detections"])
    ]
    gts = [(boxes[i][cls[i] > 0], cls[i][cls[i] > 0]) for i in range(len(imgs))]
    assert _mean_ap(dets, gts) >= 0.9
