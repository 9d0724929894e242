"""Missing-band strategies of Chen et al. 2021, Sec 2.2 (numpy reference implementation).

"For each unavailable band observation, we fill in 0 instead. Moreover, we conform that filling the
missing data with the median value of the band or the median value of the neighbouring filters
also give out the similar results." Three strategies follow:

``zero``
    magnitude and error of a missing band are 0 (the paper's default).
``band_median``
    the median of that band over the objects that have it, computed on the training set.
``neighbour_median``
    the median of the object's own measured values in the neighbouring filters: the ``k`` bands on
    either side of the missing one in wavelength order (2·k neighbours); if none of them is
    measured, the band median. The paper does not define "neighbouring"; this is our reading.

The same arithmetic runs inside the exported graph (:class:`keras_astro.layers.PhotometryImputer`);
its tests compare the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keras_astro import specs

STRATEGIES = ("zero", "band_median", "neighbour_median")


def _photometry(x: np.ndarray, what: str) -> np.ndarray:
    """``x`` as float32 (N, n_bands, 2); ValueError for other shapes, non-numbers or ±inf.

    NaN marks a missing band (magnitude, error or both); infinities are never valid.
    """
    a = np.asarray(x)
    if a.dtype.kind == "O":
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: photometry must hold real numbers, got an object array") from None
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{what}: photometry must hold real numbers, got dtype {a.dtype}")
    if a.ndim != 3 or a.shape[2] != 2 or a.shape[1] == 0:
        raise ValueError(f"{what}: photometry must be (N, n_bands, 2) magnitudes and errors, got shape {a.shape}")
    a = a.astype(np.float32)
    if np.isinf(a).any():
        i, j, _ = np.argwhere(np.isinf(a))[0]
        raise ValueError(f"{what}: band {j} of row {i} is infinite; a missing band is NaN")
    return a


def neighbour_index(k: int = 2, wavelengths_um: np.ndarray | None = None) -> np.ndarray:
    """(n_bands, 2k) indices of each band's neighbours in wavelength order (k below, k above).

    At the ends of the wavelength range fewer than k exist on one side; the missing slots are
    filled with −1 (ignored).
    """
    wl = np.asarray(
        wavelengths_um if wavelengths_um is not None else [b.wavelength_um for b in specs.agn_bands()],
        dtype=float,
    )
    order = np.argsort(wl, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    out = np.full((len(wl), 2 * k), -1, dtype=np.int32)
    for j in range(len(wl)):
        r = rank[j]
        below = order[max(0, r - k) : r]
        above = order[r + 1 : r + 1 + k]
        nb = np.concatenate([below, above])
        out[j, : len(nb)] = nb
    return out


def band_medians(x: np.ndarray) -> np.ndarray:
    """(n_bands, 2) median magnitude and error of each band over the objects that have it.

    ``x`` is (N, n_bands, 2) with NaN for missing bands. A band no object has gets 0.
    """
    x = _photometry(x, "band_medians").astype(np.float64)
    have = ~np.isnan(x[..., 0]) & ~np.isnan(x[..., 1])
    med = np.zeros((x.shape[1], 2))
    for j in range(x.shape[1]):
        if have[:, j].any():
            med[j] = np.median(x[have[:, j], j, :], axis=0)
    return med.astype(np.float32)


@dataclass
class MissingBandFiller:
    """Fit-on-train, apply-anywhere filler for missing bands (Sec 2.2).

    Parameters
    ----------
    strategy
        One of ``"zero"``, ``"band_median"``, ``"neighbour_median"``.
    k
        Neighbours on each side for ``neighbour_median``.
    """

    strategy: str = "zero"
    k: int = 2
    medians: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown missing-band strategy {self.strategy!r}; expected one of {STRATEGIES}")

    def fit(self, x: np.ndarray) -> "MissingBandFiller":
        """Learn band medians from the training objects ``x`` (N, n_bands, 2), NaN = missing."""
        self.medians = band_medians(x)
        return self

    def fill_values(self, n_bands: int) -> np.ndarray:
        """(n_bands, 2) values used for the ``zero``/``band_median`` strategies."""
        if self.strategy == "zero":
            return np.zeros((n_bands, 2), np.float32)
        if self.medians is None:
            raise RuntimeError(f"MissingBandFiller({self.strategy!r}) must be fit() on training data first")
        return self.medians

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Return a copy of ``x`` (N, n_bands, 2) with every NaN band filled."""
        x = np.array(_photometry(x, f"MissingBandFiller({self.strategy!r}).transform"), dtype=np.float32, copy=True)
        miss = np.isnan(x[..., 0]) | np.isnan(x[..., 1])
        fill = self.fill_values(x.shape[1])
        if fill.shape != (x.shape[1], 2):
            raise ValueError(
                f"MissingBandFiller({self.strategy!r}) was fitted on {fill.shape[0]} bands, got {x.shape[1]}"
            )
        if self.strategy in ("zero", "band_median"):
            x[miss] = np.broadcast_to(fill, x.shape)[miss]
            return x
        nb = neighbour_index(self.k) if x.shape[1] == len(specs.agn_bands()) else None
        if nb is None:
            raise ValueError("neighbour_median needs the 44 bands of data_specs/agn_bands.yaml")
        rows, cols = np.nonzero(miss)
        orig = np.where(miss[..., None], np.nan, x)
        for i, j in zip(rows, cols):
            idx = nb[j][nb[j] >= 0]
            vals = orig[i, idx, :]
            ok = ~np.isnan(vals[:, 0])
            x[i, j] = np.median(vals[ok], axis=0) if ok.any() else fill[j]
        return x

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)
