"""tf.data pipeline for CLARAN data sets written by ``keras-astro rgz build``.

A data set folder holds ``images/<subject>.png`` (132 × 132 RGB, top-left origin),
``annotations/<subject>.json`` (boxes in pixels of that image, class names) and ``train.txt`` /
``test.txt``. The pipeline decodes the PNGs in the graph, resizes them to 600 × 600 (bilinear,
Sec 3.4) with the boxes scaled alike, flips training images horizontally at random (boxes too),
converts to BGR and subtracts the per-channel means, and pads the variable number of boxes.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_astro import specs

__all__ = ["read_split", "rgz_dataset", "DatasetError", "check_png"]


class DatasetError(ValueError):
    """A CLARAN data set folder is incomplete or malformed; names the file."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def check_png(path: str | os.PathLike, width: int | None = None, height: int | None = None) -> tuple[int, int]:
    """Check a PNG file completely (signature, every chunk's CRC-32, IHDR first, IEND last, no
    trailing bytes, the zlib stream of the pixels and its length) and return (width, height).

    tf.io.decode_png runs inside the tf.data graph, where a damaged image can only fail with an
    InvalidArgumentError that does not name the file; this check runs before, in Python.

    Raises
    ------
    DatasetError
        Naming the file and the problem (truncated, corrupt chunk, wrong size ...).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the image ({exc})") from None
    if not data.startswith(_PNG_SIGNATURE):
        raise DatasetError(f"{path}: not a PNG file (no PNG signature)")
    pos, chunks, idat = len(_PNG_SIGNATURE), [], []
    while pos < len(data):
        if pos + 12 > len(data):
            raise DatasetError(f"{path}: truncated PNG (a chunk header at byte {pos} is cut off)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise DatasetError(f"{path}: truncated PNG (chunk {ctype!r} at byte {pos} needs {length} bytes)")
        if zlib.crc32(data[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            raise DatasetError(f"{path}: corrupt PNG (CRC-32 mismatch in chunk {ctype!r} at byte {pos})")
        chunks.append(ctype)
        if ctype == b"IDAT":
            idat.append(data[pos + 8 : end - 4])
        pos = end
        if ctype == b"IEND":
            break
    if not chunks or chunks[0] != b"IHDR" or len(data) < 33:
        raise DatasetError(f"{path}: corrupt PNG (the first chunk is not IHDR)")
    if chunks[-1] != b"IEND":
        raise DatasetError(f"{path}: truncated PNG (no IEND chunk)")
    if pos != len(data):
        raise DatasetError(f"{path}: corrupt PNG ({len(data) - pos} bytes after the IEND chunk)")
    w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour not in _PNG_CHANNELS or depth not in (1, 2, 4, 8, 16) or w == 0 or h == 0:
        raise DatasetError(f"{path}: corrupt PNG header (width {w}, height {h}, depth {depth}, colour type {colour})")
    try:
        pixels = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise DatasetError(f"{path}: corrupt PNG pixel data ({exc})") from None
    expected = h * (1 + math.ceil(w * _PNG_CHANNELS[colour] * depth / 8))
    if interlace == 0 and len(pixels) != expected:
        raise DatasetError(f"{path}: corrupt PNG ({len(pixels)} bytes of pixels, a {w}x{h} image needs {expected})")
    if (width is not None and w != width) or (height is not None and h != height):
        raise DatasetError(f"{path}: the image is {w}x{h} pixels but its annotation says {width}x{height}")
    return w, h


def _read_annotation(p: Path, lst: Path, index: dict[str, int]) -> tuple[np.ndarray, list[int], int, int]:
    """Boxes, class indices, width and height of one annotation JSON, checked."""
    try:
        a = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{p}: annotation listed in {lst.name} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DatasetError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(a, dict):
        raise DatasetError(f"{p}: expected a JSON object with boxes, labels, width and height, got {type(a).__name__}")
    labels = a.get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(lb, str) for lb in labels):
        raise DatasetError(f"{p}: labels must be a list of class names, got {str(labels)[:100]}")
    try:
        boxes = np.asarray(a.get("boxes", []), dtype=np.float32)
        if boxes.size % 4 or (boxes.size and boxes.shape[-1] != 4):
            raise ValueError(f"shape {boxes.shape}")
        boxes = boxes.reshape(-1, 4)
    except (TypeError, ValueError, OverflowError) as exc:
        raise DatasetError(f"{p}: boxes must be a list of [x1, y1, x2, y2] numbers ({exc})") from None
    if len(labels) != len(boxes):
        raise DatasetError(f"{p}: {len(boxes)} boxes but {len(labels)} labels")
    bad = [lb for lb in labels if lb not in index]
    if bad:
        raise DatasetError(f"{p}: unknown class(es) {bad}; expected {list(index)[1:]}")
    w, h = a.get("width", 132), a.get("height", 132)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        raise DatasetError(f"{p}: width and height must be positive whole numbers of pixels, got {w!r}, {h!r}")
    if not np.isfinite(boxes).all():
        raise DatasetError(f"{p}: boxes hold NaN or inf: {boxes.tolist()}")
    if len(boxes) and (
        (boxes[:, 2] <= boxes[:, 0]).any()
        or (boxes[:, 3] <= boxes[:, 1]).any()
        or boxes.min() < 0
        or (boxes[:, [0, 2]] > w).any()
        or (boxes[:, [1, 3]] > h).any()
    ):
        raise DatasetError(f"{p}: a box lies outside the {w}x{h} image or has no area: {boxes.tolist()}")
    return boxes, [index[lb] for lb in labels], w, h


def read_split(
    root: str | os.PathLike, split: str, *, max_boxes: int | None = None, verify_images: bool = True
) -> dict[str, np.ndarray]:
    """Paths and padded ground truth of one split.

    With ``verify_images`` (default) every PNG is checked by :func:`check_png` first, so a damaged
    image fails here with a :class:`DatasetError` naming it instead of inside the tf.data graph.

    Returns ``paths`` (N,), ``boxes`` (N, K, 4) float32 in pixels of the stored PNG,
    ``classes`` (N, K) int32 with 1..6 for the morphology classes and 0 for padding,
    ``num_boxes`` (N,), ``subjects`` (N,).
    """
    root = Path(root)
    lst = root / f"{split}.txt"
    if not lst.is_file():
        raise DatasetError(f"{lst}: no such split list (run `keras-astro rgz build` first)")
    try:
        names = [ln.strip() for ln in lst.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{lst}: not a text list of subject names ({exc})") from None
    if not names:
        raise DatasetError(f"{lst}: the split is empty")
    classes = ["__background__"] + list(specs.load_spec("rgz")["classes"])
    index = {c: i for i, c in enumerate(classes)}
    anns = []
    for name in names:
        p = root / "annotations" / f"{name}.json"
        boxes, labels, w, h = _read_annotation(p, lst, index)
        img = root / "images" / f"{name}.png"
        if not img.is_file():
            raise DatasetError(f"{img}: image listed in {lst.name} is missing")
        if verify_images:
            check_png(img, w, h)
        anns.append((str(img), boxes, labels))
    k = max_boxes or max(1, max(len(b) for _, b, _ in anns))
    n = len(anns)
    boxes = np.zeros((n, k, 4), np.float32)
    cls = np.zeros((n, k), np.int32)
    num = np.zeros(n, np.int32)
    for i, (_, b, c) in enumerate(anns):
        m = min(len(b), k)
        boxes[i, :m], cls[i, :m], num[i] = b[:m], c[:m], m
    return {
        "paths": np.array([a[0] for a in anns]),
        "boxes": boxes,
        "classes": cls,
        "num_boxes": num,
        "subjects": np.array(names),
    }


def rgz_dataset(
    root: str | os.PathLike,
    split: str = "train",
    *,
    image_size: int | None = None,
    batch_size: int = 1,
    max_boxes: int | None = None,
    flip: bool | None = None,
    shuffle: bool | None = None,
    seed: int = 3,
    zero_centre: bool = True,
    means_bgr: tuple[float, float, float] | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """``(image, boxes, classes)`` batches for CLARAN.

    image : (B, S, S, 3) float32 BGR, zero-centred (or raw 0–255 with ``zero_centre=False``)
    boxes : (B, K, 4) float32 ``[x1, y1, x2, y2]`` in pixels of the resized image; padding = 0
    classes : (B, K) int32, 1..6 (Table 3 order), 0 = padding

    ``flip`` and ``shuffle`` default to True for the training split; the flips are seeded
    (paper: RNG seed 3) and redrawn every epoch.
    """
    pre = specs.load_spec("rgz")["preprocess"]
    size = int(image_size or pre["image_size"])
    means = tf.constant(pre["pixel_means_bgr"] if means_bgr is None else means_bgr, tf.float32)
    train = split == "train"
    flip = train if flip is None else flip
    shuffle = train if shuffle is None else shuffle
    d = read_split(root, split, max_boxes=max_boxes)
    ds = tf.data.Dataset.from_tensor_slices((d["paths"], d["boxes"], d["classes"], d["num_boxes"]))
    if shuffle:
        ds = ds.shuffle(len(d["paths"]), seed=seed, reshuffle_each_iteration=True)
    # per-element coin: a fresh random seed per element and epoch (Dataset.random's low bits are
    # not uniform, so they seed a stateless draw instead of being used directly)
    coins = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).map(
        lambda r: tf.random.stateless_uniform([], seed=tf.stack([r, tf.constant(seed, tf.int64)])) < 0.5
    )
    ds = tf.data.Dataset.zip((ds, coins))

    def load(item, coin):
        path, boxes, classes, num = item
        img = tf.io.decode_png(tf.io.read_file(path), channels=3)
        h = tf.cast(tf.shape(img)[0], tf.float32)
        w = tf.cast(tf.shape(img)[1], tf.float32)
        img = tf.image.resize(tf.cast(img, tf.float32), (size, size), method="bilinear")
        scale = tf.stack([size / w, size / h, size / w, size / h])
        valid = tf.sequence_mask(num, tf.shape(boxes)[0])[:, None]
        boxes = tf.where(valid, boxes * scale, 0.0)
        if flip:
            flipped = tf.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], axis=1)
            boxes = tf.where(coin & valid, flipped, boxes)
            img = tf.cond(coin, lambda: tf.image.flip_left_right(img), lambda: img)
        img = img[..., ::-1]  # RGB -> BGR (the code's channel order)
        if zero_centre:
            img = img - means
        return img, boxes, classes

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
