"""Radio/IR image fusion and pre-processing for CLARAN (Wu et al. 2019, Sec 3.4; OpenCV + numpy).

Data sets (``data_specs/rgz.yaml``), all 3-channel 8-bit images with the top-left origin:

* **F** — radio, DS9 *linear zscale*, rendered with the *cool* colour map (as the RGZ PNGs).
* **D1** — radio, DS9 *log min-max* (exponent a = 1000), cool colour map: shows inner structure.
* **D2** — D1 with the IR image added to its red channel.
* **D3** — 5σ radio contours drawn on the IR image (σ = MAD / 0.6745 of the radio image).
* **D4** — D3 with every pixel outside the convex hull of all contours replaced by the
  training-set channel mean (the authors' code: BGR 14, 45, 213).

The IR image is rendered with linear zscale and the *hot* colour map (the RGZ web interface's
look; its training-set mean is the reddish (R, G, B) = (213, 45, 14) of the code).

Also: resize 132 → 600 with boxes, horizontal flip with boxes, zero-centring by channel means.
Inputs are FITS-orientation arrays (row 0 = bottom); outputs are PNG-orientation (row 0 = top).
"""

from __future__ import annotations

import functools
import logging

import cv2
import numpy as np

from keras_astro import specs

log = logging.getLogger(__name__)

__all__ = [
    "FusionError",
    "DATASETS",
    "zscale_linear",
    "log_minmax",
    "colourise",
    "mad_sigma",
    "radio_contours",
    "hull_mask",
    "fuse",
    "resize_with_boxes",
    "hflip_with_boxes",
    "zero_centre",
    "channel_mean",
]

DATASETS = ("F", "D1", "D2", "D3", "D4")
CONTOUR_RGB = (0, 255, 0)  # contour colour on the IR image (not stated in the paper)


class FusionError(ValueError):
    """An image cannot be fused (NaN/blank, shapes differ, unknown method); names the subject."""


@functools.lru_cache(maxsize=None)
def _pre() -> dict:
    return specs.load_spec("rgz")["preprocess"]


@functools.lru_cache(maxsize=None)
def _lut(name: str) -> np.ndarray:
    import matplotlib

    return np.round(matplotlib.colormaps[name].resampled(256)(np.arange(256))[:, :3] * 255.0).astype(np.uint8)


def _real(x, what: str, *, finite: bool = True, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    """``x`` as float64; FusionError unless it holds real numbers (finite ones when asked) of ``ndim``."""
    a = np.asarray(x)
    if a.dtype.kind == "O":
        try:
            a = a.astype(np.float64)
        except (TypeError, ValueError):
            raise FusionError(f"{what} must hold real numbers, got an object array") from None
    if a.dtype.kind not in "biuf":
        raise FusionError(f"{what} must hold real numbers, got dtype {a.dtype}")
    if ndim is not None and a.ndim not in np.atleast_1d(ndim):
        raise FusionError(f"{what} must have {ndim} dimension(s), got shape {a.shape}")
    a = a.astype(np.float64, copy=False)
    if finite and not np.all(np.isfinite(a)):
        raise FusionError(f"{what} holds NaN or inf")
    return a


def _check(img: np.ndarray, what: str, subject: str) -> np.ndarray:
    a = _real(img, f"subject {subject}: {what} image", finite=False)
    if a.ndim != 2:
        raise FusionError(f"subject {subject}: {what} image must be 2-D, got shape {a.shape}")
    if a.size == 0:
        raise FusionError(f"subject {subject}: {what} image is empty, shape {a.shape}")
    if not np.isfinite(a).any():
        raise FusionError(f"subject {subject}: {what} image is all NaN/inf")
    if np.nanmax(a) == np.nanmin(a):
        raise FusionError(f"subject {subject}: {what} image is blank (constant)")
    if not np.isfinite(a).all():
        a = np.where(np.isfinite(a), a, np.nanmedian(a))
    return a


def zscale_linear(img: np.ndarray) -> np.ndarray:
    """DS9 linear zscale (IRAF zscale limits, astropy's implementation) → [0, 1]."""
    from astropy.visualization import ZScaleInterval

    img = _real(img, "zscale_linear: image")
    if img.size == 0:
        raise FusionError("zscale_linear: the image is empty")
    lo, hi = ZScaleInterval().get_limits(img)
    if hi <= lo:
        lo, hi = float(np.min(img)), float(np.max(img))
    return np.clip((img - lo) / max(hi - lo, 1e-30), 0.0, 1.0)


def log_minmax(img: np.ndarray, a: float = 1000.0) -> np.ndarray:
    """DS9 log scale on min-max limits: ``log10(a x + 1) / log10(a)`` with x min-max normalised."""
    img = _real(img, "log_minmax: image")
    if img.size == 0:
        raise FusionError("log_minmax: the image is empty")
    lo, hi = float(np.min(img)), float(np.max(img))
    x = (img - lo) / max(hi - lo, 1e-30)
    return np.log10(a * x + 1.0) / np.log10(a)


def colourise(x01: np.ndarray, cmap: str) -> np.ndarray:
    """Map values in [0, 1] to 8-bit RGB through a matplotlib colour map (its 256-entry table)."""
    idx = np.clip(np.floor(_real(x01, "colourise: values") * 256.0), 0, 255).astype(np.uint8)
    return _lut(cmap)[idx]


def mad_sigma(img: np.ndarray) -> float:
    """Noise σ from the median absolute deviation: MAD / 0.6745 (Sec 3.4)."""
    a = _real(img, "mad_sigma: image", finite=False)
    a = a[np.isfinite(a)]
    if a.size == 0:
        raise FusionError("mad_sigma: the image holds no finite pixel")
    return float(np.median(np.abs(a - np.median(a))) / _pre()["mad_to_sigma"])


def _png(img: np.ndarray) -> np.ndarray:
    """FITS orientation (row 0 = bottom) → PNG orientation (row 0 = top)."""
    return np.ascontiguousarray(img[::-1])


def radio_contours(radio_png: np.ndarray, nsigma: float | None = None, sigma: float | None = None) -> list[np.ndarray]:
    """Outer contours of the ≥ nσ (default 5σ) radio emission (OpenCV point arrays, x/y pixels)."""
    nsigma = float(_pre()["contour_sigma"] if nsigma is None else nsigma)
    radio_png = _real(radio_png, "radio_contours: radio image", ndim=2)
    if radio_png.size == 0:
        raise FusionError("radio_contours: the radio image is empty")
    sigma = mad_sigma(radio_png) if sigma is None else sigma
    level = np.median(radio_png) + nsigma * sigma
    mask = (radio_png >= level).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return list(contours)


def hull_mask(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the convex hull of all contour points (empty if there are none)."""
    shape = tuple(shape)
    if len(shape) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in shape):
        raise FusionError(f"hull_mask: shape must be two positive integers (rows, columns), got {shape}")
    mask = np.zeros(shape, dtype=np.uint8)
    if contours:
        pts = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.int32)
        hull = cv2.convexHull(pts)
        cv2.fillConvexPoly(mask, hull, 1)
        cv2.drawContours(mask, contours, -1, 1, thickness=cv2.FILLED)
    return mask.astype(bool)


def fuse(
    radio: np.ndarray,
    ir: np.ndarray | None,
    method: str,
    *,
    subject: str = "?",
    fill_rgb: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """Build one CLARAN input image (H, W, 3) uint8 RGB, top-left origin.

    Parameters
    ----------
    radio, ir : 2-D arrays in FITS orientation (row 0 = bottom). ``ir`` is needed for D2–D4.
    method : one of F, D1, D2, D3, D4.
    fill_rgb : D4's fill colour outside the hull (default: the code's training mean, RGB 213, 45, 14).
    """
    method = method.upper()
    if method not in DATASETS:
        raise FusionError(f"subject {subject}: unknown data set {method!r}; choose one of {DATASETS}")
    r = _png(_check(radio, "radio", subject))
    if method == "F":
        return colourise(zscale_linear(r), "cool")
    d1 = colourise(log_minmax(r), "cool")
    if method == "D1":
        return d1
    if ir is None:
        raise FusionError(f"subject {subject}: data set {method} needs the IR image")
    i = _png(_check(ir, "IR", subject))
    if i.shape != r.shape:
        raise FusionError(f"subject {subject}: IR image {i.shape} and radio image {r.shape} differ in size")
    ir_rgb = colourise(zscale_linear(i), "hot")
    if method == "D2":
        out = d1.astype(np.int32)
        ir_grey = np.round(zscale_linear(i) * 255.0).astype(np.int32)
        out[..., 0] = np.clip(out[..., 0] + ir_grey, 0, 255)
        return out.astype(np.uint8)
    contours = radio_contours(r)
    out = ir_rgb.copy()
    cv2.drawContours(out, contours, -1, CONTOUR_RGB, thickness=1)
    if method == "D3":
        return out
    if fill_rgb is None:
        b, g, rr = _pre()["d4_fill_bgr"]
        fill_rgb = (rr, g, b)
    inside = hull_mask(contours, r.shape)
    out[~inside] = np.round(np.asarray(fill_rgb, dtype=np.float64)).astype(np.uint8)
    return out


def resize_with_boxes(img: np.ndarray, boxes: np.ndarray, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear resize of a square image to ``size`` (default 600) with its boxes scaled alike."""
    size = int(size or _pre()["image_size"])
    img = _image(img, "resize_with_boxes")
    if size < 1:
        raise FusionError(f"resize_with_boxes: size must be a positive number of pixels, got {size}")
    h, w = img.shape[:2]
    b = _boxes(boxes, "resize_with_boxes")
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)
    scale = np.array([size / w, size / h, size / w, size / h], dtype=np.float64)
    return out, (b * scale).astype(np.float32)


#: Pixel types OpenCV resizes (the others are refused rather than silently converted).
_CV_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)


def _image(img: np.ndarray, fn: str) -> np.ndarray:
    """An (H, W) or (H, W, C) non-empty image of a pixel type OpenCV handles, finite if float."""
    a = np.asarray(img)
    if a.ndim not in (2, 3) or a.shape[0] == 0 or a.shape[1] == 0 or (a.ndim == 3 and a.shape[2] == 0):
        raise FusionError(f"{fn}: image must be (H, W) or (H, W, C) with pixels, got shape {a.shape}")
    if a.dtype.type not in _CV_DTYPES:
        raise FusionError(f"{fn}: image pixels are {a.dtype}; expected one of uint8, uint16, int16, float32, float64")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise FusionError(f"{fn}: image holds NaN or inf")
    return a


def _boxes(boxes: np.ndarray, fn: str) -> np.ndarray:
    """Boxes as float64 (K, 4), finite."""
    b = _real(boxes, f"{fn}: boxes")
    if b.size % 4:
        raise FusionError(f"{fn}: boxes must be (K, 4) [x1, y1, x2, y2], got shape {b.shape}")
    return b.reshape(-1, 4)


def hflip_with_boxes(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip (training augmentation) with boxes: x → W − x."""
    img = np.asarray(img)
    if img.ndim < 2:
        raise FusionError(f"hflip_with_boxes: image must be (H, W) or (H, W, C), got shape {img.shape}")
    w = img.shape[1]
    b = _boxes(boxes, "hflip_with_boxes").astype(np.float32)
    b[:, [0, 2]] = w - b[:, [2, 0]]
    return np.ascontiguousarray(img[:, ::-1]), b


def zero_centre(img_rgb: np.ndarray, means_bgr: tuple[float, float, float] | None = None) -> np.ndarray:
    """Convert RGB → BGR float32 and subtract per-channel means (the code's 103.939, 116.779, 123.68)."""
    means = np.asarray(_pre()["pixel_means_bgr"] if means_bgr is None else means_bgr, dtype=np.float32)
    img = _real(img_rgb, "zero_centre: image")
    if img.ndim < 1 or img.shape[-1] != 3:
        raise FusionError(f"zero_centre: image must have 3 colour channels last, got shape {img.shape}")
    return img.astype(np.float32)[..., ::-1] - means


def channel_mean(images: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Per-channel mean over a set of images (e.g. D3 training images → D4 fill)."""
    total = np.zeros(3)
    count = 0
    for im in images:
        a = _real(im, "channel_mean: image")
        if a.ndim < 1 or a.shape[-1] != 3:
            raise FusionError(f"channel_mean: images must have 3 colour channels last, got shape {a.shape}")
        a = a.reshape(-1, 3)
        total += a.sum(axis=0)
        count += a.shape[0]
    if count == 0:
        raise FusionError("channel_mean needs at least one image")
    return total / count
