"""The HDF5 spectrum store: layout, atomic writes, shards, streaming reads, bad input."""

import h5py
import numpy as np
import pandas as pd
import pytest

from keras_astro.io import spectra_store as ss
from keras_astro.specs import spectral_grid


def _meta(n, start=0):
    rng = np.random.default_rng(start)
    cols = {c: rng.normal(size=n).astype(d) for c, d in ss.meta_schema().items() if d.kind == "f"}
    cols.update(
        specObjID=np.arange(start, start + n, dtype=np.uint64) + np.uint64(2**62),
        plate=np.full(n, 266),
        mjd=np.full(n, 51630),
        fiberid=np.arange(start, start + n) % 640 + 1,
        **{"class": np.array(["GALAXY", "QSO", "STAR"] * n)[:n], "subClass": np.array([""] * n)},
    )
    return {k: v for k, v in cols.items() if k in ss.required_meta_columns()}


def _rows(n, m, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, m)).astype(np.float32), rng.uniform(0.5, 2, (n, m)).astype(np.float32)


def test_round_trip_single_file(tmp_path):
    wl = spectral_grid("sdss")[:50]
    f, iv = _rows(7, 50)
    meta = _meta(7)
    p = ss.write_store(tmp_path / "s.h5", fluxes=f, ivar=iv, wavelengths=wl, meta=meta, attrs={"grid": "sdss"})
    st = ss.read_store(p)
    np.testing.assert_array_equal(st.fluxes, f)
    np.testing.assert_array_equal(st.ivar, iv)
    np.testing.assert_array_equal(st.wavelengths, wl)
    assert st.meta["class"].tolist() == list(meta["class"])
    assert st.meta["specObjID"].dtype == np.uint64
    assert st.attrs["grid"] == "sdss" and st.attrs["layout_version"] == 1
    with h5py.File(p) as h:  # documented layout: chunked float32 datasets, meta group
        assert h["fluxes"].dtype == np.float32 and h["fluxes"].chunks is not None
        assert set(ss.required_meta_columns()) <= set(h["meta"])
    assert not list(tmp_path.glob(".*tmp"))


def test_streaming_writer_matches_one_shot_and_reader_slices(tmp_path):
    wl = spectral_grid("sdss")[:30]
    f, iv = _rows(25, 30, seed=1)
    meta = pd.DataFrame(_meta(25))
    with ss.StoreWriter(tmp_path / "a.h5", wl, chunk_rows=4) as w:
        for a in range(0, 25, 6):
            w.append(fluxes=f[a : a + 6], ivar=iv[a : a + 6], meta=meta.iloc[a : a + 6])
    with ss.open_store(tmp_path / "a.h5") as r:
        assert len(r) == 25
        np.testing.assert_array_equal(r.read(3, 17)["fluxes"], f[3:17])
        got = np.concatenate([c["fluxes"] for _, c in r.iter_chunks(4)])
        np.testing.assert_array_equal(got, f)
        idx = np.array([20, 2, 2, 9])
        np.testing.assert_array_equal(r.read_rows(idx, ("fluxes", "ivar"))["ivar"], iv[idx])


def test_shards_concatenate_and_refuse_duplicates(tmp_path):
    wl = spectral_grid("sdss")[:20]
    d = tmp_path / "store"
    f1, i1 = _rows(5, 20, 1)
    f2, i2 = _rows(4, 20, 2)
    ss.append_shard(d, fluxes=f1, ivar=i1, wavelengths=wl, meta=_meta(5, 0))
    ss.append_shard(d, fluxes=f2, ivar=i2, wavelengths=wl, meta=_meta(4, 5))
    assert [p.name for p in ss.shard_paths(d)] == ["shard-00000.h5", "shard-00001.h5"]
    st = ss.read_store(d)
    np.testing.assert_array_equal(st.fluxes, np.concatenate([f1, f2]))
    assert len(ss.store_spec_ids(d)) == 9
    with pytest.raises(ss.StoreError, match="already stored"):
        ss.append_shard(d, fluxes=f2[:1], ivar=i2[:1], wavelengths=wl, meta=_meta(1, 3))
    with pytest.raises(ss.StoreError, match="grid differs"):
        ss.append_shard(d, fluxes=f2[:1], ivar=i2[:1], wavelengths=wl * 1.01, meta=_meta(1, 30))
    # rows across the shard boundary
    with ss.open_store(d) as r:
        np.testing.assert_array_equal(r.read(3, 7)["fluxes"], np.concatenate([f1, f2])[3:7])
        np.testing.assert_array_equal(r.read_rows(np.array([8, 0]))["fluxes"], np.stack([f2[3], f1[0]]))


def test_failed_write_leaves_nothing(tmp_path):
    wl = spectral_grid("sdss")[:10]
    f, iv = _rows(3, 10)
    with pytest.raises(RuntimeError):
        with ss.StoreWriter(tmp_path / "x.h5", wl) as w:
            w.append(fluxes=f, ivar=iv, meta=_meta(3))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(drop="z"), r"lacks required column\(s\) \['z'\]"),
        (dict(dup=True), "specObjID repeated"),
        (dict(shape=(3, 9)), r"fluxes has shape \(3, 9\)"),
        (dict(longclass=True), "longer than 6"),
    ],
)
def test_bad_writes_raise_clear_errors(tmp_path, bad, match):
    wl = spectral_grid("sdss")[:10]
    f, iv = _rows(3, 10)
    meta = _meta(3)
    if "drop" in bad:
        meta.pop(bad["drop"])
    if bad.get("dup"):
        meta["specObjID"][:] = 5
    if "shape" in bad:
        f = np.zeros(bad["shape"], np.float32)
    if bad.get("longclass"):
        meta["class"] = np.array(["GALAXYXX"] * 3)
    with pytest.raises(ss.StoreError, match=match):
        ss.write_store(tmp_path / "b.h5", fluxes=f, ivar=iv, wavelengths=wl, meta=meta)
    assert not (tmp_path / "b.h5").exists()


def test_reading_bad_files_names_the_file(tmp_path):
    p = tmp_path / "junk.h5"
    p.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ss.StoreError, match="junk.h5.*not a readable HDF5"):
        ss.read_store(p)
    q = tmp_path / "other.h5"
    with h5py.File(q, "w") as h:
        h["fluxes"] = np.zeros((2, 3))
    with pytest.raises(ss.StoreError, match="other.h5.*no 'ivar'"):
        ss.read_store(q)
    with pytest.raises(ss.StoreError, match="no such spectrum store"):
        ss.read_store(tmp_path / "missing.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ss.StoreError, match="no shard"):
        ss.read_store(tmp_path / "empty")
    # truncated real store
    wl = spectral_grid("sdss")[:10]
    f, iv = _rows(3, 10)
    good = ss.write_store(tmp_path / "good.h5", fluxes=f, ivar=iv, wavelengths=wl, meta=_meta(3))
    data = good.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ss.StoreError, match="trunc.h5"):
        ss.read_store(tmp_path / "trunc.h5")
