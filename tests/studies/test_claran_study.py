"""CLARAN protocol end to end on the small preset: train → metrics/AP → SavedModel → evaluate → detect."""

import json

import numpy as np
import pytest

from keras_astro.studies import claran


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("claran")
    m = claran.train(out, dataset="D4", quick=True, steps=4, steps_per_epoch=2, progress=False)
    return out, m


def test_train_writes_model_losses_and_per_class_ap(run):
    out, m = run
    saved = json.loads((out / "metrics.json").read_text())
    classes = ["1C_1P", "1C_2P", "1C_3P", "2C_2P", "2C_3P", "3C_3P"]
    assert set(saved["ap"]) == set(classes) and 0.0 <= saved["map"] <= 1.0
    assert saved["steps"] == 4 and saved["preset"] == "small"
    assert all(np.isfinite(saved["final_losses"][k]) for k in claran.LOSSES)
    hist = (out / "history.csv").read_text().splitlines()
    assert len(hist) == 3 and all(k in hist[0] for k in claran.LOSSES)  # 2 epochs of 2 steps
    assert (out / "figures" / "losses.png").stat().st_size > 1000
    assert any((out / "logs").rglob("events.out.tfevents.*"))  # TensorBoard loss breakdown (Fig. 9)
    assert not (out / "backup").exists()  # removed after a completed run
    assert (out / "eval" / "pr_curves.png").stat().st_size > 1000


def test_savedmodel_gives_the_keras_inference_outputs(run):
    import tensorflow as tf

    from keras_astro.models.claran import inference_model

    out, _ = run
    det = claran.load_detector(out)
    s = det.config.input_size
    x = np.random.default_rng(0).normal(0, 30, (2, s, s, 3)).astype("float32")
    ref = inference_model(det)(x, training=False)
    fn = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
    got = fn(image=tf.constant(x))
    np.testing.assert_array_equal(got["num_detections"].numpy(), ref["num_detections"].numpy())
    np.testing.assert_allclose(got["scores"].numpy(), ref["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(got["boxes"].numpy(), ref["boxes"].numpy(), atol=1e-3)


def test_cli_evaluate_and_detect(run, tmp_path):
    from keras_astro.cli import main

    out, m = run
    assert main(["--no-progress", "claran", "evaluate", "--model", str(out), "--out", str(tmp_path / "ev")]) == 0
    ev = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert ev["map"] == pytest.approx(m["map"]) and ev["n_images"] == 24  # quick build: 4 test subjects per class
    assert "components_only" in ev and "user_filter" in ev and "box_size" in ev
    data = claran.prepare_dataset("D4", quick=True)
    subject = (data / "test.txt").read_text().split()[0]
    res = claran.detect([subject, data / "images" / f"{subject}.png"], model_dir=out, out=tmp_path / "det")
    assert [r["input"] for r in res] == [subject, str(data / "images" / f"{subject}.png")]
    for r in res:
        for d in r["detections"]:
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= 132 and 0 <= y1 <= y2 <= 132  # pixels of the 132-px subject
            assert d["class"] in ("1C_1P", "1C_2P", "1C_3P", "2C_2P", "2C_3P", "3C_3P") and 0 < d["probability"] <= 1
    assert (tmp_path / "det" / f"{subject}.png").is_file()
    with pytest.raises(ValueError, match="neither a PNG/JPEG image nor an RGZ subject"):
        claran.detect(["not-a-subject"], model_dir=out)


def test_summary_reproduces_table_4_count(capsys):
    from keras_astro.cli import main

    assert main(["claran", "summary"]) == 0
    text = capsys.readouterr().out
    assert "136,777,443" in text and "reproduced" in text
    assert "| 17 | Conv5_3 | 3 × 3 × 512 × 512 | ReLU | 1 | 37 × 37 × 512 | 2,359,296 |" in text
    assert "| 24 | FC_6 | 25088 × 4096 | ReLU |" in text


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="unknown CLARAN preset"):
        claran.summary("huge")
    with pytest.raises(FileNotFoundError, match="not a CLARAN data set"):
        claran.prepare_dataset(data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no trained CLARAN model"):
        claran.load_detector(tmp_path)
