"""ST-RoI pooling (CLARAN Sec 4.4, Eq. 8) against an independent numpy implementation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_astro.layers.roi_pool import STRoIPooling, normalised_output_grid, roi_affine_theta, st_roi_pool

STRIDE = 16.0


def numpy_st_roi_pool(features, rois, pool_size, spatial_scale=1 / STRIDE):
    """Eq. 8 + the STN bilinear kernel (Jaderberg et al. 2015, Eq. 5), literally, in float64.

    theta maps the output grid (bin centres in [-1, 1]) to normalised coordinates of F, whose
    -1 / +1 are the outer edges of F; pixel-index coordinate x = (u + 1) w_F / 2 - 0.5, and
    V = sum_nm U_nm max(0, 1 - |x - m|) max(0, 1 - |y - n|) (zero outside F).
    """
    f = np.asarray(features, np.float64)
    b, h, w, c = f.shape
    boxes = np.asarray(rois, np.float64) * spatial_scale
    n = boxes.shape[1]
    grid = np.array([(2 * k + 1) / pool_size - 1 for k in range(pool_size)])
    out = np.zeros((b, n, pool_size, pool_size, c))
    cols, rows = np.arange(w), np.arange(h)
    for bi in range(b):
        for ri in range(n):
            x1, y1, x2, y2 = boxes[bi, ri]
            theta = np.array([[(x2 - x1) / w, 0, (x1 + x2 - w) / w], [0, (y2 - y1) / h, (y1 + y2 - h) / h]])
            for i in range(pool_size):
                for j in range(pool_size):
                    u_f, v_f = theta @ np.array([grid[j], grid[i], 1.0])
                    xs = (u_f + 1) * w / 2 - 0.5
                    ys = (v_f + 1) * h / 2 - 0.5
                    kx = np.maximum(0.0, 1 - np.abs(xs - cols))  # (W,)
                    ky = np.maximum(0.0, 1 - np.abs(ys - rows))  # (H,)
                    out[bi, ri, i, j] = np.einsum("n,m,nmc->c", ky, kx, f[bi])
    return out


def _random_rois(rng, batch, n, image_size):
    xy = rng.uniform(-0.1 * image_size, 0.9 * image_size, size=(batch, n, 2))
    wh = rng.uniform(0.05 * image_size, 0.6 * image_size, size=(batch, n, 2))
    return np.concatenate([xy, xy + wh], axis=-1)


def test_matches_numpy_reference_on_random_inputs():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(2, 9, 11, 3))
    rois = _random_rois(rng, 2, 5, 11 * STRIDE)  # some boxes reach outside the map
    want = numpy_st_roi_pool(feats, rois, 4)
    got = st_roi_pool(tf.constant(feats, tf.float32), tf.constant(rois, tf.float32), pool_size=4).numpy()
    assert got.shape == (2, 5, 4, 4, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    got64 = st_roi_pool(tf.constant(feats), tf.constant(rois), pool_size=4).numpy()
    np.testing.assert_allclose(got64, want, rtol=0, atol=1e-12)


def test_theta_is_eq8():
    rois = tf.constant([[[32.0, 48.0, 160.0, 400.0]]])
    theta = roi_affine_theta(rois, 37, 37, 1 / 16).numpy()[0, 0]
    x1, y1, x2, y2 = 2.0, 3.0, 10.0, 25.0
    np.testing.assert_allclose(
        theta, [[(x2 - x1) / 37, 0, (x1 + x2 - 37) / 37], [0, (y2 - y1) / 37, (y1 + y2 - 37) / 37]]
    )
    np.testing.assert_allclose(normalised_output_grid(2).numpy(), [-0.5, 0.5])


def test_box_on_the_pixel_grid_returns_those_pixels():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(1, 12, 10, 2)).astype("float32")
    # a 7 x 7 feature-pixel box from column 2, row 4: edges on feature-pixel edges
    box = np.array([[[2 * STRIDE, 4 * STRIDE, 9 * STRIDE, 11 * STRIDE]]], np.float32)
    got = st_roi_pool(feats, box, pool_size=7).numpy()[0, 0]
    np.testing.assert_allclose(got, feats[0, 4:11, 2:9], atol=1e-5)
    # the whole map with pool_size = map size is the identity
    whole = np.array([[[0, 0, 10 * STRIDE, 12 * STRIDE]]], np.float32)
    sq = st_roi_pool(feats[:, :10], np.array([[[0, 0, 10 * STRIDE, 10 * STRIDE]]], np.float32), pool_size=10)
    np.testing.assert_allclose(sq.numpy()[0, 0], feats[0, :10], atol=1e-5)
    # a box covering the whole map samples bin centres spread over all of it: a linear ramp
    # in x is sampled at the bin centres (2k + 1) / 2 * (10 / 5) - 0.5 in pixel-index units
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32)[None, None, :, None], (1, 12, 10, 1))
    out = st_roi_pool(ramp, whole, pool_size=5).numpy()[0, 0, :, :, 0]
    np.testing.assert_allclose(out, np.broadcast_to([0.5, 2.5, 4.5, 6.5, 8.5], (5, 5)), atol=1e-5)


def test_outside_the_map_is_zero():
    feats = np.ones((1, 4, 4, 1), np.float32)
    far = np.array([[[-200.0, -200.0, -100.0, -100.0]]], np.float32)
    assert np.all(st_roi_pool(feats, far, pool_size=3).numpy() == 0)
    # half a pixel outside the centre of the last pixel: weight fades linearly to zero
    edge = np.array([[[4 * STRIDE, 0.0, 5 * STRIDE, 4 * STRIDE]]], np.float32)  # x in [4, 5) feature px
    col = st_roi_pool(feats, edge, pool_size=2).numpy()[0, 0, :, :, 0]
    # sample x (pixel index) = 4 + 0.25 - 0.5 = 3.75 and 4.25: weights 0.25 and 0 from pixel 3
    np.testing.assert_allclose(col, [[0.25, 0.0], [0.25, 0.0]], atol=1e-6)


def _numeric_grad(fun, x, eps):
    g = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        g[i] = (fun(xp) - fun(xm)) / (2 * eps)
    return g


def test_gradients_wrt_features_and_rois_match_central_differences():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(2, 5, 6, 2))
    rois = _random_rois(rng, 2, 3, 6 * STRIDE)
    weights = rng.normal(size=(2, 3, 3, 3, 2))

    def loss_np(f, r):
        return float(np.sum(numpy_st_roi_pool(f, r, 3) * weights))

    f_t = tf.constant(feats)
    r_t = tf.constant(rois)
    with tf.GradientTape() as tape:
        tape.watch([f_t, r_t])
        loss = tf.reduce_sum(st_roi_pool(f_t, r_t, pool_size=3) * weights)
    g_f, g_r = tape.gradient(loss, [f_t, r_t])
    # the loss is linear in the features, piecewise quadratic in the box (kinks at pixel centres)
    num_f = _numeric_grad(lambda f: loss_np(f, rois), feats, 1e-4)
    num_r = _numeric_grad(lambda r: loss_np(feats, r), rois, 1e-4)
    np.testing.assert_allclose(g_f.numpy(), num_f, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g_r.numpy(), num_r, rtol=1e-5, atol=1e-7)
    assert np.abs(g_r.numpy()).min() > 0  # every coordinate of every box receives a gradient

    # and TensorFlow's own Jacobian check, on a smaller problem
    f_small = tf.constant(feats[:1, :4, :4, :1])
    r_small = tf.constant(rois[:1, :2])
    theo, num = tf.test.compute_gradient(lambda f, r: st_roi_pool(f, r, pool_size=2), [f_small, r_small], delta=1e-4)
    for a, b in zip(theo, num):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_jit_compile_equals_eager():
    rng = np.random.default_rng(3)
    feats = tf.constant(rng.normal(size=(2, 8, 8, 4)), tf.float32)
    rois = tf.constant(_random_rois(rng, 2, 6, 128), tf.float32)

    @tf.function(jit_compile=True)
    def pooled_and_grads(f, r):
        with tf.GradientTape() as tape:
            tape.watch([f, r])
            out = st_roi_pool(f, r, pool_size=3)
            loss = tf.reduce_sum(out * out)
        return (out, *tape.gradient(loss, [f, r]))

    with tf.GradientTape() as tape:
        tape.watch([feats, rois])
        eager = st_roi_pool(feats, rois, pool_size=3)
        loss = tf.reduce_sum(eager * eager)
    want = (eager, *tape.gradient(loss, [feats, rois]))
    got = pooled_and_grads(feats, rois)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_bfloat16_features_and_mixed_precision_layer():
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(1, 37, 37, 4)).astype("float32")
    rois = np.array([[[301.3, 17.7, 455.1, 210.9], [0.0, 0.0, 600.0, 600.0]]], np.float32)
    ref = numpy_st_roi_pool(feats, rois, 7)
    out = st_roi_pool(tf.constant(feats, tf.bfloat16), rois)
    assert out.dtype == tf.bfloat16 and out.shape == (1, 2, 7, 7, 4)
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), ref, atol=0.05)

    policy = keras.mixed_precision.dtype_policy()
    try:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        layer = STRoIPooling()
        got = layer([tf.constant(feats), tf.constant(rois)])
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    assert got.dtype == tf.bfloat16
    # the boxes were not rounded to bfloat16 on the way in
    np.testing.assert_array_equal(tf.cast(got, tf.float32).numpy(), tf.cast(out, tf.float32).numpy())


def _pool_model():
    feats = keras.Input((6, 6, 3), name="features")
    rois = keras.Input((4, 4), name="rois")
    pooled = STRoIPooling(pool_size=3, spatial_scale=1 / 8, name="st_pool")([feats, rois])
    out = keras.layers.Dense(2, name="head")(keras.layers.Reshape((4, 27))(pooled))
    return keras.Model([feats, rois], out)


def test_layer_round_trips_through_keras_file_and_export(tmp_path):
    rng = np.random.default_rng(5)
    model = _pool_model()
    f = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    r = _random_rois(rng, 2, 4, 48).astype("float32")
    want = model.predict([f, r], verbose=0)
    layer = model.get_layer("st_pool")
    np.testing.assert_allclose(layer([f, r]).numpy(), numpy_st_roi_pool(f, r, 3, spatial_scale=1 / 8), atol=2e-5)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(again.get_layer("st_pool"), STRoIPooling)
    assert again.get_layer("st_pool").get_config()["spatial_scale"] == 1 / 8
    np.testing.assert_allclose(again.predict([f, r], verbose=0), want, rtol=1e-6, atol=1e-6)
    model.export(tmp_path / "sm", verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(reloaded.serve([tf.constant(f), tf.constant(r)]).numpy(), want, rtol=1e-5, atol=1e-6)


def test_bad_inputs_raise():
    f = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="rois must be"):
        st_roi_pool(f, np.zeros((1, 3, 5), np.float32))
    with pytest.raises(ValueError, match="features must be"):
        st_roi_pool(np.zeros((4, 4, 2), np.float32), np.zeros((1, 3, 4), np.float32))
    with pytest.raises(ValueError, match="batch"):
        st_roi_pool(f, np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="pool_size"):
        STRoIPooling(pool_size=0)
    with pytest.raises(ValueError, match="spatial_scale"):
        STRoIPooling(spatial_scale=-1.0)
