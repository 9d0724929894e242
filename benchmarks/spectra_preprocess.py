"""Benchmark: vectorised spectral preprocessing vs a per-row loop (as the thesis did).

Both resample simulated SDSS spectra onto FNet's 4,618-pixel grid, FNet-normalise them and
measure the 14 thesis equivalent widths. Prints one JSON line with spectra per second for each
and their ratio (same data, same run, same machine).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _load_reference():
    path = Path(__file__).with_name("spectra_reference.py")
    spec = importlib.util.spec_from_file_location("spectra_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(n_vec: int = 4000, n_row: int = 300) -> dict:
    from keras_astro import specs
    from keras_astro.preprocess import spectra as P
    from keras_astro.simulate.spectra import simulate_spectra

    ref = _load_reference()
    sim = simulate_spectra(n_vec, seed=11)
    wl, grid, lines = sim.wavelengths, specs.spectral_grid("fnet"), specs.spectral_lines()
    z = np.asarray(sim.meta["z"], dtype=np.float64)

    def vectorised(f, iv, zz):
        res = P.resample(f, wl, grid, ivar=iv, min_coverage=0.0)
        ew = P.equivalent_widths(res.fluxes, grid, zz, flags=res.flags)
        return P.fnet_normalise(res.fluxes), ew

    # vectorised path in chunks of 1,024 spectra (the preprocess_store default), serially and on one thread per core (numpy
    # releases the GIL); warmed up first so both paths are timed hot
    from concurrent.futures import ThreadPoolExecutor

    chunks = [slice(a, a + 1024) for a in range(0, n_vec, 1024)]
    vectorised(sim.fluxes[:64], sim.ivar[:64], z[:64])
    t0 = time.perf_counter()
    outs = [vectorised(sim.fluxes[s], sim.ivar[s], z[s]) for s in chunks]
    t_serial = time.perf_counter() - t0
    workers = os.cpu_count() or 1
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda s: vectorised(sim.fluxes[s], sim.ivar[s], z[s]), chunks))
    t_threads = time.perf_counter() - t0
    t_vec = min(t_serial, t_threads)
    vec_f = np.concatenate([o[0] for o in outs])
    vec_ew = np.concatenate([o[1] for o in outs])

    df = ref.frame_from_arrays(sim.fluxes[:n_row], sim.ivar[:n_row], wl, z[:n_row])
    ref.preprocess_per_row(df.iloc[:5], grid, lines)  # warm-up
    t0 = time.perf_counter()
    row_f, row_ew = ref.preprocess_per_row(df, grid, lines)
    t_row = time.perf_counter() - t0

    same = np.isfinite(row_ew) & np.isfinite(vec_ew[:n_row])
    result = {
        "benchmark": "spectra_preprocess",
        "grid": "fnet",
        "n_vectorised": n_vec,
        "n_per_row": n_row,
        "vectorised_spectra_per_s": round(n_vec / t_vec, 1),
        "vectorised_serial_spectra_per_s": round(n_vec / t_serial, 1),
        "vectorised_threads_spectra_per_s": round(n_vec / t_threads, 1),
        "per_row_spectra_per_s": round(n_row / t_row, 1),
        "speedup_ratio": round((n_vec / t_vec) / (n_row / t_row), 2),
        "max_abs_diff_flux": float(np.abs(vec_f[:n_row] - row_f).max()),
        "max_abs_diff_ew": float(np.abs(vec_ew[:n_row][same] - row_ew[same]).max()) if same.any() else None,
        "nan_pattern_equal": bool(np.array_equal(np.isnan(row_ew), np.isnan(vec_ew[:n_row]))),
        "cores": os.cpu_count(),
    }
    return result


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    print(json.dumps(main(n_vec=1024 if quick else 4000, n_row=100 if quick else 300)))
