"""Tests of keras_astro.io.sdss.

No test touches the network. ``requests.Session.request`` — the call both astroquery's
``BaseQuery._request`` (SkyServer SQL) and our spectrum download end in — is replaced by fakes:
one answering with the recorded SkyServer CSV of ``tests/data/sdss/``, one serving real-format
spec FITS files by SAS URL. Everything above it (astroquery's payload, cache and CSV parsing;
our retries, atomic writes, store appends) is the real code.
"""

from __future__ import annotations

import csv
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from astropy.io import fits
from astropy.table import Table

from keras_astro import specs
from keras_astro.io import sdss, spectra_store

DATA = Path(__file__).resolve().parents[1] / "data" / "sdss"
CSV = {c: DATA / f"skyserver_{c.lower()}.csv" for c in ("QSO", "STAR", "GALAXY")}
DR16Q = DATA / "dr16q_small.fits"
BOSS_FILE = DATA / "spec-10445-58158-0427.fits"
LEGACY_FILE = DATA / "spec-0266-51602-0003.fits"

THESIS_COLUMNS = (
    "spec.z, spec.ra, spec.dec, spec.specObjID, spec.bestObjID, spec.fluxObjID, spec.targetObjID, "
    "spec.plate, spec.class, spec.subClass, spec.zErr, spho.petroMag_u, spho.petroMag_g, spho.petroMag_r, "
    "spho.petroMag_i, spho.petroMag_z, spho.petroMagErr_u, spho.petroMagErr_g, spho.petroMagErr_r, "
    "spho.petroMagErr_i, spho.petroMagErr_z, spec.mjd, spec.fiberID, spec.run2d"
)
JOIN = "FROM SpecObjAll AS spec JOIN SpecPhotoAll AS spho ON spec.specObjID = spho.specObjID"


def _response(url: str, content: bytes, status: int = 200, content_type: str = "text/plain") -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r.reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "")
    r._content = content
    r.url = url
    r.encoding = "utf-8"
    r.headers["Content-Type"] = content_type
    r.request = requests.Request("GET", url).prepare()
    return r


# ------------------------------------------------------------------------------------------
# fakes


class FakeSkyServer:
    """SkyServer's SQL endpoint: answers each query with the recorded CSV of its class filter.

    ``before`` holds outcomes served first (an exception to raise, or (bytes, status))."""

    def __init__(self, before: tuple = ()) -> None:
        self.before = list(before)
        self.calls: list[dict] = []

    def __call__(self, method: str, url: str, **kw) -> requests.Response:
        self.calls.append({"method": method, "url": url, **kw})
        if self.before:
            outcome = self.before.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            return _response(url, outcome[0], outcome[1], "text/html")
        sql = kw["params"]["cmd"]
        for cls, path in CSV.items():
            if f"spec.class = '{cls}'" in sql:
                return _response(url, path.read_bytes(), 200, "text/plain")
        raise AssertionError(f"unexpected SQL {sql}")

    def sql(self, i: int = -1) -> str:
        return self.calls[i]["params"]["cmd"]


class FakeSAS:
    """The Science Archive Server: serves spec files by URL (404 for unknown URLs).

    ``script[url]`` lists outcomes served first for that URL (HTTP status or exception);
    ``interrupt_after=k`` raises KeyboardInterrupt on every request after the k-th;
    ``barrier=n`` makes the first n requests wait for each other (fails unless parallel)."""

    def __init__(self, files: dict[str, bytes], *, script=None, interrupt_after=None, barrier=None) -> None:
        self.files = files
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.interrupt_after = interrupt_after
        self.barrier = threading.Barrier(barrier, timeout=10) if barrier else None
        self.calls: list[str] = []
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, method: str, url: str, **kw) -> requests.Response:
        with self.lock:
            self.calls.append(url)
            n = len(self.calls)
            self.threads.add(threading.get_ident())
            scripted = self.script.get(url)
            outcome = scripted.pop(0) if scripted else None
        if self.interrupt_after is not None and n > self.interrupt_after:
            raise KeyboardInterrupt
        if self.barrier is not None and n <= self.barrier.parties:
            self.barrier.wait()
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, int):
            return _response(url, b"<html>error</html>", outcome, "text/html")
        if url in self.files:
            return _response(url, self.files[url], 200, "application/fits")
        return _response(url, b"<html>404 Not Found</html>", 404, "text/html")


@pytest.fixture
def http(monkeypatch: pytest.MonkeyPatch) -> Callable:
    """Install a fake as ``requests.Session.request``."""

    def install(fake):
        monkeypatch.setattr(requests.Session, "request", lambda self, method, url, **kw: fake(method, url, **kw))
        return fake

    return install


@pytest.fixture
def client(tmp_path: Path) -> tuple[sdss.SDSSClient, list[float]]:
    sleeps: list[float] = []
    return sdss.SDSSClient(cache_dir=tmp_path / "cache", backoff=1.5, sleep=sleeps.append), sleeps


# ------------------------------------------------------------------------------------------
# a small archive of real-format spec files


N_PIX = 300
#: (plate, mjd, fiber, run2d, class, subClass, z, loglam0)
OBJECTS = [
    (266, 51602, 3, "26", "GALAXY", "STARFORMING", 0.021, 3.5800),
    (1678, 53433, 611, "26", "STAR", "K1", 0.0001, 3.5800),
    (2963, 54589, 100, "26", "QSO", "BROADLINE", 1.2, 3.5810),
    (4055, 55359, 596, "v5_13_2", "QSO", "", 2.31, 3.5523),
    (4055, 55359, 597, "v5_13_2", "GALAXY", "", 0.45, 3.5523),
    (7339, 56768, 123, "v5_13_2", "STAR", "M2V", 0.0, 3.5525),
    (8180, 57300, 5, "v5_13_2", "QSO", "", 3.1, 3.5530),
    (9149, 58039, 775, "v5_13_2", "GALAXY", "AGN", 0.93, 3.5529),
    (10445, 58158, 427, "v5_13_2", "QSO", "BROADLINE", 2.35, 3.5525),
    (11069, 58456, 113, "v5_13_2", "QSO", "", 0.59, 3.5524),
]


def _spectrum_arrays(i: int, loglam0: float):
    rng = np.random.default_rng(100 + i)
    loglam = loglam0 + 1e-4 * np.arange(N_PIX)
    flux = (5 + i + rng.normal(0, 1, N_PIX)).astype(np.float32)
    ivar = rng.uniform(1, 4, N_PIX).astype(np.float32)
    and_mask = np.zeros(N_PIX, np.int32)
    ivar[10:15] = 0
    flux[10:15] = 0
    and_mask[10:15] = 1 << 23
    return loglam, flux, ivar, and_mask


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    """Spec files written with write_spec_fits, the target table of a query, and URLs → bytes."""
    root = tmp_path_factory.mktemp("sas")
    c = sdss.SDSSClient()
    files, rows, ids = {}, [], []
    for i, (plate, mjd, fiber, run2d, cls, sub, z, ll0) in enumerate(OBJECTS):
        loglam, flux, ivar, and_mask = _spectrum_arrays(i, ll0)
        sid = sdss.make_specobjid(plate, mjd, fiber, run2d)
        meta = {
            "plate": plate,
            "mjd": mjd,
            "fiberid": fiber,
            "run2d": run2d,
            "class": cls,
            "subClass": sub,
            "z": z,
            "zErr": 1e-4,
            "ra": 10.0 + i,
            "dec": -5.0 + i,
        }
        path = sdss.write_spec_fits(
            root / sdss.spec_file_name(plate, mjd, fiber),
            loglam=loglam,
            flux=flux,
            ivar=ivar,
            and_mask=and_mask,
            meta=meta,
        )
        files[c.spectrum_url(plate, mjd, fiber, run2d)] = path.read_bytes()
        ids.append(sid)
        rows.append(
            {
                "z": z,
                "ra": 10.0 + i,
                "dec": -5.0 + i,
                "specObjID": np.uint64(sid),
                "plate": plate,
                "class": cls,
                "subClass": sub,
                "zErr": 1e-4,
                "petroMag_r": 17.0 + i / 10,
                "petroMagErr_r": 0.01 * (i + 1),
                "bestObjID": 1237645000000000000 + i,
                "mjd": mjd,
                "fiberID": fiber,
                "run2d": run2d,
            }
        )
    targets = Table(rows=rows)
    targets["specObjID"] = targets["specObjID"].astype(np.uint64)
    return {"files": files, "targets": targets, "ids": ids}


def _missing_target(targets: Table) -> Table:
    """The targets plus one object the archive does not have (HTTP 404)."""
    row = {n: targets[0][n] for n in targets.colnames}
    row.update(
        {
            "plate": 12000,
            "mjd": 58500,
            "fiberID": 7,
            "run2d": "v5_13_2",
            "specObjID": np.uint64(sdss.make_specobjid(12000, 58500, 7, "v5_13_2")),
        }
    )
    out = targets.copy()
    out.add_row([row[n] for n in targets.colnames])
    return out


def _fits_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("spec-*.fits"))


def _assert_exactly_once(out: Path, store: Path, ids: list[int]) -> None:
    names = sorted(p.name for p in _fits_files(out))
    expected = sorted(sdss.spec_file_name(p, m, f) for p, m, f, *_ in OBJECTS)
    assert names == expected
    assert not list(out.glob(".*.part")), "temporary files left behind"
    stored = spectra_store.store_spec_ids(store)
    assert len(stored) == len(ids) and len(np.unique(stored)) == len(ids)
    assert sorted(int(i) for i in stored) == sorted(ids)
    for p in _fits_files(out):
        sdss.read_spec_fits(p)  # every file reads cleanly


# ------------------------------------------------------------------------------------------
# build_query


def test_build_query_exact_sql_qso():
    sql = sdss.build_query("qso")
    assert sql == f"SELECT {THESIS_COLUMNS} {JOIN} WHERE spec.zWarning = 0 AND spec.class = 'QSO'"


@pytest.mark.parametrize("kind", ["QSO", "STAR", "GALAXY", "ALL", "Galaxy"])
def test_build_query_each_kind(kind):
    sql = sdss.build_query(kind)
    assert sql.startswith(f"SELECT {THESIS_COLUMNS} ")
    assert JOIN in sql and "WHERE spec.zWarning = 0" in sql
    for col in (
        "z",
        "ra",
        "dec",
        "specObjID",
        "bestObjID",
        "fluxObjID",
        "targetObjID",
        "plate",
        "class",
        "subClass",
        "zErr",
        "mjd",
        "fiberID",
    ):
        assert f"spec.{col}," in sql or f"spec.{col} " in sql, col
    for band in "ugriz":
        assert f"spho.petroMag_{band}," in sql and f"spho.petroMagErr_{band}," in sql
    if kind.upper() == "ALL":
        assert "spec.class =" not in sql
    else:
        assert sql.endswith(f"AND spec.class = '{kind.upper()}'")
    assert "emissionLinesPort" not in sql and "TOP" not in sql


def test_build_query_top_emission_lines_where():
    sql = sdss.build_query("ALL", top=500, emission_lines=True, where="spec.z < 0.3")
    assert sql.startswith("SELECT TOP 500 spec.z, ")
    assert f"{JOIN} JOIN emissionLinesPort AS em ON em.specObjID = spec.specObjID WHERE" in sql
    assert "em.Flux_Ha_6562, em.Flux_Ha_6562_Err" in sql and sql.count("em.") == 25
    assert sql.endswith("WHERE spec.zWarning = 0 AND (spec.z < 0.3)")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "AGN"},
        {"kind": "QSO", "top": 0},
        {"kind": "QSO", "top": 2.5},
        {"kind": "ALL", "where": "1=1; DROP"},
        {"kind": "ALL", "where": "z > 0 -- comment"},
    ],
)
def test_build_query_rejects_bad_input(kwargs):
    with pytest.raises(ValueError):
        sdss.build_query(**kwargs)


# ------------------------------------------------------------------------------------------
# SkyServer through astroquery


def _csv_rows(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "#Table1"
    return list(csv.DictReader(lines[1:]))


def test_query_parses_recorded_skyserver_csv(http, client):
    fake = http(FakeSkyServer())
    c, _ = client
    table = c.query("QSO", top=100, cache=False)

    assert len(fake.calls) == 1
    call = fake.calls[0]
    assert call["method"] == "GET"
    assert call["url"] == "https://skyserver.sdss.org/dr17/en/tools/search/x_results.aspx"
    assert call["params"]["format"] == "csv" and call["params"]["searchtool"] == "SQL"
    assert call["params"]["cmd"].strip() == sdss.build_query("QSO", top=100)
    assert call["timeout"] == 600

    raw = _csv_rows(CSV["QSO"])
    assert len(raw) == 21  # one repeated row
    unique = list({r["specObjID"]: r for r in raw}.values())
    assert len(table) == 20
    assert table["specObjID"].dtype == np.uint64
    assert [int(v) for v in table["specObjID"]] == [int(r["specObjID"]) for r in unique]
    assert max(int(v) for v in table["specObjID"]) > 2**63  # beyond int64: kept exactly
    assert list(table["subClass"]) == [r["subClass"] for r in unique]
    assert "" in list(table["subClass"])
    assert set(table["run2d"]) == {"26", "v5_13_2"}
    assert list(table["fiberID"]) == [int(r["fiberID"]) for r in unique]
    np.testing.assert_allclose(table["petroMag_r"], [float(r["petroMag_r"]) for r in unique])
    assert table["petroMag_u"][3] == -9999.0
    assert table.colnames[:4] == ["z", "ra", "dec", "specObjID"]
    assert table.meta["DR"] == 17 and "spec.class = 'QSO'" in table.meta["SQL"]


def test_query_balance_runs_three_queries_and_hits_shares(http, client):
    fake = http(FakeSkyServer())
    c, _ = client
    table = c.query(balance=True, cache=False, seed=7)

    sqls = [fake.sql(i) for i in range(len(fake.calls))]
    assert len(sqls) == 3
    assert sorted(s.split("spec.class = ")[1] for s in sqls) == ["'GALAXY'", "'QSO'", "'STAR'"]
    # available 30 galaxies, 20 unique QSOs, 6 stars; shares 0.560 / 0.338 / 0.102
    # -> N = floor(min(30/0.56, 20/0.338, 6/0.102)) = 53 -> 30 / 18 / 5 (largest remainders)
    counts = {k: int((table["class"] == k).sum()) for k in ("GALAXY", "QSO", "STAR")}
    assert counts == {"GALAXY": 30, "QSO": 18, "STAR": 5}
    shares = specs.load_spec("spectra")["thesis_class_shares"]
    for k, n in counts.items():
        assert abs(n / len(table) - shares[k]) <= 1 / len(table)
    ids = np.asarray(table["specObjID"])
    assert len(np.unique(ids)) == len(ids)
    recorded = {int(r["specObjID"]) for p in CSV.values() for r in _csv_rows(p)}
    assert {int(i) for i in ids} <= recorded

    again = c.query(balance=True, cache=False, seed=7)
    assert list(again["specObjID"]) == list(table["specObjID"])
    other = c.query(balance=True, cache=False, seed=8)
    assert set(other["specObjID"]) != set(table["specObjID"])

    custom = c.query(balance=True, cache=False, shares={"QSO": 1, "STAR": 1})
    assert {k: int((custom["class"] == k).sum()) for k in ("GALAXY", "QSO", "STAR")} == {
        "GALAXY": 0,
        "QSO": 6,
        "STAR": 6,
    }

    with pytest.raises(ValueError, match="kind must be 'ALL'"):
        c.query("QSO", balance=True)


def test_query_retries_503_then_uses_answer(http, client):
    fake = http(FakeSkyServer(before=((b"<html>503 Service Unavailable</html>", 503),)))
    c, sleeps = client
    table = c.query("STAR", cache=True)
    assert len(table) == 6 and len(fake.calls) == 2 and sleeps == [1.5]
    # the 503 was not cached; the good answer was: no further request
    assert len(c.query("STAR", cache=True)) == 6 and len(fake.calls) == 2


def test_query_gives_up_and_rejects_non_csv(http, client):
    c, sleeps = client
    http(FakeSkyServer(before=(requests.exceptions.ConnectionError("reset"),) * 3))
    with pytest.raises(sdss.SDSSUnavailableError, match="after 3 attempt"):
        c.query("STAR", cache=False)
    assert sleeps == [1.5, 3.0]
    http(FakeSkyServer(before=((b"<html><body>Maintenance</body></html>", 200),)))
    with pytest.raises(sdss.SpectraIOError, match="SkyServer DR17"):
        c.query("STAR", cache=False)


# ------------------------------------------------------------------------------------------
# URLs and ids


def test_spectrum_url_patterns():
    c = sdss.SDSSClient()
    sas = "https://data.sdss.org/sas/dr17"
    assert c.spectrum_url(4055, 55359, 596, "v5_13_2") == (
        f"{sas}/eboss/spectro/redux/v5_13_2/spectra/lite/4055/spec-4055-55359-0596.fits"
    )
    assert (
        c.spectrum_url(266, 51602, 3, 26) == f"{sas}/sdss/spectro/redux/26/spectra/lite/0266/spec-0266-51602-0003.fits"
    )
    assert c.spectrum_url(266, 51602, 3) == c.spectrum_url(266, 51602, 3, "26")
    assert c.spectrum_url(10445, 58158, 427) == (
        f"{sas}/eboss/spectro/redux/v5_13_2/spectra/lite/10445/spec-10445-58158-0427.fits"
    )
    assert (
        sdss.SDSSClient(data_release=16)
        .spectrum_url(4055, 55359, 596)
        .endswith("dr16/eboss/spectro/redux/v5_13_0/spectra/lite/4055/spec-4055-55359-0596.fits")
    )
    with pytest.raises(ValueError, match="DR15"):
        sdss.SDSSClient(data_release=15).spectrum_url(4055, 55359, 596)


@pytest.mark.parametrize(
    "sid, plate, mjd, fiber",
    # public DR17 specObjIDs with their plate, MJD, fibre (SDSS17 star-classification table)
    [
        (11760142036707334144, 10445, 58158, 427),
        (10301071412954421248, 9149, 58039, 775),
        (6891864880783316992, 6121, 56187, 842),
        (5658976714552006656, 5026, 55855, 741),
    ],
)
def test_make_specobjid_matches_dr17_ids(sid, plate, mjd, fiber):
    assert sdss.make_specobjid(plate, mjd, fiber, "v5_13_2") == sid
    assert sdss.run2d_code("v5_13_2") == 1302 and sdss.run2d_code("26") == 26


# ------------------------------------------------------------------------------------------
# downloads


def test_download_parallel_retry_404_duplicates_and_resume(http, client, archive, tmp_path):
    targets = _missing_target(archive["targets"])
    targets.add_row(targets[4])  # a duplicate target
    missing_url = sdss.SDSSClient().spectrum_url(12000, 58500, 7, "v5_13_2")
    flaky_url = sorted(archive["files"])[2]
    fake = http(FakeSAS(archive["files"], script={flaky_url: [503]}, barrier=2))
    c, sleeps = client
    out, store = tmp_path / "fits", tmp_path / "store"

    rep = c.download_spectra(targets, out, store=store, workers=3, backoff=0.25, progress=False, batch_size=4)

    assert (rep.n_requested, rep.n_downloaded, rep.n_skipped, rep.n_failed, rep.n_duplicates) == (12, 10, 0, 1, 1)
    assert rep.n_stored == 10 and len(rep.shards) == 3  # batches of 4, 4, 3 (one of them 404)
    assert len(fake.threads) >= 2  # the barrier would have timed out otherwise
    assert sleeps == [0.25]  # one retry, after the 503
    assert fake.calls.count(flaky_url) == 2 and fake.calls.count(missing_url) == 1  # 404 is not retried
    _assert_exactly_once(out, store, archive["ids"])

    rows = list(csv.DictReader(rep.failures_csv.open()))
    assert rep.failures_csv == out / "failures.csv" and len(rows) == 1
    assert rows[0]["specObjID"] == str(sdss.make_specobjid(12000, 58500, 7, "v5_13_2"))
    assert (rows[0]["plate"], rows[0]["mjd"], rows[0]["fiberid"]) == ("12000", "58500", "7")
    assert "HTTP 404" in rows[0]["reason"] and missing_url in rows[0]["reason"]
    assert rep.failures[0][1] == rows[0]["reason"]

    # the store holds the spectra on the sdss lattice, with meta from the targets and the files
    st = spectra_store.read_store(store)
    assert st.attrs["grid"] == "sdss" and st.fluxes.shape == (10, specs.spectral_grid("sdss").size)
    assert st.and_mask is not None
    meta = st.meta.set_index("specObjID")
    t = archive["targets"]
    for i, sid in enumerate(archive["ids"]):
        row = meta.loc[np.uint64(sid)]
        assert row["class"] == t["class"][i] and row["subClass"] == t["subClass"][i]
        assert row["petroMag_r"] == pytest.approx(t["petroMag_r"][i]) and np.isnan(row["petroMag_g"])
        assert row["bestObjID"] == t["bestObjID"][i] and row["source"] == "sdss"
        assert (row["plate"], row["mjd"], row["fiberid"]) == tuple(OBJECTS[i][:3])
    j = int(np.flatnonzero(st.meta["specObjID"].to_numpy() == np.uint64(archive["ids"][3]))[0])
    k0 = int(round((OBJECTS[3][7] - specs.load_spec("spectra")["grids"]["sdss"]["loglam0"]) / 1e-4))
    _, flux, ivar, _ = _spectrum_arrays(3, OBJECTS[3][7])
    np.testing.assert_array_equal(st.fluxes[j, k0 : k0 + N_PIX], flux)
    np.testing.assert_array_equal(st.ivar[j, k0 : k0 + N_PIX], ivar)
    assert not st.ivar[j, :k0].any() and not st.ivar[j, k0 + N_PIX :].any()

    # a second run downloads nothing: only the 404 is asked again
    fake2 = http(FakeSAS(archive["files"]))
    rep2 = c.download_spectra(targets, out, store=store, workers=3, progress=False, batch_size=4)
    assert (rep2.n_downloaded, rep2.n_skipped, rep2.n_failed, rep2.n_stored) == (0, 10, 1, 0)
    assert fake2.calls == [missing_url]
    assert len(spectra_store.shard_paths(store)) == 3
    _assert_exactly_once(out, store, archive["ids"])

    # a specObjID already in the store is not fetched again even when its file is gone
    gone = _fits_files(out)[0]
    gone.unlink()
    fake3 = http(FakeSAS(archive["files"]))
    rep3 = c.download_spectra(targets, out, store=store, workers=3, progress=False)
    assert fake3.calls == [missing_url] and rep3.n_skipped == 10 and not gone.exists()


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")
def test_download_without_store_resumes_from_files(http, client, archive, tmp_path):
    fake = http(FakeSAS(archive["files"]))
    c, _ = client
    out = tmp_path / "fits"
    rep = c.download_spectra(archive["targets"], out, workers=2, progress=False)
    assert (rep.n_downloaded, rep.n_skipped, rep.n_failed) == (10, 0, 0) and len(fake.calls) == 10
    # a file that stopped half-way (e.g. written by a tool without atomic writes) and a stale
    # temporary file: the first is fetched again, the second ignored
    victim = _fits_files(out)[0]
    victim.write_bytes(victim.read_bytes()[:5000])
    (out / f".{victim.name}.abc.part").write_bytes(b"partial")
    fake2 = http(FakeSAS(archive["files"]))
    rep2 = c.download_spectra(archive["targets"], out, workers=2, progress=False)
    assert (rep2.n_downloaded, rep2.n_skipped) == (1, 9) and len(fake2.calls) == 1
    assert fake2.calls[0].endswith(victim.name)
    sdss.read_spec_fits(victim)
    assert len(_fits_files(out)) == 10
    assert rep2.failures_csv.read_text().strip() == ",".join(sdss.FAILURE_COLUMNS)


def test_interrupted_download_then_restart_stores_each_spectrum_once(http, client, archive, tmp_path):
    c, _ = client
    out, store = tmp_path / "fits", tmp_path / "store"
    fake = http(FakeSAS(archive["files"], interrupt_after=6))
    with pytest.raises(KeyboardInterrupt):
        c.download_spectra(archive["targets"], out, store=store, workers=2, progress=False, batch_size=4)
    done = {p.name for p in _fits_files(out)}
    assert 4 <= len(done) < 10  # the first batch finished, the second was cut
    assert len(spectra_store.store_spec_ids(store)) == 4
    assert not list(out.glob(".*.part"))

    fake2 = http(FakeSAS(archive["files"]))
    rep = c.download_spectra(archive["targets"], out, store=store, workers=2, progress=False, batch_size=4)
    assert rep.n_downloaded == 10 - len(done) and rep.n_skipped == len(done) and rep.n_failed == 0
    assert not any(url.rsplit("/", 1)[1] in done for url in fake2.calls)  # no file fetched twice
    assert len(fake.calls) >= 6
    _assert_exactly_once(out, store, archive["ids"])


def test_crash_while_appending_a_shard_then_restart(http, client, archive, tmp_path, monkeypatch):
    c, _ = client
    out, store = tmp_path / "fits", tmp_path / "store"
    http(FakeSAS(archive["files"]))
    real_append = spectra_store.append_shard
    calls = []

    def crashing_append(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies while writing the second shard
        return real_append(*args, **kwargs)

    monkeypatch.setattr(spectra_store, "append_shard", crashing_append)
    with pytest.raises(KeyboardInterrupt):
        c.download_spectra(archive["targets"], out, store=store, workers=2, progress=False, batch_size=4)
    assert len(spectra_store.store_spec_ids(store)) == 4
    monkeypatch.setattr(spectra_store, "append_shard", real_append)
    rep = c.download_spectra(archive["targets"], out, store=store, workers=2, progress=False, batch_size=4)
    assert rep.n_stored == 6 and rep.n_downloaded == 2 and rep.n_skipped == 8
    _assert_exactly_once(out, store, archive["ids"])


def test_download_dr16q_style_targets_without_specobjid(http, client, archive, tmp_path):
    t = archive["targets"]
    frame = pd.DataFrame(
        {
            "PLATE": np.asarray(t["plate"], np.int32),
            "MJD": np.asarray(t["mjd"], np.int32),
            "FIBERID": np.asarray(t["fiberID"], np.int16),
            "RUN2D": list(t["run2d"]),
            "Z_VI": np.linspace(0.5, 3.0, len(t)),
            "Z_QN": -1.0,
        }
    )
    frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)  # a repeated plate-MJD-fibre
    http(FakeSAS(archive["files"]))
    c, _ = client
    out, store = tmp_path / "fits", tmp_path / "store"
    rep = c.download_spectra(frame, out, store=store, workers=2, progress=False)
    assert (rep.n_requested, rep.n_downloaded, rep.n_duplicates, rep.n_stored) == (11, 10, 1, 10)
    meta = spectra_store.read_meta(store).set_index("specObjID")
    for i, sid in enumerate(archive["ids"]):  # specObjID from the files' SPECOBJ HDU
        assert meta.loc[np.uint64(sid), "z_vi"] == pytest.approx(frame["Z_VI"][i])
        assert meta.loc[np.uint64(sid), "z_qn"] == -1.0
    # ids unknown in the targets: the files name the spectra, the store is not appended twice
    fake = http(FakeSAS(archive["files"]))
    rep2 = c.download_spectra(frame, out, store=store, workers=2, progress=False)
    assert (rep2.n_downloaded, rep2.n_skipped, rep2.n_stored) == (0, 10, 0) and fake.calls == []
    _assert_exactly_once(out, store, archive["ids"])


def test_download_rejects_bad_targets(client, tmp_path):
    c, _ = client
    with pytest.raises(sdss.SpectraIOError, match="fiberid"):
        c.download_spectra(Table({"plate": [1], "mjd": [51000]}), tmp_path, progress=False)
    (tmp_path / "store.h5").write_bytes(b"")
    with pytest.raises(sdss.SpectraIOError, match="store.h5"):
        c.download_spectra(Table({"plate": [1], "mjd": [51000], "fiberid": [1]}), tmp_path, store=tmp_path / "store.h5")


# ------------------------------------------------------------------------------------------
# spec FITS files


def _write(path: Path, i: int = 3, **changes) -> Path:
    plate, mjd, fiber, run2d, cls, sub, z, ll0 = OBJECTS[i]
    loglam, flux, ivar, and_mask = _spectrum_arrays(i, ll0)
    arrays = {"loglam": loglam, "flux": flux, "ivar": ivar, "and_mask": and_mask}
    arrays.update(changes)
    meta = {
        "plate": plate,
        "mjd": mjd,
        "fiberid": fiber,
        "run2d": run2d,
        "class": cls,
        "subClass": sub,
        "z": z,
        "zErr": 2e-4,
        "ra": 123.456789012,
        "dec": -7.654321098,
    }
    return sdss.write_spec_fits(path, meta=meta, **arrays)


def test_write_read_round_trip(tmp_path):
    loglam, flux, ivar, and_mask = _spectrum_arrays(8, 3.5525)
    meta = {
        "specObjID": 11760142036707334144,
        "plate": 10445,
        "mjd": 58158,
        "fiberid": 427,
        "ra": 123.456789012345,
        "dec": -7.654321098765,
        "z": 2.3456789,
        "zErr": 0.00012,
        "class": "QSO",
        "subClass": "STARBURST BROADLINE",
        "sn_median": 6.5,
        "source": "sim",
    }
    path = sdss.write_spec_fits(
        tmp_path / "spec-10445-58158-0427.fits", loglam=loglam, flux=flux, ivar=ivar, and_mask=and_mask, meta=meta
    )
    assert not list(tmp_path.glob(".*.part"))
    spec = sdss.read_spec_fits(path)
    assert spec.path == path
    assert spec.loglam.dtype == np.float64 and spec.flux.dtype == np.float32
    assert spec.ivar.dtype == np.float32 and spec.and_mask.dtype == np.int32
    np.testing.assert_array_equal(spec.loglam, loglam.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(spec.flux, flux)
    np.testing.assert_array_equal(spec.ivar, ivar)
    np.testing.assert_array_equal(spec.and_mask, and_mask)
    np.testing.assert_allclose(spec.wavelength, 10**loglam, rtol=1e-6)
    assert set(spec.meta) == set(sdss.META_KEYS) | {"source"}
    for key, value in meta.items():
        if key in ("z", "zErr", "sn_median"):  # float32 in the file
            assert spec.meta[key] == pytest.approx(value, rel=1e-6), key
        else:
            assert spec.meta[key] == value, key
    assert isinstance(spec.meta["specObjID"], int)
    with fits.open(path) as h:  # the SDSS layout
        assert [x.name for x in h] == ["PRIMARY", "COADD", "SPECOBJ", "SPZLINE"]
        assert h[0].header["PLATEID"] == 10445 and h[0].header["FIBERID"] == 427
        assert h[1].columns.names == ["flux", "loglam", "ivar", "and_mask", "or_mask", "wdisp", "sky", "model"]
        assert [c.format for c in h[1].columns] == ["E", "E", "E", "J", "J", "E", "E", "E"]
        assert h[2].data["SPECOBJID"][0] == "11760142036707334144" and len(h[2].data) == 1


def test_write_defaults_specobjid_and_computes_sn(tmp_path):
    path = _write(tmp_path / "a.fits")
    spec = sdss.read_spec_fits(path)
    assert spec.meta["specObjID"] == sdss.make_specobjid(*OBJECTS[3][:4])
    good = spec.ivar > 0
    assert spec.meta["sn_median"] == pytest.approx(
        np.median(np.abs(spec.flux[good]) * np.sqrt(spec.ivar[good])), rel=1e-6
    )
    assert spec.meta["source"] == "sdss"


def test_read_recorded_spec_files():
    boss = sdss.read_spec_fits(BOSS_FILE)
    assert boss.meta["specObjID"] == 11760142036707334144  # from the SPECOBJID string column
    assert (boss.meta["plate"], boss.meta["mjd"], boss.meta["fiberid"]) == (10445, 58158, 427)
    assert boss.meta["class"] == "QSO" and boss.meta["subClass"] == "BROADLINE"
    assert boss.meta["sn_median"] == 5.25 and boss.meta["z"] == pytest.approx(2.3456)
    assert boss.loglam[0] == pytest.approx(3.5525, abs=1e-7) and len(boss) == 600
    assert (boss.ivar[100:110] == 0).all() and boss.and_mask[200] == 16
    legacy = sdss.read_spec_fits(LEGACY_FILE)
    assert legacy.meta["specObjID"] == sdss.make_specobjid(266, 51602, 3, "26")
    assert legacy.meta["class"] == "GALAXY" and legacy.meta["ra"] == 152.0


def _drop_hdu(path: Path, name: str) -> None:
    with fits.open(path) as h:
        keep = fits.HDUList([x.copy() for x in h if x.name != name])
    keep.writeto(path, overwrite=True)


def _drop_column(path: Path, hdu: str, column: str) -> None:
    with fits.open(path) as h:
        hdus = [x.copy() for x in h]
    for i, x in enumerate(hdus):
        if x.name == hdu:
            cols = [c for c in x.columns if c.name != column]
            hdus[i] = fits.BinTableHDU.from_columns(cols, name=hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _corrupt_start(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:80] = b"\x00garbage" * 10
    path.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) - 4000]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:6000]), "truncated"),
        (_corrupt_start, "not a readable"),
        (lambda p: p.write_bytes(p.read_bytes() + b"\x00" * 100), "corrupt"),
        (lambda p: _drop_hdu(p, "COADD"), "no COADD HDU"),
        (lambda p: _drop_hdu(p, "SPECOBJ"), "no SPECOBJ HDU"),
        (lambda p: _drop_column(p, "COADD", "flux"), "no 'flux' column"),
        (lambda p: _drop_column(p, "SPECOBJ", "Z"), "no 'Z' column"),
    ],
)
def test_read_damaged_file_names_it(tmp_path, damage, message):
    path = _write(tmp_path / "spec-4055-55359-0596.fits")
    damage(path)
    with pytest.raises(sdss.SpectraIOError, match=message) as info:
        sdss.read_spec_fits(path)
    assert "spec-4055-55359-0596.fits" in str(info.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"flux": np.where(np.arange(N_PIX) == 50, np.nan, 1.0)}, "NaN or infinite"),
        ({"flux": np.where(np.arange(N_PIX) == 7, np.inf, 1.0)}, "NaN or infinite"),
        ({"ivar": np.zeros(N_PIX)}, "all 300 pixels are masked"),
        ({"and_mask": np.full(N_PIX, 1 << 20)}, "all 300 pixels are masked"),
        ({"loglam": 3.6 - 1e-4 * np.arange(N_PIX)}, "strictly increasing"),
    ],
)
def test_read_bad_content_names_file(tmp_path, changes, message):
    path = _write(tmp_path / "spec-bad.fits", **changes)
    with pytest.raises(sdss.SpectraIOError, match=message) as info:
        sdss.read_spec_fits(path)
    assert "spec-bad.fits" in str(info.value) and not info.value.unreadable


def test_read_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fits"):
        sdss.read_spec_fits(tmp_path / "nope.fits")


# ------------------------------------------------------------------------------------------
# lattice


def test_place_on_lattice_exact_offsets(tmp_path):
    grid = specs.spectral_grid("sdss")
    g = specs.load_spec("spectra")["grids"]["sdss"]
    nodata = 1 << specs.load_spec("spectra")["and_mask_bad_bits"]["NODATA"]
    # starts 150 pixels into the grid; float32 loglam as in real files
    spec = sdss.read_spec_fits(
        _write(tmp_path / "a.fits", loglam=(3.5650 + 1e-4 * np.arange(N_PIX)).astype(np.float32))
    )
    flux, ivar, mask = sdss.place_on_lattice(spec, grid)
    assert flux.shape == ivar.shape == mask.shape == (g["n_pixels"],)
    assert flux.dtype == np.float32 and ivar.dtype == np.float32 and mask.dtype == np.int32
    np.testing.assert_array_equal(flux[150 : 150 + N_PIX], spec.flux)
    np.testing.assert_array_equal(ivar[150 : 150 + N_PIX], spec.ivar)
    np.testing.assert_array_equal(mask[150 : 150 + N_PIX], spec.and_mask)
    assert not flux[:150].any() and not ivar[:150].any() and not ivar[150 + N_PIX :].any()
    assert (mask[:150] == nodata).all() and (mask[150 + N_PIX :] == nodata).all()
    np.testing.assert_allclose(np.log10(grid[150]), spec.loglam[0], atol=1e-6)

    # partly off the red end: the overlap is kept
    start = g["n_pixels"] - 100
    red = sdss.read_spec_fits(_write(tmp_path / "b.fits", loglam=g["loglam0"] + 1e-4 * (start + np.arange(N_PIX))))
    flux, ivar, _ = sdss.place_on_lattice(red, grid)
    np.testing.assert_array_equal(flux[start:], red.flux[:100])
    assert ivar[:start].sum() == 0


def test_place_on_lattice_rejects_off_lattice_and_no_overlap(tmp_path):
    grid = specs.spectral_grid("sdss")
    off = sdss.read_spec_fits(_write(tmp_path / "off.fits", loglam=3.5650 + 0.3e-4 + 1e-4 * np.arange(N_PIX)))
    with pytest.raises(sdss.SpectraIOError, match="not on the store lattice") as info:
        sdss.place_on_lattice(off, grid)
    assert "off.fits" in str(info.value)
    far = sdss.read_spec_fits(_write(tmp_path / "far.fits", loglam=4.2 + 1e-4 * np.arange(N_PIX)))
    with pytest.raises(sdss.SpectraIOError, match="does not overlap"):
        sdss.place_on_lattice(far, grid)
    with pytest.raises(sdss.SpectraIOError, match="not uniform"):
        sdss.place_on_lattice(far, np.array([4000.0, 4001.0, 4010.0]))


# ------------------------------------------------------------------------------------------
# DR16Q and FNet's split


def test_fnet_numbers_in_spec_are_consistent():
    f = specs.load_spec("dr16q")["fnet"]
    assert f["train"] + f["val"] == f["dr12q_pool"]
    assert f["dr12q_pool"] + f["test"] == f["vi_quasars"]
    assert round(f["val_fraction"] * f["dr12q_pool"]) == f["val"]


def test_read_dr16q_columns_and_types():
    df = sdss.read_dr16q(DR16Q)
    assert len(df) == 31
    assert list(df.columns) == [
        "SDSS_NAME",
        "RA",
        "DEC",
        "PLATE",
        "MJD",
        "FIBERID",
        "Z",
        "Z_VI",
        "Z_CONF",
        "Z_QN",
        "CLASS_PERSON",
        "Z_DR12Q",
        "IS_QSO_DR12Q",
    ]
    assert df["PLATE"].dtype == np.int32 and df["FIBERID"].dtype == np.int16 and df["Z_QN"].dtype == np.float64
    assert df["CLASS_PERSON"].dtype == np.int16 and df["SDSS_NAME"][1] == "010000.00+000000.0"
    with fits.open(DR16Q) as h:
        np.testing.assert_array_equal(df["Z_VI"], h[1].data["Z_VI"])
    some = sdss.read_dr16q(DR16Q, columns=["plate", "MJD"])
    assert list(some.columns) == ["plate", "MJD"] and len(some) == 31
    with pytest.raises(sdss.SpectraIOError, match="dr16q_small.fits.*NOPE"):
        sdss.read_dr16q(DR16Q, columns=["PLATE", "NOPE"])
    with pytest.raises(sdss.SpectraIOError, match="vector column"):
        sdss.read_dr16q(DR16Q, columns=["PSFMAG"])


def test_read_dr16q_missing_required_columns(tmp_path):
    with fits.open(DR16Q) as h:
        cols = [c for c in h[1].columns if c.name not in ("Z_QN", "IS_QSO_DR12Q", "Z_DR12Q")]
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(tmp_path / "cut.fits")
    with pytest.raises(sdss.SpectraIOError) as info:
        sdss.read_dr16q(tmp_path / "cut.fits")
    msg = str(info.value)
    assert "cut.fits" in msg and "Z_QN" in msg and "IS_QSO_DR12Q or Z_DR12Q" in msg
    (tmp_path / "junk.fits").write_bytes(b"not fits at all")
    with pytest.raises(sdss.SpectraIOError, match="junk.fits"):
        sdss.read_dr16q(tmp_path / "junk.fits")


def test_dr16q_fnet_split_on_recorded_catalogue():
    df = sdss.read_dr16q(DR16Q)
    split = sdss.dr16q_fnet_split(df, seed=3)
    assert {k: len(v) for k, v in split.items()} == {"train": 18, "val": 2, "test": 6, "qn_fail": 3}
    train, val, test, qn = (set(split[k].tolist()) for k in ("train", "val", "test", "qn_fail"))
    assert not (train & val) and not (train & test) and not (val & test)
    vi = set(np.flatnonzero(df["CLASS_PERSON"].to_numpy() == 3).tolist())
    assert train | val | test == vi
    assert train | val == set(np.flatnonzero((df["CLASS_PERSON"] == 3) & (df["IS_QSO_DR12Q"] == 1)).tolist())
    assert qn == set(np.flatnonzero((df["CLASS_PERSON"] == 3) & (df["Z_QN"] == -1)).tolist()) and qn <= vi
    assert (df.loc[list(test), "Z_DR12Q"] == -1).all()
    for v in split.values():
        assert v.dtype == np.int64 and (np.diff(v) > 0).all()

    again = sdss.dr16q_fnet_split(df, seed=3)
    assert all(np.array_equal(again[k], split[k]) for k in split)
    assert any(not np.array_equal(sdss.dr16q_fnet_split(df, seed=s)["val"], split["val"]) for s in range(4, 10))

    bal = sdss.dr16q_fnet_split(df, seed=3, class_person=(3, 30))
    assert len(bal["test"]) == 7 and len(bal["qn_fail"]) == 4

    # without IS_QSO_DR12Q the Z_DR12Q rule decides membership
    alt = sdss.dr16q_fnet_split(df.drop(columns=["IS_QSO_DR12Q"]), seed=3)
    assert {k: len(v) for k, v in alt.items()} == {"train": 18, "val": 2, "test": 6, "qn_fail": 3}


def test_dr16q_fnet_split_reproduces_paper_sizes():
    f = specs.load_spec("dr16q")["fnet"]
    n_pool, n_test = f["dr12q_pool"], f["test"]
    df = pd.DataFrame(
        {
            "CLASS_PERSON": np.full(n_pool + n_test, 3, np.int16),
            "IS_QSO_DR12Q": np.r_[np.ones(n_pool, np.int16), -np.ones(n_test, np.int16)],
            "Z_QN": np.r_[
                np.full(n_pool, 2.0), np.full(n_test - f["qn_failed_vi"], 2.0), np.full(f["qn_failed_vi"], -1.0)
            ],
        }
    )
    split = sdss.dr16q_fnet_split(df)
    assert (len(split["train"]), len(split["val"]), len(split["test"]), len(split["qn_fail"])) == (
        f["train"],
        f["val"],
        f["test"],
        f["qn_failed_vi"],
    )


def test_dr16q_fnet_split_bad_input():
    with pytest.raises(sdss.SpectraIOError, match="CLASS_PERSON"):
        sdss.dr16q_fnet_split(pd.DataFrame({"Z_QN": [1.0]}))
    with pytest.raises(sdss.SpectraIOError, match="IS_QSO_DR12Q or Z_DR12Q"):
        sdss.dr16q_fnet_split(pd.DataFrame({"Z_QN": [1.0], "CLASS_PERSON": [3]}))
    with pytest.raises(ValueError, match="val_fraction"):
        sdss.dr16q_fnet_split(pd.DataFrame({"Z_QN": [1.0], "CLASS_PERSON": [3]}), val_fraction=1.0)


# ------------------------------------------------------------------------------------------
# a store from a folder of files


def test_spectra_from_fits_dir(tmp_path, caplog):
    src = tmp_path / "fits"
    src.mkdir()
    shutil.copy(BOSS_FILE, src)
    shutil.copy(LEGACY_FILE, src)
    _write(src / "spec-4055-55359-0596.fits")
    shutil.copy(BOSS_FILE, src / "spec-9999-58158-0427.fits")  # same specObjID under another name
    (src / "spec-0001-51000-0001.fits").write_bytes(b"SIMPLE  =   broken")
    store = tmp_path / "store"

    with caplog.at_level("WARNING", logger="keras_astro.io.sdss"):
        assert sdss.spectra_from_fits_dir(src, store, progress=False) == store
    assert "spec-0001-51000-0001.fits" in caplog.text
    st = spectra_store.read_store(store)
    assert sorted(st.meta["specObjID"].tolist()) == sorted(
        [11760142036707334144, sdss.make_specobjid(266, 51602, 3, "26"), sdss.make_specobjid(*OBJECTS[3][:4])]
    )
    assert set(st.meta["class"]) == {"QSO", "GALAXY"} and np.isnan(st.meta["petroMag_r"]).all()
    row = int(np.flatnonzero(st.meta["specObjID"].to_numpy() == np.uint64(11760142036707334144))[0])
    k0 = int(round((3.5525 - 3.55) / 1e-4))
    boss = sdss.read_spec_fits(BOSS_FILE)
    np.testing.assert_array_equal(st.fluxes[row, k0 : k0 + 600][boss.ivar > 0], boss.flux[boss.ivar > 0])
    assert (st.fluxes[row, k0 + 100 : k0 + 110] == 0).all()  # masked pixels: flux 0 where ivar 0

    sdss.spectra_from_fits_dir(src, store, progress=False)  # nothing new
    assert len(spectra_store.shard_paths(store)) == 1
    _write(src / "spec-1678-53433-0611.fits", i=1)
    sdss.spectra_from_fits_dir(src, store, progress=False)
    assert len(spectra_store.shard_paths(store)) == 2 and len(spectra_store.store_spec_ids(store)) == 4
