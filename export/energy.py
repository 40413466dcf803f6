"""Energy report of a single-step SNN (paper Appendix B, Eqs. B.1-B.4).

For every convolution and linear layer ``l`` of a model:

* **FLOPs(l)**, Eq. B.1::

      FLOPs(l) = k * W * H * C_in * C_out      (convolution)
      FLOPs(l) = C_in * C_out                  (linear)

  with ``k = k_h * k_w`` the kernel area and ``W x H`` the *output* feature
  map. Generalisations (each reduces to B.1 in the paper's case):
  a grouped convolution with ``g`` groups counts ``k W H (C_in/g) C_out``;
  a depthwise convolution ``k W H C_in m`` (``m`` the depth multiplier);
  a separable convolution its depthwise part plus its 1x1 pointwise part
  ``W H (C_in m) C_out``; a transposed convolution ``k W_in H_in C_in C_out``
  (every input pixel scatters a ``k C_out`` patch); 1-D/3-D convolutions use
  the product of all kernel and output spatial extents; a Dense applied to
  a tensor of rank > 2 counts ``C_in C_out`` once per position. A layer
  holding a ``kernel`` that matches none of these raises ``ValueError``
  rather than being left out.

* **R(l)**, Eq. B.2: the firing rate of the spikes that layer ``l``
  *receives*, ``E_data[#spikes / #neurons]`` measured on its input tensor
  over every example of the data (a spike is an output ``> 0``: 1 for the
  {0, 1} neurons, +1 for the {-1, +1} ``ste_b`` neuron, i.e. ``u >= u_th``).
  The source of each layer's input is resolved by walking the functional
  graph back (see :func:`resolve_inputs`):

  ============== ==========================================================
  input kind     what the layer receives
  ============== ==========================================================
  image          a model input (real-valued pixels)
  spikes         {0, 1} spikes: a neuron output, possibly through
                 Dropout / Reshape / Flatten / Permute / ZeroPadding /
                 Cropping / UpSampling, or MaxPooling / Concatenate of
                 spikes (then R is measured on the pooled/concatenated map)
  signed_spikes  {-1, +1} spikes (``ste_b``)
  pooled_spikes  an (global) average of spikes; its mean equals the
                 source neuron's rate, which is the R reported
  real           anything else (ReLU outputs, sums of spike maps, ...)
  ============== ==========================================================

* **E_Full**, Eq. B.3, and **E_Method**, Eq. B.4, per inference::

      E_Full   = E_MAC * sum_l FLOPs(l)
      E_Method = E_AC  * sum_l FLOPs(l) * R(l)

  and ``efficiency = E_Full / E_Method``.

Two accounting conventions (every report states which one it used):

``"default"``
  Only layers fed by binary {0, 1} spikes are event-driven accumulates:
  ``E_AC * FLOPs * R``. Every layer fed by real values (the image in the
  first layer, global-average-pooled spikes, ReLU outputs, sums) performs
  MACs at full rate: ``E_MAC * FLOPs``. A {-1, +1} input is never silent
  (a -1 must be subtracted), so it costs ``E_AC * FLOPs`` (rate 1).
``"paper"``
  Eq. B.4 literally: every layer costs ``E_AC * FLOPs(l) * R(l)``, with
  R the +1 rate for {-1, +1} spikes, the source neuron's rate for pooled
  spikes, and R = 1 for the image. Inputs that are neither spikes nor the
  image (a layer fed by a ReLU) are MACs at full rate.

In both conventions a network with no spiking neurons is the
full-precision network: every layer is a MAC at full rate and
``E_Full / E_Method = 1.00`` (the ReLU rows of the paper's Table 2).

Energy presets (``PRESETS``): per-operation energies from M. Horowitz,
"1.1 Computing's energy problem (and what we can do about it)", IEEE ISSCC
2014, pp. 10-14, doi:10.1109/ISSCC.2014.6757323 (45 nm, 0.9 V). A MAC is
one multiply plus one add of the same type; an AC one add. User values via
``e_mac_pj`` / ``e_ac_pj``.

The same report is computed from a TFLite model
(:func:`tflite_energy_report`), reading the spike tensors from the
interpreter's intermediate tensors.

Command line::

    python -m export.energy --model run/model.keras --dataset fashion_mnist \\
        --max_test_examples 1000 --output_dir run/energy [--tflite m.tflite]
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import math
import os
import re
import sys
from typing import List, Optional

import numpy as np

__all__ = [
    "PRESETS",
    "CONVENTIONS",
    "layer_flops",
    "resolve_inputs",
    "energy_report",
    "tflite_energy_report",
    "compare_rates",
    "write_energy_report",
    "format_table",
    "main",
]

HOROWITZ_2014 = (
    'M. Horowitz, "1.1 Computing\'s energy problem (and what we can do about it)", '
    "IEEE ISSCC 2014, pp. 10-14, doi:10.1109/ISSCC.2014.6757323 (45 nm, 0.9 V)"
)

# name -> (E_MAC pJ, E_AC pJ, description). MAC = mult + add, AC = add.
PRESETS = collections.OrderedDict(
    [
        ("45nm_fp32", (round(3.7 + 0.9, 6), 0.9,
                       "fp32: MAC = mult 3.7 + add 0.9 = 4.6 pJ, AC = add 0.9 pJ (the paper's values)")),
        ("45nm_fp16", (round(1.1 + 0.4, 6), 0.4,
                       "fp16: MAC = mult 1.1 + add 0.4 = 1.5 pJ, AC = add 0.4 pJ")),
        ("45nm_int32", (round(3.1 + 0.1, 6), 0.1,
                        "int32: MAC = mult 3.1 + add 0.1 = 3.2 pJ, AC = add 0.1 pJ")),
        ("45nm_int8", (round(0.2 + 0.03, 6), 0.03,
                       "int8: MAC = mult 0.2 + add 0.03 = 0.23 pJ, AC = add 0.03 pJ")),
        ("45nm_int8_acc32", (round(0.2 + 0.1, 6), 0.1,
                             "int8 weights, int32 accumulator: MAC = int8 mult 0.2 + int32 add 0.1 "
                             "= 0.3 pJ, AC = int32 add 0.1 pJ")),
    ]
)

CONVENTIONS = collections.OrderedDict(
    [
        ("default",
         "default: layers fed by {0,1} spikes cost E_AC*FLOPs*R (R = measured input firing rate); "
         "layers fed by real values (the image, pooled spikes, ReLU outputs, sums) cost "
         "E_MAC*FLOPs (MACs at full rate); {-1,+1} inputs cost E_AC*FLOPs (never silent)"),
        ("paper",
         "paper: Eq. B.4 literally, every layer costs E_AC*FLOPs*R; R = input +1-spike rate "
         "(source neuron rate for pooled spikes), R = 1 for the image; "
         "inputs from non-spiking layers cost E_MAC*FLOPs"),
    ]
)

#: Largest fraction of off-level values a TFLite tensor may hold and still
#: be read as spikes (see :func:`tflite_energy_report`).
NEAR_BINARY_TOLERANCE = 1e-3

SPIKE_KINDS = ("spikes", "signed_spikes", "pooled_spikes", "pooled_signed_spikes")


# --------------------------------------------------------------------------
# Graph helpers (Keras 3 functional models).
# --------------------------------------------------------------------------


def _keras():
    import keras

    return keras


def _flat_model(model):
    """The functional graph of ``model`` (a Sequential's inner Functional)."""
    keras = _keras()
    if isinstance(model, keras.Sequential):
        if not model.built or getattr(model, "_functional", None) is None:
            raise ValueError(f"Sequential model {model.name!r} is not built; build it with an input shape first")
        return model._functional
    if not hasattr(model, "_nodes") or not hasattr(model, "_operations"):
        raise ValueError(
            f"model {getattr(model, 'name', model)!r} is not a functional Keras model "
            "(subclassed models have no graph to read FLOPs from)"
        )
    return model


def _model_nodes(model):
    """``(layer, node)`` for every call of every operation of ``model``, in
    topological order (a shared layer appears once per call)."""
    keys = set(model._nodes)  # Keras 3 node keys: f"{id(op)}_ib-{node_index}"
    out = []
    for op in model._operations:
        for i, node in enumerate(op._inbound_nodes):
            if f"{id(op)}_ib-{i}" in keys:
                out.append((op, node))
    return out


def _is_neuron(layer):
    from s2nn_keras.layers import S2Activation

    return isinstance(layer, S2Activation) or bool(getattr(layer, "is_spiking_neuron", False))


def _shape(tensor):
    return tuple(tensor.shape)


def _prod(values):
    out = 1
    for v in values:
        if v is None:
            raise ValueError("unknown (None) spatial dimension")
        out *= int(v)
    return out


def _node_flops(layer, node):
    """FLOPs of one call of ``layer`` (Eq. B.1 and its generalisations).

    Returns ``[(row_suffix, type, flops, kind_override)]``: one entry, or two
    for a separable convolution (its pointwise part receives the real-valued
    depthwise output, ``kind_override = "real"``). ``None`` if ``layer`` does
    no multiply-accumulate work.
    """
    keras = _keras()
    L = keras.layers
    if not node.input_tensors or not node.output_tensors:
        return None
    in_shape = _shape(node.input_tensors[0])
    out_shape = _shape(node.output_tensors[0])
    name = type(layer).__name__
    try:
        if isinstance(layer, L.SeparableConv1D) or isinstance(layer, L.SeparableConv2D):
            k = _prod(layer.kernel_size)
            spatial = _prod(out_shape[1:-1])
            c_in = int(in_shape[-1]) if layer.data_format == "channels_last" else int(in_shape[1])
            if layer.data_format != "channels_last":
                spatial = _prod(out_shape[2:])
            m = int(layer.depth_multiplier)
            dw = k * spatial * c_in * m
            pw = spatial * c_in * m * int(layer.filters)
            return [(":depthwise", name + "(depthwise)", dw, None),
                    (":pointwise", name + "(pointwise)", pw, "real")]
        if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
            k = _prod(layer.kernel_size)
            if layer.data_format == "channels_last":
                spatial, c_in = _prod(out_shape[1:-1]), int(in_shape[-1])
            else:
                spatial, c_in = _prod(out_shape[2:]), int(in_shape[1])
            return [("", name, k * spatial * c_in * int(layer.depth_multiplier), None)]
        transpose_types = tuple(
            t for t in (getattr(L, "Conv1DTranspose", None), getattr(L, "Conv2DTranspose", None),
                        getattr(L, "Conv3DTranspose", None)) if t is not None
        )
        if isinstance(layer, transpose_types):
            k = _prod(layer.kernel_size)
            if layer.data_format == "channels_last":
                spatial_in, c_in = _prod(in_shape[1:-1]), int(in_shape[-1])
            else:
                spatial_in, c_in = _prod(in_shape[2:]), int(in_shape[1])
            groups = int(getattr(layer, "groups", 1) or 1)
            return [("", name, k * spatial_in * (c_in // groups) * int(layer.filters), None)]
        conv_types = (L.Conv1D, L.Conv2D, L.Conv3D)
        if isinstance(layer, conv_types):
            k = _prod(layer.kernel_size)
            if layer.data_format == "channels_last":
                spatial, c_in = _prod(out_shape[1:-1]), int(in_shape[-1])
            else:
                spatial, c_in = _prod(out_shape[2:]), int(in_shape[1])
            groups = int(getattr(layer, "groups", 1) or 1)
            return [("", name, k * spatial * (c_in // groups) * int(layer.filters), None)]
        if isinstance(layer, L.Dense):
            positions = _prod(in_shape[1:-1])
            return [("", name, positions * int(in_shape[-1]) * int(layer.units), None)]
    except ValueError as err:
        raise ValueError(f"layer {layer.name!r} ({name}): cannot count FLOPs: {err}") from None
    if _has_kernel(layer) and not isinstance(layer, keras.Model):
        raise ValueError(
            f"layer {layer.name!r} ({name}) has a kernel but no FLOPs rule (supported: Conv1D/2D/3D, "
            "grouped, depthwise, separable and transposed convolutions, Dense)"
        )
    return None


def _has_kernel(layer):
    try:
        return any(w.path.split("/")[-1] in ("kernel", "depthwise_kernel") for w in layer.weights)
    except Exception:  # pragma: no cover - exotic layers
        return False


def layer_flops(model) -> "collections.OrderedDict[str, int]":
    """FLOPs(l) of Eq. B.1 for every Conv/Dense call of a functional model.

    ``FLOPs = k_h k_w W H C_in C_out`` (conv, W x H the output map) and
    ``C_in C_out`` (Dense); grouped/depthwise/separable/transposed
    convolutions as in the module docstring. Projection shortcuts and the
    classifier are included. Nested models are expanded with names
    ``"outer/inner"``; a layer called several times is listed once per
    call (``name``, ``name#2``, ...). Separable convolutions count their
    depthwise and pointwise parts together.

    Raises:
      ValueError: not a functional model, unknown spatial size, or a layer
        with a kernel that has no FLOPs rule.
    """
    model = _flat_model(model)
    out = collections.OrderedDict()
    _collect_flops(model, "", out)
    return out


def _collect_flops(model, prefix, out):
    keras = _keras()
    calls = collections.Counter()
    for layer, node in _model_nodes(model):
        if isinstance(layer, keras.Model):
            _collect_flops(_flat_model(layer), prefix + layer.name + "/", out)
            continue
        entries = _node_flops(layer, node)
        if not entries:
            continue
        calls[layer.name] += 1
        key = prefix + layer.name + ("" if calls[layer.name] == 1 else f"#{calls[layer.name]}")
        out[key] = int(sum(e[2] for e in entries))


# --------------------------------------------------------------------------
# Source-of-spikes resolution (Keras).
# --------------------------------------------------------------------------


def _transparent_types():
    L = _keras().layers
    names = ["Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "Reshape",
             "Flatten", "Permute", "Identity", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
             "Cropping1D", "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D",
             "UpSampling3D", "RepeatVector"]
    return tuple(getattr(L, n) for n in names if hasattr(L, n))


def _maxpool_types():
    L = _keras().layers
    names = ["MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D",
             "GlobalMaxPooling2D", "GlobalMaxPooling3D"]
    return tuple(getattr(L, n) for n in names if hasattr(L, n))


def _avgpool_types():
    L = _keras().layers
    names = ["AveragePooling1D", "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
             "GlobalAveragePooling2D", "GlobalAveragePooling3D"]
    return tuple(getattr(L, n) for n in names if hasattr(L, n))


def _producer(tensor):
    hist = tensor._keras_history
    op = hist.operation
    node = op._inbound_nodes[hist.node_index]
    return op, node


def _resolve(tensor):
    """``(kind, rate_tensor, description)`` for a tensor feeding a Conv/Dense."""
    keras = _keras()
    L = keras.layers
    op, node = _producer(tensor)
    if isinstance(op, L.InputLayer):
        return "image", None, f"model input '{op.name}'"
    if _is_neuron(op):
        signed = float(getattr(op, "off_value", 0.0)) == -1.0
        return ("signed_spikes" if signed else "spikes"), tensor, f"neuron '{op.name}'"
    if isinstance(op, L.Activation) and getattr(op.activation, "__name__", "") == "linear":
        return _resolve(node.input_tensors[0])
    if isinstance(op, _transparent_types()):
        return _resolve(node.input_tensors[0])
    if isinstance(op, _avgpool_types()) and _prod(getattr(op, "pool_size", None) or (0,)) == 1:
        # A 1-element window only subsamples (e.g. PreActResNet's strided
        # shortcut): the output is still binary, R is measured on it.
        kind, _, desc = _resolve(node.input_tensors[0])
        if kind in ("spikes", "signed_spikes"):
            return kind, tensor, f"{desc} via subsampling {type(op).__name__} '{op.name}'"
        return _resolve(node.input_tensors[0]) if kind.startswith("pooled_") else (
            "real", None, f"output of {type(op).__name__} '{op.name}' of non-spikes")
    if isinstance(op, _maxpool_types()):
        kind, _, desc = _resolve(node.input_tensors[0])
        if kind in ("spikes", "signed_spikes"):
            return kind, tensor, f"{desc} via {type(op).__name__} '{op.name}'"
        return "real", None, f"output of {type(op).__name__} '{op.name}' of non-spikes"
    if isinstance(op, _avgpool_types()):
        kind, rate_tensor, desc = _resolve(node.input_tensors[0])
        if kind in ("spikes", "signed_spikes"):
            return "pooled_" + kind, rate_tensor, f"{desc} via {type(op).__name__} '{op.name}' (average)"
        if kind.startswith("pooled_"):
            return kind, rate_tensor, f"{desc} via {type(op).__name__} '{op.name}' (average)"
        return "real", None, f"output of {type(op).__name__} '{op.name}' of non-spikes"
    if isinstance(op, L.Concatenate):
        kinds = [_resolve(t)[0] for t in node.input_tensors]
        if len(set(kinds)) == 1 and kinds[0] in ("spikes", "signed_spikes"):
            return kinds[0], tensor, f"concatenated spikes '{op.name}'"
        return "real", None, f"output of Concatenate '{op.name}' (not all {{0,1}} spikes)"
    return "real", None, f"output of {type(op).__name__} '{op.name}' (real-valued)"


def resolve_inputs(model) -> List[dict]:
    """Per Conv/Dense row of ``model``: its FLOPs and the source of its input.

    Returns a list of dicts with ``name``, ``type``, ``flops``,
    ``input_kind`` (see the module docstring), ``input_source`` (words) and
    the private ``_rate_tensor`` (the KerasTensor whose ``> 0`` fraction is
    R(l), or ``None``).
    """
    keras = _keras()
    model = _flat_model(model)
    rows = []
    calls = collections.Counter()
    for layer, node in _model_nodes(model):
        if isinstance(layer, keras.Model):
            if layer_flops(layer):
                raise ValueError(
                    f"nested model {layer.name!r} contains Conv/Dense layers; the energy report needs a "
                    "flat functional model (call its layers directly in the outer model)"
                )
            continue
        entries = _node_flops(layer, node)
        if not entries:
            continue
        calls[layer.name] += 1
        base = layer.name + ("" if calls[layer.name] == 1 else f"#{calls[layer.name]}")
        kind, rate_tensor, desc = _resolve(node.input_tensors[0])
        for suffix, type_name, flops, override in entries:
            row = {"name": base + suffix, "type": type_name, "flops": int(flops),
                   "input_kind": kind, "input_source": desc, "_rate_tensor": rate_tensor}
            if override == "real":
                row.update(input_kind="real", input_source=f"depthwise output of '{layer.name}'",
                           _rate_tensor=None)
            rows.append(row)
    if not rows:
        raise ValueError(f"model {model.name!r} has no Conv or Dense layer to report on")
    return rows


# --------------------------------------------------------------------------
# Data and measurement.
# --------------------------------------------------------------------------


def _batches(data, batch_size=256):
    """Yields NumPy input batches from an array, a tf.data.Dataset or an
    iterable of ``x`` / ``(x, y[, w])`` batches."""
    if isinstance(data, np.ndarray):
        if data.ndim == 0 or len(data) == 0:
            raise ValueError("energy report got an empty data set")
        for start in range(0, len(data), batch_size):
            yield data[start:start + batch_size]
        return
    for batch in data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        yield np.asarray(x)


def _reusable(data, batch_size):
    """``data`` in a form that can be iterated more than once: arrays and
    ``tf.data.Dataset`` as they are, any other iterable as a list of
    NumPy batches (a generator would be exhausted by the first pass)."""
    if isinstance(data, np.ndarray):
        return data
    try:
        import tensorflow as tf

        if isinstance(data, tf.data.Dataset):
            return data
    except ImportError:  # pragma: no cover
        pass
    return list(_batches(data, batch_size))


def _measure_keras(model, rows, data, batch_size):
    """Fills ``firing_rate`` of every spike-fed row from Keras activations,
    in one pass over ``data``; returns ``(n_examples, neuron_rates)`` with
    ``neuron_rates = {neuron layer name: R}`` (Eq. B.2 for the neurons
    themselves, as :func:`s2nn_keras.firing.firing_rates` measures it)."""
    import tensorflow as tf

    keras = _keras()
    model = _flat_model(model)
    tensors, index = [], {}

    def add(t):
        if id(t) not in index:
            index[id(t)] = len(tensors)
            tensors.append(t)

    for row in rows:
        if row["_rate_tensor"] is not None:
            add(row["_rate_tensor"])
    neurons = []
    calls = collections.Counter()
    for layer, node in _model_nodes(model):
        if _is_neuron(layer):
            calls[layer.name] += 1
            out = node.output_tensors[0]
            neurons.append((layer.name + ("" if calls[layer.name] == 1 else f"#{calls[layer.name]}"), out))
            add(out)
    n_examples = 0
    fired = np.zeros(len(tensors), dtype=np.float64)
    total = np.zeros(len(tensors), dtype=np.float64)
    bad = np.zeros(len(tensors), dtype=np.float64)
    probe = keras.Model(model.inputs, tensors) if tensors else None

    @tf.function(reduce_retracing=True)
    def step(x):
        outs = probe(x, training=False)
        if not isinstance(outs, (list, tuple)):
            outs = [outs]
        f, t, b = [], [], []
        for out in outs:
            out = tf.cast(out, tf.float32)
            f.append(tf.reduce_sum(tf.cast(out > 0, tf.float64)))
            t.append(tf.cast(tf.size(out), tf.float64))
            binary = (tf.equal(out, 0.0) | tf.equal(out, 1.0) | tf.equal(out, -1.0))
            b.append(tf.reduce_sum(tf.cast(tf.logical_not(binary), tf.float64)))
        return tf.stack(f), tf.stack(t), tf.stack(b)

    for x in _batches(data, batch_size):
        n_examples += int(x.shape[0])
        if probe is not None:
            f, t, b = step(tf.convert_to_tensor(x, tf.float32))
            fired += f.numpy()
            total += t.numpy()
            bad += b.numpy()
    if n_examples == 0:
        raise ValueError("energy report got an empty data set")
    for row in rows:
        t = row.pop("_rate_tensor")
        if t is None:
            row["firing_rate"] = None
            continue
        i = index[id(t)]
        if bad[i]:
            raise ValueError(
                f"layer {row['name']!r} receives '{row['input_source']}', which is not binary "
                f"({int(bad[i])} values outside {{-1, 0, 1}})"
            )
        row["firing_rate"] = float(fired[i] / total[i])
    neuron_rates = collections.OrderedDict(
        (name, float(fired[index[id(t)]] / total[index[id(t)]])) for name, t in neurons)
    return n_examples, neuron_rates


# --------------------------------------------------------------------------
# Energy (Eqs. B.3, B.4).
# --------------------------------------------------------------------------


def _energies(preset, e_mac_pj, e_ac_pj):
    if (e_mac_pj is None) != (e_ac_pj is None):
        raise ValueError("give both e_mac_pj and e_ac_pj, or neither")
    if e_mac_pj is not None:
        for key, value in (("e_mac_pj", e_mac_pj), ("e_ac_pj", e_ac_pj)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive finite number, got {value!r}")
        return "custom", float(e_mac_pj), float(e_ac_pj), "user-supplied values"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    mac, ac, desc = PRESETS[preset]
    return preset, round(mac, 6), round(ac, 6), f"{desc}; {HOROWITZ_2014}"


def _charge(row, convention, spiking):
    """``(op, charged_rate)`` of one row under ``convention``."""
    kind = row["input_kind"]
    if not spiking:
        return "MAC", 1.0
    if convention == "default":
        if kind == "spikes":
            return "AC", row["firing_rate"]
        if kind == "signed_spikes":
            return "AC", 1.0
        return "MAC", 1.0
    # paper
    if kind in SPIKE_KINDS:
        return "AC", row["firing_rate"]
    if kind == "image":
        return "AC", 1.0
    return "MAC", 1.0


def _finish(rows, *, convention, preset, e_mac_pj, e_ac_pj, spiking, source, model_name,
            n_examples, extra_notes=()):
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    preset_name, mac, ac, preset_desc = _energies(preset, e_mac_pj, e_ac_pj)
    e_full = e_method = 0.0
    total_flops = 0
    for row in rows:
        op, rate = _charge(row, convention, spiking)
        row["op"] = op
        row["charged_rate"] = float(rate)
        row["energy_full_pj"] = mac * row["flops"]
        row["energy_pj"] = (mac if op == "MAC" else ac) * row["flops"] * rate
        e_full += row["energy_full_pj"]
        e_method += row["energy_pj"]
        total_flops += row["flops"]
    for row in rows:
        row["energy_share"] = row["energy_pj"] / e_method if e_method > 0 else 0.0
    notes = list(extra_notes)
    if not spiking:
        notes.append("no spiking neurons: the model is the full-precision network, every layer is a MAC "
                     "at full rate and E_Full/E_Method = 1.00")
    else:
        for row in rows:
            if row["op"] == "MAC":
                notes.append(f"{row['name']}: input is {row['input_kind']} ({row['input_source']}); "
                             "charged as MACs at full rate")
            elif row["input_kind"] == "image":
                notes.append(f"{row['name']}: input is the image; charged E_AC*FLOPs*1 (paper convention)")
            elif row["input_kind"] == "signed_spikes" and convention == "default":
                notes.append(f"{row['name']}: {{-1,+1}} input; charged as accumulates at rate 1")
    report = collections.OrderedDict(
        source=source,
        model=model_name,
        convention=convention,
        convention_description=CONVENTIONS[convention],
        preset=preset_name,
        preset_description=preset_desc,
        e_mac_pj=mac,
        e_ac_pj=ac,
        num_examples=int(n_examples),
        units="pJ per inference (one example); FLOPs per inference",
        layers=rows,
        total_flops=int(total_flops),
        e_full_pj=e_full,
        e_method_pj=e_method,
        efficiency=(e_full / e_method) if e_method > 0 else None,
        notes=notes,
    )
    if e_method == 0:
        report["notes"].append("E_Method = 0 (no layer received a spike): efficiency undefined (null)")
    return report


def energy_report(model, data, convention: str = "default", preset: str = "45nm_fp32", *,
                  e_mac_pj: Optional[float] = None, e_ac_pj: Optional[float] = None,
                  batch_size: int = 256) -> dict:
    """Appendix B energy report of a Keras model over ``data``.

    Args:
      model: a functional (or built Sequential) Keras model.
      data: float32 inputs as a NumPy array, a ``tf.data.Dataset`` or an
        iterable of ``x`` / ``(x, y[, w])`` batches.
      convention: ``"default"`` or ``"paper"`` (module docstring).
      preset: a key of :data:`PRESETS`; ignored when ``e_mac_pj`` and
        ``e_ac_pj`` are given.
      e_mac_pj, e_ac_pj: user energies per MAC / per accumulate in pJ.

    Returns:
      A dict with ``layers`` (per Conv/Dense: ``name``, ``type``, ``flops``
      (B.1), ``input_kind``, ``input_source``, ``firing_rate`` (B.2, the
      measured rate of the spikes it receives; ``None`` for real-valued
      inputs), ``op``, ``charged_rate``, ``energy_full_pj``, ``energy_pj``,
      ``energy_share``), ``total_flops``, ``e_full_pj`` (B.3),
      ``e_method_pj`` (B.4), ``efficiency`` (= E_Full / E_Method),
      ``neuron_firing_rates`` (R of every neuron layer, as in Fig. B.5), the
      convention, the energies and their citation, and ``notes``.
    """
    from s2nn_keras.firing import neuron_layers

    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    _energies(preset, e_mac_pj, e_ac_pj)
    if len(_flat_model(model).inputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(_flat_model(model).inputs)} inputs; "
                         "the energy report supports single-input models")
    data = _reusable(data, batch_size)
    rows = resolve_inputs(model)
    n, neuron_rates = _measure_keras(model, rows, data, batch_size)
    spiking = bool(neuron_layers(_flat_model(model)))
    report = _finish(rows, convention=convention, preset=preset, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                     spiking=spiking, source="keras", model_name=model.name, n_examples=n)
    report["neuron_firing_rates"] = dict(neuron_rates)
    return report


# --------------------------------------------------------------------------
# TFLite.
# --------------------------------------------------------------------------

_TFL_TRANSPARENT = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE", "PAD", "PADV2",
                    "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR"}
_TFL_AVERAGE = {"MEAN", "AVERAGE_POOL_2D"}
_TFL_MAX = {"MAX_POOL_2D"}
_TFL_COMPUTE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"}


def _interpreter(model_content):
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # pragma: no cover - fall back to TF's interpreter
        import tensorflow as tf

        Interpreter, OpResolverType = tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # No delegate: every intermediate tensor is computed by a builtin
        # kernel and preserved for reading.
        return Interpreter(model_content=model_content, experimental_preserve_all_tensors=True,
                           experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)


def _tflite_flops(op_name, shapes):
    """Eq. B.1 from TFLite tensor shapes (batch dimension excluded)."""
    inp, wt, out = shapes["input"], shapes["weights"], shapes["output"]
    if op_name == "CONV_2D":  # filter [O, kh, kw, I/g]
        o, kh, kw, i = wt
        return kh * kw * out[1] * out[2] * i * o
    if op_name == "CONV_3D":  # filter [kd, kh, kw, I, O]
        kd, kh, kw, i, o = wt
        return kd * kh * kw * int(np.prod(out[1:4])) * i * o
    if op_name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, C_out]
        _, kh, kw, o = wt
        return kh * kw * out[1] * out[2] * o
    if op_name == "TRANSPOSE_CONV":  # filter [O, kh, kw, I]
        o, kh, kw, i = wt
        return kh * kw * inp[1] * inp[2] * i * o
    if op_name == "FULLY_CONNECTED":  # weights [O, I]
        o, i = wt
        positions = int(np.prod(inp)) // (inp[0] * i) if len(inp) else 1
        return positions * i * o
    raise ValueError(f"no FLOPs rule for TFLite op {op_name}")


def _tflite_type(op_name):
    return {"CONV_2D": "Conv2D", "CONV_3D": "Conv3D", "DEPTHWISE_CONV_2D": "DepthwiseConv2D",
            "TRANSPOSE_CONV": "Conv2DTranspose", "FULLY_CONNECTED": "Dense"}[op_name]


def _tflite_graph(interp):
    ops = [op for op in interp._get_ops_details() if op["op_name"] != "DELEGATE"]
    details = {d["index"]: d for d in interp.get_tensor_details()}
    producer = {}
    for op in ops:
        for t in op["outputs"]:
            producer[int(t)] = op
    return ops, details, producer


def _tflite_rows(interp):
    ops, details, producer = _tflite_graph(interp)
    inputs = {d["index"] for d in interp.get_input_details()}
    rows = []
    for op in ops:
        if op["op_name"] not in _TFL_COMPUTE:
            if op["op_name"] in ("BATCH_MATMUL", "CONV_3D_TRANSPOSE"):
                raise ValueError(f"TFLite op {op['index']} ({op['op_name']}) has no FLOPs rule")
            continue
        if op["op_name"] == "TRANSPOSE_CONV":
            data_idx, w_idx = int(op["inputs"][2]), int(op["inputs"][1])
        else:
            data_idx, w_idx = int(op["inputs"][0]), int(op["inputs"][1])
        shapes = {"input": [int(v) for v in details[data_idx]["shape_signature"]],
                  "weights": [int(v) for v in details[w_idx]["shape"]],
                  "output": [int(v) for v in details[int(op["outputs"][0])]["shape_signature"]]}
        shapes["input"][0] = shapes["output"][0] = 1
        flops = _tflite_flops(op["op_name"], shapes)
        # Walk back through shape-only ops to the direct tensor, then on
        # through averages (MEAN, AVERAGE_POOL_2D) to the averaged source.
        # Which one holds the spikes is decided from their values.
        t, path = data_idx, []
        while t not in inputs and t in producer and producer[t]["op_name"] in _TFL_TRANSPARENT:
            path.append(producer[t]["op_name"])
            t = int(producer[t]["inputs"][0])
        direct, direct_path = t, list(path)
        averaged = False
        while t not in inputs and t in producer:
            p = producer[t]
            if p["op_name"] in _TFL_TRANSPARENT:
                t = int(p["inputs"][0])
            elif p["op_name"] in _TFL_AVERAGE:
                averaged = True
                t = int(p["inputs"][0])
            else:
                break
            path.append(p["op_name"])
        rows.append({
            "tflite_op": op["index"],
            "tflite_name": details[int(op["outputs"][0])]["name"],
            "type": _tflite_type(op["op_name"]),
            "flops": int(flops),
            "_direct": direct,
            "_direct_path": direct_path,
            "_source": t if averaged else None,
            "_path": path,
            "_is_input": direct in inputs,
        })
    if not rows:
        raise ValueError("TFLite model has no CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED op")
    return rows


def _layer_name_in(tensor_name, layer_name):
    return re.search(r"(^|/)" + re.escape(layer_name) + r"(_\d+)?(/|:|$)", tensor_name) is not None


def _match_keras(rows, keras_rows):
    """Names TFLite rows after Keras rows: by layer name inside the TFLite
    tensor name, then the remaining ones in order among equal (type, FLOPs)."""
    names = [None] * len(rows)
    used = set()
    for i, row in enumerate(rows):
        for j, krow in enumerate(keras_rows):
            base = krow["name"].split(":")[0].split("#")[0]
            if j not in used and krow["flops"] == row["flops"] and _layer_name_in(row["tflite_name"], base):
                names[i] = krow["name"]
                used.add(j)
                break
    for i, row in enumerate(rows):
        if names[i] is not None:
            continue
        for j, krow in enumerate(keras_rows):
            if j not in used and krow["flops"] == row["flops"]:
                names[i] = krow["name"]
                used.add(j)
                break
    return names


def _dequantize(value, detail):
    q = detail.get("quantization_parameters") or {}
    scales = q.get("scales")
    if value.dtype.kind in "iu" and scales is not None and len(scales):
        zp = np.asarray(q["zero_points"])
        scales = np.asarray(scales, dtype=np.float64)
        if scales.size == 1:
            return (value.astype(np.float64) - zp.reshape(())) * scales.reshape(())
        axis = q.get("quantized_dimension", 0)
        shape = [1] * value.ndim
        shape[axis] = scales.size
        return (value.astype(np.float64) - zp.reshape(shape)) * scales.reshape(shape)
    return value.astype(np.float64)


def tflite_energy_report(tflite_model, data, convention: str = "default", preset: str = "45nm_fp32", *,
                         e_mac_pj: Optional[float] = None, e_ac_pj: Optional[float] = None,
                         keras_model=None, batch_size: int = 64) -> dict:
    """The Appendix B report of a TFLite model, measured in the interpreter.

    FLOPs come from the weight and feature-map shapes of every CONV_2D,
    DEPTHWISE_CONV_2D, TRANSPOSE_CONV and FULLY_CONNECTED op. R(l) is read
    from the intermediate tensors (``experimental_preserve_all_tensors``,
    no delegate): the op's input is followed back through shape-only ops
    (RESHAPE, PAD, QUANTIZE, ...) and averages (MEAN, AVERAGE_POOL_2D) to
    its source tensor; that tensor, dequantized, is classified over the
    whole data as {0, 1} spikes, {-1, +1} spikes or real values, and R is
    the fraction of elements above the midpoint of the two levels (0.5 for
    {0, 1}, 0 for {-1, +1}). A value is on a level when it lies within one
    quantization step of it; a tensor counts as spikes when at most
    ``NEAR_BINARY_TOLERANCE`` (0.1 %) of its values are off the levels (the
    int16x8 ramp neuron can emit a few intermediate values); the row then
    records ``nonbinary_fraction`` and the report says so in ``notes``.
    With ``keras_model``, TFLite compute ops that match no Keras Conv/Dense
    (the int16x8 ramp neuron's per-channel DEPTHWISE_CONV_2D) are left out
    and listed in ``notes``.

    Args:
      tflite_model: the flatbuffer bytes or a path to a ``.tflite`` file.
      data: float32 inputs (quantized here when the model's input is
        integer), in the forms :func:`energy_report` accepts.
      keras_model: optional; names the rows after its Conv/Dense layers
        (by layer name in the TFLite tensor names, then by order among
        layers with the same FLOPs).

    Returns:
      The dict of :func:`energy_report` with ``source = "tflite"``,
      ``quantization`` (the input/activation dtype) and, per row,
      ``tflite_op`` and ``tflite_name``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    _energies(preset, e_mac_pj, e_ac_pj)
    if isinstance(tflite_model, (str, os.PathLike)):
        with open(tflite_model, "rb") as f:
            tflite_model = f.read()
    interp = _interpreter(tflite_model)
    rows = _tflite_rows(interp)
    inp = interp.get_input_details()[0]
    sources = sorted({r[k] for r in rows if not r["_is_input"] for k in ("_direct", "_source")
                      if r[k] is not None})
    details = {d["index"]: d for d in interp.get_tensor_details()}
    stats = {t: {"gt0": 0.0, "gt_half": 0.0, "total": 0.0, "neg": False, "nonbinary": 0.0} for t in sources}
    n_examples = 0
    resized_to = None
    static_batch = int(inp["shape_signature"][0]) if int(inp["shape_signature"][0]) > 0 else None
    if static_batch is None:
        chunks = (np.asarray(x, dtype=np.float32) for x in _batches(data, batch_size))
    else:
        # A static batch (the export's batch-1 models): feed that many at a time.
        chunks = (np.asarray(x[i:i + static_batch], dtype=np.float32)
                  for x in _batches(data, batch_size) for i in range(0, len(x), static_batch))
    for x in chunks:
        if static_batch is not None and x.shape[0] != static_batch:
            raise ValueError(f"TFLite model has a static batch of {static_batch}; the data size is not a multiple of it")
        if resized_to != x.shape[0]:
            if static_batch is None:
                interp.resize_tensor_input(inp["index"], [x.shape[0]] + list(x.shape[1:]))
            interp.allocate_tensors()
            resized_to = x.shape[0]
        feed = x
        if np.dtype(inp["dtype"]).kind in "iu":
            scale, zp = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            feed = np.clip(np.round(x / scale + zp), info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], feed)
        interp.invoke()
        n_examples += x.shape[0]
        for t in sources:
            detail = details[t]
            v = _dequantize(interp.get_tensor(t), detail)
            q = detail.get("quantization_parameters") or {}
            scales = q.get("scales")
            tol = 1e-6 if scales is None or not len(scales) else 1.01 * float(np.max(scales))
            s = stats[t]
            s["gt0"] += float(np.count_nonzero(v > 0))
            s["gt_half"] += float(np.count_nonzero(v > 0.5))
            s["total"] += float(v.size)
            s["neg"] = s["neg"] or bool(np.any(v < -0.5))
            near = (np.abs(v) <= tol) | (np.abs(v - 1) <= tol) | (np.abs(v + 1) <= tol)
            s["nonbinary"] += float(np.count_nonzero(~near))
    if n_examples == 0:
        raise ValueError("energy report got an empty data set")
    out_rows = []
    keras_rows = None
    if keras_model is not None:
        keras_rows = resolve_inputs(keras_model)
        for r in keras_rows:
            r.pop("_rate_tensor")
    names = _match_keras(rows, keras_rows) if keras_rows else [None] * len(rows)
    spiking = False
    notes = []

    def binary(t):
        # Exactly binary for float32 and int8 exports. A tensor with at most
        # NEAR_BINARY_TOLERANCE of its values off the two levels (the int16x8
        # ramp neuron can emit intermediate levels) still counts as spikes,
        # with the fraction recorded in the row and a note.
        return (t is not None and stats[t]["total"] > 0
                and stats[t]["nonbinary"] <= NEAR_BINARY_TOLERANCE * stats[t]["total"])

    def rate_of(t):
        s = stats[t]
        return (s["gt0"] if s["neg"] else s["gt_half"]) / s["total"], ("signed_spikes" if s["neg"] else "spikes")

    for row, name in zip(rows, names):
        direct, direct_path = row.pop("_direct"), row.pop("_direct_path")
        source, path = row.pop("_source"), row.pop("_path")
        is_input = row.pop("_is_input")
        if keras_rows and name is None:
            short = row["tflite_name"] if len(row["tflite_name"]) <= 60 else "..." + row["tflite_name"][-57:]
            notes.append(f"TFLite op {row['tflite_op']} ({row['type']} '{short}', {row['flops']:,} "
                         "FLOPs) has no Conv/Dense counterpart in the Keras model (e.g. the int16x8 ramp "
                         "neuron's per-channel affine); not counted")
            continue

        def via(p):
            return f" via {'/'.join(reversed(p))}" if p else ""

        if is_input:
            kind, rate, desc = "image", None, f"model input '{details[direct]['name']}'"
        elif binary(direct):
            rate, kind = rate_of(direct)
            desc = f"spike tensor '{details[direct]['name']}'{via(direct_path)}"
            spiking = True
        elif binary(source):
            rate, kind = rate_of(source)
            kind = "pooled_" + kind
            desc = f"spike tensor '{details[source]['name']}'{via(path)} (average)"
            spiking = True
        else:
            kind, rate, desc = "real", None, f"tensor '{details[direct]['name']}'{via(direct_path)} (real-valued)"
        new = collections.OrderedDict(name=name or row["tflite_name"], type=row["type"], flops=row["flops"],
                                      input_kind=kind, input_source=desc, firing_rate=rate,
                                      tflite_op=row["tflite_op"], tflite_name=row["tflite_name"])
        measured = direct if kind in ("spikes", "signed_spikes") else source if kind.startswith("pooled") else None
        if measured is not None and stats[measured]["nonbinary"]:
            frac = stats[measured]["nonbinary"] / stats[measured]["total"]
            new["nonbinary_fraction"] = frac
            notes.append(f"{new['name']}: {frac:.2e} of the values of '{details[measured]['name']}' are not on "
                         "the two spike levels; counted as spikes when above the midpoint")
        out_rows.append(new)
    if keras_rows is not None:
        from s2nn_keras.firing import neuron_layers

        order = {r["name"]: i for i, r in enumerate(keras_rows)}
        out_rows.sort(key=lambda r: order.get(r["name"], len(order)))

        spiking = bool(neuron_layers(_flat_model(keras_model)))
    report = _finish(out_rows, convention=convention, preset=preset, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                     spiking=spiking, source="tflite",
                     model_name=getattr(keras_model, "name", "tflite model"), n_examples=n_examples,
                     extra_notes=notes)
    report["quantization"] = _quantization_of(interp)
    return report


def _quantization_of(interp):
    ops, details, _ = _tflite_graph(interp)
    dtypes = set()
    for op in ops:
        if op["op_name"] in _TFL_COMPUTE:
            dtypes.add(np.dtype(details[int(op["inputs"][0] if op["op_name"] != "TRANSPOSE_CONV"
                                            else op["inputs"][2])]["dtype"]).name)
    if dtypes == {"float32"}:
        return "float32"
    if dtypes == {"int8"}:
        return "int8"
    if dtypes == {"int16"}:
        return "int16x8"
    return "+".join(sorted(dtypes))


def compare_rates(keras_report: dict, other_report: dict) -> dict:
    """Per-layer ``|R_keras - R_other|`` for the rows both reports measured.

    Returns ``{"max_abs_diff": float, "per_layer": {name: diff},
    "unmatched": [names]}``.
    """
    other = {r["name"]: r for r in other_report["layers"]}
    per_layer, unmatched = collections.OrderedDict(), []
    for row in keras_report["layers"]:
        o = other.get(row["name"])
        if o is None or (row["firing_rate"] is None) != (o["firing_rate"] is None):
            unmatched.append(row["name"])
            continue
        if row["firing_rate"] is not None:
            per_layer[row["name"]] = abs(row["firing_rate"] - o["firing_rate"])
    return {"max_abs_diff": max(per_layer.values()) if per_layer else 0.0, "per_layer": per_layer,
            "unmatched": unmatched}


# --------------------------------------------------------------------------
# Output.
# --------------------------------------------------------------------------


def _fmt_rate(r):
    return "-" if r is None else f"{r:.4f}"


def format_table(report: dict) -> str:
    """The report as a fixed-width text table."""
    head = ["layer", "type", "FLOPs", "input", "R(l)", "op", "E [pJ]", "share"]
    lines = []
    body = []
    for r in report["layers"]:
        body.append([r["name"], r["type"], f"{r['flops']:,}", r["input_kind"], _fmt_rate(r["firing_rate"]),
                     r["op"], f"{r['energy_pj']:.4g}", f"{100 * r['energy_share']:.1f}%"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % w if i in (0, 1, 3, 5) else "{:>%d}" % w for i, w in enumerate(widths))
    lines.append(f"energy report ({report['source']}, {report['model']}, {report['num_examples']} examples)")
    lines.append(f"convention: {report['convention_description']}")
    lines.append(f"energies: E_MAC = {report['e_mac_pj']:g} pJ, E_AC = {report['e_ac_pj']:g} pJ "
                 f"[{report['preset']}]")
    lines.append(fmt.format(*head))
    lines.append(fmt.format(*["-" * w for w in widths]))
    lines.extend(fmt.format(*b) for b in body)
    eff = report["efficiency"]
    lines.append(f"total FLOPs = {report['total_flops']:,}; E_Full = {report['e_full_pj']:.6g} pJ (B.3); "
                 f"E_Method = {report['e_method_pj']:.6g} pJ (B.4); E_Full/E_Method = "
                 + ("undefined" if eff is None else f"{eff:.2f}"))
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


_CSV_FIELDS = ["name", "type", "flops", "input_kind", "input_source", "firing_rate", "op", "charged_rate",
               "energy_full_pj", "energy_pj", "energy_share"]


def _write_csv(report, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(_CSV_FIELDS)
        for r in report["layers"]:
            w.writerow(["" if r[k] is None else r[k] for k in _CSV_FIELDS])


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_energy_report(model, data, output_dir, convention="default", preset="45nm_fp32", *,
                        e_mac_pj=None, e_ac_pj=None, tflite_models=None, folded_model=None,
                        batch_size=256, print_table=True, plot=True) -> dict:
    """Computes :func:`energy_report` and writes it to ``output_dir``.

    Files: ``energy_report.json`` (the report; with ``tflite_models`` also a
    ``tflite`` section holding each TFLite report and its per-layer rate
    difference from the Keras report), ``energy_layers.csv`` (one row per
    Conv/Dense), ``energy_report.png`` (Fig. B.5-style plot: R(l) per layer
    and each layer's share of E_Method). Prints the table unless
    ``print_table=False``.

    Args:
      tflite_models: optional ``{label: bytes or path}`` of exported TFLite
        models to report beside the Keras model (e.g. float32 and int8).
      folded_model: optional BN-folded Keras model the TFLite files were
        converted from (``export.fold_batchnorm(model)``); each TFLite
        section then also holds ``rate_difference_vs_folded_keras``. The
        fold moves the threshold comparison (Eq. 27), which can flip the
        rare neuron whose potential sits within float32 rounding of u_th,
        so the float32 TFLite rates match the folded model exactly and the
        unfolded one to about 1e-6.

    Returns:
      The report dict (as written to the JSON file).
    """
    data = _reusable(data, batch_size)
    report = energy_report(model, data, convention, preset, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                           batch_size=batch_size)
    if tflite_models:
        section = collections.OrderedDict()
        folded_report = None
        if folded_model is not None:
            folded_report = energy_report(folded_model, data, convention, preset, e_mac_pj=e_mac_pj,
                                          e_ac_pj=e_ac_pj, batch_size=batch_size)
        for label, content in tflite_models.items():
            rep = tflite_energy_report(content, data, convention, preset, e_mac_pj=e_mac_pj, e_ac_pj=e_ac_pj,
                                       keras_model=model)
            rep["rate_difference_vs_keras"] = compare_rates(report, rep)
            if folded_report is not None:
                rep["rate_difference_vs_folded_keras"] = compare_rates(folded_report, rep)
            section[label] = rep
        report["tflite"] = section
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "energy_report.json"), "w") as f:
        json.dump(_json_safe(report), f, indent=2)
    _write_csv(report, os.path.join(output_dir, "energy_layers.csv"))
    if plot:
        from export.energy_plot import plot_report

        plot_report(report, os.path.join(output_dir, "energy_report.png"))
    if print_table:
        print(format_table(report))
        for label, rep in (report.get("tflite") or {}).items():
            diff = rep["rate_difference_vs_keras"]["max_abs_diff"]
            eff = rep["efficiency"]
            line = (f"tflite {label} ({rep['quantization']}): E_Full/E_Method = "
                    + ("undefined" if eff is None else f"{eff:.2f}")
                    + f", max |R_keras - R_tflite| = {diff:.3g}")
            if "rate_difference_vs_folded_keras" in rep:
                line += f" (vs the folded Keras model: {rep['rate_difference_vs_folded_keras']['max_abs_diff']:.3g})"
            print(line)
    return report


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _parser():
    p = _Parser(prog="python -m export.energy",
                description="Appendix B energy report (FLOPs, firing rates, E_Full/E_Method).")
    p.add_argument("--model", required=True, help="a .keras model (or a .tflite file for a TFLite-only report)")
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, cifar10 or cifar100")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--max_test_examples", type=int, default=1000, help="test examples measured (0 = all)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--output_dir", default="energy_report")
    p.add_argument("--convention", default="default", choices=list(CONVENTIONS))
    p.add_argument("--preset", default="45nm_fp32", choices=list(PRESETS))
    p.add_argument("--e_mac_pj", type=float, default=None, help="user E_MAC in pJ (with --e_ac_pj)")
    p.add_argument("--e_ac_pj", type=float, default=None, help="user E_AC in pJ (with --e_mac_pj)")
    p.add_argument("--tflite", action="append", default=[], metavar="PATH",
                   help="exported TFLite model(s) to report beside the Keras model (repeatable)")
    p.add_argument("--folded_model", default=None, metavar="PATH",
                   help="the BN-folded .keras model the --tflite files came from (python -m export writes "
                        "model_folded.keras); adds the TFLite-vs-folded rate differences")
    return p


def _quiet_tf_import():
    """Imports TensorFlow/Keras with the C++ start-up logs silenced, so they
    do not bury the CLI's one-line messages."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainers.flags import import_tensorflow_quietly

    import_tensorflow_quietly()


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    prog = "python -m export.energy"
    _quiet_tf_import()
    try:
        if args.max_test_examples < 0:
            raise ValueError(f"--max_test_examples must be >= 0, got {args.max_test_examples}")
        if args.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
        _energies(args.preset, args.e_mac_pj, args.e_ac_pj)
        if args.folded_model and not args.tflite:
            raise ValueError("--folded_model is only used with --tflite")
        for path in [args.model] + args.tflite + ([args.folded_model] if args.folded_model else []):
            if not os.path.isfile(path):
                raise ValueError(f"no such file: {path}")
        import logging

        logging.getLogger("absl").setLevel(logging.ERROR)  # tfds warnings; errors are ours
        from trainers import data as data_lib

        images, _ = data_lib.load_arrays(args.dataset, "test", data_dir=args.data_dir,
                                         max_examples=args.max_test_examples or None)
        x = data_lib.to_float(images)
        if args.model.endswith(".tflite"):
            report = tflite_energy_report(args.model, x, args.convention, args.preset,
                                          e_mac_pj=args.e_mac_pj, e_ac_pj=args.e_ac_pj)
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "energy_report.json"), "w") as f:
                json.dump(_json_safe(report), f, indent=2)
            _write_csv(report, os.path.join(args.output_dir, "energy_layers.csv"))
            from export.energy_plot import plot_report

            plot_report(report, os.path.join(args.output_dir, "energy_report.png"))
            print(format_table(report))
        else:
            import keras

            import s2nn_keras  # noqa: F401  (registers S2Activation)
            import s2nn_keras.regularizers  # noqa: F401
            try:
                import export.neurons  # noqa: F401  (registers the folded neuron)
            except ImportError:
                pass
            def load(path):
                try:
                    return keras.saving.load_model(path, compile=False)
                except Exception as err:
                    raise ValueError(f"cannot load {path}: "
                                     f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None

            model = load(args.model)
            folded = load(args.folded_model) if args.folded_model else None
            expected = tuple(model.inputs[0].shape[1:])
            if tuple(x.shape[1:]) != expected:
                raise ValueError(f"model {args.model} expects inputs {expected}, dataset {args.dataset} "
                                 f"has {tuple(x.shape[1:])}")
            tfl = {os.path.splitext(os.path.basename(p))[0]: p for p in args.tflite}
            write_energy_report(model, x, args.output_dir, args.convention, args.preset,
                                e_mac_pj=args.e_mac_pj, e_ac_pj=args.e_ac_pj, tflite_models=tfl or None,
                                folded_model=folded, batch_size=args.batch_size)
        print(f"wrote {os.path.join(args.output_dir, 'energy_report.json')}, energy_layers.csv, "
              "energy_report.png")
    except (ValueError, OSError, RuntimeError) as err:
        sys.stderr.write(f"{prog}: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
