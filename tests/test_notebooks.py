"""Execute every notebook on tiny settings (KERAS_ASTRO_TINY=1).

The four notebooks run as separate processes, two at a time (a notebook spends most of its time
tracing Keras graphs in one Python thread, so two share the two CPU cores well); each test then
checks its notebook's outcome. A notebook is executed with its own output folder and working
directory, so they cannot see each other's files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
PARALLEL = 2
TIMEOUT = 900  # s per notebook

RUNNER = """
import json, sys
import nbformat
from nbclient import NotebookClient
path, workdir, result = sys.argv[1:4]
nb = nbformat.read(path, as_version=4)
error = None
try:
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": workdir}}).execute()
except Exception as exc:  # a failing cell: reported below with the cell's error output
    error = f"{type(exc).__name__}: {exc}"[-4000:]
errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
json.dump({"error": error, "cell_errors": [f"{o.get('ename')}: {o.get('evalue')}" for o in errors]}, open(result, "w"))
"""


def _execute(path: Path, root: Path) -> dict:
    work = root / path.stem
    work.mkdir(parents=True)
    env = {**os.environ, "KERAS_ASTRO_TINY": "1", "KERAS_ASTRO_NOTEBOOK_OUT": str(work / "run"), "MPLBACKEND": "Agg"}
    result = work / "result.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", RUNNER, str(path), str(work), str(result)], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT + 60)
    out = json.loads(result.read_text()) if result.is_file() else {"error": f"runner exited with {proc.returncode}: {proc.stderr[-3000:]}", "cell_errors": []}
    return {**out, "workdir": work, "seconds": round(time.perf_counter() - t0, 1)}


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("notebooks")
    # longest first, so the two lanes finish close together
    order = sorted(NOTEBOOKS, key=lambda p: ("fnet" not in p.name, "spectral" not in p.name, p.name))
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {p.name: pool.submit(_execute, p, root) for p in order}
        results = {name: f.result() for name, f in futures.items()}
    print("notebook seconds:", {k: v["seconds"] for k, v in results.items()})
    return results


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, executed):
    res = executed[path.name]
    assert res["error"] is None and not res["cell_errors"], (res["error"], res["cell_errors"])
    if "agn" in path.name:
        assert (res["workdir"] / "run" / "model_B" / "metrics.json").is_file()


def test_there_is_a_notebook_per_study():
    from keras_astro.studies.reproduce import available_studies

    names = " ".join(p.name for p in NOTEBOOKS)
    keys = {"agn": "agn", "claran": "claran", "fnet": "fnet", "spectra": "spectral"}
    assert set(available_studies()) == set(keys)
    assert all(keys[s] in names for s in available_studies())
