"""Tests of keras_astro.io.skyview at its network boundary.

No test touches the network: ``requests.Session.request`` — the call astroquery's
``BaseQuery._request`` ends in — is replaced by a fake SkyView that answers with the crafted
pages and FITS files of ``tests/data/skyview/`` (see the README there). Everything above it
(astroquery's form parsing, survey validation, payload and link parsing; our retries, checks and
atomic writes) is the real code.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urljoin

import numpy as np
import pytest
import requests
from astropy.io import fits
from astropy.wcs import WCS

from keras_astro.io import rgz, skyview
from keras_astro.io.skyview import CutoutError, SkyViewClient, read_cutout, write_cutout

DATA = Path(__file__).resolve().parents[1] / "data" / "skyview"
FORM_URL = "https://skyview.gsfc.nasa.gov/current/cgi/basicform.pl"
FITS_FILES = {"VLA FIRST (1.4 GHz)": DATA / "first_cutout.fits", "WISE 3.4": DATA / "wise_cutout.fits"}


class FakeSkyView:
    """Scripted SkyView: the query form, the results page and the temporary FITS files.

    ``query_outcomes`` / ``fits_outcomes`` are consumed one per results-page / FITS request (then
    ``None`` = normal answer); an outcome is an exception to raise, an int HTTP status, or bytes
    to send instead of the file. ``refuse`` holds subject positions answered with HTTP 404.
    """

    def __init__(self, query_outcomes=(), fits_outcomes=(), refuse=()) -> None:
        self.query_outcomes = list(query_outcomes)
        self.fits_outcomes = list(fits_outcomes)
        self.refuse = set(refuse)
        self.calls: list[dict] = []
        self.links: dict[str, str] = {}
        self.n_query = 0

    def _response(self, url: str, content: bytes, status: int = 200, ctype: str = "text/html") -> requests.Response:
        r = requests.Response()
        r.status_code = status
        r.reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}.get(status, "")
        r._content = content
        r.url = url
        r.headers["Content-Type"] = ctype
        r.request = requests.Request("GET", url).prepare()
        return r

    def _scripted(self, queue: list, url: str):
        outcome = queue.pop(0) if queue else None
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, int):
            return self._response(url, b"<html>error</html>", outcome)
        return outcome

    def __call__(self, method: str, url: str, **kw) -> requests.Response:
        self.calls.append({"method": method, "url": url, **kw})
        if url == FORM_URL:
            return self._response(url, (DATA / "form.html").read_bytes())
        if url.endswith("/cgi/runquery.pl"):
            params = kw["params"]
            if params["Position"] in self.refuse:
                return self._response(url, b"<html>not found</html>", 404)
            scripted = self._scripted(self.query_outcomes, url)
            if scripted is not None:
                return scripted
            self.n_query += 1
            surveys = params["survey"] if isinstance(params["survey"], list) else [params["survey"]]
            rows = []
            for k, survey in enumerate(surveys, 1):
                href = f"../../tempspace/fits/skv{self.n_query:04d}_{k}.fits"
                self.links[urljoin(url, href)] = survey
                rows.append(f'<tr><td>{survey}</td><td><a href="{href}">FITS</a></td></tr>')
            html = (DATA / "results_template.html").read_text().replace("{rows}", "\n".join(rows))
            return self._response(url, html.encode())
        if "/tempspace/fits/" in url:
            scripted = self._scripted(self.fits_outcomes, url)
            if isinstance(scripted, bytes):
                return self._response(url, scripted, ctype="application/fits")
            if scripted is not None:
                return scripted
            return self._response(url, FITS_FILES[self.links[url]].read_bytes(), ctype="application/fits")
        raise AssertionError(f"unexpected request {method} {url}")

    def queries(self) -> list[dict]:
        return [c for c in self.calls if c["url"].endswith("/cgi/runquery.pl")]

    def downloads(self) -> list[dict]:
        return [c for c in self.calls if "/tempspace/fits/" in c["url"]]


@pytest.fixture
def sky(monkeypatch):
    def install(**kw) -> FakeSkyView:
        fake = FakeSkyView(**kw)
        monkeypatch.setattr(requests.Session, "request", lambda self, method, url, **k: fake(method, url, **k))
        return fake

    return install


@pytest.fixture
def client():
    sleeps: list[float] = []
    return SkyViewClient(retries=3, backoff=1.5, timeout=17, sleep=sleeps.append), sleeps


@pytest.fixture(scope="module")
def subjects():
    cat = rgz.load_catalogue()
    return [cat["FIRSTJ000007.0+081644"], cat.subjects[1], cat.subjects[2]]


def position_string(subject) -> str:
    from astropy.coordinates import SkyCoord

    return SkyCoord(subject.ra, subject.dec, unit="deg", frame="icrs").fk5.to_string()


# ------------------------------------------------------------------------------------------
# fetching


def test_fetch_subject_writes_both_files(sky, client, subjects, tmp_path):
    fake = sky()
    c, sleeps = client
    radio_path, ir_path = c.fetch_subject(subjects[0], tmp_path)
    assert radio_path == tmp_path / "FIRSTJ000007.0+081644_radio.fits"
    assert ir_path == tmp_path / "FIRSTJ000007.0+081644_ir.fits"
    assert sleeps == []

    # one query for both surveys, with the subject geometry of data_specs/rgz.yaml
    (query,) = fake.queries()
    params = query["params"]
    assert params["survey"] == ["VLA FIRST (1.4 GHz)", "WISE 3.4"]
    assert params["pixels"] == "132"
    width_deg = 132 * 1.375 / 3600
    assert [float(v) for v in params["size"].split(",")] == pytest.approx([width_deg, width_deg])
    assert params["Position"] == position_string(subjects[0])
    assert all(call["timeout"] == 17 for call in fake.calls)
    assert len(fake.downloads()) == 2

    for path, survey, unit in ((radio_path, "VLA FIRST (1.4 GHz)", "JY/BEAM"), (ir_path, "WISE 3.4", "DN")):
        image, header = read_cutout(path, subject=subjects[0].name)
        assert image.shape == (132, 132) and image.dtype == np.float32
        assert header["SURVEY"] == survey and header["BUNIT"] == unit
        assert header["OBJECT"] == subjects[0].name and "DATE-RET" in header
        with fits.open(path) as hdul:  # the common layout: float32 primary HDU
            assert len(hdul) == 1 and hdul[0].header["BITPIX"] == -32
        original = fits.getdata(FITS_FILES[survey])
        np.testing.assert_array_equal(image, original)  # pixels kept as delivered
        w = WCS(header)
        ra, dec = w.wcs_pix2world([[65.5, 65.5]], 0)[0]
        assert ra == pytest.approx(subjects[0].ra, abs=1e-6) and dec == pytest.approx(subjects[0].dec, abs=1e-6)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_rerun_skips_without_network(sky, client, subjects, tmp_path):
    fake = sky()
    c, _ = client
    first = c.fetch(subjects[:2], tmp_path, workers=2, progress=False)
    assert first["fetched"] == [s.name for s in subjects[:2]] and first["skipped"] == [] and first["failed"] == {}
    n_calls = len(fake.calls)
    second = c.fetch(subjects[:2], tmp_path, workers=2, progress=False)
    assert second["skipped"] == [s.name for s in subjects[:2]] and second["fetched"] == []
    assert len(fake.calls) == n_calls  # nothing asked of SkyView
    assert set(second["paths"]) == {s.name for s in subjects[:2]}


def test_only_the_missing_survey_is_fetched(sky, client, subjects, tmp_path):
    fake = sky()
    c, _ = client
    radio_path, ir_path = c.fetch_subject(subjects[0], tmp_path)
    ir_path.unlink()
    radio_mtime = radio_path.stat().st_mtime_ns
    c.fetch_subject(subjects[0], tmp_path)
    assert fake.queries()[-1]["params"]["survey"] == ["WISE 3.4"]
    assert radio_path.stat().st_mtime_ns == radio_mtime and ir_path.exists()


def test_invalid_existing_file_is_fetched_again(sky, client, subjects, tmp_path):
    sky()
    c, _ = client
    radio_path, _ = skyview.cutout_paths(subjects[0], tmp_path)
    tmp_path.mkdir(exist_ok=True)
    radio_path.write_bytes(FITS_FILES["VLA FIRST (1.4 GHz)"].read_bytes()[:5000])  # an interrupted copy
    c.fetch_subject(subjects[0], tmp_path)
    image, _ = read_cutout(radio_path)
    assert image.shape == (132, 132)


@pytest.mark.parametrize(
    "where, outcome",
    [
        ("fits", requests.exceptions.ConnectionError("connection reset")),
        ("fits", requests.exceptions.ReadTimeout("read timed out")),
        ("fits", 503),
        ("fits", b"SIMPLE  =                    T"),  # truncated download
        ("query", requests.exceptions.ConnectionError("name resolution")),
        ("query", 503),
    ],
)
def test_transient_failure_is_retried(sky, client, subjects, tmp_path, where, outcome):
    fake = sky(**({"fits_outcomes": [outcome]} if where == "fits" else {"query_outcomes": [outcome]}))
    c, sleeps = client
    radio_path, ir_path = c.fetch_subject(subjects[0], tmp_path)
    assert sleeps == [1.5]
    assert read_cutout(radio_path)[0].shape == (132, 132) and read_cutout(ir_path)[0].shape == (132, 132)
    if where == "fits":  # the radio file failed first; the second attempt asked for it alone
        assert fake.queries()[-1]["params"]["survey"] in (["VLA FIRST (1.4 GHz)", "WISE 3.4"], ["VLA FIRST (1.4 GHz)"])


def test_backoff_doubles_and_gives_up(sky, client, subjects, tmp_path):
    sky(fits_outcomes=[requests.exceptions.ConnectionError("down")] * 10)
    c, sleeps = client
    with pytest.raises(CutoutError, match="FIRSTJ000007.0\\+081644.*after 3 attempt"):
        c.fetch_subject(subjects[0], tmp_path)
    assert sleeps == [1.5, 3.0]
    assert not any(p.suffix == ".fits" for p in tmp_path.iterdir())  # nothing partial left behind
    assert not list(tmp_path.glob(".*tmp"))


def test_failure_is_reported_per_subject(sky, client, subjects, tmp_path, caplog):
    sky(refuse={position_string(subjects[1])})
    c, _ = client
    with caplog.at_level(logging.WARNING, logger="keras_astro.io.skyview"):
        summary = c.fetch(subjects, tmp_path, workers=2, progress=False)
    assert summary["fetched"] == [subjects[0].name, subjects[2].name]
    assert list(summary["failed"]) == [subjects[1].name]
    assert "404" in summary["failed"][subjects[1].name]
    assert subjects[1].name not in summary["paths"]
    assert not skyview.cutout_paths(subjects[1], tmp_path)[0].exists()
    assert subjects[1].name in caplog.text


def test_wrong_size_download_is_not_accepted(sky, client, subjects, tmp_path):
    small = tmp_path / "small.fits"
    hdr = fits.getheader(FITS_FILES["VLA FIRST (1.4 GHz)"])
    fits.PrimaryHDU(np.ones((100, 100), np.float32) * np.arange(100), hdr).writeto(small)
    sky(fits_outcomes=[small.read_bytes()] * 6)
    c, sleeps = client
    with pytest.raises(CutoutError, match="100x100 pixels; expected 132x132"):
        c.fetch_subject(subjects[0], tmp_path / "out")
    assert len(sleeps) == 2


def test_blank_download_fails_without_retry(sky, client, subjects, tmp_path):
    hdr = fits.getheader(FITS_FILES["VLA FIRST (1.4 GHz)"])
    blank = tmp_path / "blank.fits"
    fits.PrimaryHDU(np.full((132, 132), np.nan, np.float32), hdr).writeto(blank)
    fake = sky(fits_outcomes=[blank.read_bytes()])
    c, sleeps = client
    summary = c.fetch([subjects[0]], tmp_path / "out", progress=False)
    assert "every pixel is NaN" in summary["failed"][subjects[0].name]
    assert sleeps == [] and len(fake.queries()) == 1  # SkyView has no data there: not asked again
    assert not (tmp_path / "out" / f"{subjects[0].name}_radio.fits").exists()


def test_client_arguments_are_checked():
    with pytest.raises(ValueError, match="retries"):
        SkyViewClient(retries=0)
    with pytest.raises(ValueError, match="backoff"):
        SkyViewClient(backoff=-1)
    with pytest.raises(ValueError, match="timeout"):
        SkyViewClient(timeout=0)
    with pytest.raises(ValueError, match="must start with http"):
        SkyViewClient(url="ftp://mirror/basicform.pl")
    mirror = "http://mirror.example/current/cgi/basicform.pl"
    assert SkyViewClient(url=mirror)._skyview().URL == mirror  # noqa: SLF001 - the per-thread client
    assert SkyViewClient()._skyview().URL.startswith("https://skyview")  # noqa: SLF001 - astroquery's default


# ------------------------------------------------------------------------------------------
# reading and writing cutouts


@pytest.fixture
def good(tmp_path) -> tuple[np.ndarray, fits.Header]:
    with fits.open(FITS_FILES["VLA FIRST (1.4 GHz)"]) as hdul:
        return hdul[0].data.copy(), hdul[0].header.copy()


def write(tmp_path: Path, data, header, name="cut.fits") -> Path:
    path = tmp_path / name
    fits.PrimaryHDU(data, header).writeto(path, overwrite=True)
    return path


def test_read_cutout_reads_recorded_files():
    for survey, path in FITS_FILES.items():
        image, header = read_cutout(path)
        assert image.dtype == np.float32 and image.shape == (132, 132)
        assert header["SURVEY"] == survey and header["CTYPE1"] == "RA---TAN" and header["EQUINOX"] == 2000.0
    with pytest.raises(CutoutError, match="expected 64x64"):
        read_cutout(FITS_FILES["WISE 3.4"], size=64)
    assert read_cutout(FITS_FILES["WISE 3.4"], size=None)[0].shape == (132, 132)


def test_read_cutout_truncated(tmp_path):
    raw = FITS_FILES["VLA FIRST (1.4 GHz)"].read_bytes()
    for n in (len(raw) - 3000, 2880 + 500, 1000):
        path = tmp_path / f"trunc{n}.fits"
        path.write_bytes(raw[:n])
        with pytest.raises(CutoutError, match=rf"subject S1, .*trunc{n}\.fits: unreadable or truncated"):
            read_cutout(path, subject="S1")
    (tmp_path / "html.fits").write_text("<html><body>Service unavailable</body></html>")
    with pytest.raises(CutoutError, match="html.fits: unreadable"):
        read_cutout(tmp_path / "html.fits")
    with pytest.raises(FileNotFoundError, match="missing.fits"):
        read_cutout(tmp_path / "missing.fits")


def test_read_cutout_wrong_size(tmp_path, good):
    data, header = good
    path = write(tmp_path, data[:120, :], header)
    with pytest.raises(CutoutError, match=r"cut.fits: image is 132x120 pixels; expected 132x132"):
        read_cutout(path)


def test_read_cutout_no_image_data(tmp_path, good):
    _, header = good
    path = tmp_path / "empty.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]).writeto(path)
    with pytest.raises(CutoutError, match="empty.fits: no image data"):
        read_cutout(path)


def test_read_cutout_without_wcs(tmp_path, good):
    data, header = good
    bare = fits.Header()
    bare["SURVEY"] = header["SURVEY"]
    with pytest.raises(CutoutError, match="no celestial WCS"):
        read_cutout(write(tmp_path, data, bare))
    linear = header.copy()
    linear["CTYPE1"], linear["CTYPE2"] = "LINEAR", "LINEAR"
    with pytest.raises(CutoutError, match="no celestial WCS"):
        read_cutout(write(tmp_path, data, linear, "linear.fits"))


def test_read_cutout_all_nan_and_blank(tmp_path, good):
    data, header = good
    with pytest.raises(CutoutError, match="every pixel is NaN"):
        read_cutout(write(tmp_path, np.full_like(data, np.nan), header, "nan.fits"))
    with pytest.raises(CutoutError, match="blank image"):
        read_cutout(write(tmp_path, np.zeros_like(data), header, "zero.fits"))
    with pytest.raises(CutoutError, match="blank image"):
        read_cutout(write(tmp_path, np.full_like(data, 3.5), header, "const.fits"))
    mostly = data.copy()
    mostly[:60] = np.nan
    with pytest.raises(CutoutError, match=r"7920 of 17424 pixels \(45\.5%\) are NaN"):
        read_cutout(write(tmp_path, mostly, header, "edge.fits"))


def test_read_cutout_replaces_isolated_nans(tmp_path, good, caplog):
    data, header = good
    holes = data.copy()
    holes[5, 7] = holes[100, 3] = np.nan
    holes[50, 50] = np.inf
    with caplog.at_level(logging.INFO, logger="keras_astro.io.skyview"):
        image, _ = read_cutout(write(tmp_path, holes, header), subject="S2")
    finite = np.isfinite(holes)
    med = np.median(holes[finite])
    assert np.isfinite(image).all()
    assert image[5, 7] == image[100, 3] == image[50, 50] == pytest.approx(med)
    np.testing.assert_array_equal(image[finite], holes[finite])
    assert "replaced 3 NaN/inf pixel(s)" in caplog.text and "S2" in caplog.text


def test_read_cutout_drops_degenerate_axes(tmp_path, good):
    data, header = good
    cube = header.copy()
    cube["NAXIS"] = 4
    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(data[None, None], cube).writeto(path)
    image, _ = read_cutout(path)
    np.testing.assert_array_equal(image, data)


def test_write_cutout_is_atomic_and_float32(tmp_path, good, monkeypatch):
    data, header = good
    path = write_cutout(tmp_path / "sub" / "x_radio.fits", data.astype(np.float64), header, extra={"OBJECT": "X"})
    with fits.open(path) as hdul:
        assert hdul[0].header["BITPIX"] == -32 and hdul[0].header["BUNIT"] == "JY/BEAM"
        assert hdul[0].header["OBJECT"] == "X"
    # a failing write leaves neither the target nor a temporary file
    target = tmp_path / "y_radio.fits"

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fits.PrimaryHDU, "writeto", boom)
    with pytest.raises(OSError, match="disk full"):
        write_cutout(target, data, header)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
