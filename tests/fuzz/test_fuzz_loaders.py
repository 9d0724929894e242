"""Bad-input sweep over every loader (issue 8): damaged files give a documented error naming the file.

Seeds are valid files written by the package's own writers and simulators (the HDF5 store, SDSS
spec FITS, cutout FITS, NEPW FITS/CSV catalogues, the RGZ CSV catalogue, CLARAN PNG + JSON data
sets); hypothesis truncates them, overwrites, flips, zeroes, inserts and deletes bytes, and edits
fields of the text formats. Per format, what "never a silently wrong array" means:

* HDF5 store — every dataset has a Fletcher-32 checksum per chunk and the root attribute
  ``n_rows``, so any damaged file must fail with ``StoreError`` or read back identically.
* FITS (spec files, cutouts, NEPW FITS, DR16Q) — the writers add CHECKSUM/DATASUM; readers
  verify them, so a damaged file fails or reads back identically. The FITS checksum is a 32-bit
  ones'-complement sum: changes that cancel in it (e.g. one bit set and the same bit cleared in
  the same byte lane of two 4-byte words) are invisible to the format; such a case is accepted
  only after an independent ``verify_checksum()``/``verify_datasum()`` confirms the sums still
  match, and is counted as "ok, changed (checksum-blind)".
* PNG — every chunk has a CRC-32 and the pixels an Adler-32; damage fails or decodes identically.
* CSV and JSON — no checksum and no length: a digit changed inside a number, or a file cut at a
  line boundary, is undetectable by the format. Such results are accepted only if they keep every
  promise of the loader (shapes, finite values, known classes); everything else must fail with
  the documented error naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from keras_astro import specs
from keras_astro.io import nepw, rgz, sdss, skyview
from keras_astro.io import spectra_store as ss

pytestmark = pytest.mark.fuzz

FUZZ = settings.get_profile("keras_astro_fuzz")
#: TensorFlow-streaming cases cost ~10x a plain read; they try a third as many.
FUZZ_TF = settings(FUZZ, max_examples=max(8, FUZZ.max_examples // 3))
#: Known defects outside this change's files: no shrinking (it would only spend time).
FUZZ_KNOWN = settings(FUZZ_TF, phases=(Phase.explicit, Phase.generate))


# ----------------------------------------------------------------------------------------------
# seeds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    from keras_astro.preprocess import radio as R
    from keras_astro.simulate import radio as simradio
    from keras_astro.simulate.spectra import simulate_spectra

    d = tmp_path_factory.mktemp("fuzz-seeds")
    out: dict[str, Path] = {}

    # HDF5 store: 10 simulated spectra, 64 pixels of the sdss lattice, chunks of 4 rows
    sim = simulate_spectra(10, seed=7)
    sl = slice(1500, 1564)
    grid = specs.spectral_grid("sdss")
    kw = dict(wavelengths=grid[sl], attrs={"grid": "sdss-cut", "seed": 7})
    out["store"] = ss.write_store(
        d / "store.h5",
        fluxes=sim.fluxes[:, sl],
        ivar=sim.ivar[:, sl],
        and_mask=sim.and_mask[:, sl],
        meta=sim.meta,
        chunk_rows=4,
        **kw,
    )
    shards = d / "sharded"
    meta = pd.DataFrame({k: (np.char.decode(v) if v.dtype.kind == "S" else v) for k, v in sim.meta.items()})
    for a, b in ((0, 6), (6, 10)):
        ss.append_shard(
            shards,
            fluxes=sim.fluxes[a:b, sl],
            ivar=sim.ivar[a:b, sl],
            and_mask=sim.and_mask[a:b, sl],
            wavelengths=grid[sl],
            meta=meta.iloc[a:b].reset_index(drop=True),
        )
    out["sharded"] = shards

    # SDSS spec FITS of one simulated object, 300 pixels of its coverage
    good = np.flatnonzero(sim.ivar[0] > 0)
    cov = slice(int(good[0]), int(good[0]) + 300)
    m0 = {k: (v[0].decode() if isinstance(v[0], bytes) else v[0].item()) for k, v in sim.meta.items()}
    name = f"spec-{m0['plate']:04d}-{m0['mjd']:05d}-{m0['fiberid']:04d}.fits"
    out["spec"] = sdss.write_spec_fits(
        d / name,
        loglam=np.log10(grid[cov]),
        flux=sim.fluxes[0, cov],
        ivar=sim.ivar[0, cov],
        and_mask=sim.and_mask[0, cov],
        meta={**m0, "run2d": "v5_13_2" if m0["plate"] >= 3500 else "26"},
    )

    # a download target list, as `keras-astro spectra query` writes it (astropy CSV)
    targets = Table(
        {
            "specObjID": sim.meta["specObjID"],
            "plate": sim.meta["plate"],
            "mjd": sim.meta["mjd"],
            "fiberID": sim.meta["fiberid"],
            "run2d": np.where(sim.meta["plate"] >= 3500, "v5_13_2", "26"),
            "z": np.round(sim.meta["z"], 5),
            "class": np.char.decode(sim.meta["class"]),
        }
    )
    targets.write(d / "targets.csv", format="ascii.csv")
    out["targets"] = d / "targets.csv"

    # DR16Q: the crafted test table, re-written with FITS checksums (the package has no DR16Q writer)
    src = Path(__file__).resolve().parents[1] / "data" / "sdss" / "dr16q_small.fits"
    with fits.open(src) as h:
        h.writeto(d / "DR16Q_small.fits", checksum=True)
    out["dr16q"] = d / "DR16Q_small.fits"

    # NEPW catalogue (FITS and CSV) in the layout of data_specs/nepw_catalogue.yaml
    out["nepw_fits"], out["nepw_csv"] = _nepw_seed(d)

    # the RGZ catalogue: its first 20 rows
    lines = rgz.catalogue_path().read_text().splitlines(keepends=True)
    (d / "rgz_catalogue.csv").write_text("".join(lines[:21]))
    out["rgz_csv"] = d / "rgz_catalogue.csv"

    # a simulated FIRST cutout and the CLARAN data set folder built from it
    cat = rgz.load_catalogue()
    subject = cat.subjects[0]
    radio_path, ir_path = simradio.write_subject_fits(subject, d / "cutouts", seed=0)
    out["cutout"] = radio_path
    radio_img, _ = skyview.read_cutout(radio_path)
    ir_img, _ = skyview.read_cutout(ir_path)
    rgb = R.fuse(radio_img, ir_img, "D3", subject=subject.name)
    root = d / "rgz_dataset"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    ann = rgz.subject_annotations(subject)
    import cv2

    names = [subject.name, "FIRSTJ000000.0+000000"]
    for nm in names:
        assert cv2.imwrite(str(root / "images" / f"{nm}.png"), np.ascontiguousarray(rgb[..., ::-1]))
        (root / "annotations" / f"{nm}.json").write_text(
            json.dumps(
                {
                    "subject": nm,
                    "width": int(rgb.shape[1]),
                    "height": int(rgb.shape[0]),
                    "boxes": np.round(ann["boxes"], 3).tolist(),
                    "labels": ann["labels"],
                    "split": "train",
                },
                indent=1,
            )
        )
    (root / "train.txt").write_text("".join(f"{nm}\n" for nm in names))
    out["rgz_dataset"] = root
    out["rgz_subject"] = Path(subject.name)
    return out


def _nepw_seed(d: Path) -> tuple[Path, Path]:
    layout = nepw.CatalogueLayout.default()
    rng = np.random.default_rng(3)
    n = 8
    t = Table()
    t[layout.id_column] = np.arange(1, n + 1)
    t[layout.redshift_column] = np.round(rng.uniform(0.1, 2.0, n), 4)
    t[layout.label_column] = np.array(["AGN", "SFG", "", "AGN", "SFG", "SFG", "", "AGN"])
    for mc, ec in zip(layout.mag_columns, layout.err_columns):
        mag = np.round(rng.uniform(17, 24, n), 3)
        err = np.round(rng.uniform(0.01, 0.3, n), 3)
        gone = rng.random(n) < 0.3
        mag[gone] = layout.missing_value
        err[gone] = layout.missing_value
        t[mc], t[ec] = mag, err
    return nepw.write_catalogue(t, d / "nepw.fits"), nepw.write_catalogue(t, d / "nepw.csv")


# ----------------------------------------------------------------------------------------------
# comparisons and validators


def _eq(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, pd.DataFrame):
        return isinstance(b, pd.DataFrame) and a.equals(b) and list(a.columns) == list(b.columns)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(_eq(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return bool(a == b)


def _store_reader(which: str):
    def read(path: Path):
        if which == "read_store":
            st_ = ss.read_store(path)
            return dataclasses.replace(st_, attrs={k: str(v) for k, v in st_.attrs.items()})
        if which == "read_meta":
            return ss.read_meta(path)
        if which == "store_spec_ids":
            return ss.store_spec_ids(path)
        with ss.open_store(path) as r:
            return [(s, c) for s, c in r.iter_chunks(3, fields=("fluxes", "ivar", "and_mask"))]

    return read


STORE_READERS = ("read_store", "read_meta", "iter_chunks", "store_spec_ids")


@pytest.fixture(scope="module")
def store_refs(seeds):
    return {(w, k): _store_reader(w)(seeds[k]) for w in STORE_READERS for k in ("store", "sharded")}


# ----------------------------------------------------------------------------------------------
# HDF5 spectrum store


@FUZZ
@given(data=st.data())
def test_store_damaged_bytes(fuzz, seeds, store_refs, data):
    which = data.draw(st.sampled_from(STORE_READERS), label="reader")
    kind = data.draw(st.sampled_from(["store", "sharded"]), label="layout")
    if kind == "store":
        raw = seeds["store"].read_bytes()
        damaged, how = fuzz.mutate_bytes(data, raw)
        path = fuzz.case_path("store.h5", damaged)
        named = path
    else:  # damage one shard of a sharded store directory
        shards = sorted(seeds["sharded"].iterdir())
        k = data.draw(st.integers(0, len(shards) - 1), label="shard")
        damaged, how = fuzz.mutate_bytes(data, shards[k].read_bytes())
        path = fuzz.case_dir() / "sharded"
        path.mkdir()
        for i, s in enumerate(shards):
            (path / s.name).write_bytes(damaged if i == k else s.read_bytes())
        named = path / shards[k].name
    ref = store_refs[(which, kind)]
    fuzz.check(
        f"spectra_store.{which}",
        lambda: _store_reader(which)(path),
        allowed=(ss.StoreError,),
        names=named,
        case=f"{kind} {how}",
        same=lambda out: _eq(out, ref),
    )


@FUZZ
@given(data=st.data())
def test_store_bad_values_are_refused_by_the_pipeline(fuzz, seeds, data):
    """NaN/inf written into a store (fluxes, labels, meta inputs) never reach a model silently."""
    from keras_astro.pipelines.spectra import spectra_dataset

    st_ = ss.read_store(seeds["store"])
    fluxes = st_.fluxes.copy()
    meta = st_.meta.copy()
    where = data.draw(st.sampled_from(["fluxes", "z", "petroMag_r"]), label="where")
    value = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="value")
    row = data.draw(st.integers(0, len(fluxes) - 1), label="row")
    if where == "fluxes":
        fluxes[row, data.draw(st.integers(0, fluxes.shape[1] - 1), label="pixel")] = value
    else:
        meta.loc[row, where] = value
    path = fuzz.case_dir() / "values.h5"
    ss.write_store(path, fluxes=fluxes, ivar=st_.ivar, wavelengths=st_.wavelengths, meta=meta)
    inputs = ("fluxes", "petroMag_r") if where == "petroMag_r" else ("fluxes",)

    def stream():
        ds = spectra_dataset(path, inputs=inputs, label="z", batch_size=4, chunk_rows=3)
        return [tuple(np.asarray(t) for t in _flat(b)) for b in ds]

    import tensorflow as tf

    outcome = fuzz.check(
        "pipelines.spectra_dataset (NaN/inf)",
        stream,
        allowed=(ss.StoreError, tf.errors.OpError),
        names=path,
        case=f"{value} in {where} row {row}",
        message_check=lambda e: isinstance(e, ss.StoreError) or "StoreError" in str(e),
        changed_ok=lambda out: None,  # NaN in a tabular input means "missing" (MissingToValue)
    )
    if where != "petroMag_r" or not np.isnan(value):
        assert outcome not in ("ok", "ok, changed"), f"{value} in {where} reached the model"


def _flat(batch):
    x, y = batch
    xs = list(x.values()) if isinstance(x, dict) else [x]
    return [*xs, y]


@FUZZ_TF
@given(data=st.data())
def test_store_damaged_bytes_streamed_through_tf_data(fuzz, seeds, data):
    """Damage found while streaming stops the epoch with an error that carries StoreError and the file."""
    import tensorflow as tf

    from keras_astro.pipelines.spectra import spectra_dataset

    def epoch(path):
        ds = spectra_dataset(path, label="z", batch_size=4, chunk_rows=3)
        return [tuple(np.asarray(t) for t in b) for b in ds]

    ref = epoch(seeds["store"])
    damaged, how = fuzz.mutate_bytes(data, seeds["store"].read_bytes())
    path = fuzz.case_path("store.h5", damaged)
    fuzz.check(
        "pipelines.spectra_dataset (damaged file)",
        lambda: epoch(path),
        allowed=(ss.StoreError, tf.errors.OpError),
        names=path,
        case=how,
        same=lambda out: _eq(out, ref),
        message_check=lambda e: isinstance(e, ss.StoreError) or "StoreError" in str(e),
    )


# ----------------------------------------------------------------------------------------------
# FITS: SDSS spec files, DR16Q, cutouts, NEPW catalogues


def _checksum_blind(path: Path):
    """Validator: accept a changed FITS result only if the file's checksums still verify."""

    def check(_out) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, checksum=False) as hdul:
                for hdu in hdul:
                    assert "CHECKSUM" in hdu.header and "DATASUM" in hdu.header, "an HDU without checksums"
                    assert hdu.verify_checksum() == 1 and hdu.verify_datasum() == 1, (
                        "the checksums do not match, so the reader should have refused the file"
                    )

    return check


BLIND = "ok, changed (checksum-blind)"


def _spec_same(ref):
    def same(out):
        return _eq(out.meta, ref.meta) and all(
            _eq(getattr(out, k), getattr(ref, k)) for k in ("loglam", "flux", "ivar", "and_mask")
        )

    return same


@FUZZ
@given(data=st.data())
def test_spec_fits_damaged_bytes(fuzz, seeds, data):
    src = seeds["spec"]
    ref = sdss.read_spec_fits(src)
    damaged, how = fuzz.mutate_bytes(data, src.read_bytes())
    path = fuzz.case_path(src.name, damaged)
    fuzz.check(
        "sdss.read_spec_fits",
        lambda: _quiet(sdss.read_spec_fits, path),
        allowed=(sdss.SpectraIOError,),
        names=path,
        case=how,
        same=_spec_same(ref),
        changed_ok=_checksum_blind(path),
        changed_label=BLIND,
    )


@FUZZ
@given(data=st.data())
def test_spec_fits_bad_values(fuzz, seeds, data):
    """NaN/inf, negative ivar, wrong shapes and dtypes written by the package's own writer."""
    ref = sdss.read_spec_fits(seeds["spec"])
    n = len(ref)
    arrays = {"loglam": ref.loglam.copy(), "flux": ref.flux.copy(), "ivar": ref.ivar.copy(), "and_mask": ref.and_mask}
    what = data.draw(st.sampled_from(["value", "shape", "dtype"]), label="what")
    col = data.draw(st.sampled_from(["loglam", "flux", "ivar"]), label="column")
    if what == "value":
        k = data.draw(st.integers(1, 5), label="count")
        idx = data.draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k), label="pixels")
        arrays[col][idx] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 0.0]), label="value")
    elif what == "shape":
        arrays[col] = data.draw(
            st.sampled_from([arrays[col][:-1], arrays[col][:, None], np.tile(arrays[col], 2), arrays[col][:0]]),
            label="shape",
        )
    else:
        arrays[col] = arrays[col].astype(data.draw(st.sampled_from(["int16", "float16", "U8", "complex64"])))
    path = fuzz.case_dir() / seeds["spec"].name
    meta = {**ref.meta, "run2d": "v5_13_2"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sdss.write_spec_fits(path, meta=meta, **arrays)
    except sdss.SpectraIOError as exc:  # the writer refuses (names the file)
        assert path.name in str(exc)
        fuzz.record("sdss.write_spec_fits (bad values)", type(exc).__name__)
        return
    except (ValueError, TypeError) as exc:
        fuzz.record("sdss.write_spec_fits (bad values)", f"UNEXPECTED {type(exc).__name__}")
        raise AssertionError(f"write_spec_fits leaked {type(exc).__name__} for {what} {col}: {exc}") from exc
    fuzz.record("sdss.write_spec_fits (bad values)", "written")

    def valid(out):
        assert np.isfinite(out.flux).all() and np.isfinite(out.ivar).all() and (out.ivar >= 0).all()
        assert np.all(np.diff(out.loglam) > 0) and out.flux.ndim == 1 and len(out.flux) == len(out.loglam)

    fuzz.check(
        "sdss.read_spec_fits (bad values)",
        lambda: _quiet(sdss.read_spec_fits, path),
        allowed=(sdss.SpectraIOError,),
        names=path,
        case=f"{what} in {col}",
        changed_ok=valid,
    )


@FUZZ
@given(data=st.data())
def test_dr16q_damaged_bytes(fuzz, seeds, data):
    src = seeds["dr16q"]
    ref = sdss.read_dr16q(src)
    damaged, how = fuzz.mutate_bytes(data, src.read_bytes())
    path = fuzz.case_path(src.name, damaged)
    fuzz.check(
        "sdss.read_dr16q",
        lambda: _quiet(sdss.read_dr16q, path),
        allowed=(sdss.SpectraIOError,),
        names=path,
        case=how,
        same=lambda out: _eq(out, ref),
        changed_ok=_checksum_blind(path),
        changed_label=BLIND,
    )


def test_fits_checks_are_thread_safe(seeds, tmp_path):
    """Downloads read files on several threads: one thread's damaged file never fails another's."""
    from concurrent.futures import ThreadPoolExecutor

    pairs = []
    for key, read in (("spec", sdss.read_spec_fits), ("cutout", skyview.read_cutout)):
        raw = bytearray(seeds[key].read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        bad = tmp_path / f"bad-{seeds[key].name}"
        bad.write_bytes(bytes(raw))
        pairs.append((read, seeds[key], bad))

    def good_then_bad(i):
        read, good, bad = pairs[i % 2]
        read(good)  # must never raise
        try:
            read(bad)
        except (sdss.SpectraIOError, skyview.CutoutError):
            return True
        return False

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(pool.map(good_then_bad, range(40)))


def _cutout_same(ref):
    image, header = ref

    def same(out):
        return _eq(out[0], image) and out[1].tostring() == header.tostring()

    return same


@FUZZ
@given(data=st.data())
def test_cutout_damaged_bytes(fuzz, seeds, data):
    src = seeds["cutout"]
    ref = skyview.read_cutout(src)
    damaged, how = fuzz.mutate_bytes(data, src.read_bytes())
    path = fuzz.case_path(src.name, damaged)
    fuzz.check(
        "skyview.read_cutout",
        lambda: _quiet(skyview.read_cutout, path),
        allowed=(skyview.CutoutError,),
        names=path,
        case=how,
        same=_cutout_same(ref),
        changed_ok=_checksum_blind(path),
        changed_label=BLIND,
    )


@FUZZ
@given(data=st.data())
def test_cutout_bad_values(fuzz, seeds, data):
    """NaN/inf pixels, blank images, wrong shapes and dtypes written with write_cutout."""
    image, header = skyview.read_cutout(seeds["cutout"])
    what = data.draw(st.sampled_from(["nan", "inf", "blank", "shape", "dtype"]), label="what")
    img = image.copy()
    if what in ("nan", "inf"):
        frac = data.draw(st.sampled_from([0.001, 0.05, 0.1, 0.11, 0.5, 1.0]), label="fraction")
        k = max(1, int(round(frac * img.size)))
        idx = (
            data.draw(st.lists(st.integers(0, img.size - 1), min_size=k, max_size=k), label="pixels")
            if k < 50
            else slice(0, k)
        )
        img.flat[idx] = np.nan if what == "nan" else data.draw(st.sampled_from([np.inf, -np.inf]), label="sign")
    elif what == "blank":
        img[:] = data.draw(st.sampled_from([0.0, 1.0, -3.5]), label="value")
    elif what == "shape":
        img = data.draw(
            st.sampled_from([img[:-1], img[:, :64], img[None], np.stack([img, img]), img[0], img[:1]]), label="shape"
        )
    else:
        img = img.astype(data.draw(st.sampled_from(["int16", "uint8", "float64", "float16", "int64"]), label="dtype"))
    path = fuzz.case_dir() / seeds["cutout"].name
    skyview.write_cutout(path, img, header)

    def valid(out):
        im, _ = out
        assert im.shape == (132, 132) and im.dtype == np.float32 and np.isfinite(im).all() and im.max() > im.min()

    fuzz.check(
        "skyview.read_cutout (bad values)",
        lambda: _quiet(skyview.read_cutout, path),
        allowed=(skyview.CutoutError,),
        names=path,
        case=what,
        changed_ok=valid,
    )


def _photometry_same(ref):
    def same(out):
        return all(_eq(getattr(out, k), getattr(ref, k)) for k in ("values", "labels", "redshift")) and _eq(
            np.asarray(out.ids).astype(str), np.asarray(ref.ids).astype(str)
        )

    return same


def _photometry_valid(out):
    v = out.values
    assert v.ndim == 3 and v.shape[1:] == (len(specs.band_names()), 2) and v.dtype == np.float32
    assert (np.isnan(v[..., 0]) == np.isnan(v[..., 1])).all(), "a band with only one of magnitude/error"
    have = ~np.isnan(v[..., 0])
    assert np.isfinite(v[have]).all(), "an infinite magnitude or error was accepted"
    assert (v[..., 1][have] > 0).all()
    assert set(np.unique(out.labels)) <= {-1, 0, 1}
    assert len(out.ids) == len(out.labels) == len(out.redshift) == len(v)


@FUZZ
@given(data=st.data())
def test_nepw_fits_damaged_bytes(fuzz, seeds, data):
    src = seeds["nepw_fits"]
    ref = nepw.load_photometry(src)
    damaged, how = fuzz.mutate_bytes(data, src.read_bytes())
    path = fuzz.case_path(src.name, damaged)
    fuzz.check(
        "nepw.load_photometry (FITS)",
        lambda: _quiet(nepw.load_photometry, path),
        allowed=(nepw.CatalogueError,),
        names=path,
        case=how,
        same=_photometry_same(ref),
        changed_ok=_checksum_blind(path),
        changed_label=BLIND,
    )


# ----------------------------------------------------------------------------------------------
# CSV: NEPW catalogue, RGZ catalogue


@FUZZ
@given(data=st.data())
def test_nepw_csv_damaged(fuzz, seeds, data):
    src = seeds["nepw_csv"]
    ref = nepw.load_photometry(src)
    damaged, how = fuzz.mutate_text(data, src.read_bytes())
    path = fuzz.case_path(src.name, damaged)
    fuzz.check(
        "nepw.load_photometry (CSV)",
        lambda: _quiet(nepw.load_photometry, path),
        allowed=(nepw.CatalogueError,),
        names=path,
        case=how,
        same=_photometry_same(ref),
        changed_ok=_photometry_valid,
    )


@FUZZ
@given(data=st.data())
def test_download_targets_csv_damaged(fuzz, seeds, data):
    """A damaged target list: SpectraIOError naming the file, or rows the downloader can judge."""
    src = seeds["targets"]
    ref = sdss.read_targets(src)
    damaged, how = fuzz.mutate_text(data, src.read_bytes())
    path = fuzz.case_path(src.name, damaged)

    def read_and_parse():
        table = sdss.read_targets(path)
        return table, sdss._targets_frame(table)  # what download_spectra does first

    def same(out):
        return out[0].pformat(max_lines=-1, max_width=-1) == ref.pformat(max_lines=-1, max_width=-1)

    def valid(out):
        table, (parsed, bad) = out
        assert len(parsed) + len(bad) == len(table)  # every row is a target or a reported failure
        for t in parsed:
            assert all(isinstance(v, int) for v in (t.plate, t.mjd, t.fiberid))

    fuzz.check(
        "sdss.read_targets (CSV)",
        read_and_parse,
        allowed=(sdss.SpectraIOError,),
        names=path,
        case=how,
        same=same,
        changed_ok=valid,
    )


def _rgz_same(ref):
    def same(out):
        return [(s.name, s.sources) for s in out] == [(s.name, s.sources) for s in ref]

    return same


def _rgz_valid(cat):
    classes = set(rgz.class_names())
    for subj in cat:
        rgz.parse_first_id(subj.name)
        assert subj.sources and len({s.training for s in subj.sources}) == 1
        for s in subj.sources:
            assert s.label in classes
            assert len(s.ras) == len(s.decs) == s.num_cpnts
            assert np.isfinite(s.ras).all() and np.isfinite(s.decs).all()
            assert math.isfinite(s.ang_extent) and s.ang_extent > 0 and math.isfinite(s.cl)


@FUZZ
@given(data=st.data())
def test_rgz_catalogue_damaged(fuzz, seeds, data):
    src = seeds["rgz_csv"]
    ref = rgz.load_catalogue(src)
    damaged, how = fuzz.mutate_text(data, src.read_bytes())
    path = fuzz.case_path(src.name, damaged)
    fuzz.check(
        "rgz.load_catalogue (CSV)",
        lambda: rgz.load_catalogue(path),
        allowed=(rgz.CatalogueError,),
        names=path,
        case=how,
        same=_rgz_same(ref),
        changed_ok=_rgz_valid,
    )


# ----------------------------------------------------------------------------------------------
# CLARAN data set folders: JSON annotations and PNG images (pipelines/rgz.py)



def _copy_dataset(fuzz, root: Path) -> Path:
    out = fuzz.case_dir() / "dataset"
    for p in root.rglob("*"):
        if p.is_file():
            q = out / p.relative_to(root)
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes(p.read_bytes())
    return out


def _split_valid(out):
    assert out["boxes"].ndim == 3 and out["boxes"].shape[2] == 4 and np.isfinite(out["boxes"]).all()
    assert ((out["classes"] >= 0) & (out["classes"] <= len(rgz.class_names()))).all()
    for b, n in zip(out["boxes"], out["num_boxes"]):
        assert (b[:n, 2] > b[:n, 0]).all() and (b[:n, 3] > b[:n, 1]).all() and (b[:n] >= 0).all()


@FUZZ_KNOWN
@given(data=st.data())
def test_rgz_annotations_damaged(fuzz, seeds, data):
    from keras_astro.pipelines import rgz as P

    ref = P.read_split(seeds["rgz_dataset"], "train")
    root = _copy_dataset(fuzz, seeds["rgz_dataset"])
    target = root / "annotations" / f"{seeds['rgz_subject']}.json"
    damaged, how = fuzz.mutate_text(data, target.read_bytes())
    target.write_bytes(damaged)
    fuzz.check(
        "pipelines.rgz.read_split (JSON)",
        lambda: P.read_split(root, "train"),
        allowed=(P.DatasetError,),
        names=target,
        case=how,
        same=lambda out: all(_eq(out[k], ref[k]) for k in ("boxes", "classes", "num_boxes")),
        changed_ok=_split_valid,
    )


@FUZZ_KNOWN
@given(data=st.data())
def test_rgz_png_damaged(fuzz, seeds, data):
    from keras_astro.pipelines import rgz as P

    def decode(root):
        ds = P.rgz_dataset(root, "train", flip=False, shuffle=False, image_size=66)
        return [tuple(np.asarray(t) for t in b) for b in ds]

    ref = decode(seeds["rgz_dataset"])
    root = _copy_dataset(fuzz, seeds["rgz_dataset"])
    target = root / "images" / f"{seeds['rgz_subject']}.png"
    damaged, how = fuzz.mutate_bytes(data, target.read_bytes())
    target.write_bytes(damaged)
    fuzz.check(
        "pipelines.rgz.rgz_dataset (PNG)",
        lambda: decode(root),
        allowed=(P.DatasetError,),
        names=target,
        case=how,
        same=lambda out: _eq(out, ref),
    )


def _quiet(fn, *args):
    """Call ``fn`` with astropy's warnings silenced (they are not what the sweep judges)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args)


def test_sweep_profile_is_deterministic_by_default():
    """CI runs the derandomized default profile unless KERAS_ASTRO_FUZZ=thorough."""
    if (
        os.environ.get("KERAS_ASTRO_FUZZ", "default") in ("", "default")
        and "KERAS_ASTRO_FUZZ_EXAMPLES" not in os.environ
    ):
        assert FUZZ.derandomize and FUZZ.database is None and 25 <= FUZZ.max_examples <= 40
