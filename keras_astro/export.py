"""SavedModel export with the preprocessing inside the graph.

A study hands :func:`export_savedmodel` its trained Keras model together with the Keras layers
that turn raw inputs (for example catalogue magnitudes with NaN for missing bands) into the
network's input. The SavedModel gets a named serving signature that takes the raw inputs, so a
user of the exported model needs neither keras_astro nor the preprocessing code:

>>> import tensorflow as tf
>>> sm = tf.saved_model.load("run/agn/savedmodel")            # doctest: +SKIP
>>> sm.signatures["serving_default"](photometry=raw)["p_agn"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


def serving_model(
    model: keras.Model,
    preprocessing: Sequence[keras.layers.Layer],
    raw_shape: tuple[int | None, ...],
    *,
    input_name: str = "raw",
    output_name: str = "output",
    raw_dtype: str = "float32",
) -> keras.Model:
    """Wrap ``model`` with preprocessing layers into one Functional model on raw inputs."""
    raw = keras.Input(shape=tuple(raw_shape), dtype=raw_dtype, name=input_name)
    x = raw
    for layer in preprocessing:
        x = layer(x)
    y = model(x)
    y = keras.layers.Identity(name=output_name)(y)
    return keras.Model(raw, y, name=f"{model.name}_serving")


def export_savedmodel(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    input_spec: tf.TensorSpec,
    output_name: str = "output",
    signature: str = SIGNATURE,
    metadata: dict | None = None,
) -> Path:
    """Export ``model`` (ideally from :func:`serving_model`) as a TensorFlow SavedModel.

    The SavedModel has one endpoint, ``signature``, taking a tensor named ``input_spec.name`` and
    returning ``{output_name: predictions}`` (a model with dict outputs returns its own dict). The export is written to a temporary folder and
    moved into place, so an interrupted export leaves nothing behind. ``metadata`` is written as
    ``keras_astro.json`` inside the SavedModel folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)

        def serve(x):
            y = model(x, training=False)
            return dict(y) if isinstance(y, dict) else {output_name: y}  # dict outputs keep their names

        archive.add_endpoint(name=signature, fn=serve, input_signature=[input_spec])
        archive.write_out(str(tmp / "sm"), verbose=False)
        if metadata is not None:
            (tmp / "sm" / "keras_astro.json").write_text(json.dumps(metadata, indent=2, default=str))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp / "sm", path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported SavedModel to %s (signature %r)", path, signature)
    return path


def load_signature(path: str | os.PathLike, signature: str = SIGNATURE):
    """Load a SavedModel with ``tf.saved_model.load`` and return (module, signature function)."""
    from keras_astro.safety import load_savedmodel_safely

    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{path} is not a SavedModel folder (no saved_model.pb)")
    module = load_savedmodel_safely(path)  # refuses graphs that call unsaved Python functions
    if signature not in module.signatures:
        raise KeyError(f"{path} has signatures {list(module.signatures)}, not {signature!r}")
    return module, module.signatures[signature]


def predict_savedmodel(path: str | os.PathLike, x: np.ndarray, *, signature: str = SIGNATURE, batch_size: int = 8192) -> np.ndarray:
    """Run a SavedModel's signature on ``x`` in batches and return its single output as numpy."""
    _, fn = load_signature(path, signature)
    (name, spec), = fn.structured_input_signature[1].items()
    outs = []
    for i in range(0, len(x), batch_size):
        res = fn(**{name: tf.constant(np.asarray(x[i : i + batch_size]), dtype=spec.dtype)})
        (val,) = res.values()
        outs.append(val.numpy())
    return np.concatenate(outs) if outs else np.zeros((0,))
