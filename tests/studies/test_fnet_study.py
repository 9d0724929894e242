"""FNet protocol end to end on tiny settings: splits, Δv metrics, figures, SavedModel raw flux -> z, predict."""

import json

import numpy as np
import pytest

from keras_astro.studies import fnet


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fnet")
    m = fnet.train_fnet(out, n=160, preset="tiny", epochs=1, batch_size=16, progress=False)
    return out, m


def test_splits_follow_the_dr12q_dr16q_protocol():
    d = fnet.prepare_data(n=160)
    s = d.splits
    assert s["train"].size and s["val"].size and s["test"].size
    sets = [set(s[k].tolist()) for k in ("train", "val", "test", "qn_fail")]
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1 :])  # disjoint
    from keras_astro.io.spectra_store import read_meta

    meta = read_meta(d.path)
    assert meta["in_dr12q"].to_numpy()[s["train"]].all() and not meta["in_dr12q"].to_numpy()[s["test"]].any()
    assert (meta["z_qn"].to_numpy()[s["qn_fail"]] == -1).all()
    assert d.z_min == pytest.approx(d.z[s["train"]].min()) and d.z_max == pytest.approx(d.z[s["train"]].max())


def test_metrics_json_has_the_three_accuracies_per_test_set(run):
    out, m = run
    saved = json.loads((out / "metrics.json").read_text())
    for k in ("dv_acc_6000", "dv_acc_12000", "dv_acc_30000"):
        assert 0.0 <= saved["fnet"]["test"][k] <= 1.0
        assert 0.0 <= saved["baseline"]["test"][k] <= 1.0
    acc = saved["fnet"]["test"]
    assert acc["dv_acc_6000"] <= acc["dv_acc_12000"] <= acc["dv_acc_30000"]
    for f in ("z_pred_vs_z_true.png", "accuracy_vs_dv.png", "outliers.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    assert (out / "history.csv").read_text().startswith("epoch")


def test_savedmodel_turns_raw_flux_into_the_keras_models_redshift(run):
    import keras
    import tensorflow as tf

    from keras_astro.io.spectra_store import read_store
    from keras_astro.preprocess.spectra import fnet_normalise

    out, m = run
    sm = tf.saved_model.load(str(out / "savedmodel"))
    fn = sm.signatures["serving_default"]
    model = keras.saving.load_model(out / "model.keras")
    raw = read_store(fnet.embedded_store(160), rows=np.arange(5)).fluxes * 37.0 + 2.0  # any affine scale
    z_sm = fn(flux=tf.constant(raw))["z"].numpy().reshape(-1)
    y = model.predict(fnet_normalise(raw), verbose=0).reshape(-1)
    zmin, zmax = m["z_scaling"]["z_min"], m["z_scaling"]["z_max"]
    np.testing.assert_allclose(z_sm, zmin + y * (zmax - zmin), rtol=1e-4, atol=1e-4)
    # predict() on a raw (sdss-grid) store resamples and gives the same numbers for the same spectra
    res = fnet.predict(out / "savedmodel", [fnet.embedded_store(160)])
    assert len(res["z"]) == 160 and np.isfinite(res["z"]).all()


def test_prepare_data_rejects_a_store_without_quasars(tmp_path):
    from keras_astro.simulate.spectra import write_simulated_store

    p = write_simulated_store(tmp_path / "stars.h5", 20, seed=1, class_shares={"GALAXY": 0.0, "QSO": 0.0, "STAR": 1.0})
    with pytest.raises(ValueError, match="not enough quasars"):
        fnet.prepare_data(p, out=tmp_path)
