"""Strategy selection, and a real MirroredStrategy over two logical CPU devices.

Logical devices must be configured before TensorFlow initialises, so the Mirrored test runs in a
fresh Python process.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from keras_astro import distribute


def test_default_strategy_without_cluster_or_gpus(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    s = distribute.get_strategy()
    assert s.num_replicas_in_sync == 1
    assert distribute.global_batch_size(64, s) == 64
    assert distribute.is_chief(s)


def test_tf_config_parsing(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}))
    assert distribute.cluster_from_env() is None  # one task is not a cluster
    two = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(two))
    assert distribute.cluster_from_env() == two["cluster"]
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        distribute.cluster_from_env()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": two["cluster"]}))
    with pytest.raises(ValueError, match="task"):
        distribute.cluster_from_env()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown strategy"):
        distribute.get_strategy("tpu")
    with pytest.raises(ValueError):
        distribute.global_batch_size(0)


MIRRORED = textwrap.dedent(
    """
    import json, numpy as np, tensorflow as tf, keras
    from keras_astro import distribute
    distribute.split_cpu(2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    from keras_astro.models.agn import AGNConfig, build_agn_cnn, compile_agn_cnn, stopping_callback
    from keras_astro.training import fit_in_memory
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 44, 2, 1)).astype("float32")
    y = (rng.random(96) < 0.3).astype("float32")
    x[y == 1, :, 0, 0] += 1.0
    cfg = AGNConfig.preset("B", max_epochs=3, delta=-10.0)
    with strategy.scope():
        model = compile_agn_cnn(build_agn_cnn(cfg))
    before = [v.numpy().copy() for v in model.trainable_variables]
    hist = fit_in_memory(model, x[:80], y[:80], validation_data=(x[80:], y[80:]), epochs=3, batch_size=8,
                         callbacks=[stopping_callback(cfg)], strategy=strategy)
    in_sync, changed = True, False
    for v, b in zip(model.trainable_variables, before):
        vals = [t.numpy() for t in strategy.experimental_local_results(v.value)]
        in_sync &= len(vals) == 2 and all(np.array_equal(vals[0], o) for o in vals[1:])
        changed |= not np.allclose(vals[0], b)
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "global_batch": distribute.global_batch_size(8, strategy),
                      "in_sync": bool(in_sync), "changed": bool(changed), "epochs": len(hist.history["loss"]),
                      "keys": sorted(hist.history)}))
    """
)


def test_mirrored_strategy_keeps_replicas_in_sync():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run([sys.executable, "-c", MIRRORED], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["replicas"] == 2 and res["global_batch"] == 16
    assert res["changed"], "training did not update the weights"
    assert res["in_sync"], "mirrored variables differ between the two replicas"
    assert res["epochs"] == 3
    assert {"val_agn_completeness", "val_accuracy", "loss"} <= set(res["keys"])
