import numpy as np
import pytest
import tensorflow as tf

from keras_astro.export import export_savedmodel, load_signature, predict_savedmodel, serving_model
from keras_astro.layers import PhotometryImputer
from keras_astro.models.agn import build_agn_cnn
from keras_astro.preprocess.photometry import MissingBandFiller


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    rng = np.random.default_rng(3)
    train = rng.normal(21, 2, size=(40, 44, 2)).astype("float32")
    train[..., 1] = np.abs(train[..., 1]) * 0.01 + 0.02
    filler = MissingBandFiller("band_median").fit(train)
    model = build_agn_cnn()
    served = serving_model(model, [PhotometryImputer("band_median", fill_values=filler.medians)], (44, 2), input_name="photometry", output_name="p_agn")
    path = export_savedmodel(served, tmp_path_factory.mktemp("sm") / "savedmodel", input_spec=tf.TensorSpec((None, 44, 2), tf.float32, name="photometry"), output_name="p_agn", metadata={"name": "test"})
    return model, filler, served, path


def test_reloaded_savedmodel_predicts_identically(exported, raw_photometry):
    model, filler, served, path = exported
    module = tf.saved_model.load(str(path))
    out = module.signatures["serving_default"](photometry=tf.constant(raw_photometry))["p_agn"].numpy()
    # the Keras network on inputs filled by the numpy reference
    ref = model.predict(filler.transform(raw_photometry)[..., None], verbose=0)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(out, served.predict(raw_photometry, verbose=0))


def test_signature_takes_raw_photometry(exported):
    _, fn = load_signature(exported[3])
    (name, spec), = fn.structured_input_signature[1].items()
    assert name == "photometry" and tuple(spec.shape) == (None, 44, 2)
    assert list(fn.structured_outputs) == ["p_agn"]
    assert (exported[3] / "keras_astro.json").is_file()


def test_predict_in_batches(exported, raw_photometry):
    a = predict_savedmodel(exported[3], raw_photometry, batch_size=7)
    b = predict_savedmodel(exported[3], raw_photometry)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (60, 1)


def test_not_a_savedmodel(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a SavedModel"):
        load_signature(tmp_path)
