"""Spike function and surrogate catalogue against closed-form NumPy references,
on the active Keras backend, eagerly and under its jit (see backend_utils)."""

import ml_dtypes
import numpy as np
import pytest
from keras import ops

from s2nn_keras import surrogates
from s2nn_keras.surrogates import available_surrogates, register_surrogate, spike, surrogate_gradient
from tests.s2nn_keras.backend_utils import MODES, tensorflow_only, to_numpy, value_and_grad


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

LOW_PRECISION = {"float16": (np.float16, 2e-3), "bfloat16": (ml_dtypes.bfloat16, 8e-3)}


def _inputs(th):
    base = np.array([-1e30, -1e4, -50.0, -1.0, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 50.0, 1e4, 1e30])
    near = np.array([th - 1.0, th - 1e-3, th, th + 1e-3, th + 1.0])
    return np.concatenate([base, near]).astype(np.float32)


def _value_and_grad(u, name, mode="eager", dtype="float32", **kw):
    return value_and_grad(lambda x: spike(x, name, **kw), u, mode, dtype)


def test_registry_is_complete():
    assert available_surrogates() == sorted(REFERENCES)


@pytest.mark.parametrize("mode", MODES)
def test_s2nn_reference_values_from_issue(mode):
    u = np.array([0.0, 0.5, 1.0, 1.5, 3.0], np.float32)
    r = _value_and_grad(u, "s2nn", mode)
    np.testing.assert_array_equal(r.value, [0, 0, 1, 1, 1])
    np.testing.assert_allclose(r.grad, [0.033240, 0.350519, 1.0, 0.666667, 0.333333], atol=5e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(REFERENCES))
@pytest.mark.parametrize("non_default", [False, True])
def test_forward_and_gradient_match_numpy(name, non_default, mode):
    ref, th, _, params = REFERENCES[name]
    kwargs = dict(params) if non_default else {}
    if non_default:
        th = th + 0.7  # non-default threshold too
        kwargs["threshold"] = th
    u = _inputs(th)  # includes u = 0, u = threshold and +-1e30
    r = _value_and_grad(u, name, mode, **kwargs)
    assert r.value_dtype == r.grad_dtype == "float32"
    off = -1.0 if name == "ste_b" else 0.0
    np.testing.assert_array_equal(r.value, np.where(u >= np.float32(th), 1.0, off))
    ref_kwargs = {k: np.float32(v) for k, v in kwargs.items() if k != "threshold"}
    # Reference in float32 so window edges (|u - th| == 1) round like the backend's.
    with np.errstate(over="ignore"):
        expected = ref(u, np.float32(th), **ref_kwargs)
    np.testing.assert_allclose(r.grad, expected, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(r.grad))


@pytest.mark.parametrize("mode", MODES)
def test_heaviside_fires_exactly_at_threshold(mode):
    for name in available_surrogates():
        entry = surrogates.get_surrogate(name)
        th = np.float32(entry.threshold)
        r = _value_and_grad(np.array([th, th - np.float32(1e-6) * max(1, abs(th))]), name, mode)
        np.testing.assert_array_equal(r.value, [1.0, entry.off_value], err_msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_s2nn_formula_differs_from_shifted_variant_off_default_threshold(mode):
    # Eq. 23 uses 1/(tau_s*u); the shifted 1/(u - u_th + 1) agrees only at u_th = 1.
    r = _value_and_grad(np.array([2.0, 4.0]), "s2nn", mode, threshold=2.0)
    np.testing.assert_allclose(r.grad, [0.5, 0.25], rtol=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_s2nn_rejects_non_positive_threshold(bad):
    with pytest.raises(ValueError, match="threshold must be > 0"):
        spike(np.ones(1, np.float32), "s2nn", threshold=bad)


ONE = np.ones(1, np.float32)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: spike(ONE, "nope"), "valid names: .*s2nn"),
        (lambda: spike(ONE, "s2nn", beta0=1.0), "valid parameters: alpha, tau_s"),
        (lambda: spike(ONE, "s2nn", alpha=0.0), "alpha must be > 0"),
        (lambda: spike(ONE, "s2nn", tau_s=float("nan")), "tau_s must be finite"),
        (lambda: spike(ONE, "sibnn", rho=1.5), r"rho must be in \[0, 1\]"),
        (lambda: spike(ONE, "slayer", beta1=-1.0), "beta1 must be > 0"),
        (lambda: spike(ONE, "superspike", beta0="x"), "beta0 must be a real number"),
        (lambda: spike(ONE, "ste_s", threshold=float("inf")), "threshold must be finite"),
        (lambda: surrogate_gradient(ONE, "ste_s", threshold=True), "threshold must be a real number"),
        (lambda: register_surrogate("relu", lambda u, threshold: u, threshold=0.0), "reserved"),
        (lambda: register_surrogate("", lambda u, threshold: u, threshold=0.0), "non-empty string"),
        (lambda: register_surrogate("t_x", 3, threshold=0.0), "must be callable"),
        (lambda: register_surrogate("t_x", lambda u, threshold: u, threshold=0.0, off_value=2.0),
         "off_value must be 0.0 or -1.0"),
    ],
)
def test_invalid_names_and_values_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
    assert "t_x" not in available_surrogates()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", sorted(LOW_PRECISION))
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_low_precision_outputs_and_gradients_finite(name, dtype, mode):
    np_dtype, rtol = LOW_PRECISION[dtype]
    ref, th = REFERENCES[name][:2]
    u = _inputs(th)
    if dtype == "float16":
        u = np.clip(u, -65504.0, 65504.0)
    u_low = u.astype(np_dtype)  # the values the backend sees
    r = _value_and_grad(u_low.astype(np.float32), name, mode, dtype=dtype)
    assert r.value_dtype == r.grad_dtype == dtype
    assert np.all(np.isfinite(r.value)) and np.all(np.isfinite(r.grad))
    off = -1.0 if name == "ste_b" else 0.0
    # The threshold is compared in u's dtype.
    np.testing.assert_array_equal(r.value, np.where(u_low >= np_dtype(th), 1.0, off))
    with np.errstate(over="ignore"):
        expected = ref(u_low.astype(np.float32), np.float32(th))
    np.testing.assert_allclose(r.grad, expected, rtol=rtol, atol=1e-4)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", sorted(LOW_PRECISION))
def test_threshold_is_compared_in_the_dtype_of_u(dtype, mode):
    # u_th = 0.2501 rounds to 0.25 in float16 and bfloat16: u = 0.25 is below
    # u_th as real numbers but equal to the threshold in u's dtype, so it fires.
    np_dtype = LOW_PRECISION[dtype][0]
    assert float(np_dtype(0.2501)) == 0.25
    r = _value_and_grad(np.array([0.25, 0.2], np.float32), "sibnn", mode, dtype=dtype, threshold=0.2501)
    np.testing.assert_array_equal(r.value, [1.0, 0.0])
    r32 = _value_and_grad(np.array([0.25, 0.2501]), "sibnn", mode, threshold=0.2501)
    np.testing.assert_array_equal(r32.value, [0.0, 1.0])


@pytest.mark.parametrize("mode", MODES)
def test_float16_surrogate_is_clipped_to_stay_finite(mode):
    # slayer with alpha1 = 1e5 peaks at 1e5 > float16's 65504 at u = u_th.
    u = np.array([1.0, 1.5, -3.0], np.float32)
    r = _value_and_grad(u, "slayer", mode, dtype="float16", alpha1=1e5, beta1=1.0)
    assert r.grad_dtype == "float16"
    np.testing.assert_array_equal(r.grad[0], 65504.0)
    np.testing.assert_allclose(r.grad[1:], 1e5 * np.exp(-np.abs(u[1:] - 1.0)), rtol=2e-3)
    g32 = _value_and_grad(u, "slayer", mode, alpha1=1e5, beta1=1.0).grad
    np.testing.assert_allclose(g32[0], 1e5)


def _register(name, grad_fn, **kwargs):
    surrogates._REGISTRY.pop(name, None)
    return register_surrogate(name, grad_fn, **kwargs)


@pytest.mark.parametrize("mode", MODES)
def test_non_finite_surrogate_values_become_zero(mode):
    name = "test_pole"
    try:
        # 1/(u - u_th): inf at the threshold, -inf/NaN never reach the gradient.
        _register(name, lambda u, threshold: 1.0 / (u - threshold), threshold=0.5)
        u = np.array([0.5, 1.5, -0.5], np.float32)
        r = _value_and_grad(u, name, mode)
        np.testing.assert_array_equal(r.grad, [0.0, 1.0, -1.0])
        np.testing.assert_array_equal(to_numpy(surrogate_gradient(u, name)), [0.0, 1.0, -1.0])
    finally:
        surrogates._REGISTRY.pop(name, None)


@pytest.mark.parametrize("mode", MODES)
def test_upstream_gradient_is_multiplied(mode):
    u = np.array([0.0, 1.0, 3.0], np.float32)
    dy = np.array([2.0, -3.0, 0.5], np.float32)
    r = value_and_grad(lambda x: spike(x, "s2nn"), u, mode, upstream=dy)
    np.testing.assert_allclose(r.grad, dy * ref_s2nn(u.astype(np.float64)), rtol=1e-6)


def test_surrogate_gradient_function_matches_backward():
    u = _inputs(1.0)
    for name in available_surrogates():
        g = _value_and_grad(u, name).grad
        # Last-bit differences only: on TensorFlow the built-in backward runs XLA-fused.
        np.testing.assert_allclose(to_numpy(surrogate_gradient(u, name)), g, rtol=1e-6, atol=0, err_msg=name)


def test_integer_input_is_cast_to_float32():
    s = spike(np.array([0, 1, 2], np.int32))
    assert ops.convert_to_numpy(s).dtype == np.float32
    np.testing.assert_array_equal(ops.convert_to_numpy(s), [0.0, 1.0, 1.0])


@pytest.mark.parametrize("mode", MODES)
def test_user_registered_keras_ops_surrogate_is_usable_everywhere(mode):
    from s2nn_keras import S2Activation

    def triangle(u, threshold, width):
        return ops.relu(1.0 - ops.abs(u - threshold) / width) / width

    name = "test_triangle"
    try:
        _register(name, triangle, threshold=0.5, params={"width": 2.0})
        assert name in available_surrogates()
        u = np.array([-2.0, 0.0, 0.5, 1.5, 3.0], np.float32)
        r = _value_and_grad(u, name, mode, width=1.0)
        np.testing.assert_array_equal(r.value, [0, 0, 1, 1, 1])
        np.testing.assert_allclose(r.grad, np.maximum(0, 1 - np.abs(u - 0.5)), rtol=1e-6)
        layer = S2Activation(name, width=4.0)
        assert layer.get_config()["width"] == 4.0
        np.testing.assert_array_equal(to_numpy(layer(u)), [0, 0, 1, 1, 1])
        with pytest.raises(ValueError, match="already registered"):
            register_surrogate(name, triangle, threshold=0.5)
    finally:
        surrogates._REGISTRY.pop(name, None)


@tensorflow_only
@pytest.mark.parametrize("mode", MODES)
def test_user_surrogate_written_with_tf_ops_works_on_tensorflow(mode):
    import tensorflow as tf

    def triangle_tf(u, threshold, width):
        assert tf.is_tensor(u) and u.dtype == tf.float32
        return tf.nn.relu(1.0 - tf.abs(u - threshold) / width) / width

    name = "test_triangle_tf"
    try:
        _register(name, triangle_tf, threshold=0.5, params={"width": 1.0})
        u = np.array([-2.0, 0.0, 0.5, 1.5, 3.0], np.float32)
        r = _value_and_grad(u, name, mode)
        np.testing.assert_allclose(r.grad, np.maximum(0, 1 - np.abs(u - 0.5)), rtol=1e-6)
    finally:
        surrogates._REGISTRY.pop(name, None)


def test_results_are_backend_tensors():
    u = np.array([0.0, 2.0], np.float32)
    assert ops.is_tensor(spike(u)) and ops.is_tensor(surrogate_gradient(u))
