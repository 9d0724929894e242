"""Benchmark: peak memory while streaming one epoch of spectra from a 10,000- and a 100,000-spectrum store.

:func:`keras_astro.pipelines.spectra.spectra_dataset` reads the HDF5 store in chunks of
``chunk_rows`` rows, so its memory should be bounded by ``chunk_rows + shuffle_buffer`` spectra
(plus the store's meta table) whatever the number of rows (issue 8: the ratio of the two peaks
should stay below 1.5).

Method
------
* Both stores are raw stores on the full SDSS lattice (4,701 pixels; ``fluxes`` and ``ivar``
  float32), written with :class:`keras_astro.io.spectra_store.StoreWriter` into a temporary folder
  that is removed at the end (the 100k store is about 3.8 GB).
* Simulating 100,000 spectra takes several minutes, so the stores are made by **repeating one
  block of simulated spectra** (``--block``, default 2,048 from
  :func:`keras_astro.simulate.spectra.simulate_spectra`) with fresh specObjIDs; the pixels repeat,
  which does not matter for memory.
* Each epoch runs in its **own subprocess** (``python streaming_memory.py --child STORE``) that
  imports TensorFlow, builds ``spectra_dataset(store, label="z", shuffle=True, batch_size=256)``,
  iterates every batch once and reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (its peak
  resident set), its resident set before streaming (``/proc/self/statm``) and the rows seen, so
  one run cannot inflate the other.

Prints one JSON line: ``peak_rss_mb_10k``, ``peak_rss_mb_100k``, ``rss_ratio_100k_over_10k`` and
the details (baseline RSS after imports, growth while streaming, rows, seconds, store sizes).

Usage: ``python benchmarks/streaming_memory.py [--n-small 10000] [--n-large 100000]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("streaming_memory")


def _rss_mb_now() -> float:
    """Current resident set of this process in MB (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """Peak resident set of this process in MB (ru_maxrss is kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def write_store(path: Path, n: int, block: dict, chunk: int = 2048) -> Path:
    """Write ``n`` spectra by repeating ``block`` (fluxes, ivar, meta) with fresh specObjIDs."""
    from keras_astro import specs
    from keras_astro.io.spectra_store import StoreWriter

    wl = specs.spectral_grid("sdss")
    fluxes, ivar, meta = block["fluxes"], block["ivar"], block["meta"]
    size = len(fluxes)
    with StoreWriter(path, wl, attrs={"grid": "sdss", "creator": "benchmarks/streaming_memory.py"}) as w:
        for start in range(0, n, chunk):
            k = min(chunk, n - start)
            idx = np.arange(start, start + k) % size
            m = {name: col[idx] for name, col in meta.items()}
            m["specObjID"] = np.arange(start + 1, start + k + 1, dtype=np.uint64)  # fresh, unique ids
            w.append(fluxes=fluxes[idx], ivar=ivar[idx], meta=m)
    return path


def child(store: str, batch_size: int, chunk_rows: int, shuffle_buffer: int) -> dict:
    """One epoch through spectra_dataset in this process; returns its memory figures."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from keras_astro.pipelines.spectra import spectra_dataset

    tf.random.set_seed(0)
    ds = spectra_dataset(
        store,
        label="z",
        batch_size=batch_size,
        shuffle=True,
        seed=0,
        chunk_rows=chunk_rows,
        shuffle_buffer=shuffle_buffer,
    )
    baseline = _rss_mb_now()
    t0 = time.perf_counter()
    rows = 0
    checksum = 0.0
    for x, y in ds:
        rows += int(x.shape[0])
        checksum += float(tf.reduce_sum(y))
    return {
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 2),
        "rss_before_epoch_mb": round(baseline, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "label_sum": checksum,
    }


def _run_child(store: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(store),
        "--batch-size",
        str(args.batch_size),
        "--chunk-rows",
        str(args.chunk_rows),
        "--shuffle-buffer",
        str(args.shuffle_buffer),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"child for {store.name} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-small", type=int, default=10_000)
    p.add_argument("--n-large", type=int, default=100_000)
    p.add_argument("--block", type=int, default=2048, help="simulated spectra repeated to fill the stores")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--chunk-rows", type=int, default=512)
    p.add_argument("--shuffle-buffer", type=int, default=2048)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        out = child(args.child, args.batch_size, args.chunk_rows, args.shuffle_buffer)
        print(json.dumps(out))
        return out

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    from keras_astro.simulate.spectra import simulate_spectra

    t0 = time.perf_counter()
    sim = simulate_spectra(args.block, seed=2024)
    block = {"fluxes": sim.fluxes, "ivar": sim.ivar, "meta": dict(sim.meta)}
    log.info("simulated %d spectra in %.1f s", args.block, time.perf_counter() - t0)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="keras_astro_streaming_memory_") as tmp:
        for key, n in (("10k", args.n_small), ("100k", args.n_large)):
            t0 = time.perf_counter()
            path = write_store(Path(tmp) / f"store_{n}.h5", n, block)
            size_gb = path.stat().st_size / 1e9
            log.info("wrote %s (%d spectra, %.2f GB) in %.1f s", path.name, n, size_gb, time.perf_counter() - t0)
            run = _run_child(path, args)
            if run["rows"] != n:
                raise RuntimeError(f"the epoch over {path.name} saw {run['rows']} rows, expected {n}")
            run["n_spectra"] = n
            run["store_gb"] = round(size_gb, 2)
            runs[key] = run
            log.info("streamed %s: %s", path.name, run)
            path.unlink()
    result = {
        "benchmark": "streaming_memory",
        "peak_rss_mb_10k": runs["10k"]["peak_rss_mb"],
        "peak_rss_mb_100k": runs["100k"]["peak_rss_mb"],
        "rss_ratio_100k_over_10k": round(runs["100k"]["peak_rss_mb"] / runs["10k"]["peak_rss_mb"], 3),
        "growth_during_epoch_mb_10k": round(runs["10k"]["peak_rss_mb"] - runs["10k"]["rss_before_epoch_mb"], 1),
        "growth_during_epoch_mb_100k": round(runs["100k"]["peak_rss_mb"] - runs["100k"]["rss_before_epoch_mb"], 1),
        "n_spectra": [args.n_small, args.n_large],
        "pixels": int(block["fluxes"].shape[1]),
        "batch_size": args.batch_size,
        "chunk_rows": args.chunk_rows,
        "shuffle_buffer": args.shuffle_buffer,
        "repeated_block": args.block,
        "runs": runs,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
