"""The AGN study's protocol on the embedded simulation, with tiny schedules."""

import json

import numpy as np
import pytest
import tensorflow as tf

from keras_astro import specs
from keras_astro.io.nepw import CatalogueError, read_catalogue, write_catalogue
from keras_astro.preprocess.photometry import MissingBandFiller
from keras_astro.studies import agn

TINY = {"max_epochs": 6, "start_from_epoch": 0}


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("agn") / "model_B"
    metrics = agn.run_cv("B", out=out, quick=True, folds_to_run=[0, 1], overrides=TINY, progress=False)
    return out, metrics


def test_metrics_json_has_the_table1_metrics(cv_run):
    out, metrics = cv_run
    on_disk = json.loads((out / "metrics.json").read_text())
    for k in agn.METRICS:
        assert 0.0 <= on_disk[k] <= 1.0
        folds = [f[k] for f in on_disk["folds"]]
        assert on_disk[k] == pytest.approx(np.mean(folds))
    assert len(on_disk["folds"]) == 2 and on_disk["n_objects"] == 1870 and on_disk["n_agn"] == 255
    assert on_disk["paper"]["roc_auc"] == pytest.approx(0.8889)
    assert all(f["epochs"] <= TINY["max_epochs"] for f in on_disk["folds"])
    for name in ("figures/roc.png", "figures/history.png", "folds.md", "folds.csv", "config.json", "model.keras"):
        assert (out / name).is_file(), name


def test_savedmodel_reproduces_the_keras_model_on_raw_photometry(cv_run):
    import keras

    out, _ = cv_run
    phot = agn.load_labelled(quick=True)
    raw = phot.values[:200]
    sm = tf.saved_model.load(str(out / "savedmodel"))
    got = sm.signatures["serving_default"](photometry=tf.constant(raw))["p_agn"].numpy()
    model = keras.saving.load_model(out / "model.keras")
    ref = model.predict(MissingBandFiller("zero").transform(raw)[..., None], verbose=0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_predict_catalogue_votes(cv_run, tmp_path):
    out, _ = cv_run
    small = write_catalogue(read_catalogue(agn.embedded_catalogues(quick=True)["unlabelled"])[:300], tmp_path / "small.fits")
    summary = agn.predict_catalogue(small, [out, out / "savedmodel"], out=tmp_path / "votes.csv")
    table = read_catalogue(tmp_path / "votes.csv")
    assert len(table) == 300
    p_cols = [c for c in table.colnames if c.startswith("p_agn_")]
    assert p_cols == ["p_agn_B", "p_agn_B_1"]
    votes = (np.asarray(table["p_agn_B"]) > 0.5).astype(int) + (np.asarray(table["p_agn_B_1"]) > 0.5)
    np.testing.assert_array_equal(np.asarray(table["n_agn_votes"]), votes)
    assert summary["agreement"] == 1.0  # the same model twice always agrees
    assert sum(summary["vote_split"].values()) == 300
    assert (tmp_path / "votes_votes.png").is_file()
    assert (tmp_path / "votes.csv.summary.json").is_file()


def test_predict_rejects_a_folder_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        agn.predict_catalogue(agn.embedded_catalogues(quick=True)["labelled"], [tmp_path], out=tmp_path / "v.csv")


def test_ablation_removes_the_group(tmp_path):
    m = agn.run_ablation("B", out=tmp_path, quick=True, groups=["UV"], folds_to_run=[0], overrides={"max_epochs": 2}, progress=False)
    assert set(m["groups"]) == {"none", "UV"}
    assert m["groups"]["UV"]["removed_bands"] == ["MegaCam_u", "MegaPrime_u", "GALEX_NUV", "GALEX_FUV"]
    assert m["group_counts"] == {"FIR": 5, "MIR": 11, "NIR": 18, "optical": 6, "UV": 4}
    assert (tmp_path / "figures" / "ablation_roc.png").is_file()
    with pytest.raises(ValueError, match="unknown band groups"):
        agn.run_ablation("B", out=tmp_path, quick=True, groups=["X-ray"])


def test_cross_validate_uses_the_configured_optimiser_and_loss():
    from keras_astro.models.agn import AGNConfig

    phot = agn.load_labelled(quick=True)
    cfg = AGNConfig.preset("A", learning_rate=0.0123, max_epochs=1, alpha=0.9)
    res = agn.cross_validate(phot, cfg, folds_to_run=[0], keep_models=True, progress=False)
    model = res.models[0]
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0123)
    assert model.loss.alpha == pytest.approx(0.9)
    assert res.folds[0].epochs == 1 and len(res.folds[0].val_index) == 187


def test_prepare_inputs_blanks_removed_bands(raw_photometry):
    filler = MissingBandFiller("zero")
    x = agn.prepare_inputs(np.nan_to_num(raw_photometry, nan=20.0), filler, removed_bands=[0, 43])
    assert x.shape == (60, 44, 2, 1)
    assert (x[:, [0, 43]] == 0).all() and (x[:, 1:43] != 0).all()


def test_unlabelled_catalogue_cannot_train(tmp_path):
    t = read_catalogue(agn.embedded_catalogues(quick=True)["unlabelled"])[:50]
    path = write_catalogue(t, tmp_path / "u.fits")
    with pytest.raises(CatalogueError, match="no AGN/SFG label"):
        agn.load_labelled(path)


def test_cli_cv_quick_folds(tmp_path):
    # the ten folds of the paper run in test_reproduce_writes_report (model B); here the CLI path
    from keras_astro.cli import main

    code = main(["--no-progress", "agn", "cv", "--preset", "B", "--quick", "--epochs", "3", "--folds", "3", "--no-export", "--out", str(tmp_path)])
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert len(m["folds"]) == 3 and all(0 <= m[k] <= 1 for k in agn.METRICS)


def test_reproduce_writes_report(tmp_path, monkeypatch):
    from keras_astro.studies.reproduce import reproduce

    monkeypatch.setattr(agn, "QUICK", {**agn.QUICK, "max_epochs": 2})
    res = reproduce(tmp_path, quick=True, studies=["agn"], progress=False)
    assert res["agn"]["status"] == "ok"
    report = (tmp_path / "report.md").read_text()
    assert "| metric | paper | ours |" in report and "model B roc auc" in report and "88.89 %" in report
    m = json.loads((tmp_path / "agn" / "metrics.json").read_text())
    assert set(m["inference"]["per_model"]) == set("ABC")
    assert len(json.loads((tmp_path / "agn" / "model_B" / "metrics.json").read_text())["folds"]) == 10
    assert (tmp_path / "agn" / "model_A" / "savedmodel" / "saved_model.pb").is_file()
    with pytest.raises(ValueError, match="unknown studies"):
        reproduce(tmp_path, studies=["nope"])


def test_band_groups_follow_wavelengths():
    for b in specs.agn_bands():
        assert specs.nearest_group(b.wavelength_um) == b.group
