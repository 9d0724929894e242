"""Shared test settings: quiet TensorFlow, a private cache for embedded data, seeded runs."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_ASTRO_CACHE", os.path.join(tempfile.gettempdir(), "keras_astro_test_cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def raw_photometry(rng) -> np.ndarray:
    """(60, 44, 2) magnitudes/errors with ~40 % of bands missing (NaN in both)."""
    x = np.empty((60, 44, 2), np.float32)
    x[..., 0] = rng.normal(21.0, 2.0, size=(60, 44))
    x[..., 1] = rng.uniform(0.01, 0.3, size=(60, 44))
    miss = rng.random((60, 44)) < 0.4
    x[miss] = np.nan
    return x



def _notebook_runner():
    """``tests/notebook_runner.py``, loaded once (one module object for the hook and the tests)."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "keras_astro_tests_notebook_runner"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "notebook_runner.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pytest_collection_finish(session) -> None:
    """Start the notebooks in the background as soon as their tests are known to run, so they
    overlap with the rest of the suite (``tests/notebook_runner.py``)."""
    if any("test_notebooks.py::test_notebook_runs" in item.nodeid for item in session.items):
        _notebook_runner().start()


@pytest.fixture(scope="session")
def notebook_runner():
    return _notebook_runner()
