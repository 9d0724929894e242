"""Model files (issue 8): safe mode refuses arbitrary code and unregistered objects, and says why.

``keras_astro.safety.load_model_safely`` is what the CLI calls for ``.keras`` files;
``check_savedmodel`` / ``load_savedmodel_safely`` for SavedModel folders.
"""

from __future__ import annotations

import json
import zipfile

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_astro import safety

pytestmark = pytest.mark.fuzz

FUZZ = settings.get_profile("keras_astro_fuzz")


def _tiny_input():
    return keras.Input((4,), name="x")


@pytest.fixture(scope="module")
def agn_keras(tmp_path_factory):
    """The AGN network of the package (custom registered layers, focal loss, completeness metric)."""
    from keras_astro.losses import BinaryFocalLoss
    from keras_astro.metrics import Completeness
    from keras_astro.models.agn import build_agn_cnn

    keras.utils.set_random_seed(0)
    model = build_agn_cnn()
    model.compile(optimizer="adam", loss=BinaryFocalLoss(), metrics=[Completeness(positive=1)])
    model.optimizer.build(model.trainable_variables)  # saved with its slots, as after training
    x = np.random.default_rng(0).normal(20, 2, (5, 44, 2, 1)).astype(np.float32)
    path = tmp_path_factory.mktemp("models") / "agn.keras"
    model.save(path)
    return path, x, np.asarray(model(x, training=False))


def test_package_model_loads_in_safe_mode(agn_keras):
    path, x, ref = agn_keras
    model = safety.load_model_safely(path)
    np.testing.assert_allclose(np.asarray(model(x, training=False)), ref, rtol=1e-6, atol=1e-7)
    assert type(model.loss).__name__ == "BinaryFocalLoss"
    # a run folder holding model.keras works too (what `claran train` writes)
    run = path.parent / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(path.read_bytes())
    assert safety.load_model_safely(run, compile=False).count_params() == model.count_params()


def test_lambda_layer_is_refused_with_the_reason(tmp_path):
    inp = _tiny_input()
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2, name="doubler")(inp))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(safety.UnsafeModelError) as info:
        safety.load_model_safely(path)
    msg = str(info.value)
    assert "lambda.keras" in msg and "Lambda layer" in msg and "arbitrary code" in msg and "doubler" in msg
    # and keras itself, asked directly in safe mode, refuses too
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.load_model(path, safe_mode=True)


class _NotRegistered(keras.layers.Layer):
    """A custom layer without @keras.saving.register_keras_serializable."""

    def call(self, x):
        return x + 1.0


def test_unregistered_custom_class_is_refused_with_the_reason(tmp_path):
    inp = _tiny_input()
    model = keras.Model(inp, _NotRegistered(name="plus_one")(inp))
    path = tmp_path / "custom.keras"
    model.save(path)
    with pytest.raises(safety.UnsafeModelError) as info:
        safety.load_model_safely(path)
    msg = str(info.value)
    assert "custom.keras" in msg and "_NotRegistered" in msg and "register_keras_serializable" in msg
    assert "unregistered custom object" in msg


def test_config_naming_foreign_code_is_refused(tmp_path, agn_keras):
    """A hand-edited archive whose config points a class at another module (e.g. os.system)."""
    src, _, _ = agn_keras
    path = tmp_path / "edited.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                layer = cfg["config"]["layers"][-1]
                layer["config"]["activation"] = {
                    "module": "os",
                    "class_name": "function",
                    "config": "system",
                    "registered_name": "function",
                }
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    with pytest.raises(safety.UnsafeModelError, match=r"edited\.keras.*'os'"):
        safety.load_model_safely(path)


def test_other_model_files_are_refused_clearly(tmp_path):
    with pytest.raises(safety.ModelFileError, match="no such model file"):
        safety.load_model_safely(tmp_path / "missing.keras")
    (tmp_path / "junk.keras").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(safety.ModelFileError, match="junk.keras.*not a readable .keras archive"):
        safety.load_model_safely(tmp_path / "junk.keras")
    (tmp_path / "old.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(safety.UnsafeModelError, match="old.h5.*legacy HDF5"):
        safety.load_model_safely(tmp_path / "old.h5")
    with pytest.raises(safety.ModelFileError, match="neither model.keras nor a SavedModel"):
        safety.load_model_safely(tmp_path)


@pytest.fixture(scope="module")
def savedmodel(tmp_path_factory):
    import tensorflow as tf

    from keras_astro.export import export_savedmodel

    inp = _tiny_input()
    model = keras.Model(inp, keras.layers.Dense(1, name="y")(inp))
    path = tmp_path_factory.mktemp("sm") / "savedmodel"
    export_savedmodel(model, path, input_spec=tf.TensorSpec((None, 4), tf.float32, name="x"))
    return path, model


def test_savedmodel_checks(tmp_path, savedmodel):
    path, model = savedmodel
    sm = safety.load_savedmodel_safely(path, signature="serving_default")
    x = np.ones((2, 4), np.float32)
    (out,) = sm.signatures["serving_default"](x=x).values()
    np.testing.assert_allclose(out.numpy(), np.asarray(model(x)), rtol=1e-6)
    with pytest.raises(safety.ModelFileError, match="not a Keras model"):
        safety.load_model_safely(path)
    # a file, an empty folder, a folder without variables/, a damaged saved_model.pb
    (tmp_path / "file.pb").write_bytes(b"x")
    with pytest.raises(safety.ModelFileError, match=r"file\.pb: is a file, not a SavedModel directory"):
        safety.check_savedmodel(tmp_path / "file.pb")
    with pytest.raises(safety.ModelFileError, match="no such SavedModel"):
        safety.check_savedmodel(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(safety.ModelFileError, match=r"empty: not a SavedModel directory: no saved_model\.pb"):
        safety.check_savedmodel(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "variables").mkdir()
    (broken / "saved_model.pb").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(safety.ModelFileError, match=r"broken/saved_model\.pb: damaged SavedModel"):
        safety.check_savedmodel(broken)
    novars = tmp_path / "novars"
    novars.mkdir()
    (novars / "saved_model.pb").write_bytes((path / "saved_model.pb").read_bytes())
    with pytest.raises(safety.ModelFileError, match="no variables/"):
        safety.check_savedmodel(novars)
    with pytest.raises(safety.ModelFileError, match="not 'predict'"):
        safety.load_savedmodel_safely(path, signature="predict")


def test_savedmodel_calling_python_is_refused(tmp_path):
    import tensorflow as tf

    class Hook(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None,), tf.float32)])
        def __call__(self, x):
            return tf.py_function(lambda v: v * 2, [x], tf.float32)

    path = tmp_path / "pyfunc_model"
    tf.saved_model.save(Hook(), str(path))
    with pytest.raises(safety.UnsafeModelError, match="pyfunc_model.*EagerPyFunc"):
        safety.check_savedmodel(path)


@settings(FUZZ, max_examples=max(8, FUZZ.max_examples // 3))
@given(data=st.data())
def test_damaged_keras_archive(fuzz, agn_keras, data):
    """Byte damage to a .keras file: a ModelFileError naming it, or the identical model."""
    src, x, ref = agn_keras
    damaged, how = fuzz.mutate_bytes(data, src.read_bytes())
    path = fuzz.case_path(src.name, damaged)

    def same(model):
        return np.array_equal(np.asarray(model(x, training=False)), ref)

    fuzz.check(
        "safety.load_model_safely (.keras)",
        lambda: safety.load_model_safely(path, compile=False),
        allowed=(safety.ModelFileError,),
        names=path,
        case=how,
        same=same,
    )
