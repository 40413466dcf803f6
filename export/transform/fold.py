"""BatchNormalization folding for single-step spiking networks (paper §4.3).

At inference a BatchNormalization layer is the per-channel affine map

    BN(u)_c = g_c * u_c + b_c,
    g_c = gamma_c / sqrt(moving_var_c + eps),   b_c = beta_c - g_c * moving_mean_c.

:func:`fold_batchnorm` removes every BN from a functional Keras model:

1. **BN right after a Conv/Dense** (the conv's only consumer, linear
   activation): ``BN(W * x + c) = (g * W) * x + (g * c + b)`` -- the kernel's
   output channel ``c`` is scaled by ``g_c`` and the bias becomes
   ``g_c * c_c + b_c``. This holds for any sign of ``g_c`` (``g_c = 0`` gives
   a zero kernel and a constant output ``b_c``).

2. **BN right before a spiking neuron with no linear op before it** (the
   pre-activation BN after each residual Add): Eq. 27,

       g_c u_c + b_c >= u_th  <=>  u_c >= (u_th - b_c) / g_c   (g_c > 0)
                              <=>  u_c <= (u_th - b_c) / g_c   (g_c < 0)
                              <=>  b_c >= u_th, a constant     (g_c = 0),

   so the BN and the neuron become one :class:`~export.transform.neurons.ThresholdNeuron`
   with a per-channel threshold and polarity.

3. **A neuron right after a Conv/Dense** (after step 1, or a conv with a
   bias): fire iff ``W * x + c >= u_th`` iff ``W * x + (c - u_th) >= 0``, so
   ``u_th`` moves into the bias and the neuron compares with 0. The result is
   the same function, and a comparison with 0 stays exact after integer
   quantization (0 is always exactly representable), which is what keeps the
   int8 model close to the float one (docs/EXPORT.md).

A ``SeparableConv1D``/``2D`` is first written as what it computes, a
depthwise conv (``<name>_depthwise``, no bias) and a 1x1 conv (``<name>``,
with the bias): :func:`split_separable_convs`, so a BN after it folds into
the 1x1 conv and spikes it reads reach a depthwise kernel. A transposed
conv (``Conv1DTranspose``/``2D``/``3D``, kernel ``[..., out, in]``) is a
kernel layer like the others (:func:`is_kernel`): a BN after it folds into
its output channels.

Every other BN placement (a custom layer between BN and neuron, a BN whose
output feeds two layers and that cannot be merged into a conv, a BN feeding
a ReLU, a shared layer, ...) raises :class:`FoldError` naming the layer:
the fold never returns a silently different model.

The graph is read and rebuilt with the project's one layer-graph walker,
:class:`s2nn_keras.graph.LayerGraph` (public ``get_config`` structure),
with fresh layers; neurons are recognised with
:func:`s2nn_keras.layers.is_spiking_neuron`. No private Keras API is used.
"""

from __future__ import annotations

from typing import Tuple

import keras
import numpy as np

from export.errors import InputError
from export.transform.clone import call_clone, clone_config
from export.transform.neurons import ThresholdNeuron
from s2nn_keras import layer_roles
from s2nn_keras.graph import GraphError, LayerGraph
from s2nn_keras.layers import is_spiking_neuron

__all__ = ["FoldError", "fold_batchnorm", "fold_batchnorm_with_report", "bn_affine", "fold_linear",
           "TRANSPOSED_KERNEL_LAYERS", "SEPARABLE_LAYERS", "is_kernel", "is_transposed", "split_separable_convs"]

#: Transposed convolutions: kernel layers whose kernel is ``[..., out, in]``.
TRANSPOSED_KERNEL_LAYERS = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
#: Separable convolutions, written as a depthwise and a 1x1 conv (:func:`split_separable_convs`).
SEPARABLE_LAYERS = {"SeparableConv1D": ("DepthwiseConv1D", "Conv1D"), "SeparableConv2D": ("DepthwiseConv2D", "Conv2D")}


def is_transposed(class_name: str) -> bool:
    """A transposed conv (:data:`TRANSPOSED_KERNEL_LAYERS`)."""
    return class_name in TRANSPOSED_KERNEL_LAYERS


def is_kernel(class_name: str) -> bool:
    """A layer ``y = W x + b`` the export folds a BN into and whose kernel
    absorbs a factor of its input: :func:`s2nn_keras.layer_roles.is_kernel`
    (Conv, DepthwiseConv, Dense) or a transposed conv."""
    return layer_roles.is_kernel(class_name) or is_transposed(class_name)


def split_separable_convs(model: keras.Model) -> keras.Model:
    """``model`` with every ``SeparableConv1D``/``2D`` written as the two
    layers it computes: a ``DepthwiseConv`` named ``<name>_depthwise`` (its
    depthwise kernel, strides, padding, dilation, no bias) and a 1x1
    ``Conv`` named ``<name>`` (its pointwise kernel, bias and activation).
    The same function (up to float rounding); ``model`` itself when it has
    no separable conv. Raises :class:`FoldError` for a separable conv that
    is called more than once."""
    try:
        graph = LayerGraph(model)
    except GraphError as err:
        raise FoldError(f"the export needs a layer graph: {err}") from None
    names = {n.name for n in graph.nodes}
    if not any(n.class_name in SEPARABLE_LAYERS for n in graph.nodes if not n.is_input):
        return model

    def call(node, args, kwargs):
        if node.class_name not in SEPARABLE_LAYERS:
            return call_clone(node.layer, args, kwargs, dtype=None)
        if len(graph.calls(node.name)) > 1:
            raise FoldError(f"layer {node.name!r} ({node.class_name}) is called {len(graph.calls(node.name))} "
                            "times; the export needs one call per layer")
        config, (dw_class, pw_class) = node.layer.get_config(), SEPARABLE_LAYERS[node.class_name]
        dw_name = f"{node.name}_depthwise"
        while dw_name in names:
            dw_name += "_"
        common = {k: config[k] for k in ("data_format", "dtype") if k in config}
        dw = getattr(keras.layers, dw_class)(
            kernel_size=config["kernel_size"], strides=config["strides"], padding=config["padding"],
            depth_multiplier=config["depth_multiplier"], dilation_rate=config["dilation_rate"], use_bias=False,
            name=dw_name, **common)
        pw = getattr(keras.layers, pw_class)(config["filters"], 1, use_bias=config["use_bias"],
                                             activation=config["activation"], name=node.name, **common)
        out = pw(dw(*args, **kwargs))
        weights = node.layer.get_weights()     # depthwise kernel, pointwise kernel[, bias]
        dw.set_weights(weights[:1])
        pw.set_weights(weights[1:])
        return out

    return graph.replay(call).model(name=model.name)


class FoldError(InputError, ValueError):
    """A BatchNormalization pattern that cannot be folded exactly."""


def bn_affine(bn: keras.layers.Layer) -> Tuple[np.ndarray, np.ndarray]:
    """Effective inference scale and shift ``(g, b)`` of a BatchNormalization,
    in float64: ``g = gamma / sqrt(var + eps)``, ``b = beta - g * mean``."""
    mean = np.asarray(bn.moving_mean, dtype=np.float64)
    var = np.asarray(bn.moving_variance, dtype=np.float64)
    gamma = np.asarray(bn.gamma, dtype=np.float64) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta, dtype=np.float64) if bn.center else np.zeros_like(mean)
    g = gamma / np.sqrt(var + float(bn.epsilon))
    return g, beta - g * mean


def _is_neuron(node):
    """An unfolded spiking neuron (S2Activation or any ``is_spiking_neuron``
    layer with a ``threshold``; an already folded ThresholdNeuron is not)."""
    return (not node.is_input and is_spiking_neuron(node.layer)
            and not isinstance(node.layer, ThresholdNeuron))


class _Graph:
    """The fold's view of a :class:`LayerGraph`: one call per layer."""

    def __init__(self, model):
        if not isinstance(model, keras.Model):
            raise FoldError(f"fold_batchnorm needs a keras.Model, got {type(model).__name__}")
        try:
            self.graph = LayerGraph(model)
        except GraphError as err:
            raise FoldError(f"fold_batchnorm needs a layer graph: {err}") from None
        self.model = model
        for node in self.graph.nodes:
            if not node.is_input and len(self.graph.calls(node.name)) > 1:
                raise FoldError(
                    f"layer {node.name!r} ({node.class_name}) is called {len(self.graph.calls(node.name))} "
                    "times; fold_batchnorm does not handle shared layers")
        self.nodes = [n for n in self.graph.nodes if not n.is_input]
        self.cls = {n.name: n.class_name for n in self.graph.nodes}

    def node(self, name):
        return self.graph.calls(name)[0]

    def layer(self, name):
        return self.graph.layer(name)

    def consumers(self, name):
        """Names of the layers reading ``name``, plus ``"<model output>"`` per output use."""
        node = self.node(name)
        return [c.name for c in self.graph.consumers(node)] + ["<model output>"] * self.graph.output_uses(node)

    def single_input(self, name):
        refs = self.node(name).inputs
        if len(refs) != 1:
            raise FoldError(f"layer {name!r} ({self.cls[name]}) must have exactly one input, has {len(refs)}")
        return refs[0].layer

    def describe(self, name):
        return f"{name!r} ({self.cls.get(name, 'model output')})" if name != "<model output>" else "the model output"


def _linear_foldable(graph, name):
    """True if layer ``name`` is a Conv/Dense with a linear activation whose
    output is consumed by exactly one layer."""
    if not is_kernel(graph.cls.get(name, "")):
        return False
    layer = graph.layer(name)
    act = getattr(layer, "activation", None)
    if act is not None and getattr(act, "__name__", "linear") != "linear":
        return False
    return len(graph.consumers(name)) == 1


def _plan(graph, threshold_in_bias=True):
    """Decides, for every BN and neuron, how it is folded (or raises)."""
    bn_mode = {}
    for node in graph.nodes:
        name = node.name
        if node.class_name != "BatchNormalization":
            continue
        bn = graph.layer(name)
        axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
        rank = len(graph.graph.shape(node.inputs[0]))
        if axis is None or axis not in (-1, rank - 1):
            raise FoldError(f"BatchNormalization {name!r} normalizes axis {bn.axis}; only the last (channel) axis can be folded")
        src = graph.single_input(name)
        consumers = graph.consumers(name)
        if _linear_foldable(graph, src):
            bn_mode[name] = ("linear", src)
        elif len(consumers) == 1 and consumers[0] != "<model output>" and _is_neuron(graph.node(consumers[0])):
            bn_mode[name] = ("threshold", consumers[0])
        elif len(consumers) != 1:
            raise FoldError(
                f"cannot fold BatchNormalization {name!r}: its output feeds "
                f"{len(consumers)} consumers ({', '.join(graph.describe(c) for c in consumers)}) and its input "
                f"{graph.describe(src)} is not a Conv/Dense used only by it")
        else:
            raise FoldError(
                f"cannot fold BatchNormalization {name!r}: it feeds {graph.describe(consumers[0])}, "
                f"not a spiking neuron, and its input {graph.describe(src)} is not a Conv/Dense used only by it")
    neuron_mode = {}
    for node in graph.nodes:
        if not _is_neuron(node):
            continue
        name = node.name
        for attr in ("threshold", "off_value"):
            if not hasattr(node.layer, attr):
                raise FoldError(f"spiking neuron {name!r} ({node.class_name}) has no {attr!r}; cannot fold it")
        src = graph.single_input(name)
        if bn_mode.get(src, (None,))[0] == "threshold":
            neuron_mode[name] = ("bn", src)
            continue
        # Conv/Dense (optionally followed by a BN folded into it) -> neuron,
        # each the only consumer of the previous one: u_th moves into the bias.
        linear = bn_mode[src][1] if bn_mode.get(src, (None,))[0] == "linear" else src
        chain_ok = (threshold_in_bias and _linear_foldable(graph, linear)
                    and len(graph.consumers(src)) == 1)
        neuron_mode[name] = ("bias", linear) if chain_ok else ("plain", None)
    return bn_mode, neuron_mode


def _neuron_params(layer):
    # A float, or a learned per-channel threshold (S2Activation(learnable=("threshold",))).
    th = np.asarray(keras.ops.convert_to_numpy(layer.threshold), dtype=np.float64)
    return (float(th) if th.ndim == 0 else th), float(layer.off_value), getattr(layer, "surrogate", None)


def fold_linear(layer, g=None, b=None, shift=0.0):
    """Returns (config, kernel, bias) of ``layer`` with BN (g, b) and a
    threshold shift folded in: out' = g*(W x + c) + b - shift (the config
    float32 and with a bias: :func:`export.transform.clone.clone_config`)."""
    weights = layer.get_weights()
    kernel = np.asarray(weights[0], dtype=np.float64)
    depthwise = layer_roles.is_depthwise(type(layer).__name__)
    transposed = is_transposed(type(layer).__name__)
    out_ch = kernel.shape[-2] if transposed else kernel.shape[-1] * (kernel.shape[-2] if depthwise else 1)
    bias = np.asarray(weights[1], dtype=np.float64) if layer.use_bias else np.zeros(out_ch)
    if g is not None:
        if depthwise:
            # kernel [..., in, mult]; output channel = in_index * mult + m.
            kernel = kernel * g.reshape(kernel.shape[-2], kernel.shape[-1])
        elif transposed:  # kernel [..., out, in]
            kernel = kernel * g[:, None]
        else:
            kernel = kernel * g
        bias = g * bias + b
    bias = bias - shift
    return clone_config(layer, use_bias=True), kernel.astype(np.float32), bias.astype(np.float32)


def fold_batchnorm_with_report(model: keras.Model, formulation: str = "compare",
                               threshold_in_bias: bool = True):
    """Like :func:`fold_batchnorm` and also returns a report dict: per BN how
    it was folded, and per neuron its threshold source and the number of
    channels with positive, negative and zero BN scale."""
    graph = _Graph(split_separable_convs(model) if isinstance(model, keras.Model) else model)
    bn_mode, neuron_mode = _plan(graph, threshold_in_bias)
    report = {"batchnorm": {}, "neurons": {}}
    pending_linear = {}  # linear layer name -> (g, b, shift) to apply

    # Pre-compute what goes into each linear layer.
    for bn_name, (mode, target) in bn_mode.items():
        if mode == "linear":
            g, b = bn_affine(graph.layer(bn_name))
            pending_linear[target] = [g, b, 0.0]
            report["batchnorm"][bn_name] = {"folded_into": target, "kind": "conv_kernel_and_bias"}
        else:
            report["batchnorm"][bn_name] = {"folded_into": target, "kind": "firing_threshold"}
    for n_name, (mode, target) in neuron_mode.items():
        if mode == "bias":
            th, _, _ = _neuron_params(graph.layer(n_name))
            entry = pending_linear.setdefault(target, [None, None, 0.0])
            entry[2] = th

    def call(node, args, kwargs):
        name, cls, layer = node.name, node.class_name, node.layer
        if cls == "BatchNormalization":
            return args[0]  # folded away: pass the input through
        if _is_neuron(node):
            th, off, surrogate = _neuron_params(layer)
            mode, src = neuron_mode[name]
            channels = int(args[0].shape[-1])
            if mode == "bn":
                g, b = bn_affine(graph.layer(src))
                pol = np.sign(g).astype(np.int64)
                with np.errstate(divide="ignore", invalid="ignore"):
                    theta = np.where(pol != 0, (th - b) / np.where(g == 0, 1.0, g), 0.0)
                theta = np.where(pol == 0, np.where(b >= th, 1.0, 0.0), theta)
                new = ThresholdNeuron(theta, pol, off_value=off, formulation=formulation,
                                      surrogate=surrogate, name=name, dtype="float32")
                report["neurons"][name] = {
                    "threshold_from": f"batchnorm {src}",
                    "channels": channels,
                    "positive_scale": int(np.sum(pol > 0)),
                    "negative_scale": int(np.sum(pol < 0)),
                    "zero_scale": int(np.sum(pol == 0)),
                    "zero_scale_always_fires": int(np.sum((pol == 0) & (theta == 1.0))),
                }
            else:
                value = 0.0 if mode == "bias" else th
                new = ThresholdNeuron(np.full(channels, value), 1, off_value=off,
                                      formulation=formulation, surrogate=surrogate, name=name, dtype="float32")
                report["neurons"][name] = {
                    "threshold_from": f"bias of {src}" if mode == "bias" else "u_th",
                    "channels": channels, "positive_scale": channels,
                    "negative_scale": 0, "zero_scale": 0, "zero_scale_always_fires": 0,
                }
            return new(*args, **kwargs)
        if name in pending_linear:
            g, b, shift = pending_linear[name]
            config, kernel, bias = fold_linear(layer, g, b, shift)
            return call_clone(layer, args, kwargs, [kernel, bias], config=config)
        return call_clone(layer, args, kwargs)

    folded = graph.graph.replay(call).model(name=model.name)  # short tensor names in TFLite
    left = [l.name for l in folded.layers if isinstance(l, keras.layers.BatchNormalization)]
    if left:  # defensive: the plan above must have removed every BN
        raise FoldError(f"BatchNormalization layers left after folding: {left}")
    return folded, report


def fold_batchnorm(model: keras.Model, formulation: str = "compare",
                   threshold_in_bias: bool = True) -> keras.Model:
    """Returns an inference model equal to ``model`` (in inference mode) with
    no BatchNormalization layer.

    BNs after a Conv/Dense fold into its kernel and bias; BNs before a
    spiking neuron become per-channel firing thresholds (Eq. 27, any sign
    of the BN scale); neuron thresholds after a Conv/Dense move into its
    bias. Every :class:`s2nn_keras.S2Activation` becomes a
    :class:`~export.transform.neurons.ThresholdNeuron` (same layer name) in the given
    ``formulation`` (``"compare"`` or ``"ramp"``). Layers are rebuilt in
    float32.

    ``threshold_in_bias=False`` keeps ``u_th`` in the neuron after a
    Conv/Dense instead of moving it into the bias (same float function;
    only for measuring what the move buys under int8 quantization).

    Raises:
      FoldError: a BN that cannot be folded exactly, naming the layer.
    """
    return fold_batchnorm_with_report(model, formulation, threshold_in_bias)[0]
