"""`rgz build` end to end on simulated cutouts: files, splits, boxes on emission, pipeline, `rgz show`."""

import json

import cv2
import numpy as np
import pytest

from keras_astro.cli import main
from keras_astro.io import rgz
from keras_astro.pipelines.rgz import rgz_dataset
from keras_astro.preprocess import radio as R
from keras_astro.studies import rgz_data


@pytest.fixture(scope="module")
def d4(tmp_path_factory):
    out = tmp_path_factory.mktemp("d4")
    rc = main(["--no-progress", "rgz", "build", "--dataset", "D4", "--quick", "--out", str(out)])
    assert rc == 0
    return out


def test_quick_build_writes_a_stratified_dataset(d4):
    summary = json.loads((d4 / "dataset.json").read_text())
    per = rgz_data.QUICK_PER_CLASS
    assert summary["n_train"] == 6 * per["train"] and summary["n_test"] == 6 * per["test"]
    assert summary["image_source"] == "simulated" and not summary["skipped"]
    train = (d4 / "train.txt").read_text().split()
    test = (d4 / "test.txt").read_text().split()
    cat = rgz.load_catalogue()
    assert all(cat[n].training for n in train) and not any(cat[n].training for n in test)
    assert len(list((d4 / "images").glob("*.png"))) == len(train) + len(test)
    # every class is represented in both splits
    for split in ("train", "test"):
        labels = {k.split("/")[1] for k in summary["sources_per_class"] if k.startswith(split)}
        assert labels == set(rgz.class_names())
    # D4 fill = the training D3 channel mean, recorded
    assert len(summary["d4_fill_rgb"]) == 3


def test_boxes_sit_on_the_radio_emission(d4):
    """The brightest >= 5 sigma radio pixel near each source lies inside its box (simulated images)."""
    from keras_astro.io.skyview import read_cutout
    from keras_astro.simulate import radio as sim

    names = (d4 / "train.txt").read_text().split()[:24]
    cat = rgz.load_catalogue()
    hits = 0
    for name in names:
        s = cat[name]
        radio_path, _ = sim.ensure_images([s], d4.parent / "imgs")[name]
        img, _ = read_cutout(radio_path, subject=name)
        png = img[::-1]
        sigma = R.mad_sigma(png)
        for box in rgz.subject_annotations(s)["boxes"]:
            x1, y1, x2, y2 = np.floor(box).astype(int)
            inside = png[y1:y2, x1:x2]
            hits += inside.size > 0 and inside.max() > np.median(png) + 5 * sigma
    total = sum(len(cat[n].sources) for n in names)
    assert hits / total >= 0.9


def test_pipeline_reads_the_build(d4):
    ds = rgz_dataset(d4, "train", batch_size=4, image_size=128)
    img, boxes, classes = next(iter(ds))
    assert img.shape == (4, 128, 128, 3) and boxes.shape[0] == 4 and classes.shape[:1] == (4,)
    assert int(classes.numpy().max()) <= 6 and (classes.numpy()[:, 0] >= 1).all()
    b = boxes.numpy()[:, 0]
    assert (b[:, 2] > b[:, 0]).all() and b.max() <= 128 + 1e-3
    test = list(rgz_dataset(d4, "test", batch_size=8, image_size=64))
    assert sum(int(t[0].shape[0]) for t in test) == len((d4 / "test.txt").read_text().split())


def test_png_is_the_fusion_of_the_cutouts(d4, tmp_path):
    name = (d4 / "test.txt").read_text().split()[0]
    png = cv2.imread(str(d4 / "images" / f"{name}.png"))[..., ::-1]
    assert png.shape == (132, 132, 3)
    d3 = tmp_path / "d3"
    rgz_data.build_dataset("D3", d3, quick=True, progress=False)
    d3png = cv2.imread(str(d3 / "images" / f"{name}.png"))[..., ::-1]
    # D4 equals D3 inside the hull, the recorded fill outside
    fill = np.round(json.loads((d4 / "dataset.json").read_text())["d4_fill_rgb"]).astype(np.uint8)
    differs = np.any(png != d3png, axis=-1)
    assert (png[differs] == fill).all() and differs.mean() > 0.3


def test_show_draws_a_subject(tmp_path):
    out = tmp_path / "s.png"
    assert main(["rgz", "show", "FIRSTJ000007.0+081644", "--out", str(out)]) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[1] > 2 * img.shape[0]


def test_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="unknown data set"):
        rgz_data.build_dataset("D7", tmp_path)
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        rgz_data.build_dataset("D1", tmp_path, quick=True, images=tmp_path / "nope", progress=False)
    # a real-image folder with no cutouts: every subject skipped with the reason, nothing crashes
    (tmp_path / "empty").mkdir()
    res = rgz_data.build_dataset("D1", tmp_path / "out", quick=True, images=tmp_path / "empty", progress=False)
    assert res["n_train"] == 0 and len(res["skipped"]) == 72
    assert main(["rgz", "show", "FIRSTJ999999.9+999999"]) == 2
