"""``keras-astro reproduce``: run every study on its embedded data and write one report.

Each study module exposes ``reproduce(out, quick=..., strategy=..., progress=...) -> dict`` whose
``report`` entry lists (metric, paper value, our value) rows; this module runs the selected
studies, gives each a time budget in ``--quick`` mode, and writes ``report.md``.
"""

from __future__ import annotations

import importlib
import logging
import os
import traceback
from pathlib import Path
from typing import Sequence

from keras_astro.studies.common import Timer, markdown_table, versions, write_json, write_text

log = logging.getLogger(__name__)

#: Studies in the order they run: name → (module, paper, quick budget in seconds). The quick
#: budgets add up to less than the 10 minutes promised for ``reproduce --quick`` on 2 CPU cores.
STUDIES: dict[str, tuple[str, str, int]] = {
    "agn": ("keras_astro.studies.agn", "Chen et al. 2021, AGN recognition (seed 000)", 180),
    "fnet": ("keras_astro.studies.fnet", "Rastegar Nia et al., FNet quasar redshifts (seed 002)", 120),
    "spectra": ("keras_astro.studies.spectra", "Csepreghy 2020, SDSS spectral classification (seed 003)", 150),
    "claran": ("keras_astro.studies.claran", "Wu et al. 2019, CLARAN radio morphologies (seed 001)", 120),
}


def available_studies() -> list[str]:
    """Studies whose module exists in this installation."""
    out = []
    for name, (mod, _, _) in STUDIES.items():
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError:
            continue
        out.append(name)
    return out


def reproduce(out: str | os.PathLike, *, quick: bool = False, studies: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Run ``studies`` (default: all available) into ``out/<study>/`` and write ``out/report.md``.

    A study that fails is reported as failed in report.md and in the return value; the others
    still run. Raises ``RuntimeError`` at the end if any study failed.
    """
    from keras_astro.distribute import describe_strategy, get_strategy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(studies or available_studies())
    unknown = [s for s in names if s not in STUDIES]
    if unknown:
        raise ValueError(f"unknown studies {unknown}; available: {available_studies()}")
    strategy = get_strategy()
    results: dict[str, dict] = {}
    sections = []
    for name in names:
        module, paper, budget = STUDIES[name]
        with Timer() as t:
            try:
                res = importlib.import_module(module).reproduce(out / name, quick=quick, strategy=strategy, progress=progress)
                status = "ok"
            except Exception as exc:  # one failing study must not hide the others
                log.error("study %s failed: %s", name, exc)
                res = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                status = "failed"
        over = quick and t.seconds > budget
        results[name] = {"status": status, "seconds": t.seconds, "budget_seconds": budget if quick else None, "over_budget": over}
        sec = [f"## {name}: {paper}\n", f"Status: **{status}** in {t.seconds:.0f} s" + (f" (quick budget {budget} s{', exceeded' if over else ''})" if quick else "") + "\n"]
        if status == "ok":
            rows = [(r["metric"], r["paper"], r["ours"]) for r in res.get("report", [])]
            sec.append(markdown_table(["metric", "paper", "ours"], rows))
            sec.append(f"Details: `{name}/metrics.json` and the figures under `{name}/`.\n")
        else:
            sec.append(f"```\n{res['error']}\n```\n")
        sections.append("\n".join(sec))
    header = [
        "# keras_astro reproduction report\n",
        f"Mode: {'quick (short schedules on embedded data; numbers are not the papers’ protocol)' if quick else 'full'}.  ",
        f"Strategy: {describe_strategy(strategy)}.  ",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()) + "\n",
        "Fractions are shown as percentages; *paper* is the number the publication reports, *ours* is this run.\n",
    ]
    write_text(out / "report.md", "\n".join(header) + "\n" + "\n".join(sections))
    write_json(out / "summary.json", {"quick": quick, "studies": results})
    failed = [n for n, r in results.items() if r["status"] != "ok"]
    if failed:
        raise RuntimeError(f"studies failed: {failed}; see {out / 'report.md'}")
    return results
