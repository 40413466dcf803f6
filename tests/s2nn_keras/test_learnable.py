"""Learnable neuron parameters (``S2Activation(learnable=...)``) against
closed-form NumPy gradients, on the active backend and under its jit:
per-channel threshold (dS/du_th = -dS/du), s2nn's tau_s and alpha and
Si-BNN's Delta by the proxy rule (s2nn_keras.surrogates, "Learnable
parameters"); u at the threshold, 0, +-1e30; float16/bfloat16; the
TensorFlow fused backward bypassed; constraints; saving."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from s2nn_keras import S2Activation, surrogates
from s2nn_keras.layers import ClipConstraint
from tests.s2nn_keras.backend_utils import BACKEND, MODES, to_numpy

TH = np.array([0.5, 1.0, 2.0])
TAU = np.array([1.0, 0.5, 2.0])
ALPHA = np.array([0.2, 0.1, 0.4])
DELTA = np.array([1.0, 0.5, 2.0])


def _u():
    """[rows, 3]: per channel its threshold exactly, 0, +-1e30, values around it."""
    rows = [TH, np.zeros(3), np.full(3, 1e30), np.full(3, -1e30), TH + 1e-3, TH - 1e-3,
            TH * 3.0, -TH, np.full(3, 0.05), np.full(3, 7.5)]
    return np.stack(rows).astype(np.float32)


def _dy(shape, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(np.float32)


# ----------------------------------------------------------------------------
# NumPy references (float64).
# ----------------------------------------------------------------------------


def np_s2nn(u, th, tau, alpha):
    u = u.astype(np.float64)
    fire = u >= th
    with np.errstate(all="ignore"):
        above = 1.0 / (tau * np.where(fire, u, 1.0))
        sig = 1.0 / (1.0 + np.exp(-(u - th) / alpha))
        below = sig * (1.0 - sig) / alpha
        g = np.where(fire, above, below)
        d_alpha = np.where(fire, 0.0, -((u - th) / alpha) * below)
        d_tau = np.where(fire, -np.log(np.where(fire, u, th) / th) / tau ** 2, 0.0)
    clean = lambda a: np.where(np.isfinite(a), a, 0.0)  # noqa: E731
    return clean(g), clean(d_alpha), clean(d_tau)


def np_sibnn(u, th, rho, delta):
    u = u.astype(np.float64)
    inside = (u >= th - rho * delta) & (u <= th + delta)
    d_delta = np.where(u < th - rho * delta, -rho, np.where(u > th + delta, 1.0, 0.0))
    return inside.astype(np.float64), d_delta


def test_closed_forms_match_finite_differences_of_the_proxy():
    """The references themselves: dPhi/dalpha and dPhi/dtau_s are the
    derivatives of the s2nn proxy Phi, whose u-derivative is Eq. 23."""
    th, tau, alpha = 1.0, 0.7, 0.3

    def phi(u, tau=tau, alpha=alpha):
        with np.errstate(invalid="ignore"):
            return np.where(u < th, 1.0 / (1.0 + np.exp(-(u - th) / alpha)), 0.5 + np.log(np.abs(u) / th) / tau)

    u = np.array([-0.5, 0.2, 0.8, 0.99, 1.2, 3.0])
    g, d_alpha, d_tau = np_s2nn(u, th, tau, alpha)
    h = 1e-6
    np.testing.assert_allclose(g, (phi(u + h) - phi(u - h)) / (2 * h), rtol=1e-5)
    np.testing.assert_allclose(d_alpha, (phi(u, alpha=alpha + h) - phi(u, alpha=alpha - h)) / (2 * h),
                               rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(d_tau, (phi(u, tau=tau + h) - phi(u, tau=tau - h)) / (2 * h), rtol=1e-5,
                               atol=1e-9)
    # Phi is continuous at the threshold (sig(0) = 1/2 = 1/2 + ln 1).
    assert phi(np.array([th - 1e-9]))[0] == pytest.approx(phi(np.array([th]))[0], abs=1e-8)


# ----------------------------------------------------------------------------
# Gradients through the layer, on the backend.
# ----------------------------------------------------------------------------


def layer_grads(layer, u, dy, mode="eager", dtype="float32"):
    """``(s, dL/du, {name: dL/dvar})`` for ``L = sum(dy * layer(u))``."""
    x = ops.cast(ops.convert_to_tensor(u), dtype)
    up = ops.cast(ops.convert_to_tensor(dy), dtype)
    if not layer.built:
        layer.build(x.shape)
    names = [v.name for v in layer.trainable_variables]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def run(x, up):
            with tf.GradientTape() as tape:
                tape.watch(x)
                s = layer(x)
                loss = tf.reduce_sum(tf.cast(up, tf.float32) * tf.cast(s, tf.float32))
            return (s,) + tuple(tape.gradient(loss, [x] + layer.trainable_variables))

        if mode != "eager":
            run = tf.function(run, jit_compile=(mode == "xla"))
        out = run(x, up)
    elif BACKEND == "jax":
        import jax

        def loss_fn(x, trainable):
            s, _ = layer.stateless_call(trainable, [], x)
            return ops.sum(ops.cast(up, "float32") * ops.cast(s, "float32")), s

        def run(x, trainable):
            (_, s), (gx, gv) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(x, trainable)
            return (s, gx) + tuple(gv)

        if mode == "jit":
            run = jax.jit(run)
        out = run(x, [v.value for v in layer.trainable_variables])
    else:
        x = x.detach().requires_grad_(True)
        s = layer(x)
        (ops.cast(up, "float32") * ops.cast(s, "float32")).sum().backward()
        out = (s.detach(), x.grad) + tuple(v.value.grad for v in layer.trainable_variables)
    s, gx, *gv = out
    return to_numpy(s), to_numpy(gx), {n: to_numpy(g) for n, g in zip(names, gv)}, \
        keras.backend.standardize_dtype(gx.dtype)


def _s2nn_layer():
    layer = S2Activation("s2nn", learnable=("threshold", "tau_s", "alpha"))
    layer.build((None, 3))
    for name, value in (("threshold", TH), ("tau_s", TAU), ("alpha", ALPHA)):
        layer._learned[name].assign(value.astype("float32"))
    return layer


@pytest.mark.parametrize("mode", MODES)
def test_s2nn_learnable_gradients_match_numpy(mode):
    layer = _s2nn_layer()
    u = _u()
    dy = _dy(u.shape)
    s, gx, gv, _ = layer_grads(layer, u, dy, mode)
    g, d_alpha, d_tau = np_s2nn(u, TH, TAU, ALPHA)
    np.testing.assert_array_equal(s, (u >= TH.astype(np.float32)).astype(np.float64))
    np.testing.assert_allclose(gx, dy * g, rtol=2e-5, atol=1e-30)
    np.testing.assert_allclose(gv["threshold"], -(dy * g).sum(axis=0), rtol=2e-5)
    np.testing.assert_allclose(gv["alpha"], (dy * d_alpha).sum(axis=0), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(gv["tau_s"], (dy * d_tau).sum(axis=0), rtol=2e-5, atol=1e-6)
    for v in (gx, *gv.values()):
        assert np.all(np.isfinite(v))
    # At u == u_th the neuron fires and takes the 1/(tau_s u) branch.
    assert s[0].tolist() == [1.0, 1.0, 1.0]
    np.testing.assert_allclose(gx[0], dy[0] / (TAU * TH), rtol=2e-5)


@pytest.mark.parametrize("mode", MODES)
def test_sibnn_learnable_window_matches_numpy(mode):
    layer = S2Activation("sibnn", learnable=("threshold", "delta"))
    layer.build((None, 3))
    layer._learned["threshold"].assign(TH.astype("float32"))
    layer._learned["delta"].assign(DELTA.astype("float32"))
    u = _u()
    dy = _dy(u.shape, seed=1)
    s, gx, gv, _ = layer_grads(layer, u, dy, mode)
    window, d_delta = np_sibnn(u, TH, 0.3, DELTA)
    np.testing.assert_allclose(gx, dy * window, rtol=1e-6)
    np.testing.assert_allclose(gv["threshold"], -(dy * window).sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(gv["delta"], (dy * d_delta).sum(axis=0), rtol=1e-5)


@pytest.mark.parametrize("surrogate", ["ste_b", "slayer", "superspike"])
def test_learnable_threshold_of_any_surrogate(surrogate):
    """dL/du_th = -sum dL/du for every built-in surrogate, on a conv-shaped input."""
    layer = S2Activation(surrogate, learnable="threshold")
    u = np.random.default_rng(2).normal(0.5, 1.0, (2, 3, 3, 4)).astype(np.float32)
    dy = _dy(u.shape, seed=3)
    s, gx, gv, _ = layer_grads(layer, u, dy)
    th = layer.neuron_parameters()["threshold"]
    assert th.shape == (4,)
    np.testing.assert_allclose(gv["threshold"], -gx.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    ref = surrogates.surrogate_gradient(u, surrogate, threshold=float(th[0]))
    np.testing.assert_allclose(gx, dy * to_numpy(ref), rtol=1e-5)
    assert set(np.unique(s)) <= {layer.off_value, 1.0}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs(dtype):
    """Compared in u's dtype, surrogate in float32: finite, and equal to the
    NumPy reference at the low-precision u (float16/bfloat16 rounding of the
    results only)."""
    layer = _s2nn_layer()
    u = np.array([[0.5, 1.0, 2.0], [0.0, 0.0, 0.0], [65504.0, 60000.0, 3e4], [-65504.0, -3.0, -1.0],
                  [0.75, 0.5, 1.5]], np.float32)
    dy = np.ones_like(u)
    s, gx, gv, gx_dtype = layer_grads(layer, u, dy, dtype=dtype)
    assert gx_dtype == dtype
    u_low = to_numpy(ops.cast(ops.convert_to_tensor(u), dtype))
    g, d_alpha, d_tau = np_s2nn(u_low, TH, TAU, ALPHA)
    np.testing.assert_array_equal(s, (u_low >= TH).astype(np.float64))
    rtol = 1e-2 if dtype == "bfloat16" else 2e-3
    np.testing.assert_allclose(gx, g, rtol=rtol, atol=1e-6)
    np.testing.assert_allclose(gv["threshold"], -g.sum(axis=0), rtol=rtol)
    np.testing.assert_allclose(gv["alpha"], d_alpha.sum(axis=0), rtol=rtol, atol=1e-5)
    np.testing.assert_allclose(gv["tau_s"], d_tau.sum(axis=0), rtol=rtol, atol=1e-5)
    for v in (gx, *gv.values()):
        assert np.all(np.isfinite(v))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_policy_keeps_float32_weights(policy):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        layer = S2Activation("s2nn", learnable=("threshold", "alpha"))
        u = np.random.default_rng(4).normal(1.0, 1.0, (8, 5)).astype(np.float32)
        s, gx, gv, gx_dtype = layer_grads(layer, u, np.ones_like(u), dtype=policy.split("_")[1])
    finally:
        keras.config.set_dtype_policy(previous)
    assert all(v.dtype == "float32" for v in layer.trainable_variables)
    assert np.all(np.isfinite(gv["threshold"])) and np.all(np.isfinite(gv["alpha"]))
    assert np.abs(gv["threshold"]).sum() > 0


@pytest.mark.skipif(BACKEND != "tensorflow", reason="the fused backward exists on TensorFlow only")
@pytest.mark.parametrize("mode", MODES)
def test_tf_fused_backward_is_bypassed_for_learned_values(mode, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("fused backward used")

    monkeypatch.setattr(surrogates, "_TF_BACKWARD", refuse)
    layer = _s2nn_layer()
    u = _u()
    _, gx, _, _ = layer_grads(layer, u, np.ones_like(u), mode)
    np.testing.assert_allclose(gx, np_s2nn(u, TH, TAU, ALPHA)[0], rtol=2e-5, atol=1e-30)
    with pytest.raises(Exception, match="fused backward used"):
        layer_grads(S2Activation("s2nn"), u, np.ones_like(u), mode)


# ----------------------------------------------------------------------------
# Layer behaviour.
# ----------------------------------------------------------------------------


def test_learnable_names_are_checked():
    with pytest.raises(ValueError, match="valid: threshold, tau_s, alpha"):
        S2Activation("s2nn", learnable=("beta",))
    with pytest.raises(ValueError, match="valid: threshold$"):
        S2Activation("slayer", learnable=("alpha1",))
    with pytest.raises(ValueError, match="repeat"):
        S2Activation("s2nn", learnable=("alpha", "alpha"))
    with pytest.raises(ValueError, match="per channel"):
        S2Activation(learnable="threshold").build((None,))
    layer = S2Activation(learnable=["alpha", "threshold"])
    assert layer.learnable == ("threshold", "alpha")  # canonical weight order
    assert S2Activation().learnable == () and not S2Activation().weights


def test_constraint_clips_learned_values_after_each_optimizer_step():
    layer = S2Activation("s2nn", learnable=("threshold", "tau_s", "alpha"))
    layer.build((None, 3))
    for var in layer.trainable_variables:
        var.assign(np.array([-1.0, 0.0, 5.0], "float32"))
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.apply([ops.zeros((3,)) for _ in layer.trainable_variables], layer.trainable_variables)
    for var in layer.trainable_variables:
        np.testing.assert_allclose(ops.convert_to_numpy(var), [surrogates.MIN_POSITIVE] * 2 + [5.0], rtol=1e-6)
    assert ops.convert_to_numpy(ClipConstraint(None, 2.0)(np.array([3.0, -9.0]))).tolist() == [2.0, -9.0]
    assert ClipConstraint.from_config(ClipConstraint(0.5).get_config()).min_value == 0.5


def test_learned_threshold_trains_and_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8), keras.layers.BatchNormalization(momentum=0.9),
        S2Activation("s2nn", learnable=("threshold", "alpha"), name="act"), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    act = model.get_layer("act")
    params = act.neuron_parameters()
    assert params["threshold"].shape == (8,) and not np.allclose(params["threshold"], 1.0)
    assert not np.allclose(params["alpha"], 0.2)
    assert params["tau_s"] == 1.0  # fixed
    config = act.get_config()
    assert config["threshold"] == 1.0 and config["learnable"] == ["threshold", "alpha"]
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(ops.convert_to_numpy(loaded(x, training=False)),
                                  ops.convert_to_numpy(model(x, training=False)))
    np.testing.assert_array_equal(loaded.get_layer("act").neuron_parameters()["threshold"], params["threshold"])
