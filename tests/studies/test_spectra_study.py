"""The thesis study (seed 003) end to end on tiny settings: labels, splits, tuning with resume,
the three networks, SavedModels on raw inputs, predict, bad inputs and the CLI."""

import json

import numpy as np
import pandas as pd
import pytest

from keras_astro import specs
from keras_astro.cli import main
from keras_astro.studies import spectra

TINY = "tiny"


# ----------------------------------------------------------------------------- fast, no training
def test_star_groups_galaxy_subclasses_and_unknown_labels():
    sp = specs.load_spec("spectra")
    groups = {s: spectra.star_group(s) for s in sp["thesis_star_subclasses"]}
    assert set(groups.values()) == set(spectra.task_classes("star")) and len(spectra.task_classes("star")) == 15
    assert [groups[s] for s in ("A0p", "OB", "K5", "M2V", "L5.5", "T2", "CarbonWD", "WDmagnetic", "B9")] == [
        "A",
        "O",
        "K",
        "M",
        "L",
        "T2",
        "CarbonWD",
        "WDmagnetic",
        "B",
    ]
    with pytest.raises(ValueError, match="'Xenon9'"):
        spectra.star_group("Xenon9")
    assert spectra.task_classes("galaxy")[0] == "NULL" and len(spectra.task_classes("galaxy")) == 8
    assert "NULL" not in spectra.task_classes("galaxy", drop_null=True)
    meta = pd.DataFrame(
        {
            "class": ["GALAXY", "STAR", "GALAXY", "QSO", "GALAXY"],
            "subClass": ["", "K3", "AGN", "", "STARBURST BROADLINE"],
        }
    )
    gal = spectra.task_classes("galaxy")
    np.testing.assert_array_equal(
        spectra.task_labels(meta, "galaxy"), [0, -1, gal.index("AGN"), -1, gal.index("STARBURST BROADLINE")]
    )
    assert spectra.task_labels(meta, "galaxy", drop_null=True)[0] == -1
    np.testing.assert_array_equal(
        spectra.task_labels(meta, "star"), [-1, spectra.task_classes("star").index("K"), -1, -1, -1]
    )
    np.testing.assert_array_equal(spectra.task_labels(meta, "main"), [0, 2, 0, 1, 0])
    bad = meta.assign(subClass=["", "K3", "LINER", "", "AGN"])
    with pytest.raises(ValueError, match="unknown galaxy subClass values 'LINER'"):
        spectra.task_labels(bad, "galaxy")
    with pytest.raises(ValueError, match=r"unknown star subClass values 'wd\?' \(1\); expected an exact name"):
        spectra.task_labels(meta.assign(subClass=["", "wd?", "", "", ""]), "star")
    with pytest.raises(ValueError, match="drop_null"):
        spectra.task_classes("star", drop_null=True)


def test_split_is_80_20_then_80_20_stratified_and_seeded():
    labels = np.repeat([0, 1, 2, -1], [500, 300, 100, 40])
    s = spectra.split_rows(labels, seed=1)
    assert sum(v.size for v in s.values()) == 900 and not (
        set(s["train"]) & set(s["test"]) | set(s["val"]) & set(s["test"])
    )
    for c, n in ((0, 500), (1, 300), (2, 100)):
        assert np.sum(labels[s["test"]] == c) == round(0.2 * n)
        assert np.sum(labels[s["val"]] == c) == round(0.2 * (n - round(0.2 * n)))
    assert all(np.array_equal(a, b) for a, b in zip(s.values(), spectra.split_rows(labels, seed=1).values()))
    assert not np.array_equal(s["test"], spectra.split_rows(labels, seed=2)["test"])


def test_autoencoder_pixels_follow_appendix_10_5():
    x = np.arange(spectra.INPUT_LENGTH)[None, :]
    ref = x[:, 0::2]
    ref = ref[:, np.mod(np.arange(ref[0].size), 25) != 0][:, :1792]  # the authors' _prepare_data
    np.testing.assert_array_equal(spectra.autoencoder_pixels(), ref[0])


def test_table_5_trial_13_is_the_best_point_and_builds_its_layer_list():
    import keras

    from keras_astro.models.spectral_cnn import BEST_HPARAMS, build_spectral_cnn

    hp = spectra.reported_trial_hparams(13)
    assert hp == BEST_HPARAMS
    m = build_spectral_cnn(hp, compile=False)
    conv = [(lay.filters, lay.kernel_size[0]) for lay in m.layers if isinstance(lay, keras.layers.Conv1D)]
    assert conv == [(256, 7), (64, 7), (512, 3), (128, 5), (128, 7), (256, 3)]
    kinds = [type(lay).__name__ for lay in m.layers]
    pools = [i for i, k in enumerate(kinds) if k == "MaxPooling1D"]
    convs = [i for i, k in enumerate(kinds) if k == "Conv1D"]
    assert len(pools) == 3 and all(convs[j] < p < convs[j + 1] for j, p in zip((1, 2, 3), pools))  # after conv 2, 3, 4
    assert all(m.layers[i].pool_size[0] == 3 for i in pools)
    assert [lay.units for lay in m.layers if isinstance(lay, keras.layers.Dense)] == [512, 512, 128, 256, 256, 3]
    assert [lay.rate for lay in m.layers if isinstance(lay, keras.layers.Dropout)] == [0.1] * 6 + [0.5] * 5
    quick = spectra.cnn_hparams(True)  # Table 4 trial 10 at 1/16 of the filters
    assert (
        quick["n_conv_layers"] == 2
        and quick["conv_layer_1_filters"] == 512 // 16
        and quick["dense_layer_1_nodes"] == 64
    )
    with pytest.raises(ValueError, match="Tables 4-5 list trials"):
        spectra.reported_trial_hparams(17)


def test_tabular_and_flux_checks_name_what_is_wrong():
    from keras_astro.models.mixed_input import tabular_columns

    cols = tabular_columns(True)
    base = cols[:12]
    meta = pd.DataFrame({c: np.linspace(0.1, 1.0, 4) for c in base})
    ew = np.full((4, 14), 1.5, np.float32)
    ew[1, 3] = np.nan
    ew[2, 5] = -99.0
    x = spectra.tabular_matrix(meta, ew, cols)
    assert (
        x.shape == (4, 26) and np.isnan(x[1, 12 + 3]) and x[2, 12 + 5] == -99.0
    )  # missing EWs pass (-> -99 in the model)
    with pytest.raises(ValueError, match=r"tabular columns \['zErr'\] are missing"):
        spectra.tabular_matrix(meta.drop(columns="zErr"), ew, cols)
    with pytest.raises(ValueError, match=r"z \(1 rows\)"):
        spectra.tabular_matrix(meta.assign(z=[0.1, np.nan, 0.3, 0.4]), ew, cols)
    with pytest.raises(ValueError, match=r"petroMag_u \(1 rows\)"):
        spectra.tabular_matrix(meta.assign(petroMag_u=[20.0, -9999.0, 19.0, 18.0]), ew, cols)
    with pytest.raises(ValueError, match="no equivalent widths"):
        spectra.tabular_matrix(meta, None, cols)
    with pytest.raises(ValueError, match=r"shape \(N, 3736\).*got \(2, 4000\)"):
        spectra.check_flux(np.zeros((2, 4000)))
    with pytest.raises(ValueError, match="NaN/inf fluxes"):
        spectra.check_flux(np.full((2, 3736), np.nan))


# ------------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    m = spectra.train(out, model="mixed", task="main", quick=TINY, progress=False)
    return out, m


def test_mixed_metrics_confusion_and_figures(mixed_run):
    out, m = mixed_run
    saved = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= saved["accuracy"] <= 1.0 and set(saved["recall"]) == {"GALAXY", "QSO", "STAR"}
    assert saved["tabular_columns"][:2] == ["z", "zErr"] and len(saved["tabular_columns"]) == 26
    cm = pd.read_csv(out / "confusion.csv", index_col=0)
    assert list(cm.index) == list(cm.columns) == ["GALAXY", "QSO", "STAR"] and cm.index.name == "true \\ predicted"
    assert cm.to_numpy().sum() == saved["n_test"] == saved["splits"]["test"]
    diag = np.diag(cm.to_numpy())
    assert saved["accuracy"] == pytest.approx(diag.sum() / cm.to_numpy().sum())
    for f in ("confusion.png", "training_curves.png", "examples_correct.png", "examples_incorrect.png"):
        assert (out / "figures" / f).stat().st_size > 1000


def test_mixed_savedmodel_gives_the_keras_models_probabilities_on_raw_inputs(mixed_run):
    import keras
    import tensorflow as tf

    out, m = mixed_run
    d = spectra.prepare_data("main", quick=TINY)
    a = spectra.load_split(d, "test", tabular=m["tabular_columns"])
    flux, tab = a["flux"][:6], a["tabular"][:6].copy()
    tab[0, 12:] = np.nan  # no measurable line
    tab[1, 14] = -99.0
    model = keras.saving.load_model(out / "model.keras")
    want = model.predict({"flux": flux, "tabular": tab}, verbose=0)
    fn = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
    got = fn(flux=tf.constant(flux), tabular=tf.constant(tab))["probabilities"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    res = spectra.predict(out, {"flux": flux, "tabular": tab})
    np.testing.assert_allclose(res["probabilities"], want, rtol=1e-5, atol=1e-6)


def test_predict_on_a_store_and_bad_inputs(mixed_run, tmp_path):
    out, _ = mixed_run
    path = spectra.embedded_store("main", quick=TINY)
    res = spectra.predict(out, path, out=tmp_path / "pred.csv")
    csv = pd.read_csv(tmp_path / "pred.csv")
    assert len(csv) == res["n"] == len(res["specObjID"]) and set(csv["predicted"]) <= {"GALAXY", "QSO", "STAR"}
    assert 0.0 <= res["accuracy"] <= 1.0 and list(csv.columns[:2]) == ["specObjID", "predicted"]
    flux = np.zeros((2, 3000), np.float32)
    with pytest.raises(ValueError, match=r"shape \(N, 3736\)"):
        spectra.predict(out, {"flux": flux, "tabular": np.zeros((2, 26))})
    good = np.ones((2, 3736), np.float32)
    with pytest.raises(ValueError, match="needs 'tabular'"):
        spectra.predict(out, {"flux": good})
    tab = np.ones((2, 26), np.float32)
    tab[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"z \(1 rows\)"):
        spectra.predict(out, {"flux": good, "tabular": tab})
    with pytest.raises(ValueError, match=r"expected shape \(2, 26\)"):
        spectra.predict(out, {"flux": good, "tabular": tab[:, :12]})


def test_autoencoder_code_reconstruction_and_savedmodel(tmp_path):
    import keras
    import tensorflow as tf

    m = spectra.train(tmp_path, model="autoencoder", quick=TINY, progress=False)
    assert m["code_size"] == 14 and m["input_pixels"] == 1792 and np.isfinite(m["reconstruction_mse"])
    assert set(m["reconstruction_mse_per_class"]) <= {"GALAXY", "QSO", "STAR"}
    for f in ("reconstructions.png", "latent_pairs.png", "training_curves.png"):
        assert (tmp_path / "figures" / f).stat().st_size > 1000
    d = spectra.prepare_data("main", quick=TINY)
    flux = spectra.load_split(d, "test")["flux"][:4]
    serving = keras.saving.load_model(tmp_path / "model.keras")
    ref = serving.predict(flux[:, spectra.autoencoder_pixels()], verbose=0)
    got = tf.saved_model.load(str(tmp_path / "savedmodel")).signatures["serving_default"](flux=tf.constant(flux))
    np.testing.assert_allclose(got["code"].numpy(), ref["code"], rtol=1e-5, atol=1e-6)
    mse = np.mean((ref["reconstruction"] - ref["standardised"]) ** 2, axis=1)
    np.testing.assert_allclose(got["mse"].numpy(), mse, rtol=1e-5, atol=1e-7)
    res = spectra.predict(tmp_path, {"flux": flux})
    assert res["code"].shape == (4, 14)


def test_tune_resumes_and_writes_the_trial_table(tmp_path):
    import tensorflow as tf

    from keras_astro.models.spectral_cnn import build_spectral_cnn

    kw = dict(quick=TINY, epochs=1, retrain_epochs=0, progress=False)
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")  # trials built in the strategy's scope
    first = spectra.tune(tmp_path, max_trials=1, strategy=one_device, **kw)
    assert first["strategy"]["strategy"] == "OneDeviceStrategy"
    assert first["n_trials"] == 1 and first["n_new_trials"] == 1
    second = spectra.tune(tmp_path, max_trials=2, **kw)  # same folder: resumes, runs one more
    assert second["n_trials"] == 2 and second["n_new_trials"] == 1
    assert second["trials"][0]["trial_id"] == first["trials"][0]["trial_id"]
    assert second["trials"][0]["val_accuracy"] == first["trials"][0]["val_accuracy"]
    third = spectra.tune(tmp_path, max_trials=2, **kw)
    assert third["n_trials"] == 2 and third["n_new_trials"] == 0
    table = pd.read_csv(tmp_path / "trials.csv")
    assert list(table["trial"]) == [1, 2] and {
        "val_accuracy",
        "learning_rate",
        "n_conv_layers",
        "max_pool_size",
        "conv_layer_1_filters",
        "n_dense_layers",
    } <= set(table.columns)
    for _, row in table.iterrows():  # every active hyperparameter is listed, the others are blank
        n_conv = int(row["n_conv_layers"])
        assert all(
            pd.notna(row[f"conv_layer_{i}_kernel_size"]) == (i <= n_conv)
            for i in range(1, 7)
            if f"conv_layer_{i}_kernel_size" in table
        )
    md = (tmp_path / "trials.md").read_text()
    assert "Trial 1" in md and "Trial 2" in md and "**Trial" in md
    best = json.loads((tmp_path / "best_hparams.json").read_text())
    assert best["val_accuracy"] == pytest.approx(table["val_accuracy"].max())
    model = build_spectral_cnn(best["hparams"], space=spectra.cnn_space(TINY), flat_input=True, compile=False)
    assert model.output.shape[-1] == 3
    assert (tmp_path / "tuner_logs" / "cnn_main_random" / "oracle.json").is_file()


def test_table_6_sweep_on_tiny_sizes(tmp_path):
    m = spectra.sweep(tmp_path, quick=TINY, sizes=[100], progress=False)
    t = pd.read_csv(tmp_path / "table6.csv")
    assert list(t["sigma"]) == [0.0, 4.0] and list(t["n_sources"]) == [100, 100]
    assert t["test_accuracy"].between(0, 1).all() and t["best_val_accuracy_first5"].between(0, 1).all()
    assert m["rows"][0]["paper_val_accuracy"] is None  # 100 sources is not a column of Table 6
    assert "σ (px)" in (tmp_path / "table6.md").read_text()


# ----------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def raw_store(tmp_path_factory):
    from keras_astro.simulate.spectra import write_simulated_store

    return write_simulated_store(tmp_path_factory.mktemp("raw") / "raw.h5", 150, seed=7)


def test_cli_tune_train_predict_on_a_raw_store(raw_store, tmp_path, mixed_run, capsys):
    rc = main(
        [
            "--no-progress",
            "spectra",
            "tune",
            "--quick",
            "--data",
            str(raw_store),
            "--trials",
            "2",
            "--epochs",
            "1",
            "--retrain-epochs",
            "0",
            "--out",
            str(tmp_path / "tune"),
        ]
    )
    assert rc == 0
    assert len(pd.read_csv(tmp_path / "tune" / "trials.csv")) >= 2
    rc = main(
        [
            "--no-progress",
            "spectra",
            "train",
            "--model",
            "cnn",
            "--task",
            "main",
            "--quick",
            "--epochs",
            "1",
            "--data",
            str(raw_store),
            "--out",
            str(tmp_path / "cnn"),
        ]
    )
    assert rc == 0
    assert '"accuracy"' in capsys.readouterr().out
    saved = json.loads((tmp_path / "cnn" / "metrics.json").read_text())
    assert saved["model"] == "cnn" and saved["hparams"]["n_conv_layers"] == 2 and 0 <= saved["accuracy"] <= 1
    rc = main(
        [
            "--no-progress",
            "spectra",
            "predict",
            "--model",
            str(tmp_path / "cnn"),
            str(raw_store),
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    assert rc == 0
    p = pd.read_csv(tmp_path / "p.csv")
    assert len(p) == 150 and {"p_GALAXY", "p_QSO", "p_STAR", "true"} <= set(p.columns)
    import keras  # the CNN's Keras file and SavedModel both take raw thesis-grid flux

    flux = spectra.load_split(spectra.prepare_data("main", data=raw_store), "test")["flux"][:4]
    want = keras.saving.load_model(tmp_path / "cnn" / "model.keras").predict(flux, verbose=0)
    got = spectra.predict(tmp_path / "cnn", {"flux": flux})["probabilities"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cli_reports_unknown_subclasses_and_bad_stores(tmp_path, capsys):
    from keras_astro.io.spectra_store import read_store, write_store

    st = read_store(spectra.embedded_store("star", quick=TINY))
    meta = st.meta.copy()
    meta.loc[meta.index[:3], "subClass"] = "Q7"
    bad = write_store(
        tmp_path / "bad.h5",
        fluxes=st.fluxes,
        wavelengths=st.wavelengths,
        meta=meta,
        ivar=st.ivar,
        equivalent_widths=st.equivalent_widths,
        attrs={"grid": "thesis"},
    )
    rc = main(
        [
            "--no-progress",
            "spectra",
            "train",
            "--model",
            "mixed",
            "--task",
            "star",
            "--quick",
            "--epochs",
            "1",
            "--data",
            str(bad),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 2
    assert "unknown star subClass values 'Q7' (3)" in capsys.readouterr().err
    narrow = write_store(
        tmp_path / "narrow.h5",
        fluxes=st.fluxes[:, :3000],
        wavelengths=st.wavelengths[:3000],
        meta=st.meta,
        attrs={"grid": "thesis"},
    )
    rc = main(
        [
            "--no-progress",
            "spectra",
            "train",
            "--model",
            "cnn",
            "--quick",
            "--data",
            str(narrow),
            "--out",
            str(tmp_path / "r2"),
        ]
    )
    assert rc == 2
    assert "3000 pixels, not 3736" in capsys.readouterr().err
    z = st.meta["z"].to_numpy().copy()
    z[5] = np.nan  # a missing redshift: the mixed-input network refuses it
    nan_z = write_store(
        tmp_path / "nanz.h5",
        fluxes=st.fluxes,
        wavelengths=st.wavelengths,
        meta=st.meta.assign(z=z),
        ivar=st.ivar,
        equivalent_widths=st.equivalent_widths,
        attrs={"grid": "thesis"},
    )
    rc = main(
        [
            "--no-progress",
            "spectra",
            "train",
            "--model",
            "mixed",
            "--task",
            "star",
            "--quick",
            "--epochs",
            "1",
            "--data",
            str(nan_z),
            "--out",
            str(tmp_path / "r3"),
        ]
    )
    assert rc == 2
    assert "tabular columns z (1 rows)" in capsys.readouterr().err
