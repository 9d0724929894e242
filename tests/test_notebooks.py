"""Execute every notebook on tiny settings (KERAS_ASTRO_TINY=1)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_ASTRO_TINY", "1")
    monkeypatch.setenv("KERAS_ASTRO_NOTEBOOK_OUT", str(tmp_path / "run"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert (tmp_path / "run" / "model_B" / "metrics.json").is_file() or "agn" not in path.name


def test_there_is_a_notebook_per_study():
    from keras_astro.studies.reproduce import available_studies

    names = " ".join(p.name for p in NOTEBOOKS)
    keys = {"agn": "agn", "claran": "claran", "fnet": "fnet", "spectra": "spectral"}
    assert set(available_studies()) == set(keys)
    assert all(keys[s] in names for s in available_studies())
