"""CLARAN tf.data pipeline: PNG + JSON annotations -> resized, flipped, zero-centred, padded batches."""

import json

import cv2
import numpy as np
import pytest

from keras_astro.pipelines import rgz as P


def _dataset(tmp_path, items, split="train"):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    for name, boxes, labels in items:
        img = np.zeros((132, 132, 3), np.uint8)
        for b in boxes:
            x1, y1, x2, y2 = (int(round(v)) for v in b)
            img[y1:y2, x1:x2] = (255, 128, 0)  # RGB
        cv2.imwrite(str(tmp_path / "images" / f"{name}.png"), img[..., ::-1])
        (tmp_path / "annotations" / f"{name}.json").write_text(
            json.dumps({"subject": name, "width": 132, "height": 132, "boxes": boxes, "labels": labels, "split": split})
        )
    (tmp_path / f"{split}.txt").write_text("".join(f"{n}\n" for n, _, _ in items))
    return tmp_path


def test_boxes_scale_pad_and_sit_on_the_emission(tmp_path):
    root = _dataset(
        tmp_path,
        [("A", [[10, 20, 30, 40]], ["1C_1P"]), ("B", [[50, 50, 70, 60], [100, 10, 120, 30]], ["2C_3P", "3C_3P"])],
    )
    ds = P.rgz_dataset(root, "train", flip=False, shuffle=False, zero_centre=False)
    (img_a, box_a, cls_a), (img_b, box_b, cls_b) = [tuple(t.numpy() for t in x) for x in ds]
    assert img_a.shape == (1, 600, 600, 3) and box_a.shape == (1, 2, 4) and cls_a.shape == (1, 2)
    s = 600 / 132
    np.testing.assert_allclose(box_a[0, 0], np.array([10, 20, 30, 40]) * s, rtol=1e-6)
    np.testing.assert_array_equal(cls_a[0], [1, 0])  # padding = 0 (background)
    np.testing.assert_array_equal(box_a[0, 1], 0)
    np.testing.assert_array_equal(cls_b[0], [5, 6])
    # BGR order: the RGB (255, 128, 0) emission has B=0, R=255
    x1, y1, x2, y2 = box_b[0, 1].astype(int)
    patch = img_b[0, y1 + 5 : y2 - 5, x1 + 5 : x2 - 5]
    assert np.allclose(patch[..., 2], 255, atol=1) and np.allclose(patch[..., 0], 0, atol=1)
    assert img_b[0, 590, 5].max() == 0


def test_flips_move_boxes_with_the_image_and_change_between_epochs(tmp_path):
    root = _dataset(tmp_path, [(f"S{i}", [[10, 20, 30, 40]], ["1C_1P"]) for i in range(8)])
    ds = P.rgz_dataset(root, "train", shuffle=False, zero_centre=False, seed=3)
    flips = []
    for _ in range(2):
        epoch = []
        for img, box, _ in ds:
            img, box = img.numpy()[0], box.numpy()[0, 0]
            x1, y1, x2, y2 = box.astype(int)
            inside = img[y1 + 4 : y2 - 4, x1 + 4 : x2 - 4, 2]
            assert inside.min() > 250  # red emission inside the (possibly flipped) box
            epoch.append(bool(box[0] > 300))
        flips.append(epoch)
    assert any(flips[0]) and not all(flips[0])  # some flipped, some not
    assert flips[0] != flips[1]  # redrawn each epoch


def test_zero_centring_and_test_split_defaults(tmp_path):
    root = _dataset(tmp_path, [("T", [[0, 0, 132, 132]], ["1C_2P"])], split="test")
    img, _, _ = next(iter(P.rgz_dataset(root, "test")))
    np.testing.assert_allclose(img.numpy()[0, 300, 300], [0 - 103.939, 128 - 116.779, 255 - 123.68], atol=1.0)


def test_bad_dataset_folders(tmp_path):
    with pytest.raises(P.DatasetError, match="no such split list"):
        P.read_split(tmp_path, "train")
    root = _dataset(tmp_path, [("A", [[10, 20, 30, 40]], ["1C_1P"])])
    (root / "annotations" / "A.json").write_text(json.dumps({"boxes": [[10, 20, 300, 40]], "labels": ["1C_1P"]}))
    with pytest.raises(P.DatasetError, match="A.json.*outside"):
        P.read_split(root, "train")
    (root / "annotations" / "A.json").write_text(json.dumps({"boxes": [[10, 20, 30, 40]], "labels": ["4C_4P"]}))
    with pytest.raises(P.DatasetError, match="unknown class"):
        P.read_split(root, "train")
    (root / "annotations" / "A.json").write_text("{not json")
    with pytest.raises(P.DatasetError, match="not valid JSON"):
        P.read_split(root, "train")
    (root / "annotations" / "A.json").unlink()
    with pytest.raises(P.DatasetError, match="A.json.*missing"):
        P.read_split(root, "train")
