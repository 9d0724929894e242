"""Safe loading of model files: Keras safe mode, no arbitrary code, clear refusals.

A ``.keras`` archive is a zip of ``config.json`` (the architecture), ``model.weights.h5`` and
``metadata.json``. Its config can name Python code: a ``Lambda`` layer stores the byte code of its
function, and any class or function is looked up by module and name when the model is rebuilt.
Loading an untrusted file may therefore run code. :func:`load_model_safely` refuses such files
*before* Keras rebuilds anything, and then loads with ``keras.saving.load_model(...,
safe_mode=True)``:

* the zip must be intact (every member's CRC-32 is checked first, so damaged weights cannot be
  read as different numbers) and hold ``config.json``;
* no ``Lambda`` layer and no serialized Python lambda (``__lambda__``) anywhere in the config;
* every class or function outside Keras itself must be registered with
  ``keras.saving.register_keras_serializable`` — keras_astro's own layers, losses, metrics and
  callbacks are registered by importing the package's modules first; anything else (an
  unregistered custom class, a function from ``os`` or ``builtins``) is refused;
* legacy HDF5 model files (``.h5``) are refused (their loader can unmarshal Python byte code):
  re-save them as ``.keras``.

A SavedModel (``keras_astro.export``) has no Python code, but its graph can call back into Python
through ``PyFunc`` ops that are not stored with it; :func:`check_savedmodel` refuses a path that is
not a readable SavedModel directory or whose graph contains such ops, and
:func:`load_savedmodel_safely` loads one that passes.

Every refusal is a :class:`ModelFileError` (a ``ValueError``) whose message names the file and says
why; :class:`UnsafeModelError` marks the refusals for content that could run code.

Examples
--------
>>> from keras_astro.safety import load_model_safely, ModelFileError
>>> try:                                                    # doctest: +SKIP
...     model = load_model_safely("run/claran/model.keras")
... except ModelFileError as exc:
...     raise SystemExit(f"keras-astro: {exc}")
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import os
import pkgutil
import zipfile
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

__all__ = [
    "ModelFileError",
    "UnsafeModelError",
    "register_package_objects",
    "inspect_keras_config",
    "check_keras_archive",
    "load_model_safely",
    "check_savedmodel",
    "load_savedmodel_safely",
]

#: Modules whose import registers keras_astro's serializable objects (plus every module of
#: ``keras_astro.layers`` and ``keras_astro.models``, found at run time).
_REGISTERING_MODULES = ("keras_astro.callbacks", "keras_astro.losses", "keras_astro.metrics")
_REGISTERING_PACKAGES = ("keras_astro.layers", "keras_astro.models")
#: Ops through which a TensorFlow graph calls Python functions that the SavedModel does not hold.
PYTHON_CALLBACK_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
#: Keras' own markers for serialized values (tensors, arrays, bytes ...) that carry no code.
_VALUE_MARKERS = frozenset(
    {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__typespec__", "__slice__", "__ellipsis__"}
)


class ModelFileError(ValueError):
    """A model file or folder was refused: missing, damaged, of the wrong kind, or unsafe.

    The message names the file and the reason.
    """


class UnsafeModelError(ModelFileError):
    """A model was refused because loading it could run code that is not Keras or keras_astro's."""


@functools.lru_cache(maxsize=None)
def register_package_objects() -> tuple[str, ...]:
    """Import keras_astro's modules that register custom Keras objects; returns their names.

    A module that fails to import is logged and skipped: its classes then count as unregistered
    and models that need them are refused rather than half loaded.
    """
    names = list(_REGISTERING_MODULES)
    for pkg_name in _REGISTERING_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names += [f"{pkg_name}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]
    done = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken module must not stop the others
            log.warning("could not import %s to register its Keras objects: %s", name, exc)
            continue
        done.append(name)
    return tuple(done)


def _is_keras_module(module: str) -> bool:
    return module == "keras" or module.startswith("keras.")


def _walk(node: Any, path: str = "config") -> Iterator[tuple[str, dict]]:
    """Every dict of a Keras config that names a class or function, with where it sits."""
    if isinstance(node, dict):
        if "class_name" in node:
            yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def inspect_keras_config(config: Any) -> list[str]:
    """Reasons why a Keras model config is unsafe to rebuild (empty if it is safe).

    Parameters
    ----------
    config
        The parsed ``config.json`` of a ``.keras`` archive (or ``model.get_config()`` wrapped by
        ``keras.saving.serialize_keras_object``).

    Returns
    -------
    list of str
        One sentence per problem: Lambda layers, serialized Python lambdas, classes or functions
        from modules other than keras that are not registered as serializable.
    """
    import keras

    register_package_objects()
    problems: list[str] = []
    for where, node in _walk(config):
        cls = node.get("class_name")
        if not isinstance(cls, str):
            problems.append(f"{where}: class_name {cls!r} is not a name")
            continue
        cfg = node.get("config")
        name = node.get("name") or (cfg.get("name") if isinstance(cfg, dict) else None)
        label = f"{where} ({name!r})" if name else where
        module = node.get("module")
        registered = node.get("registered_name")
        if cls == "__lambda__":
            problems.append(f"{label}: holds a serialized Python lambda (arbitrary code)")
            continue
        if cls in _VALUE_MARKERS:
            continue
        if cls == "Lambda" and (module is None or _is_keras_module(str(module))):
            problems.append(
                f"{label} is a Lambda layer: its function is Python code stored in the file (arbitrary code)"
            )
            continue
        if module is not None and not isinstance(module, str):
            problems.append(f"{label}: module {module!r} is not a module name")
            continue
        if module is not None and _is_keras_module(module):
            continue
        key = registered if isinstance(registered, str) and registered else cls
        if keras.saving.get_registered_object(key) is None:
            what = "function" if cls == "function" else "class"
            problems.append(
                f"{label} needs the {what} {key!r}"
                + (f" from module {module!r}" if module else "")
                + ", which is neither part of Keras nor registered with keras.saving.register_keras_serializable"
                " (an unregistered custom object: rebuilding it would import and run code the file names)"
            )
    return problems


def check_keras_archive(path: str | os.PathLike) -> dict:
    """Check a ``.keras`` archive without building the model; returns its parsed ``config.json``.

    Raises
    ------
    ModelFileError
        Missing file, not a zip archive, a damaged member (CRC mismatch, truncated), or no
        ``config.json``.
    UnsafeModelError
        The config names code that is not Keras or registered (see :func:`inspect_keras_config`).
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such model file")
    try:
        with zipfile.ZipFile(p) as zf:
            bad = zf.testzip()  # reads every member and checks its CRC-32
            if bad is not None:
                raise ModelFileError(f"{p}: damaged .keras archive: member {bad!r} fails its CRC-32 check")
            if "config.json" not in zf.namelist():
                raise ModelFileError(f"{p}: not a Keras model archive: no config.json (members: {zf.namelist()[:10]})")
            raw = zf.read("config.json")
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ModelFileError(f"{p}: not a readable .keras archive ({type(exc).__name__}: {exc})") from None
    try:
        config = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{p}: config.json of the archive is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelFileError(f"{p}: config.json does not describe a Keras object")
    problems = inspect_keras_config(config)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise UnsafeModelError(f"{p}: refused to load the model (Keras safe mode): {shown}")
    return config


def load_model_safely(path: str | os.PathLike, *, compile: bool = True) -> Any:
    """Load a ``.keras`` model with Keras safe mode after :func:`check_keras_archive`.

    Parameters
    ----------
    path
        A ``.keras`` file, or a run folder holding ``model.keras`` (as ``claran train`` writes).
    compile
        Restore the training configuration (optimizer, loss, metrics) too.

    Returns
    -------
    keras.Model

    Raises
    ------
    ModelFileError
        The path is missing, a SavedModel directory (load it with :func:`load_savedmodel_safely`),
        a legacy HDF5 model, a damaged archive, or Keras cannot rebuild the model; the message
        names the file and the reason.
    UnsafeModelError
        The model needs a Lambda layer, a serialized lambda or an unregistered custom object.
    """
    import keras

    p = Path(path)
    if p.is_dir():
        if (p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file():
            raise ModelFileError(
                f"{p}: is a TensorFlow SavedModel, not a Keras model; load it with "
                "keras_astro.safety.load_savedmodel_safely (or keras.layers.TFSMLayer)"
            )
        if not (p / "model.keras").is_file():
            raise ModelFileError(f"{p}: folder holds neither model.keras nor a SavedModel (saved_model.pb)")
        p = p / "model.keras"
    if p.suffix.lower() in (".h5", ".hdf5"):
        raise UnsafeModelError(
            f"{p}: legacy HDF5 model files are refused (their loader can unmarshal Python byte code); "
            "re-save the model as .keras with model.save('model.keras') where you trust it"
        )
    if p.suffix.lower() != ".keras":
        raise ModelFileError(f"{p}: not a .keras model file (expected the .keras extension)")
    check_keras_archive(p)
    try:
        model = keras.saving.load_model(p, compile=compile, safe_mode=True)
    except (ValueError, TypeError) as exc:  # Keras' own safe-mode refusals and unknown objects
        text = str(exc)
        unsafe = "safe_mode" in text or "arbitrary code" in text or "could not locate" in text.lower()
        kind = UnsafeModelError if unsafe else ModelFileError
        raise kind(
            f"{p}: Keras could not rebuild the model in safe mode ({type(exc).__name__}: {text[:800]})"
        ) from None
    except (OSError, KeyError, RuntimeError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{p}: damaged model file ({type(exc).__name__}: {str(exc)[:800]})") from None
    log.info("loaded %s in Keras safe mode", p)
    return model


def _graph_ops(sm: Any) -> Iterator[str]:
    for mg in sm.meta_graphs:
        for node in mg.graph_def.node:
            yield node.op
        for fn in mg.graph_def.library.function:
            for node in fn.node_def:
                yield node.op


def check_savedmodel(path: str | os.PathLike) -> Path:
    """Check that ``path`` is a readable SavedModel directory without Python-callback ops.

    Returns
    -------
    pathlib.Path
        The directory.

    Raises
    ------
    ModelFileError
        Not a directory, no ``saved_model.pb``, no ``variables/`` folder, or a ``saved_model.pb``
        that does not parse; the message names the path and what is missing.
    UnsafeModelError
        The graph contains ``PyFunc``/``EagerPyFunc`` ops (Python code not stored in the model).
    """
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: no such SavedModel directory")
    if not p.is_dir():
        raise ModelFileError(
            f"{p}: is a file, not a SavedModel directory (a SavedModel is a folder with saved_model.pb and variables/)"
        )
    pb = p / "saved_model.pb"
    if not pb.is_file():
        raise ModelFileError(f"{p}: not a SavedModel directory: no saved_model.pb")
    if not (p / "variables").is_dir():
        raise ModelFileError(f"{p}: incomplete SavedModel: no variables/ folder")
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    try:
        sm.ParseFromString(pb.read_bytes())
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{pb}: damaged SavedModel: saved_model.pb does not parse ({exc})") from None
    if not sm.meta_graphs:
        raise ModelFileError(f"{pb}: damaged SavedModel: no meta graph")
    bad = sorted(set(_graph_ops(sm)) & PYTHON_CALLBACK_OPS)
    if bad:
        raise UnsafeModelError(
            f"{p}: refused: the graph calls Python functions that are not stored in the SavedModel ({', '.join(bad)})"
        )
    return p


def load_savedmodel_safely(path: str | os.PathLike, signature: str | None = None) -> Any:
    """``tf.saved_model.load`` after :func:`check_savedmodel`; optionally check a signature exists.

    Returns
    -------
    The loaded object (``.signatures`` holds its serving functions).

    Raises
    ------
    ModelFileError
        As :func:`check_savedmodel`, if TensorFlow cannot load it, or ``signature`` is missing.
    """
    import tensorflow as tf

    p = check_savedmodel(path)
    try:
        module = tf.saved_model.load(str(p))
    except (tf.errors.OpError, OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelFileError(f"{p}: TensorFlow could not load the SavedModel ({type(exc).__name__}: {exc})") from None
    if signature is not None and signature not in module.signatures:
        raise ModelFileError(f"{p}: SavedModel has signatures {list(module.signatures)}, not {signature!r}")
    return module
