"""Spike function and surrogate catalogue against closed-form NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from s2nn_keras import surrogates
from s2nn_keras.surrogates import available_surrogates, register_surrogate, spike, surrogate_gradient


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def ref_s2nn(u, th=1.0, tau_s=1.0, alpha=0.2):
    sig = _sigmoid((u - th) / alpha)
    with np.errstate(divide="ignore"):
        above = 1.0 / (tau_s * u)
    return np.where(u >= th, above, sig * (1.0 - sig) / alpha)


def ref_ste(u, th):
    return (np.abs(u - th) <= 1.0).astype(np.float64)


def ref_sibnn(u, th=0.3, rho=0.3, delta=1.0):
    return ((u >= th - rho * delta) & (u <= th + delta)).astype(np.float64)


def ref_slayer(u, th=1.0, alpha1=1.0, beta1=1.0):
    return alpha1 * np.exp(-beta1 * np.abs(u - th))


def ref_superspike(u, th=1.0, beta0=10.0):
    return (1.0 + beta0 * np.abs(u - th)) ** -2


REFERENCES = {
    # name: (reference, default threshold, default params, non-default params)
    "s2nn": (ref_s2nn, 1.0, {}, {"tau_s": 2.0, "alpha": 0.5}),
    "ste_b": (lambda u, th: ref_ste(u, th), 0.0, {}, {}),
    "ste_s": (lambda u, th: ref_ste(u, th), 1.0, {}, {}),
    "sibnn": (ref_sibnn, 0.3, {}, {"rho": 0.6, "delta": 2.0}),
    "slayer": (ref_slayer, 1.0, {}, {"alpha1": 0.5, "beta1": 3.0}),
    "superspike": (ref_superspike, 1.0, {}, {"beta0": 2.0}),
}


def _inputs(th):
    base = np.array([-1e30, -1e4, -50.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 50.0, 1e4, 1e30])
    near = np.array([th - 1.0, th - 1e-3, th, th + 1e-3, th + 1.0])
    return np.concatenate([base, near]).astype(np.float32)


def _value_and_grad(u, name, **kw):
    u = tf.constant(u)
    with tf.GradientTape() as tape:
        tape.watch(u)
        s = spike(u, name, **kw)
    return s.numpy(), tape.gradient(s, u).numpy()


def test_s2nn_reference_values_from_issue():
    u = np.array([0.0, 0.5, 1.0, 1.5, 3.0], np.float32)
    _, g = _value_and_grad(u, "s2nn")
    np.testing.assert_allclose(g, [0.033240, 0.350519, 1.0, 0.666667, 0.333333], atol=5e-7)


@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("non_default", [False, True])
def test_forward_and_gradient_match_numpy(name, non_default):
    ref, th, _, params = REFERENCES[name]
    kwargs = dict(params) if non_default else {}
    if non_default:
        th = th + 0.7  # non-default threshold too
        kwargs["threshold"] = th
    u = _inputs(th)
    s, g = _value_and_grad(u, name, **kwargs)
    off = -1.0 if name == "ste_b" else 0.0
    np.testing.assert_array_equal(s, np.where(u >= np.float32(th), 1.0, off))
    ref_kwargs = {k: np.float32(v) for k, v in kwargs.items() if k != "threshold"}
    # Reference in float32 so window edges (|u - th| == 1) round like TF's.
    with np.errstate(over="ignore"):
        expected = ref(u, np.float32(th), **ref_kwargs)
    np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(g))


def test_heaviside_fires_exactly_at_threshold():
    for name in available_surrogates():
        th = surrogates.get_surrogate(name).threshold
        s, _ = _value_and_grad(np.array([th], np.float32), name)
        assert s[0] == 1.0, name


def test_s2nn_formula_differs_from_shifted_variant_off_default_threshold():
    # Eq. 23 uses 1/(tau_s*u); the shifted 1/(u - u_th + 1) agrees only at u_th = 1.
    _, g = _value_and_grad(np.array([2.0, 4.0], np.float32), "s2nn", threshold=2.0)
    np.testing.assert_allclose(g, [0.5, 0.25], rtol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_s2nn_rejects_non_positive_threshold(bad):
    with pytest.raises(ValueError, match="threshold must be > 0"):
        spike(tf.constant([1.0]), "s2nn", threshold=bad)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: spike(tf.constant([1.0]), "nope"), "valid names: .*s2nn"),
        (lambda: spike(tf.constant([1.0]), "s2nn", beta0=1.0), "valid parameters: alpha, tau_s"),
        (lambda: spike(tf.constant([1.0]), "s2nn", alpha=0.0), "alpha must be > 0"),
        (lambda: spike(tf.constant([1.0]), "s2nn", tau_s=float("nan")), "tau_s must be finite"),
        (lambda: spike(tf.constant([1.0]), "sibnn", rho=1.5), r"rho must be in \[0, 1\]"),
        (lambda: spike(tf.constant([1.0]), "slayer", beta1=-1.0), "beta1 must be > 0"),
        (lambda: spike(tf.constant([1.0]), "superspike", beta0="x"), "beta0 must be a real number"),
        (lambda: spike(tf.constant([1.0]), "ste_s", threshold=float("inf")), "threshold must be finite"),
    ],
)
def test_invalid_names_and_values_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_float16_outputs_and_gradients_finite(name):
    th = surrogates.get_surrogate(name).threshold
    u = tf.constant(np.clip(_inputs(th), -65504.0, 65504.0).astype(np.float16))
    with tf.GradientTape() as tape:
        tape.watch(u)
        s = spike(u, name)
    g = tape.gradient(s, u)
    assert s.dtype == tf.float16 and g.dtype == tf.float16
    assert np.all(np.isfinite(g.numpy())) and np.all(np.isfinite(s.numpy()))
    ref = REFERENCES[name][0]
    expected = ref(u.numpy().astype(np.float64), th)
    np.testing.assert_allclose(g.numpy().astype(np.float64), expected, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("jit", [False, True])
def test_works_under_tf_function_and_xla(jit):
    @tf.function(jit_compile=jit)
    def f(u):
        with tf.GradientTape() as tape:
            tape.watch(u)
            s = spike(u, "s2nn")
        return s, tape.gradient(s, u)

    u = np.array([0.0, 0.5, 1.0, 1.5, 3.0], np.float32)
    s, g = f(tf.constant(u))
    np.testing.assert_array_equal(s.numpy(), [0, 0, 1, 1, 1])
    np.testing.assert_allclose(g.numpy(), ref_s2nn(u.astype(np.float64)), rtol=1e-6)


def test_surrogate_gradient_function_matches_tape():
    u = _inputs(1.0)
    _, g = _value_and_grad(u, "slayer")
    np.testing.assert_allclose(surrogate_gradient(tf.constant(u), "slayer").numpy(), g)


def test_user_registered_surrogate_is_usable_everywhere():
    from s2nn_keras import S2Activation

    def triangle(u, threshold, width):
        return tf.nn.relu(1.0 - tf.abs(u - threshold) / width) / width

    name = "test_triangle"
    try:
        register_surrogate(name, triangle, threshold=0.5, params={"width": 2.0})
        assert name in available_surrogates()
        u = np.array([-2.0, 0.0, 0.5, 1.5, 3.0], np.float32)
        s, g = _value_and_grad(u, name, width=1.0)
        np.testing.assert_array_equal(s, [0, 0, 1, 1, 1])
        np.testing.assert_allclose(g, np.maximum(0, 1 - np.abs(u - 0.5)), rtol=1e-6)
        layer = S2Activation(name, width=4.0)
        assert layer.get_config()["width"] == 4.0
        with pytest.raises(ValueError, match="already registered"):
            register_surrogate(name, triangle, threshold=0.5)
    finally:
        surrogates._REGISTRY.pop(name, None)
