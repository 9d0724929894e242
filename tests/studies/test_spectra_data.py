"""The spectral data layer end to end: simulate (store + FITS) -> real readers -> preprocess -> tf.data -> Keras."""

import logging

import numpy as np
import pytest

from keras_astro.cli import main
from keras_astro.io import sdss
from keras_astro.io import spectra_store as ss
from keras_astro.pipelines.spectra import spectra_dataset


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    rc = main(
        [
            "--no-progress",
            "spectra",
            "simulate",
            "--n",
            "40",
            "--seed",
            "3",
            "--out",
            str(d / "sim.h5"),
            "--fits-dir",
            str(d / "fits"),
        ]
    )
    assert rc == 0
    return d


def test_fits_files_round_trip_through_the_real_readers(sim):
    files = sorted((sim / "fits").glob("spec-*.fits"))
    assert len(files) == 40
    store = ss.read_store(sim / "sim.h5")
    rebuilt = sdss.spectra_from_fits_dir(sim / "fits", sim / "rebuilt", progress=False)
    back = ss.read_store(rebuilt)
    order = {int(i): k for k, i in enumerate(back.meta["specObjID"])}
    idx = np.array([order[int(i)] for i in store.meta["specObjID"]])
    inside = store.ivar > 0
    np.testing.assert_array_equal(back.fluxes[idx][inside], store.fluxes[inside])
    np.testing.assert_array_equal(back.ivar[idx], store.ivar)
    for col in ("plate", "mjd", "fiberid", "class", "subClass"):
        assert back.meta[col].iloc[idx].tolist() == store.meta[col].tolist(), col
    np.testing.assert_allclose(back.meta["z"].to_numpy()[idx], store.meta["z"], rtol=1e-6)
    # a re-run stores nothing twice
    sdss.spectra_from_fits_dir(sim / "fits", sim / "rebuilt", progress=False)
    assert len(ss.store_spec_ids(sim / "rebuilt")) == 40


def test_corrupt_fits_is_logged_and_skipped(sim, tmp_path, caplog):
    d = tmp_path / "fits"
    d.mkdir()
    files = sorted((sim / "fits").glob("spec-*.fits"))[:3]
    for f in files:
        (d / f.name).write_bytes(f.read_bytes())
    data = files[0].read_bytes()
    (d / files[0].name).write_bytes(data[: len(data) // 3])  # truncated
    with caplog.at_level(logging.WARNING):
        sdss.spectra_from_fits_dir(d, tmp_path / "store", progress=False)
    assert len(ss.store_spec_ids(tmp_path / "store")) == 2
    assert files[0].name in caplog.text


@pytest.mark.parametrize("grid, npix", [("fnet", 4618), ("thesis", 3736)])
def test_preprocess_cli_and_pipeline_feed_keras(sim, grid, npix):
    import keras

    out = sim / f"{grid}.h5"
    assert main(["--no-progress", "spectra", "preprocess", str(sim / "sim.h5"), "--grid", grid, "--out", str(out)]) == 0
    st = ss.read_store(out)
    assert st.fluxes.shape[1] == npix and st.equivalent_widths.shape[1] == 14
    assert np.isfinite(st.fluxes).all()
    if grid == "fnet":  # FNet-normalised
        np.testing.assert_allclose(np.linalg.norm(st.fluxes, axis=1), 1.0, rtol=1e-4)
    ds = spectra_dataset(out, label="class", classes=["GALAXY", "QSO", "STAR"], batch_size=8, channel_axis=True)
    keras.utils.set_random_seed(0)
    inp = keras.Input((npix, 1))
    h = keras.layers.Conv1D(4, 9, strides=4, activation="relu")(inp)
    outp = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(inp, outp)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])


def test_bad_rows_in_a_store_are_skipped_by_name(sim, tmp_path, caplog):
    st = ss.read_store(sim / "sim.h5")
    f, iv = st.fluxes.copy(), st.ivar.copy()
    f[0] = np.nan  # NaN flux everywhere
    iv[1] = 0  # all masked
    iv[2, 600:] = 0  # covers only the far blue end of the FNet grid
    f[3, 100:110] = np.inf  # a few inf pixels: interpolated and flagged, row kept
    bad = ss.write_store(tmp_path / "bad.h5", fluxes=f, ivar=iv, wavelengths=st.wavelengths, meta=st.meta)
    from keras_astro.preprocess.spectra import preprocess_store

    with caplog.at_level(logging.WARNING):
        res = preprocess_store(bad, tmp_path / "out.h5", grid="fnet", normalise="fnet")
    skipped = {sid for sid, _ in res["skipped"]}
    ids = st.meta["specObjID"].to_numpy()
    assert skipped == {int(ids[0]), int(ids[1]), int(ids[2])}
    assert "bad.h5" in caplog.text
    out = ss.read_store(tmp_path / "out.h5")
    assert len(out) == 37 and np.isfinite(out.fluxes).all()


def test_simulate_cli_rejects_bad_arguments(tmp_path):
    assert main(["spectra", "simulate", "--n", "0", "--out", str(tmp_path / "x.h5")]) == 2
    assert main(["spectra", "preprocess", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "y.h5")]) == 2
