"""Access to ``data_specs/``: the single home of every constant a paper fixes.

The YAML files live at the top of the repository (``data_specs/``) and are installed inside the
package as ``keras_astro/data_specs``. Code loads them through this module and never repeats
their numbers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SPEC_DIR = Path(__file__).resolve().parent / "data_specs"


@functools.lru_cache(maxsize=None)
def load_spec(name: str) -> dict[str, Any]:
    """Return the parsed YAML file ``data_specs/<name>.yaml``.

    Raises
    ------
    FileNotFoundError
        If no such spec exists; the message lists the available ones.
    """
    path = SPEC_DIR / f"{name}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no data spec {name!r} in {SPEC_DIR}; available: {have}")
    with path.open() as fh:
        return yaml.safe_load(fh)


@dataclass(frozen=True)
class Band:
    """One photometric band of the NEPW band-merged catalogue (Chen et al. 2021, Sec 2.1.1)."""

    name: str
    instrument: str
    band: str
    wavelength_um: float
    limit_mag: float
    group: str
    filter: str


@functools.lru_cache(maxsize=None)
def agn_bands() -> tuple[Band, ...]:
    """The 44 bands in input-array order, from ``data_specs/agn_bands.yaml``."""
    spec = load_spec("agn_bands")
    return tuple(
        Band(
            name=str(b["name"]),
            instrument=str(b["instrument"]),
            band=str(b["band"]),
            wavelength_um=float(b["wavelength_um"]),
            limit_mag=float(b["limit_mag"]),
            group=str(b["group"]),
            filter=str(b["filter"]),
        )
        for b in spec["bands"]
    )


def band_names() -> list[str]:
    """Names of the 44 bands in input-array order."""
    return [b.name for b in agn_bands()]


def band_groups() -> dict[str, list[int]]:
    """Indices of the bands in each wavelength group of Sec 4.3 (FIR, MIR, NIR, optical, UV)."""
    groups: dict[str, list[int]] = {g: [] for g in load_spec("agn_bands")["groups"]}
    for i, b in enumerate(agn_bands()):
        groups[b.group].append(i)
    return groups


def nearest_group(wavelength_um: float) -> str:
    """The Sec 4.3 group whose wavelength range is nearest to ``wavelength_um`` in log(λ)."""
    best, best_d = "", math.inf
    for name, g in load_spec("agn_bands")["groups"].items():
        lo, hi = g["range_um"]
        if lo <= wavelength_um <= hi:
            return name
        d = min(abs(math.log(wavelength_um / lo)), abs(math.log(wavelength_um / hi)))
        if d < best_d:
            best, best_d = name, d
    return best


# --- spectral grids (data_specs/spectra.yaml) ----------------------------------------------------


def spectral_grid(name: str) -> np.ndarray:
    """Return the pixel-centre wavelengths (vacuum Å, float64) of a named grid of ``spectra.yaml``.

    ``sdss`` is the SDSS coadd lattice (log10 λ step 1e-4), ``fnet`` FNet's 4,618 pixels over
    360–1032.5 nm (Sec 3.1), ``thesis`` the thesis's 3,850.34–9,099.13 Å cut (Sec 4.2).
    """

    grids = load_spec("spectra")["grids"]
    if name not in grids:
        raise KeyError(f"unknown spectral grid {name!r}; data_specs/spectra.yaml defines {sorted(grids)}")
    g = grids[name]
    if g["kind"] == "lattice":
        loglam = g["loglam0"] + g["dloglam"] * np.arange(g["n_pixels"], dtype=np.float64)
    elif g["kind"] == "span":
        loglam = np.linspace(np.log10(g["lambda_min"]), np.log10(g["lambda_max"]), g["n_pixels"])
    else:
        raise ValueError(f"grid {name!r}: unknown kind {g['kind']!r} (expected 'lattice' or 'span')")
    return 10.0**loglam


def spectral_lines() -> list[dict[str, Any]]:
    """The 14 equivalent-width features of the thesis (Sec 4.2), as dicts from ``spectra.yaml``."""
    return list(load_spec("spectra")["lines"])
