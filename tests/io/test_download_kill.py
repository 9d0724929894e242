"""Downloads that survive being killed (issue 8, "Faults"): SDSS spectra and SkyView cutouts.

Each test serves real-format files from a local HTTP server (127.0.0.1, a free port, its own
thread; every answer delayed so the download is still running when it is killed) and runs the
real ``keras-astro`` command in a subprocess — ``spectra download`` or ``rgz fetch``, through
``tests/io/kill_download_cli.py``, which only adds the points where a run pauses to be killed
(the local server is given with ``--sas-url`` / ``--skyview-url``). The
subprocess's process group is SIGKILLed twice — first once some but not all objects are on
disk, then (in the restarted run) while a store shard or cutout file sits written but not yet
renamed — and the same command is run a third time to the end. The tests check that every
requested object is then stored exactly once with the bytes the server sent, and that each
restart asked the server only for what the killed runs had not finished.

The spec files and targets come from ``test_sdss.py`` (the ``archive`` fixture), the SkyView
pages and cutouts from ``tests/data/skyview`` as ``test_skyview.py`` uses them; the subprocess
helpers (process groups killed on failure, bounded waits) are those of ``tests/mw_worker.py``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from astropy.io import fits

from keras_astro import specs
from keras_astro.io import rgz, sdss, spectra_store
from keras_astro.io.skyview import cutout_paths, read_cutout

HERE = Path(__file__).resolve().parent
HELPER = HERE / "kill_download_cli.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sdss_tests = _load("kill_sdss_fixtures", HERE / "test_sdss.py")
sky_tests = _load("kill_skyview_fixtures", HERE / "test_skyview.py")
mw = _load("kill_mw_worker", HERE.parent / "mw_worker.py")

archive = sdss_tests.archive  # module fixture: spec files of test_sdss.OBJECTS, their SAS URLs, targets

DELAY = 0.3  # s per HTTP answer: keeps the download running for seconds
TIMEOUT = 60  # s: bound on every wait for a subprocess


# ------------------------------------------------------------------------------------------
# a local archive


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (free port) answering ``route(path, query)``.

    ``route`` returns (status, content type, body). Every request is recorded with the current
    ``phase`` as ``(phase, path, query)`` when it arrives, then answered after ``delay(path)``
    seconds.
    """

    def __init__(self, route: Callable[[str, dict], tuple[int, str, bytes]], delay: Callable[[str], float]) -> None:
        self.route = route
        self.delay = delay
        self.phase = 1
        self.requests: list[tuple[int, str, dict]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                with server.lock:
                    server.requests.append((server.phase, url.path, query))
                time.sleep(server.delay(url.path))
                status, ctype, body = server.route(url.path, query)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client was killed meanwhile
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="local-archive", daemon=True)

    def __enter__(self) -> "LocalServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def paths(self, phase: int, prefix: str = "") -> Counter:
        with self.lock:
            return Counter(p for ph, p, _ in self.requests if ph == phase and p.startswith(prefix))


def _env(**extra: str) -> dict:
    """The subprocess environment: quiet, single-threaded, never through a proxy for 127.0.0.1."""
    return mw.quiet_env(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", **extra)


def _killed_runs_then_finish(
    tmp_path: Path,
    server: LocalServer,
    cmd: list[str],
    env: dict,
    kills: list[tuple[str | None, Callable[[], bool] | None]],
    snapshot: Callable[[], dict],
) -> tuple[list[dict], dict]:
    """Run ``cmd`` once per ``(pause, ready)`` of ``kills`` and SIGKILL its process group when
    ``ready()`` holds (or when it reaches the ``pause`` point of kill_download_cli.py), taking
    ``snapshot()`` of the disk after each kill; then run ``cmd`` to the end. Requests of run k
    are recorded as phase k (1-based). Returns the snapshots and the last run's JSON output."""
    marker = tmp_path / "paused"
    states = []
    with mw.Procs(tmp_path / "logs") as procs:
        for k, (pause, ready) in enumerate(kills, 1):
            server.phase = k
            run_env = dict(env, KILL_PAUSE=pause, KILL_MARKER=str(marker)) if pause else env
            procs.start(f"run{k}", cmd, run_env)
            what = f"the {pause} pause point" if pause else "some objects on disk"
            mw.wait_for(marker.exists if pause else ready, TIMEOUT, f"run {k}: {what}", procs, poll=0.05)
            procs.kill(f"run{k}")
            procs.procs.pop(f"run{k}")  # dead and reaped: wait_for must not take it for an early exit
            marker.unlink(missing_ok=True)
            states.append(snapshot())
        last = f"run{len(kills) + 1}"
        server.phase = len(kills) + 1
        procs.start(last, cmd, env)
        code = procs.wait(last, TIMEOUT)
        log = procs.log(last)
    assert code == 0, f"the restarted command failed\n{log}"
    return states, json.loads((tmp_path / "logs" / f"{last}.out").read_text())


def _once_each(requests: Counter, allowed: set) -> bool:
    """Every request is of an allowed object, and none was made twice."""
    return set(requests) <= allowed and all(n == 1 for n in requests.values())


# ------------------------------------------------------------------------------------------
# SDSS spectra: keras-astro spectra download


def test_kill_spectra_download_twice_then_finish_stores_each_spectrum_once(archive, tmp_path):
    """``spectra download`` (10 spectra, batches of 3 into a sharded store) is killed after its
    first shard while the next batch downloads, then — restarted — inside its first shard write
    (rows in the temporary file, not yet renamed), then run to the end: each restart downloads
    only spectra without a file, and every spectrum ends in the store exactly once."""
    default_base = sdss.SDSSClient().sas_base_url
    served = {url[len(default_base) :]: data for url, data in archive["files"].items()}  # /dr17/... -> bytes
    name_of = {path: path.rsplit("/", 1)[1] for path in served}
    by_name = {name_of[p]: data for p, data in served.items()}
    assert len(by_name) == len(sdss_tests.OBJECTS) == 10

    def route(path: str, query: dict) -> tuple[int, str, bytes]:
        key = path[len("/sas") :]
        if key in served:
            return 200, "application/fits", served[key]
        return 404, "text/html", b"<html>404 Not Found</html>"

    targets_csv = tmp_path / "targets.csv"
    archive["targets"].write(targets_csv, format="ascii.csv")
    out, store = tmp_path / "fits", tmp_path / "store"

    def on_disk() -> dict:
        return {
            "files": {p.name for p in out.glob("spec-*.fits")},
            "shards": [p.name for p in spectra_store.shard_paths(store)],
            "stored": sorted(int(i) for i in spectra_store.store_spec_ids(store)),
            "temp_shards": sorted(p.name for p in store.glob(".shard-*.tmp")) if store.is_dir() else [],
        }

    def ready() -> bool:  # one shard stored and the next batch under way
        d = on_disk()
        return bool(d["shards"]) and len(d["files"]) >= 4

    with LocalServer(route, lambda path: DELAY) as server:
        cmd = [sys.executable, str(HELPER), "--no-progress", "spectra", "download", str(targets_csv)]
        cmd += ["--out-dir", str(out), "--store", str(store), "--workers", "2", "--retries", "1"]
        cmd += ["--sas-url", f"{server.url}/sas", "--shard-size", "3"]
        env = _env()
        (k1, k2), report = _killed_runs_then_finish(
            tmp_path, server, cmd, env, [(None, ready), ("shard:1", None)], on_disk
        )
        runs = [server.paths(k, "/sas") for k in (1, 2, 3)]

    def missing(state: dict) -> set:
        return {f"/sas{p}" for p in served if name_of[p] not in state["files"]}

    # kill 1 came in the middle: a shard stored, the next batch under way, some spectra not begun
    assert 3 <= len(k1["stored"]) < 10 and k1["shards"]
    assert len(k1["files"]) < 10, "the download ended before it was killed; raise DELAY"
    assert set(k1["stored"]) <= {sdss.read_spec_fits(out / n).meta["specObjID"] for n in k1["files"]}
    # kill 2 came between writing a shard's rows and renaming the file: nothing new is stored
    assert k2["shards"] == k1["shards"] and k2["stored"] == k1["stored"] and len(k2["temp_shards"]) == 1
    assert k2["files"] >= k1["files"]

    # each restart fetched only spectra that had no file, each once; the last one exactly those
    assert _once_each(runs[1], missing(k1)), "the first restart re-downloaded finished spectra"
    assert runs[2] == Counter(dict.fromkeys(missing(k2), 1)), "the last restart re-downloaded finished spectra"
    assert sum(runs[2].values()) < len(served)
    assert set(runs[0]) | set(runs[1]) | set(runs[2]) == {f"/sas{p}" for p in served}
    assert report["n_requested"] == 10 and report["n_failed"] == 0
    assert report["n_downloaded"] == len(missing(k2)) and report["n_skipped"] == 10 - len(missing(k2))

    # every object exactly once, with the bytes the server sent
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted([*by_name, "failures.csv"])
    for name, data in by_name.items():
        assert (out / name).read_bytes() == data, name
    assert all(p.name.endswith(".part") for p in out.iterdir() if p.name.startswith("."))  # killed runs' temp files

    st = spectra_store.read_store(store)
    ids = st.meta["specObjID"].to_numpy().astype(np.uint64)
    assert len(ids) == 10 and len(np.unique(ids)) == 10
    assert sorted(int(i) for i in ids) == sorted(archive["ids"])
    grid = specs.spectral_grid("sdss")
    src = tmp_path / "served"
    src.mkdir()
    for name, data in by_name.items():
        (src / name).write_bytes(data)
        spec = sdss.read_spec_fits(src / name)
        (row,) = np.flatnonzero(ids == np.uint64(spec.meta["specObjID"]))
        flux, ivar, mask = sdss.place_on_lattice(spec, grid)
        np.testing.assert_array_equal(st.fluxes[row], flux, err_msg=name)
        np.testing.assert_array_equal(st.ivar[row], ivar, err_msg=name)
        np.testing.assert_array_equal(st.and_mask[row], mask, err_msg=name)
        assert st.meta["class"][row] == spec.meta["class"]
    n_unstored = 10 - len(k2["stored"])  # batches of 3; the half-written shard's rows went into a new one
    assert len(spectra_store.shard_paths(store)) == len(k2["shards"]) + -(-n_unstored // 3)


# ------------------------------------------------------------------------------------------
# SkyView cutouts: keras-astro rgz fetch


SKY_DATA = sky_tests.DATA
SURVEY_KEY = {"VLA FIRST (1.4 GHz)": "radio", "WISE 3.4": "ir"}
N_SUBJECTS = 6


def _served_cutouts(n: int) -> dict[tuple[int, str], bytes]:
    """(subject index, radio/ir) -> a SkyView-format FITS file: the recorded cutout, its pixels
    scaled per subject so that every object's data differ."""
    out = {}
    for survey, path in sky_tests.FITS_FILES.items():
        with fits.open(path) as hdul:
            data, header = hdul[0].data.astype(np.float32), hdul[0].header.copy()
        for i in range(n):
            buf = io.BytesIO()
            fits.PrimaryHDU(data * np.float32(1 + 0.25 * i), header).writeto(buf)
            out[(i, SURVEY_KEY[survey])] = buf.getvalue()
    return out


def test_kill_rgz_fetch_twice_then_finish_fetches_each_cutout_once(tmp_path):
    """``rgz fetch`` (6 subjects, FIRST + WISE each) is killed once a subject is done and another
    half done, then — restarted — while a cutout sits written under its temporary name, then run
    to the end: each restart asks SkyView, once per subject, only for the surveys without a file,
    and every subject ends with both cutouts, each once, holding the served pixels."""
    subjects = rgz.load_catalogue().subjects[:N_SUBJECTS]
    names = [s.name for s in subjects]
    index = {sky_tests.position_string(s): i for i, s in enumerate(subjects)}
    served = _served_cutouts(N_SUBJECTS)
    form = (SKY_DATA / "form.html").read_bytes()
    template = (SKY_DATA / "results_template.html").read_text()

    def route(path: str, query: dict) -> tuple[int, str, bytes]:
        if path == "/current/cgi/basicform.pl":
            return 200, "text/html", form
        if path == "/current/cgi/runquery.pl":
            i = index[query["Position"][0]]
            rows = [
                f'<tr><td>{s}</td><td><a href="../../tempspace/fits/{i}_{SURVEY_KEY[s]}.fits">FITS</a></td></tr>'
                for s in query["survey"]
            ]
            return 200, "text/html", template.replace("{rows}", "\n".join(rows)).encode()
        if path.startswith("/tempspace/fits/"):
            i, key = Path(path).stem.split("_")
            return 200, "application/fits", served[(int(i), key)]
        return 404, "text/html", b"<html>404 Not Found</html>"

    out = tmp_path / "cutouts"
    finals = {(i, key): p for i, s in enumerate(subjects) for key, p in zip(("radio", "ir"), cutout_paths(s, out))}

    def on_disk() -> dict:
        return {"done": {k for k, p in finals.items() if p.exists()}, "temp": sorted(out.glob(".*.tmp"))}

    def ready() -> bool:  # a subject done and one half done (radio only), or late in the run
        done = on_disk()["done"]
        n_files = Counter(i for i, _ in done)
        return (2 in n_files.values() and 1 in n_files.values()) or len(done) >= 8

    with LocalServer(route, lambda path: 0.0 if path.endswith("basicform.pl") else DELAY) as server:
        cmd = [sys.executable, str(HELPER), "--no-progress", "rgz", "fetch", "--out", str(out)]
        cmd += ["--subjects", ",".join(names), "--workers", "2", "--skyview-url", f"{server.url}/current/cgi/basicform.pl"]
        env = _env()
        (k1, k2), summary = _killed_runs_then_finish(
            tmp_path, server, cmd, env, [(None, ready), ("cutout:2", None)], on_disk
        )
        with server.lock:
            queries = [
                [
                    (index[q["Position"][0]], sorted(q["survey"]))
                    for ph, p, q in server.requests
                    if ph == k and p.endswith("/runquery.pl")
                ]
                for k in (1, 2, 3)
            ]
        downloads = [server.paths(k, "/tempspace/fits/") for k in (1, 2, 3)]

    def missing(state: dict) -> set:
        return set(finals) - state["done"]

    def asked(state: dict) -> list:  # (subject, its surveys without a file) for each unfinished subject
        gone = missing(state)
        return sorted(
            (i, sorted(s for s, key in SURVEY_KEY.items() if (i, key) in gone)) for i in sorted({i for i, _ in gone})
        )

    def files(state: dict) -> set:
        return {f"/tempspace/fits/{i}_{key}.fits" for i, key in missing(state)}

    # kill 1 came in the middle; kill 2 with a written cutout not yet renamed
    assert len(k1["done"]) >= 3 and len(missing(k1)) >= 2, "the fetch ended before it was killed; raise DELAY"
    assert k2["temp"] and k2["done"] >= k1["done"] and missing(k2)

    # each restart asked, per subject, once and only for the surveys without a file
    subjects_asked = [i for i, _ in queries[1]]
    assert all(q in asked(k1) for q in queries[1]), "the first restart asked again for finished cutouts"
    assert len(subjects_asked) == len(set(subjects_asked))
    assert _once_each(downloads[1], files(k1))
    assert sorted(queries[2]) == asked(k2), "the last restart asked again for finished cutouts"
    assert downloads[2] == Counter(dict.fromkeys(files(k2), 1))
    assert summary["failed"] == {}
    assert summary["fetched"] == [n for i, n in enumerate(names) if any(j == i for j, _ in missing(k2))]
    assert summary["skipped"] == [n for i, n in enumerate(names) if all(j != i for j, _ in missing(k2))]

    # every cutout exactly once, holding the pixels the server sent
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == sorted(p.name for p in finals.values())
    assert all(p.name.endswith(".tmp") for p in out.iterdir() if p.name.startswith("."))  # killed runs' temp files
    for (i, key), path in finals.items():
        image, header = read_cutout(path, subject=names[i])
        with fits.open(io.BytesIO(served[(i, key)])) as hdul:
            np.testing.assert_array_equal(image, hdul[0].data, err_msg=path.name)
        assert header["OBJECT"] == names[i]
