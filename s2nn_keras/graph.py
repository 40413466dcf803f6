"""The layer graph of a functional or Sequential Keras model, on public API.

One walker for every module that needs a model's wiring (energy
accounting, firing-rate probes, BatchNorm folding): it reads the public
``model.get_config()`` structure (each layer's ``inbound_nodes`` whose
arguments hold ``keras_history`` references ``[layer, call, output]``),
maps names to the live layer objects with ``model.operations`` /
``model.layers``, and can *replay* the graph on fresh symbolic inputs,
calling the original layers (or replacements chosen by a hook), which gives
the KerasTensor of every call -- also for layers called several times, which
the public ``layer.output`` does not reach. No private Keras attribute is
read.

Vocabulary:

* a :class:`Node` is one call of one layer (or Keras op) of the model; a
  layer called twice has two nodes, ``call`` 0 and 1, keyed ``name`` and
  ``name#2``; model inputs are nodes with ``is_input``;
* a :class:`TensorRef` ``(layer, call, index)`` names output ``index`` of
  call ``call`` of layer ``layer``;
* with ``expand_nested=True`` a nested functional/Sequential model is
  replaced by its own nodes, named ``"<outer call key>/<inner name>"``.

Example::

    graph = LayerGraph(model)
    for node in graph.nodes:                       # topological order
        print(node.key, node.class_name, [graph.shape(r) for r in node.inputs])
    bn = graph.calls("bn")[0]
    graph.producer(bn.inputs[0]).name              # the layer feeding the BN
    [c.name for c in graph.consumers(bn)]          # the layers reading it
    graph.output_uses(bn)                          # how many model outputs it is

    # Rebuild with a hook: drop every Dropout, keep everything else.
    def call(node, args, kwargs):
        if node.class_name == "Dropout":
            return args[0]
        return node.layer(*args, **kwargs)
    new_model = graph.replay(call).model(name="no_dropout")

    # Probe any intermediate tensor, also of a shared layer's 2nd call:
    replay = graph.replay()
    probe = keras.Model(replay.inputs, replay.tensor(TensorRef("shared", 1, 0)))
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import keras

__all__ = ["GraphError", "TensorRef", "Node", "LayerGraph", "Replay"]


class GraphError(ValueError):
    """The model has no readable layer graph (subclassed model, unbuilt
    Sequential, a layer without ``get_config``, ...)."""


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """Output ``index`` of call ``call`` (0-based, counting only the calls
    that belong to the model) of the layer named ``layer``."""

    layer: str
    call: int
    index: int


@dataclasses.dataclass(frozen=True, eq=False)
class Node:
    """One call of one layer of the model.

    Attributes:
      name: the layer's name (``"outer/inner"`` inside an expanded nested model).
      layer: the live layer (or Keras ``Operation``) object; ``None`` for the
        input of a Sequential model.
      class_name: the serialized class name (``"Conv2D"``, ``"InputLayer"``,
        ``"Add"`` for ``keras.ops.add``, ...).
      call: which call of the layer this is (0-based).
      key: ``name`` for the first call, ``name#2``, ``name#3``, ... after.
      args, kwargs: the call's positional arguments (a tuple) and keyword
        arguments as serialized by Keras, with every tensor replaced by its
        :class:`TensorRef` (``kwargs`` without a ``mask=None``).
      inputs: every :class:`TensorRef` of ``args`` then ``kwargs``, in order.
      input_spec: for model inputs, ``{"batch_shape", "dtype", "sparse",
        "name"}``; ``None`` otherwise.
    """

    name: str
    layer: Any
    class_name: str
    call: int
    key: str
    args: Any
    kwargs: Dict[str, Any]
    inputs: Tuple[TensorRef, ...]
    input_spec: Optional[Dict[str, Any]] = None

    @property
    def is_input(self) -> bool:
        return self.input_spec is not None

    def output(self, index: int = 0) -> TensorRef:
        """The :class:`TensorRef` of output ``index`` of this call."""
        return TensorRef(self.name, self.call, index)

    def __repr__(self):
        return f"Node({self.key!r}, {self.class_name})"


def _call_key(name, call):
    return name if call == 0 else f"{name}#{call + 1}"


def _is_tensor_config(obj):
    return isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__"


def _is_ref_triple(obj):
    return (isinstance(obj, (list, tuple)) and len(obj) == 3 and isinstance(obj[0], str)
            and isinstance(obj[1], int) and isinstance(obj[2], int))


def _flatten_refs(structure) -> List[list]:
    """``[name, call, index]`` triples of a config's ``input_layers`` /
    ``output_layers`` (a triple, a list or a dict of them) in Keras' flat
    order (dict keys sorted, as ``keras.tree.flatten``)."""
    if _is_ref_triple(structure):
        return [list(structure)]
    if isinstance(structure, dict):
        return [r for k in sorted(structure) for r in _flatten_refs(structure[k])]
    if isinstance(structure, (list, tuple)):
        return [r for item in structure for r in _flatten_refs(item)]
    raise GraphError(f"unreadable model input/output reference {structure!r}")


def _parse(obj, shapes):
    """Serialized call arguments -> the same structure with TensorRef leaves;
    records the shape/dtype each tensor config carries."""
    if _is_tensor_config(obj):
        cfg = obj["config"]
        name, call, index = cfg["keras_history"]
        ref = TensorRef(name, int(call), int(index))
        if "shape" in cfg:
            shapes.setdefault(ref, (tuple(cfg["shape"]), cfg.get("dtype")))
        return ref
    if isinstance(obj, dict):
        if obj.get("class_name") == "__tuple__" and "value" in (obj.get("config") or {}):
            return tuple(_parse(v, shapes) for v in obj["config"]["value"])
        if "class_name" in obj and "config" in obj:  # any other serialized object
            return keras.saving.deserialize_keras_object(obj)
        return {k: _parse(v, shapes) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_parse(v, shapes) for v in obj)
    return obj


def _refs_in(obj) -> List[TensorRef]:
    if isinstance(obj, TensorRef):
        return [obj]
    if isinstance(obj, dict):
        return [r for v in obj.values() for r in _refs_in(v)]
    if isinstance(obj, (list, tuple)):
        return [r for v in obj for r in _refs_in(v)]
    return []


def _substitute(obj, lookup):
    """``obj`` (nested dicts, lists, tuples) with every TensorRef ``r`` replaced by ``lookup(r)``."""
    if isinstance(obj, TensorRef):
        return lookup(obj)
    if isinstance(obj, dict):
        return {k: _substitute(v, lookup) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_substitute(v, lookup) for v in obj)
    return obj


def _model_name(model):
    return getattr(model, "name", type(model).__name__)


class LayerGraph:
    """Producer/consumer view of a functional or built Sequential model.

    Args:
      model: a functional ``keras.Model`` or a built ``keras.Sequential``.
      expand_nested: replace every call of a nested functional/Sequential
        model by its own nodes (names ``"<call key>/<inner name>"``), so the
        graph holds only leaf layers.

    Raises:
      GraphError: a subclassed model, an unbuilt Sequential, or a layer
        whose ``get_config`` is not implemented (the message names it).

    Attributes:
      model: the model.
      nodes: every :class:`Node`, inputs included, in topological order.
      input_refs, output_refs: the model's inputs and outputs as
        :class:`TensorRef` lists, in ``model.inputs`` / ``model.outputs``
        order (a dict output structure is flattened with sorted keys).
    """

    def __init__(self, model, *, expand_nested: bool = False):
        if not isinstance(model, keras.Model):
            raise GraphError(f"expected a keras.Model, got {type(model).__name__}")
        try:
            config = model.get_config()
        except NotImplementedError as err:
            raise GraphError(f"model {_model_name(model)!r} cannot be read: get_config() is not implemented "
                             f"({str(err).splitlines()[0] if str(err) else 'a layer has no get_config'})") from None
        self.model = model
        self._shapes: Dict[TensorRef, Tuple[tuple, Any]] = {}
        if isinstance(model, keras.Sequential):
            nodes, inputs, outputs = self._read_sequential(model, config)
        elif isinstance(config, dict) and "layers" in config and "input_layers" in config:
            nodes, inputs, outputs = self._read_functional(model, config)
        else:
            raise GraphError(
                f"model {_model_name(model)!r} ({type(model).__name__}) is not a functional or Sequential "
                "Keras model: a subclassed model has no layer graph to read")
        if expand_nested:
            nodes, inputs, outputs = self._expand(nodes, inputs, outputs)
        self.input_refs: List[TensorRef] = inputs
        self.output_refs: List[TensorRef] = outputs
        self.nodes: List[Node] = self._toposort(nodes)
        self._by_key = {(n.name, n.call): n for n in self.nodes}
        self._by_name: Dict[str, List[Node]] = collections.defaultdict(list)
        for n in self.nodes:
            self._by_name[n.name].append(n)
        for calls in self._by_name.values():
            calls.sort(key=lambda n: n.call)
        self._consumers: Dict[TensorRef, List[Node]] = collections.defaultdict(list)
        for n in self.nodes:
            for ref in dict.fromkeys(n.inputs):
                self._consumers[ref].append(n)
        for ref in self.input_refs + self.output_refs:
            if (ref.layer, ref.call) not in self._by_key:
                raise GraphError(f"model {_model_name(model)!r}: reference {ref} names no layer call")
        for i, ref in enumerate(self.output_refs):
            if ref not in self._shapes and i < len(model.outputs):
                t = model.outputs[i]
                self._shapes[ref] = (tuple(t.shape), t.dtype)

    # ------------------------------------------------------------------ read

    def _read_functional(self, model, config):
        objects = {}
        for op in list(getattr(model, "operations", [])) + list(model.layers):
            objects.setdefault(op.name, op)
        nodes = []
        offset = {}  # nested functional models count their own internal node first
        for lc in config["layers"]:
            name, cls = lc["name"], lc["class_name"]
            layer = objects.get(name)
            inner = lc.get("config") if isinstance(lc.get("config"), dict) else {}
            offset[name] = 1 if "input_layers" in inner else 0
            if cls == "InputLayer":
                cfg = lc["config"]
                spec = {"batch_shape": tuple(cfg.get("batch_shape") or cfg.get("batch_input_shape")),
                        "dtype": cfg.get("dtype", "float32"), "sparse": bool(cfg.get("sparse", False)),
                        "name": name}
                ref = TensorRef(name, 0, 0)
                self._shapes[ref] = (spec["batch_shape"], spec["dtype"])
                nodes.append(Node(name, layer, cls, 0, name, (), {}, (), spec))
                continue
            for call, data in enumerate(lc.get("inbound_nodes") or []):
                if isinstance(data, list):
                    raise GraphError(f"layer {name!r}: legacy (Keras 2) node format is not supported")
                args = tuple(_parse(data.get("args", []), self._shapes))
                kwargs = _parse(data.get("kwargs", {}), self._shapes)
                kwargs = {k: v for k, v in kwargs.items() if not (k == "mask" and v is None)}
                refs = tuple(_refs_in(args) + _refs_in(kwargs))
                nodes.append(Node(name, layer, cls, call, _call_key(name, call), args, kwargs, refs))

        def top(triple):
            name, call, index = triple
            return TensorRef(name, int(call) - offset.get(name, 0), int(index))

        inputs = [top(t) for t in _flatten_refs(config["input_layers"])]
        outputs = [top(t) for t in _flatten_refs(config["output_layers"])]
        return nodes, inputs, outputs

    def _read_sequential(self, model, config):
        layer_configs = list(config.get("layers") or [])
        if not model.built or not layer_configs or layer_configs[0].get("class_name") != "InputLayer":
            raise GraphError(f"Sequential model {_model_name(model)!r} is not built; give it a keras.Input "
                             "or call model.build(input_shape) first")
        cfg = layer_configs[0]["config"]
        in_name = cfg.get("name", "input")
        spec = {"batch_shape": tuple(cfg.get("batch_shape") or cfg.get("batch_input_shape")),
                "dtype": cfg.get("dtype", "float32"), "sparse": bool(cfg.get("sparse", False)), "name": in_name}
        prev = TensorRef(in_name, 0, 0)
        self._shapes[prev] = (spec["batch_shape"], spec["dtype"])
        nodes = [Node(in_name, None, "InputLayer", 0, in_name, (), {}, (), spec)]
        layers = list(model.layers)
        if len(layers) != len(layer_configs) - 1:
            raise GraphError(f"Sequential model {_model_name(model)!r}: {len(layers)} layers but "
                             f"{len(layer_configs) - 1} layer configs")
        for layer, lc in zip(layers, layer_configs[1:]):
            nodes.append(Node(layer.name, layer, lc["class_name"], 0, layer.name, (prev,), {}, (prev,)))
            prev = TensorRef(layer.name, 0, 0)
        for t, ref in zip(model.outputs, [prev]):
            self._shapes[ref] = (tuple(t.shape), t.dtype)
        # Intermediate shapes of a Sequential are not in its config: take
        # them from a symbolic replay (cheap, and only for Sequential).
        return nodes, [TensorRef(in_name, 0, 0)], [prev]

    def _expand(self, nodes, inputs, outputs):
        """Inlines nested functional/Sequential models (recursively)."""
        replace: Dict[TensorRef, TensorRef] = {}
        out_nodes: List[Node] = []
        for node in nodes:
            if node.is_input or not isinstance(node.layer, keras.Model):
                out_nodes.append(node)
                continue
            inner = LayerGraph(node.layer, expand_nested=True)
            prefix = node.key + "/"
            if len(inner.input_refs) != len(node.inputs):
                raise GraphError(f"nested model {node.name!r} takes {len(inner.input_refs)} inputs, "
                                 f"called with {len(node.inputs)}")
            inner_inputs = dict(zip(inner.input_refs, node.inputs))

            def rename(ref, prefix=prefix, inner_inputs=inner_inputs):
                if ref in inner_inputs:
                    return inner_inputs[ref]
                return TensorRef(prefix + ref.layer, ref.call, ref.index)

            for inode in inner.nodes:
                if inode.is_input:
                    continue
                out_nodes.append(dataclasses.replace(
                    inode, name=prefix + inode.name, key=prefix + inode.key,
                    args=_substitute(inode.args, rename), kwargs=_substitute(inode.kwargs, rename),
                    inputs=tuple(rename(r) for r in inode.inputs)))
            for ref, value in inner._shapes.items():
                if ref not in inner_inputs:
                    self._shapes.setdefault(rename(ref), value)
            for i, ref in enumerate(inner.output_refs):
                replace[TensorRef(node.name, node.call, i)] = rename(ref)

        def resolve(ref):
            seen = 0
            while ref in replace:  # a nested model's output may be another nested model's output
                ref = replace[ref]
                seen += 1
                if seen > 10_000:  # pragma: no cover - defensive
                    raise GraphError("cyclic nested-model references")
            return ref

        final = []
        for node in out_nodes:
            if node.is_input:
                final.append(node)
                continue
            final.append(dataclasses.replace(node, args=_substitute(node.args, resolve),
                                             kwargs=_substitute(node.kwargs, resolve),
                                             inputs=tuple(resolve(r) for r in node.inputs)))
        for ref, value in list(self._shapes.items()):
            if ref in replace:
                self._shapes.setdefault(resolve(ref), value)
        return final, [resolve(r) for r in inputs], [resolve(r) for r in outputs]

    @staticmethod
    def _toposort(nodes):
        produced_by = {(n.name, n.call): n for n in nodes}
        pending = {id(n): {(r.layer, r.call) for r in n.inputs} for n in nodes}
        for n in nodes:
            for key in pending[id(n)]:
                if key not in produced_by:
                    raise GraphError(f"layer call {n.key!r} reads {key[0]!r} call {key[1]}, which is not in the model")
        done, order = set(), []
        remaining = list(nodes)
        while remaining:
            progressed, rest = False, []
            for n in remaining:
                if pending[id(n)] <= done:
                    order.append(n)
                    done.add((n.name, n.call))
                    progressed = True
                else:
                    rest.append(n)
            if not progressed:
                raise GraphError(f"the layer graph has a cycle at {rest[0].key!r}")
            remaining = rest
        return order

    # ----------------------------------------------------------------- query

    def node(self, name: str, call: int = 0) -> Node:
        """The node of call ``call`` of layer ``name``."""
        try:
            return self._by_key[(name, call)]
        except KeyError:
            raise GraphError(f"no call {call} of layer {name!r} in model {_model_name(self.model)!r}") from None

    def calls(self, name: str) -> List[Node]:
        """Every call of layer ``name`` (one node for an unshared layer)."""
        if name not in self._by_name:
            raise GraphError(f"no layer {name!r} in model {_model_name(self.model)!r}")
        return list(self._by_name[name])

    def layer(self, name: str):
        """The live layer object named ``name``."""
        return self.calls(name)[0].layer

    @property
    def input_nodes(self) -> List[Node]:
        return [self.producer(r) for r in self.input_refs]

    def producer(self, ref: TensorRef) -> Node:
        """The node whose output ``ref`` is."""
        return self.node(ref.layer, ref.call)

    def _refs_of(self, what) -> List[TensorRef]:
        if isinstance(what, TensorRef):
            return [what]
        nodes = [what] if isinstance(what, Node) else self.calls(what)
        return [r for r in list(self._consumers) + self.output_refs
                if any(r.layer == n.name and r.call == n.call for n in nodes)]

    def consumers(self, what: Union[TensorRef, Node, str]) -> List[Node]:
        """The nodes reading ``what``: one tensor (:class:`TensorRef`), any
        output of one node, or any output of any call of a layer (by name).
        Each consumer node appears once, in topological order."""
        refs = set(self._refs_of(what))
        return [n for n in self.nodes if any(r in refs for r in n.inputs)]

    def output_uses(self, what: Union[TensorRef, Node, str]) -> int:
        """How many of the model's outputs are ``what`` (same forms as
        :meth:`consumers`)."""
        refs = set(self._refs_of(what))
        return sum(1 for r in self.output_refs if r in refs)

    def fanout(self, what: Union[TensorRef, Node, str]) -> int:
        """``len(consumers(what)) + output_uses(what)``."""
        return len(self.consumers(what)) + self.output_uses(what)

    def shape(self, ref: TensorRef) -> tuple:
        """Static shape of a tensor (batch dimension first, ``None`` where
        unknown), read from the config; raises :class:`GraphError` when no
        consumer or model output records it (use :meth:`replay` then)."""
        if ref not in self._shapes:
            self._fill_shapes()
        try:
            return self._shapes[ref][0]
        except KeyError:
            raise GraphError(f"shape of {ref} is not recorded in the model config") from None

    def dtype(self, ref: TensorRef):
        """Dtype name of a tensor (as :meth:`shape`)."""
        self.shape(ref)
        return self._shapes[ref][1]

    def _fill_shapes(self):
        if getattr(self, "_filled", False):
            return
        self._filled = True
        replay = self.replay()
        for n in self.nodes:
            for i, t in enumerate(replay.node_outputs(n)):
                self._shapes.setdefault(TensorRef(n.name, n.call, i), (tuple(t.shape), t.dtype))

    # ---------------------------------------------------------------- replay

    def replay(self, call: Optional[Callable[[Node, Any, Dict[str, Any]], Any]] = None, *,
               inputs: Optional[Sequence[Any]] = None) -> "Replay":
        """Re-runs the graph symbolically on fresh ``keras.Input`` tensors.

        Args:
          call: optional hook ``call(node, args, kwargs) -> outputs`` for
            every non-input node, with ``args``/``kwargs`` already holding the
            replayed KerasTensors; return the node's output (tensor, list or
            dict -- flattened as ``keras.tree.flatten``). Default:
            ``node.layer(*args, **kwargs)`` (the original layer objects, so the
            replay shares their weights). Return ``args[0]`` to remove a layer,
            call a fresh layer to replace it.
          inputs: optional KerasTensors to use as the model inputs (in
            ``input_refs`` order) instead of new ``keras.Input`` tensors.

        Returns:
          A :class:`Replay`.
        """
        if inputs is not None and len(inputs) != len(self.input_refs):
            raise GraphError(f"replay got {len(inputs)} inputs; the model has {len(self.input_refs)}")
        given = dict(zip(self.input_refs, inputs)) if inputs is not None else {}
        outputs: Dict[Tuple[str, int], List[Any]] = {}

        def lookup(ref):
            try:
                return outputs[(ref.layer, ref.call)][ref.index]
            except (KeyError, IndexError):
                raise GraphError(f"replay: {ref} is not available") from None

        for node in self.nodes:
            if node.is_input:
                ref = TensorRef(node.name, node.call, 0)
                if ref in given:
                    tensor = given[ref]
                else:
                    spec = node.input_spec
                    tensor = keras.Input(batch_shape=spec["batch_shape"], dtype=spec["dtype"],
                                         sparse=spec["sparse"], name=spec["name"])
                outputs[(node.name, node.call)] = [tensor]
                continue
            args = _substitute(node.args, lookup)
            kwargs = _substitute(node.kwargs, lookup)
            out = call(node, args, kwargs) if call is not None else node.layer(*args, **kwargs)
            outputs[(node.name, node.call)] = list(keras.tree.flatten(out))
        return Replay(self, outputs, lookup)


class Replay:
    """The KerasTensors of one :meth:`LayerGraph.replay`.

    Attributes:
      inputs: the input KerasTensors (``graph.input_refs`` order).
      outputs: the output KerasTensors (``graph.output_refs`` order).
    """

    def __init__(self, graph: LayerGraph, outputs, lookup):
        self.graph = graph
        self._outputs = outputs
        self._lookup = lookup
        self.inputs = [lookup(r) for r in graph.input_refs]
        self.outputs = [lookup(r) for r in graph.output_refs]

    def tensor(self, ref: TensorRef):
        """The replayed KerasTensor of ``ref``."""
        return self._lookup(ref)

    def node_outputs(self, node: Node) -> List[Any]:
        """The replayed outputs of ``node`` (flat list)."""
        return list(self._outputs[(node.name, node.call)])

    def node_inputs(self, node: Node) -> List[Any]:
        """The replayed tensors of ``node.inputs``."""
        return [self.tensor(r) for r in node.inputs]

    def model(self, outputs: Optional[Iterable[Any]] = None, name: Optional[str] = None) -> keras.Model:
        """A ``keras.Model`` from the replayed inputs to ``outputs`` (default:
        the replayed model outputs); a single input/output is passed bare."""
        outs = list(self.outputs if outputs is None else outputs)
        ins = self.inputs
        kwargs = {"name": name} if name else {}
        return keras.Model(ins[0] if len(ins) == 1 else ins, outs[0] if len(outs) == 1 else outs, **kwargs)
