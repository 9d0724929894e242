"""tf.data from the spectrum store: every selected row once, splits, shards, bounded reads, Keras fit."""

import numpy as np
import pytest

from keras_astro.io import spectra_store as ss
from keras_astro.pipelines import spectra as SP


def _store(tmp_path, n=37, m=16, name="s.h5"):
    rng = np.random.default_rng(0)
    f = np.arange(n, dtype=np.float32)[:, None] + np.zeros((1, m), np.float32)  # row i is all i
    meta = {
        "specObjID": np.arange(n, dtype=np.uint64) + np.uint64(7),
        "plate": np.full(n, 300),
        "mjd": np.full(n, 51666),
        "fiberid": np.arange(1, n + 1),
        "ra": rng.uniform(0, 360, n),
        "dec": rng.uniform(-10, 60, n),
        "z": np.arange(n) / 10.0,
        "zErr": np.zeros(n),
        "class": np.array(["GALAXY", "QSO", "STAR"])[np.arange(n) % 3],
        "subClass": [""] * n,
        "split": np.array(["train", "train", "val", "test"])[np.arange(n) % 4],
        **{f"petroMag_{b}": np.full(n, 18.0) for b in "ugriz"},
        **{f"petroMagErr_{b}": np.full(n, 0.1) for b in "ugriz"},
    }
    wl = np.linspace(4000, 5000, m)
    return ss.write_store(tmp_path / name, fluxes=f, ivar=np.ones_like(f), wavelengths=wl, meta=meta)


def _rows(ds):
    out = []
    for x, _y in ds:
        x = x["fluxes"] if isinstance(x, dict) else x
        out.extend(x.numpy().reshape(len(x), -1)[:, 0].astype(int).tolist())
    return out


def test_every_selected_row_once_with_labels(tmp_path):
    p = _store(tmp_path)
    ds = SP.spectra_dataset(p, label="z", split="train", batch_size=5, chunk_rows=6, shuffle=True, seed=3)
    rows = _rows(ds)
    assert sorted(rows) == [i for i in range(37) if i % 4 in (0, 1)]
    for x, y in ds.take(2):
        np.testing.assert_allclose(y.numpy(), x.numpy()[:, 0] / 10.0, rtol=1e-6)
    # reshuffled between epochs, same seed same order
    assert any(_rows(ds) != rows for _ in range(3))
    ds2 = SP.spectra_dataset(p, label="z", split="train", batch_size=5, chunk_rows=6, shuffle=True, seed=3)
    assert _rows(ds2) == rows


def test_class_labels_and_dict_inputs(tmp_path):
    p = _store(tmp_path)
    ds = SP.spectra_dataset(
        p, inputs=("fluxes", "z"), label="class", classes=["GALAXY", "QSO", "STAR"], batch_size=8, channel_axis=True
    )
    x, y = next(iter(ds))
    assert x["fluxes"].shape == (8, 16, 1) and x["z"].shape == (8,)
    np.testing.assert_array_equal(y.numpy(), np.arange(8) % 3)
    with pytest.raises(ss.StoreError, match="not among the classes"):
        SP.spectra_dataset(p, label="class", classes=["GALAXY", "QSO"])
    with pytest.raises(ss.StoreError, match="holds strings"):
        SP.spectra_dataset(p, label="class")
    with pytest.raises(ss.StoreError, match="neither a per-row dataset nor a meta column"):
        SP.spectra_dataset(p, inputs=("nope",))
    with pytest.raises(ss.StoreError, match="no rows selected"):
        SP.spectra_dataset(p, split="holdout")


def test_shards_partition_the_rows(tmp_path):
    p = _store(tmp_path)
    parts = [
        _rows(SP.spectra_dataset(p, label="z", batch_size=4, chunk_rows=5, num_shards=3, shard_index=k))
        for k in range(3)
    ]
    allrows = sorted(sum(parts, []))
    assert allrows == list(range(37))
    assert all(len(set(a) & set(b)) == 0 for i, a in enumerate(parts) for b in parts[i + 1 :])


def test_reads_are_bounded_by_chunk_rows(tmp_path, monkeypatch):
    p = _store(tmp_path)
    sizes = []
    orig = ss.StoreReader.read

    def spy(self, start=0, stop=None, fields=("fluxes",)):
        out = orig(self, start, stop, fields)
        sizes.append(len(out[fields[0]]))
        return out

    monkeypatch.setattr(ss.StoreReader, "read", spy)
    _rows(SP.spectra_dataset(p, label="z", batch_size=4, chunk_rows=7))
    assert sizes and max(sizes) <= 7 and sum(sizes) == 37


def test_sharded_store_directory_and_keras_fit(tmp_path):
    import keras

    p1 = _store(tmp_path, n=20, name="a.h5")
    st = ss.read_store(p1)
    d = tmp_path / "dir"
    for a in (0, 10):
        ss.append_shard(
            d,
            fluxes=st.fluxes[a : a + 10],
            ivar=st.ivar[a : a + 10],
            wavelengths=st.wavelengths,
            meta=st.meta.iloc[a : a + 10].reset_index(drop=True),
        )
    ds = SP.spectra_dataset(d, label="z", batch_size=4, chunk_rows=3, channel_axis=True)
    assert sorted(_rows(ds)) == list(range(20))
    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 1))
    h = keras.layers.Conv1D(2, 3, padding="same", activation="relu")(inp)
    out = keras.layers.Dense(1)(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(inp, out)
    model.compile("adam", "mse")
    hist = model.fit(ds, epochs=2, verbose=0)
    assert np.isfinite(hist.history["loss"]).all()


def test_load_arrays(tmp_path):
    p = _store(tmp_path)
    x, y, meta = SP.load_arrays(
        p, inputs=("fluxes", "petroMag_r"), label="class", classes=["GALAXY", "QSO", "STAR"], split="val"
    )
    assert x["fluxes"].shape == (9, 16) and (x["petroMag_r"] == 18).all()
    np.testing.assert_array_equal(x["fluxes"][:, 0], np.arange(2, 37, 4))
    np.testing.assert_array_equal(y, np.arange(2, 37, 4) % 3)
