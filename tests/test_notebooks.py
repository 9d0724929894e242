"""Execute every notebook on tiny settings (KERAS_ASTRO_TINY=1).

The notebooks run in subprocesses in the background from the start of the test session
(``tests/notebook_runner.py``, started by ``tests/conftest.py`` when these tests are selected);
each test waits for its notebook and checks the outcome.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, notebook_runner):
    res = notebook_runner.result(path.name)
    print(f"{path.name}: {res['seconds']} s")
    assert res["error"] is None and not res["cell_errors"], (res["error"], res["cell_errors"])
    if "agn" in path.name:
        assert (res["workdir"] / "run" / "model_B" / "metrics.json").is_file()


def test_there_is_a_notebook_per_study():
    from keras_astro.studies.reproduce import available_studies

    names = " ".join(p.name for p in NOTEBOOKS)
    keys = {"agn": "agn", "claran": "claran", "fnet": "fnet", "spectra": "spectral"}
    assert set(available_studies()) == set(keys)
    assert all(keys[s] in names for s in available_studies())
