"""s2nn_keras.graph: the one layer-graph walker (public Keras API only)."""

import keras
import numpy as np
import pytest

from s2nn_keras.graph import GraphError, LayerGraph, TensorRef

L = keras.layers


def _nested_shared_model():
    inner_in = keras.Input((4,), name="ii")
    inner = keras.Model(inner_in, L.Dense(4, name="d_in")(inner_in), name="inner")
    inp = keras.Input((4,), name="x")
    shared = L.Dense(4, name="shared")
    h1 = shared(inp)
    h2 = shared(h1)
    a = inner(h2)
    b = inner(a)  # nested model called twice; its output is also a model output
    s = keras.ops.add(b, h1)  # a Keras op in the graph
    out = L.Dense(2, name="head")(L.Dropout(0.5, name="drop")(s))
    return keras.Model(inp, [out, b], name="outer")


def test_nodes_producers_consumers_and_shapes():
    model = _nested_shared_model()
    g = LayerGraph(model)
    keys = [n.key for n in g.nodes]
    assert keys[0] == "x" and g.nodes[0].is_input
    assert keys.index("shared") < keys.index("shared#2") < keys.index("inner") < keys.index("inner#2")
    assert [n.call for n in g.calls("shared")] == [0, 1]
    assert g.layer("shared") is model.get_layer("shared")
    second = g.node("shared", 1)
    assert second.inputs == (TensorRef("shared", 0, 0),)
    assert g.producer(second.inputs[0]) is g.node("shared", 0)
    # shared call 0 feeds shared call 1 and the add op
    assert [n.class_name for n in g.consumers(TensorRef("shared", 0, 0))] == ["Dense", "Add"]
    assert {n.class_name for n in g.consumers("shared")} == {"Dense", "Functional", "Add"}
    add = next(n for n in g.nodes if n.class_name == "Add")  # keras.ops.add, auto-named
    assert add.layer is not None
    assert add.inputs == (TensorRef("inner", 1, 0), TensorRef("shared", 0, 0))
    # outputs: the nested model's 2nd call is reached through the config's 1-based index
    assert g.output_refs == [TensorRef("head", 0, 0), TensorRef("inner", 1, 0)]
    assert g.output_uses(g.node("inner", 1)) == 1 and g.output_uses("shared") == 0
    assert g.fanout(g.node("inner", 1)) == 2  # the add and the model output
    assert g.shape(TensorRef("x", 0, 0)) == (None, 4)
    assert g.shape(TensorRef("head", 0, 0)) == (None, 2)
    assert g.dtype(TensorRef("shared", 1, 0)) == "float32"
    with pytest.raises(GraphError, match="no layer 'nope'"):
        g.calls("nope")
    with pytest.raises(GraphError, match="no call 5"):
        g.node("shared", 5)


def test_replay_is_the_same_function_and_reaches_shared_calls():
    model = _nested_shared_model()
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    g = LayerGraph(model)
    replay = g.replay()
    rebuilt = replay.model()
    for got, want in zip(rebuilt.predict_on_batch(x), model.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # weights are shared with the original layers
    assert rebuilt.get_layer("shared") is model.get_layer("shared")
    # the 2nd call of the shared layer, which layer.output cannot reach
    probe = keras.Model(replay.inputs[0], replay.tensor(TensorRef("shared", 1, 0)))
    w, b = model.get_layer("shared").get_weights()
    np.testing.assert_allclose(probe.predict_on_batch(x), (x @ w + b) @ w + b, rtol=1e-5, atol=1e-6)
    node = g.node("shared", 1)
    assert replay.node_inputs(node)[0] is replay.tensor(TensorRef("shared", 0, 0))


def test_replay_hook_removes_and_replaces_layers():
    model = _nested_shared_model()
    g = LayerGraph(model)
    seen = []

    def call(node, args, kwargs):
        seen.append(node.key)
        if node.class_name == "Dropout":
            return args[0]
        if node.name == "head":
            fresh = L.Dense(2, name="head", kernel_initializer="zeros", bias_initializer="ones")
            return fresh(*args, **kwargs)
        return node.layer(*args, **kwargs)

    new = g.replay(call).model(name="edited")
    assert "drop" not in [l.name for l in new.layers] and new.name == "edited"
    assert seen == [n.key for n in g.nodes if not n.is_input]
    out = new.predict_on_batch(np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(out[0], np.ones((2, 2), np.float32))


def test_expand_nested_inlines_inner_layers():
    model = _nested_shared_model()
    g = LayerGraph(model, expand_nested=True)
    keys = [n.key for n in g.nodes]
    assert "inner" not in keys and "inner/d_in" in keys and "inner#2/d_in" in keys
    assert g.layer("inner/d_in") is model.get_layer("inner").get_layer("d_in")
    assert g.node("inner#2/d_in").inputs == (TensorRef("inner/d_in", 0, 0),)
    assert g.output_refs[1] == TensorRef("inner#2/d_in", 0, 0)
    add = next(n for n in g.nodes if n.class_name == "Add")
    assert add.inputs[0] == TensorRef("inner#2/d_in", 0, 0)
    assert g.shape(TensorRef("inner/d_in", 0, 0)) == (None, 4)
    x = np.random.default_rng(1).normal(size=(2, 4)).astype("float32")
    for got, want in zip(g.replay().model().predict_on_batch(x), model.predict_on_batch(x)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_sequential_multi_input_and_dict_outputs():
    seq = keras.Sequential([keras.Input((5,)), L.Dense(3, name="a"), L.ReLU(name="r"), L.Dense(2, name="b")])
    g = LayerGraph(seq)
    assert [n.class_name for n in g.nodes] == ["InputLayer", "Dense", "ReLU", "Dense"]
    assert g.producer(g.node("b").inputs[0]).name == "r"
    assert g.shape(TensorRef("r", 0, 0)) == (None, 3)  # not in a Sequential config: from a replay
    x = np.ones((2, 5), np.float32)
    np.testing.assert_allclose(g.replay().model().predict_on_batch(x), seq.predict_on_batch(x), rtol=1e-6)
    with pytest.raises(GraphError, match="not built"):
        LayerGraph(keras.Sequential([L.Dense(2)]))

    a, b = keras.Input((3,), name="a_in"), keras.Input((2,), name="b_in")
    cat = L.Concatenate(name="cat")([a, b])
    m = keras.Model([a, b], {"z": L.Dense(1, name="z")(cat), "c": cat})
    g = LayerGraph(m)
    assert g.input_refs == [TensorRef("a_in", 0, 0), TensorRef("b_in", 0, 0)]
    assert g.output_refs == [TensorRef("cat", 0, 0), TensorRef("z", 0, 0)]  # sorted keys, as model.outputs
    assert [n.name for n in g.input_nodes] == ["a_in", "b_in"]
    assert g.node("cat").args == ([TensorRef("a_in", 0, 0), TensorRef("b_in", 0, 0)],)
    xs = [np.ones((1, 3), np.float32), np.ones((1, 2), np.float32)]
    got = g.replay().model().predict_on_batch(xs)
    want = m.predict_on_batch(xs)
    np.testing.assert_allclose(got[1], want["z"], rtol=1e-6)


def test_nested_sequential_is_expanded():
    seq = keras.Sequential([keras.Input((3,)), L.Dense(2, name="sd")], name="seq")
    inp = keras.Input((3,), name="x")
    model = keras.Model(inp, L.Dense(1, name="top")(seq(inp)))
    g = LayerGraph(model, expand_nested=True)
    assert [n.key for n in g.nodes] == ["x", "seq/sd", "top"]
    assert g.node("top").inputs == (TensorRef("seq/sd", 0, 0),)


def test_not_a_graph():
    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(GraphError, match="subclassed"):
        LayerGraph(Sub())
    with pytest.raises(GraphError, match="keras.Model"):
        LayerGraph(L.Dense(2))


def test_builder_model_replays_exactly():
    from s2nn_keras.models import PreActResNet

    keras.utils.set_random_seed(0)
    model = PreActResNet([1, 1], (8, 8, 1), 3, width=4)
    g = LayerGraph(model)
    assert all(n.layer is not None for n in g.nodes)
    add = next(n for n in g.nodes if n.class_name == "Add")
    assert len(add.inputs) == 2
    x = np.random.default_rng(0).random((2, 8, 8, 1), dtype=np.float32)
    np.testing.assert_array_equal(g.replay().model().predict_on_batch(x), model.predict_on_batch(x))
