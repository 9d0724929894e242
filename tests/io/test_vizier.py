"""Tests of keras_astro.io.vizier at its network boundary.

No test touches the network: ``requests.Session.request`` — the call astroquery's
``BaseQuery._request`` ends in — is replaced by a fake that answers with the recorded VizieR
VOTable in ``tests/data/vizier/``. Everything above it (astroquery's payload building, response
cache and VOTable parsing, our retries and conversion) is the real code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from astropy.io import votable
from astropy.table import Table

from keras_astro import specs
from keras_astro.io import nepw, vizier

DATA = Path(__file__).resolve().parents[1] / "data" / "vizier"
RECORDED = DATA / "nepw_catalog_8rows.xml"
NO_TABLE = DATA / "no_table.xml"
MISSING = -99.0


class FakeVizieR:
    """Scripted stand-in for the HTTP layer: each call consumes the next outcome (the last one
    repeats). An outcome is an exception to raise, VOTable bytes, or (bytes, HTTP status)."""

    def __init__(self, outcomes: tuple) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[dict] = []

    def __call__(self, method: str, url: str, **kwargs) -> requests.Response:
        self.calls.append({"method": method, "url": url, **kwargs})
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        content, status = outcome if isinstance(outcome, tuple) else (outcome, 200)
        response = requests.Response()
        response.status_code = status
        response.reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "")
        response._content = content
        response.url = url
        response.encoding = "UTF-8"
        response.headers["Content-Type"] = (
            "application/x-votable+xml" if content.startswith(b"<?xml") else "text/html"
        )
        response.request = requests.Request(method, url, data=kwargs.get("data")).prepare()
        return response

    def payload(self, i: int = -1) -> dict[str, str]:
        """The VizieR ASU script of call ``i`` as {key: value}."""
        lines = str(self.calls[i]["data"]).split("\n")
        return dict(line.split("=", 1) if "=" in line else (line, "") for line in lines)


@pytest.fixture
def http(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeVizieR]:
    """Install a :class:`FakeVizieR` as ``requests.Session.request``."""

    def install(*outcomes) -> FakeVizieR:
        fake = FakeVizieR(outcomes)
        monkeypatch.setattr(
            requests.Session, "request", lambda self, method, url, **kw: fake(method, url, **kw)
        )
        return fake

    return install


@pytest.fixture
def client(tmp_path: Path) -> tuple[vizier.NEPWVizierClient, list[float]]:
    sleeps: list[float] = []
    c = vizier.NEPWVizierClient(cache_dir=tmp_path / "cache", backoff=1.5, sleep=sleeps.append)
    return c, sleeps


def expected_columns() -> list[str]:
    cols = ["ID", "ra", "dec", "z", "class"]
    for band in specs.band_names():
        cols += [f"{band}_mag", f"{band}_magerr"]
    return cols


def recorded_raw() -> Table:
    """The recorded table read by astropy alone (independent of astroquery and our code)."""
    return votable.parse_single_table(str(RECORDED)).to_table(use_names_over_ids=True)


# ------------------------------------------------------------------------------------------


def test_fetch_converts_to_our_layout(http, client):
    fake = http(RECORDED.read_bytes())
    c, _ = client
    table = c.fetch(cache=False, timeout=42)

    assert table.colnames == expected_columns()
    assert len(table) == 8
    for name in table.colnames[5:]:
        assert table[name].dtype == np.float64, name
    assert list(table["class"]) == [""] * 8

    raw = recorded_raw()
    mapping = vizier.VizierMapping.from_spec()
    assert list(table["ID"]) == list(raw["ID"])
    np.testing.assert_allclose(table["ra"], raw["RAJ2000"])
    np.testing.assert_allclose(table["dec"], raw["DEJ2000"])
    assert (np.abs(table["ra"] - 270) < 4).all() and (np.abs(table["dec"] - 66.5) < 1.2).all()
    for band in specs.band_names():
        (vmag,) = mapping.columns[f"{band}_mag"]
        (verr,) = mapping.columns[f"{band}_magerr"]
        present = ~np.ma.getmaskarray(raw[vmag]) & ~np.ma.getmaskarray(raw[verr])
        mag, err = np.asarray(table[f"{band}_mag"]), np.asarray(table[f"{band}_magerr"])
        # values VizieR wrote come back exactly at their printed precision
        np.testing.assert_allclose(mag[present], np.round(raw[vmag][present].astype(float), 3))
        np.testing.assert_allclose(err[present], np.round(raw[verr][present].astype(float), 3))
        assert (mag[~present] == MISSING).all() and (err[~present] == MISSING).all(), band
        assert ((mag == MISSING) == (err == MISSING)).all(), band

    # spot checks against the recorded cells
    assert table["HSC_g_mag"][0] == 18.377 and table["HSC_g_magerr"][0] == 0.002
    assert table["SPIRE_250_mag"][0] == 13.336 and table["SPIRE_250_mag"][1] == MISSING
    # row 4: SNUCAM B has a magnitude but an empty error cell -> missing in both
    assert not np.ma.is_masked(raw["SNUBmag"][3]) and np.ma.is_masked(raw["e_SNUBmag"][3])
    assert table["SNUCAM_B_mag"][3] == MISSING and table["SNUCAM_B_magerr"][3] == MISSING
    # redshift: spectroscopic first, photometric where there is none, NaN where neither
    assert table["z"][0] == pytest.approx(0.0874)  # zsp 0.0874, zph 0.0912
    assert table["z"][1] == pytest.approx(1.348)  # zph only
    assert np.isnan(table["z"][4])

    # what went over the wire: one POST to VizieR's votable CGI with our columns
    assert len(fake.calls) == 1
    call = fake.calls[0]
    assert call["method"] == "POST" and call["url"].endswith("/viz-bin/votable")
    assert call["timeout"] == 42
    payload = fake.payload()
    assert payload["-source"] == "J/MNRAS/500/4078/catalog"
    assert payload["-out.max"] == "unlimited"
    assert payload["-out"].split(",") == mapping.vizier_columns()
    assert table.meta["CATALOG"] == "J/MNRAS/500/4078"


def test_output_is_readable_by_nepw_reader(http, client):
    http(RECORDED.read_bytes())
    table = client[0].fetch(cache=False)
    phot = nepw.catalogue_to_photometry(table, source="vizier")
    assert phot.values.shape == (8, len(specs.band_names()), 2)
    assert (phot.labels == -1).all()
    j = specs.band_names().index("SNUCAM_B")
    assert np.isnan(phot.values[3, j]).all()


def test_row_limit_is_sent(http, client):
    fake = http(RECORDED.read_bytes())
    client[0].fetch(row_limit=5, cache=False)
    assert fake.payload()["-out.max"] == "5"


@pytest.mark.parametrize(
    "failure", [requests.exceptions.ConnectionError("reset"), requests.exceptions.ReadTimeout("slow")]
)
def test_retries_transient_failure(http, client, failure):
    fake = http(failure, RECORDED.read_bytes())
    c, sleeps = client
    table = c.fetch(cache=False)
    assert len(table) == 8
    assert len(fake.calls) == 2
    assert sleeps == [1.5]


def test_retries_http_503_without_caching_it(http, client, tmp_path):
    fake = http((b"<html><body>503 Service Unavailable</body></html>", 503), RECORDED.read_bytes())
    c, sleeps = client
    assert len(c.fetch(cache=True)) == 8
    assert len(fake.calls) == 2 and sleeps == [1.5]
    # only the good answer is cached: a second fetch needs no HTTP call
    assert len(list((tmp_path / "cache").glob("*.pickle"))) == 1
    assert len(c.fetch(cache=True)) == 8
    assert len(fake.calls) == 2


def test_cache_avoids_second_request(http, client):
    fake = http(RECORDED.read_bytes())
    c, _ = client
    first = c.fetch(cache=True)
    second = c.fetch(cache=True)
    assert len(fake.calls) == 1
    assert first.colnames == second.colnames
    assert all((first[n] == second[n]).all() for n in first.colnames if n != "z")


def test_gives_up_with_connection_error_naming_local_file(http, client):
    fake = http(requests.exceptions.ConnectionError("Name or service not known"))
    c, sleeps = client
    with pytest.raises(ConnectionError) as info:
        c.fetch(cache=False)
    assert isinstance(info.value, vizier.VizierUnavailableError)
    message = str(info.value)
    assert "--data PATH" in message and "J/MNRAS/500/4078" in message and "3 attempt" in message
    assert len(fake.calls) == 3
    assert sleeps == [1.5, 3.0]


def test_client_error_is_not_retried(http, client):
    fake = http((b"<html>Not Found</html>", 404))
    with pytest.raises(vizier.VizierUnavailableError, match="HTTP 404"):
        client[0].fetch(cache=False)
    assert len(fake.calls) == 1


def test_missing_column_is_named(http, client):
    http(RECORDED.read_bytes())
    with pytest.raises(vizier.VizierColumnError) as info:
        client[0].fetch(column_map={"HSC_g_mag": "gmag_HSC"}, cache=False)
    assert isinstance(info.value, ValueError)
    assert info.value.missing == ["gmag_HSC"]
    message = str(info.value)
    assert "'gmag_HSC' (for HSC_g_mag)" in message
    assert "J/MNRAS/500/4078" in message and "column_map" in message


def test_column_map_override_is_used(http, client):
    fake = http(RECORDED.read_bytes())
    # map our redshift to the photometric one only
    table = client[0].fetch(column_map={"z": "zph"}, cache=False)
    assert table["z"][0] == pytest.approx(0.0912)
    assert "zsp" not in fake.payload()["-out"].split(",")


def test_no_table_returned(http, client):
    http(NO_TABLE.read_bytes())
    with pytest.raises(vizier.VizierResponseError, match="no table") as info:
        client[0].fetch(cache=False)
    assert "Catalogue or table not found" in str(info.value)


def test_non_votable_answer(http, client):
    http(b"<!DOCTYPE html><html>maintenance</html>")
    with pytest.raises(vizier.VizierResponseError, match="did not answer with a VOTable"):
        client[0].fetch(cache=False)


def test_unknown_column_map_key():
    with pytest.raises(ValueError, match="HSC_q_mag"):
        vizier.VizierMapping.from_spec({"HSC_q_mag": "qmag"})


def test_spec_is_consistent():
    spec = specs.load_spec("nepw_vizier")
    assert spec["catalog"] == specs.load_spec("agn_bands")["vizier_catalog"]
    mapping = vizier.VizierMapping.from_spec()
    labels = mapping.vizier_columns()
    assert len(labels) == len(set(labels)) == 2 * len(specs.band_names()) + 5
    assert mapping.extra_columns == ("ra", "dec")


@pytest.mark.parametrize("suffix", [".fits", ".csv"])
def test_save_round_trip(http, client, tmp_path, suffix):
    http(RECORDED.read_bytes())
    table = client[0].fetch(cache=False)
    path = vizier.save(table, tmp_path / "out" / f"nepw{suffix}")
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left

    back = Table.read(path)
    assert back.colnames == table.colnames
    assert list(back["ID"]) == list(table["ID"])
    for name in table.colnames[1:]:
        if name == "class":
            assert all(v in ("", "--") for v in np.ma.filled(back[name].astype(str), ""))
            continue
        np.testing.assert_array_equal(np.asarray(back[name], float), np.asarray(table[name]), name)


@pytest.mark.parametrize("suffix", [".fits", ".csv"])
def test_saved_file_loads_with_nepw_reader(http, client, tmp_path, suffix):
    http(RECORDED.read_bytes())
    path = vizier.save(client[0].fetch(cache=False), tmp_path / f"nepw{suffix}")
    phot = nepw.load_photometry(path)
    assert phot.values.shape == (8, len(specs.band_names()), 2)
    assert (phot.labels == -1).all()


def test_from_votable_matches_fetch(http, client):
    http(RECORDED.read_bytes())
    fetched = client[0].fetch(cache=False)
    local = vizier.from_votable(RECORDED)
    assert local.colnames == fetched.colnames
    for name in fetched.colnames:
        np.testing.assert_array_equal(np.asarray(local[name]), np.asarray(fetched[name]))
