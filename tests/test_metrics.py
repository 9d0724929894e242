import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc

from keras_astro.metrics import Completeness, binary_rates, classification_report, roc_auc, roc_curve


def test_binary_rates_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.4, 0.05])
    r = binary_rates(y, s)
    assert r["agn_completeness"] == pytest.approx(2 / 3)
    assert r["sfg_completeness"] == pytest.approx(4 / 5)
    assert r["accuracy"] == pytest.approx(6 / 8)


def test_roc_matches_sklearn_with_ties(rng):
    y = (rng.random(500) < 0.2).astype(int)
    s = np.round(rng.random(500) * 0.5 + 0.4 * y, 2)  # rounding creates ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    f2, t2, _ = sk_roc(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)


def test_report_has_the_four_table1_metrics(rng):
    y = (rng.random(100) < 0.3).astype(int)
    rep = classification_report(y, rng.random(100))
    assert set(rep) == {"agn_completeness", "sfg_completeness", "accuracy", "roc_auc"}


def test_roc_needs_both_classes():
    with pytest.raises(ValueError, match="both classes"):
        roc_curve(np.ones(5), np.random.default_rng(0).random(5))


@pytest.mark.parametrize("positive", [0, 1])
def test_keras_completeness_matches_numpy(rng, positive):
    y = (rng.random(300) < 0.25).astype("float32")
    s = rng.random(300).astype("float32")
    m = Completeness(positive=positive)
    m.update_state(y[:150], s[:150])
    m.update_state(y[150:], s[150:])
    key = "agn_completeness" if positive == 1 else "sfg_completeness"
    assert float(m.result()) == pytest.approx(binary_rates(y, s)[key], abs=1e-6)
    m.reset_state()
    assert float(m.result()) == 0.0


# --- FNet Δv accuracy -------------------------------------------------------------------------


def test_delta_v_and_accuracy_against_hand_values():
    from keras_astro.metrics import C_KMS, delta_v, dv_accuracy, dv_accuracy_curve

    zt = np.array([1.0, 2.0, 3.0, 0.5])
    zp = zt + np.array([0.02, -0.2, 0.001, 0.3])
    dv = delta_v(zp, zt)
    np.testing.assert_allclose(dv, C_KMS * (zp - zt) / (1 + zt))
    # |dv| = 2998, 19986, 75, 59958 km/s
    assert dv_accuracy(zp, zt, 6000) == 0.5
    assert dv_accuracy(zp, zt, 30000) == 0.75
    np.testing.assert_allclose(dv_accuracy_curve(zp, zt, [100, 6000, 1e5]), [0.25, 0.5, 1.0])
    with pytest.raises(ValueError, match="z_pred has 2"):
        delta_v([1, 2], [1, 2, 3])


def test_delta_v_keras_metric_matches_numpy_with_scaling():
    import keras

    from keras_astro.metrics import DeltaVAccuracy, dv_accuracy

    rng = np.random.default_rng(0)
    zmin, zmax = 0.1, 5.5
    zt = rng.uniform(zmin, zmax, 200)
    zp = zt + rng.normal(0, 0.05, 200)
    m = DeltaVAccuracy(12000, z_min=zmin, z_max=zmax)
    m.update_state((zt - zmin) / (zmax - zmin), (zp - zmin) / (zmax - zmin))
    assert float(m.result()) == pytest.approx(dv_accuracy(zp, zt, 12000), abs=1e-6)
    assert m.name == "dv_acc_12000"
    m2 = keras.metrics.deserialize(keras.metrics.serialize(m))
    assert m2.threshold_kms == 12000 and m2.z_max == zmax
