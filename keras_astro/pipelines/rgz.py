"""tf.data pipeline for CLARAN data sets written by ``keras-astro rgz build``.

A data set folder holds ``images/<subject>.png`` (132 × 132 RGB, top-left origin),
``annotations/<subject>.json`` (boxes in pixels of that image, class names) and ``train.txt`` /
``test.txt``. The pipeline decodes the PNGs in the graph, resizes them to 600 × 600 (bilinear,
Sec 3.4) with the boxes scaled alike, flips training images horizontally at random (boxes too),
converts to BGR and subtracts the per-channel means, and pads the variable number of boxes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_astro import specs

__all__ = ["read_split", "rgz_dataset", "DatasetError"]


class DatasetError(ValueError):
    """A CLARAN data set folder is incomplete or malformed; names the file."""


def read_split(root: str | os.PathLike, split: str, *, max_boxes: int | None = None) -> dict[str, np.ndarray]:
    """Paths and padded ground truth of one split.

    Returns ``paths`` (N,), ``boxes`` (N, K, 4) float32 in pixels of the stored PNG,
    ``classes`` (N, K) int32 with 1..6 for the morphology classes and 0 for padding,
    ``num_boxes`` (N,), ``subjects`` (N,).
    """
    root = Path(root)
    lst = root / f"{split}.txt"
    if not lst.is_file():
        raise DatasetError(f"{lst}: no such split list (run `keras-astro rgz build` first)")
    names = [ln.strip() for ln in lst.read_text().splitlines() if ln.strip()]
    if not names:
        raise DatasetError(f"{lst}: the split is empty")
    classes = ["__background__"] + list(specs.load_spec("rgz")["classes"])
    index = {c: i for i, c in enumerate(classes)}
    anns = []
    for name in names:
        p = root / "annotations" / f"{name}.json"
        try:
            a = json.loads(p.read_text())
        except FileNotFoundError:
            raise DatasetError(f"{p}: annotation listed in {lst.name} is missing") from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{p}: not valid JSON ({exc})") from None
        boxes = np.asarray(a.get("boxes", []), dtype=np.float32).reshape(-1, 4)
        labels = a.get("labels", [])
        if len(labels) != len(boxes):
            raise DatasetError(f"{p}: {len(boxes)} boxes but {len(labels)} labels")
        bad = [lb for lb in labels if lb not in index]
        if bad:
            raise DatasetError(f"{p}: unknown class(es) {bad}; expected {classes[1:]}")
        w, h = a.get("width", 132), a.get("height", 132)
        if len(boxes) and (
            (boxes[:, 2] <= boxes[:, 0]).any()
            or (boxes[:, 3] <= boxes[:, 1]).any()
            or boxes.min() < 0
            or (boxes[:, [0, 2]] > w).any()
            or (boxes[:, [1, 3]] > h).any()
        ):
            raise DatasetError(f"{p}: a box lies outside the {w}x{h} image or has no area: {boxes.tolist()}")
        img = root / "images" / f"{name}.png"
        if not img.is_file():
            raise DatasetError(f"{img}: image listed in {lst.name} is missing")
        anns.append((str(img), boxes, [index[lb] for lb in labels]))
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
