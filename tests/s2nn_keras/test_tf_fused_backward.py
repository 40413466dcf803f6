"""The TensorFlow-only fused backward (s2nn_keras.tf_fused_backward) really
runs: as one XLA-compiled function call in eager/graph mode, inlined with its
select-ending form inside jit_compile steps, with the same values as the
plain keras.ops backward. Skipped on other backends (where the module is
never imported)."""

import re
import sys

import keras
import numpy as np
import pytest

from tests.s2nn_keras.backend_utils import BACKEND

pytestmark = pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow-only acceleration")

if BACKEND == "tensorflow":
    import tensorflow as tf

    from s2nn_keras import S2Activation, register_surrogate, spike, surrogates, tf_fused_backward


@pytest.fixture
def plain_backward():
    """Switches to the backend-agnostic keras.ops backward while active."""
    surrogates._TF_BACKWARD = None
    yield
    surrogates._TF_BACKWARD = tf_fused_backward.backward


def test_module_is_loaded_only_on_tensorflow():
    assert surrogates._TF_BACKWARD is tf_fused_backward.backward
    assert "s2nn_keras.tf_fused_backward" in sys.modules


def _gradient_graph(name, jit, **params):
    def grad(u, dy):
        with tf.GradientTape() as tape:
            tape.watch(u)
            s = spike(u, name, **params)
        return tape.gradient(s, u, output_gradients=dy)

    spec = tf.TensorSpec([None, 8], tf.float32)
    return tf.function(grad, jit_compile=jit).get_concrete_function(spec, spec).graph


def _calls(graph):
    return [op for op in graph.get_operations() if op.type in ("PartitionedCall", "StatefulPartitionedCall")]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("name", ["s2nn", "slayer", "sibnn"])
def test_builtin_backward_is_one_xla_compiled_call(name, jit):
    graph = _gradient_graph(name, jit)
    calls = _calls(graph)
    assert len(calls) == 1, [op.type for op in graph.get_operations()]
    assert calls[0].get_attr("_XlaMustCompile") is True
    op_types = {op.type for op in graph.get_operations()}
    # None of the surrogate's element-wise kernels run outside the fused call.
    assert not op_types & {"Sigmoid", "Exp", "Abs", "RealDiv", "Mul", "SelectV2", "IsFinite"}, op_types


def test_plain_backward_is_not_fused(plain_backward):
    assert not _calls(_gradient_graph("s2nn", jit=False))
    assert "Sigmoid" in {op.type for op in _gradient_graph("s2nn", jit=False).get_operations()}


def test_user_registered_surrogate_is_not_fused():
    name = "test_tf_fused_user"
    try:
        register_surrogate(name, lambda u, threshold: keras.ops.exp(-keras.ops.abs(u - threshold)), threshold=1.0)
        graph = _gradient_graph(name, jit=False)
        assert not _calls(graph)
        assert "Exp" in {op.type for op in graph.get_operations()}
    finally:
        surrogates._REGISTRY.pop(name, None)


def _grads(name, mode, u, dy):
    def grad(u, dy):
        with tf.GradientTape() as tape:
            tape.watch(u)
            s = spike(u, name)
        return tape.gradient(s, u, output_gradients=dy)

    if mode != "eager":
        grad = tf.function(grad, jit_compile=mode == "xla")
    return grad(tf.constant(u), tf.constant(dy)).numpy()


@pytest.mark.parametrize("mode", ["eager", "graph", "xla"])
def test_fused_and_plain_backward_agree_including_non_finite_upstream(mode):
    rng = np.random.default_rng(0)
    u = np.concatenate([3 * rng.normal(size=200), [0, 1, -1, 1e30, -1e30, np.inf, -np.inf, np.nan]]).astype(np.float32)
    dy = rng.normal(size=u.shape).astype(np.float32)
    dy[:4] = [0.0, -0.0, np.inf, np.nan]
    for name in surrogates.available_surrogates():
        fused = _grads(name, mode, u, dy)
        surrogates._TF_BACKWARD = None
        try:
            plain = _grads(name, mode, u, dy)
        finally:
            surrogates._TF_BACKWARD = tf_fused_backward.backward
        np.testing.assert_array_equal(np.isnan(fused), np.isnan(plain), err_msg=name)
        # XLA and TF kernels may round exp/logistic differently in the last bits.
        np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-12, err_msg=name)


def _ynnpack_reduces():
    """YNNPACK-offloaded reductions in the optimized HLO of a jit-compiled
    BN -> spike -> conv gradient at a training-like size."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 16))
    h = keras.layers.BatchNormalization()(inputs)
    h = S2Activation("s2nn")(h)
    model = keras.Model(inputs, keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(h))
    x = tf.random.normal((64, 28, 28, 16))

    @tf.function(jit_compile=True)
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(x, training=True)))
        return tape.gradient(loss, model.trainable_weights)

    hlo = step.experimental_get_compiler_ir(x)(stage="optimized_hlo")
    return len(re.findall(r"%ynn_fusion[.\d]* = ", hlo[hlo.index("ENTRY"):]))


def test_inside_xla_the_select_ending_backward_reaches_ynnpack():
    """What the XLA form is for: with it XLA:CPU hands the BatchNorm-backward
    channel sums over the spike gradient to YNNPACK; with the plain product
    it does not. If this fails after a TensorFlow upgrade, re-run
    ``benchmarks.train_step --backward plain,fused --modes xla``: the XLA
    form may no longer pay."""
    fused = _ynnpack_reduces()
    surrogates._TF_BACKWARD = None
    try:
        plain = _ynnpack_reduces()
    finally:
        surrogates._TF_BACKWARD = tf_fused_backward.backward
    assert fused > plain, (fused, plain)
