"""Quantization-aware fine-tuning: the Keras model *is* the int8 model.

Post-training int8 quantization of a trained S2NN cannot keep 99 % of its
predictions: the float network is chaotic (relative weight noise of 1e-4
already changes ~1-5 % of them; docs/EXPORT.md, "Why"), and the int8 model
rounds every weight and every non-spike activation. Quantization-aware
training (QAT) removes the gap by construction: a Keras model that rounds
exactly where the deployed int8 model rounds, onto exactly the grids the
export will use, is fine-tuned briefly from the trained float model with
the surrogate gradient, straight through the rounding (STE). The int8
export of that model then computes the same function up to the requantizer
arithmetic (fixed-point vs float rounding of a few values that land within
~1e-5 of a rounding boundary).

What the QAT model simulates (``quantization_aware_model``):

* **weights**: every Conv1D/2D/3D, DepthwiseConv1D/2D and Dense kernel is
  rounded to the per-output-channel symmetric int8 grid (scale
  ``max|W_c| / 127``, round half away from zero) in the forward pass
  (:mod:`export.transform.layers`' ``QAT*`` layers); the backward pass is the
  identity (STE). The export's per-channel factors are positive (BN scale
  ``|g_c|``, neuron gain ``G_c``, the scale plan's factors of
  :func:`export.transform.edge.scale_plan`) or signs, and symmetric per-channel
  rounding commutes with them: quantizing ``W`` gives the integers the
  converter writes for the folded kernel. :func:`inference_model` stores
  ``q(W)`` itself, so the converter's own rounding is lossless.
* **activations**: every tensor the int8 model stores in int8 that is not
  a spike map -- the model input, the output of every Conv/Depthwise/Dense
  whose result is not fused into a neuron (:func:`export.transform.edge.neuron_kinds`:
  the stem, the second conv of each block, the shortcuts, the logits, a
  layer whose neuron is written as its own op), every merge (the residual
  ``Add``) and every average (pooling) -- goes through an
  :class:`ActivationQuantizer`: ``x -> (clip(round(x / s) + z, -128, 127) -
  z) s`` (TensorFlow's ``fake_quant_with_min_max_vars``, gradient 1 inside
  the range, 0 outside) on a fixed per-tensor grid ``(s, z)``.
  :func:`inference_model` turns each into an :class:`export.transform.edge.GridQuantize`,
  whose range the TFLite converter takes as the tensor's quantization
  instead of calibrating it, so the int8 model rounds onto the same grids.
* **neurons** stay as trained (``S2Activation``, surrogate gradient), with
  the BatchNormalization before them frozen in inference mode (moving
  statistics, ``gamma``/``beta`` fixed: the folded thresholds of Eq. 27 do
  not move). The int8 neuron is the exact decision on these quantized
  inputs (a conv neuron on the int8-weight lattice, a depthwise neuron on
  its input grid; docs/EXPORT.md), so nothing about it needs simulating.
  Conv kernels followed by a BN that folds into them are quantized before
  the BN, which is the same integers (per-channel rounding commutes with
  the BN scale).

Not simulated (each a sub-step effect): the int32 rounding of the Dense
bias (``<= 0.5 s_in s_w``, a ``~1e-4``-step shift of the logit grid) and the
runtimes' fixed-point requantization (conv, ``ADD``, ``MEAN``), which rounds
like the float model except within ~1e-5 of a step boundary.

Grids (:func:`calibrate`): TFLite's rule (:func:`export.transform.edge.quantization_params`)
over the min/max of each quantizer's input on the calibration images,
measured with every quantizer before it active, repeated until no grid
changes (a grid only depends on the grids before it, so this settles). The
grids are set before fine-tuning and recalibrated after it (the weights
moved), so the converter, calibrating the deployed model on the same
images, finds the same ranges. One exception: the average of a spike map
(the global average pool before the classifier) takes only the values
``k / N``; a calibrated grid can put some of them exactly half-way between
two grid points, where Keras's float rounding and the runtimes'
fixed-point rounding go different ways. Its grid is fixed instead
(:func:`spike_average_grid`): exact for ``N <= 255`` (``s = 1 / N``),
never a tie otherwise.

Example::

    from export.transform.qat import QATConfig, quantization_aware_fine_tune

    result = quantization_aware_fine_tune(model, x_train, x_train[-500:], QATConfig(epochs=0.25))
    result.model           # "the Keras model": deploy/export this one
    result.report          # steps, seconds, grids, calibration_match (agreement with model)

    # or as part of the export (export.pipeline), which fine-tunes, then converts and checks:
    from export import ExportConfig, export_run
    export_run(model, ExportConfig(output_dir, images, labels, calibration_images=x_train[-500:],
                                   qat=QATConfig(epochs=0.25), qat_images=x_train))
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from export.transform.layers import (QAT_CLASSES, ActivationQuantizer, QATConv1D, QATConv2D, QATConv3D, QATDense,
                           QATDepthwiseConv1D, QATDepthwiseConv2D, fake_quantize_per_channel)
from export.errors import InputError
from export.formats import DEFAULT_REWRITES, REWRITES
from export.transform.clone import clone_layer
from export.transform.formulations import reference_levels
from export.transform.fold import FoldError, is_kernel, is_transposed, split_separable_convs
from export.transform.inputs import absorbing_layers, input_scaling, model_inputs
from export.metrics import TASKS, agreement_fraction, model_logits
from s2nn_keras import layer_roles
from s2nn_keras.graph import GraphError, LayerGraph, TensorRef
from s2nn_keras.layers import is_spiking_neuron

__all__ = ["QATConfig", "QATError", "QATResult", "ActivationQuantizer", "QATConv1D", "QATConv2D", "QATConv3D",
           "QATDepthwiseConv1D", "QATDepthwiseConv2D", "QATDense", "fake_quantize_per_channel",
           "quantization_aware_model", "calibrate", "grids", "fine_tune", "inference_model",
           "quantization_aware_fine_tune", "distillation_match", "spike_average_grid"]

_PLAIN_CLASSES = {v: k for k, v in QAT_CLASSES.items()}


class QATError(InputError, ValueError):
    """A model quantization-aware fine-tuning cannot simulate exactly (the
    message names the layer)."""


# --------------------------------------------------------------------------
# The rewrite.
# --------------------------------------------------------------------------


def _is_bn(node):
    return node.class_name == "BatchNormalization"


def spike_average_grid(count: int, off_value: float = 0.0) -> Tuple[float, int]:
    """The int8 grid of an average of ``count`` spikes: ``(m / count, z)``
    with ``m`` the smallest odd integer for which the grid covers every
    average (``[0, 1]`` for {0, 1} spikes, zero point -128; ``[-1, 1]`` for
    +-1 spikes, zero point 0). The averages are ``k / count`` (``(2k -
    count) / count``), i.e. ``k / m`` (``(2k - count) / m``) grid steps: an
    integer when ``m = 1`` (``count <= 255``, resp. ``127``: exact), else never
    half-way between two integers (``m`` odd), so no float or fixed-point
    rounding of a tie can make Keras and the int8 runtimes round apart."""
    count = int(count)
    if float(off_value) == 0.0:
        m, zp = max(1, math.ceil(count / 255.0)), -128
    else:
        m, zp = max(1, math.ceil(count / 127.0)), 0
    m += 1 - m % 2
    return float(np.float32(m / count)), zp


def _average_grid(graph, node, rewrites) -> Optional[Tuple[float, int, int]]:
    """``(scale, zero_point, average_count)`` of the fixed grid of an average
    of spikes (``None`` if ``node`` is none): an int8 ``AVERAGE_POOL_2D``
    (a valid average pool, or a global one that the ``gap_as_average_pool``
    rewrite writes as such) of {0, 1} spikes keeps the spike grid
    ``(1/255, -128)`` and rounds in its own way (``average_count``:
    :func:`export.transform.layers.average_pool_of_spikes`); a ``MEAN`` (or an average
    of +-1 spikes) gets :func:`spike_average_grid` (``average_count`` 0)."""
    average = _spike_average(graph, node)
    if average is None:
        return None
    count, off_value = average
    is_global = node.class_name.startswith("GlobalAveragePooling")
    pooled = (not is_global) or (node.class_name == "GlobalAveragePooling2D" and "gap_as_average_pool" in rewrites)
    if pooled and off_value == 0.0:
        from export.transform.edge import level_grid

        scale, zp = level_grid(reference_levels(0.0), "int8")
        return scale, zp, count
    return spike_average_grid(count, off_value) + (0,)


def _spike_average(graph, node):
    """``(count, off value)`` when ``node`` averages a spike map over a fixed
    number of positions (a global average pool, or a valid average pool),
    else ``None``."""
    cls = node.class_name
    layer = node.layer
    shape = graph.shape(node.inputs[0])
    if cls.startswith("GlobalAveragePooling"):
        if getattr(layer, "data_format", "channels_last") != "channels_last" or None in shape[1:-1]:
            return None
        count = int(np.prod(shape[1:-1]))
    elif getattr(layer, "padding", "valid") == "valid" and hasattr(layer, "pool_size"):
        count = int(np.prod(np.atleast_1d(layer.pool_size)))
    else:
        return None
    source = layer_roles.spike_source(graph, node.inputs[0])
    if source is None:
        return None
    return count, float(getattr(source.layer, "off_value", 0.0))


def _fused_producers(model) -> List[str]:
    """The Conv/Depthwise/Dense layers the int8 export fuses a neuron into
    (:func:`export.transform.edge.neuron_kinds` of the folded model): their outputs
    are not stored, so they are not rounded."""
    from export.transform.edge import neuron_kinds
    from export.transform.fold import fold_batchnorm

    return [p for kind, p in neuron_kinds(fold_batchnorm(model), "int8").values() if kind == "conv"]


def _quantized_points(graph: LayerGraph, rewrites: Sequence[str] = DEFAULT_REWRITES
                      ) -> Tuple[List[TensorRef], List[str], Dict[Tuple[str, int], Tuple[float, int, int]]]:
    """The tensors the int8 model rounds (each gets an ActivationQuantizer),
    the Conv/Depthwise/Dense layers whose output is fused into a neuron, and
    the fixed grids of averages of spikes (:func:`_average_grid`) in the
    model the export writes after ``rewrites``."""
    for n in graph.nodes:
        if not n.is_input and len(graph.calls(n.name)) > 1:
            raise QATError(f"layer {n.name!r} is called {len(graph.calls(n.name))} times; quantization-aware "
                           "fine-tuning needs one call per layer")
    fused = _fused_producers(graph.model)
    scaling = input_scaling(graph.model)
    stored = scaling is not None and absorbing_layers(graph, scaling) is None   # written as its own op
    points = []
    exact = {}
    for n in graph.nodes:
        if n.is_input:
            points.append(n.output())
            continue
        cls = n.class_name
        role = "kernel" if is_kernel(cls) else layer_roles.role(cls, n.layer)
        if scaling is not None and n.name in scaling.layers:
            # absorbed by the layers reading it (no tensor of its own), or one depthwise op
            if stored and n.name == scaling.layers[-1]:
                points.append(n.output())
        elif role == "kernel":
            if n.name in fused:
                continue
            out = n
            consumers = graph.consumers(n)
            # A BN right after the conv folds into it: the int8 model rounds after the BN.
            linear = getattr(getattr(n.layer, "activation", None), "__name__", "linear") == "linear"
            if linear and len(consumers) == 1 and _is_bn(consumers[0]) and not graph.output_uses(n):
                out = consumers[0]
            points.append(out.output())
        elif role in ("merge", "average"):
            points.append(n.output())
            average = _average_grid(graph, n, rewrites) if role == "average" else None
            if average is not None:
                exact[(n.name, n.call)] = average
        elif is_spiking_neuron(n.layer) or _is_bn(n) or layer_roles.keeps_values(cls, n.layer):
            continue
        elif n.layer.weights:
            raise QATError(f"layer {n.name!r} ({cls}) has weights quantization-aware fine-tuning does not "
                           f"simulate; supported: {', '.join(QAT_CLASSES)}, BatchNormalization; export without "
                           "--qat_epochs")
        else:
            raise QATError(f"layer {n.name!r} ({cls}) is not supported by quantization-aware fine-tuning "
                           f"(supported: the layers of s2nn_keras.layer_roles.ROLES, BatchNormalization, "
                           "spiking neurons)")
    return points, fused, exact


def quantization_aware_model(model: keras.Model, rewrites: Sequence[str] = DEFAULT_REWRITES) -> keras.Model:
    """The QAT training model of a trained spiking model (module docstring):
    Conv/Dense layers replaced by their ``QAT*`` versions (same weights), an
    :class:`ActivationQuantizer` after every tensor the int8 model rounds
    (inactive until :func:`calibrate`), every BatchNormalization frozen
    (``trainable = False``: inference mode, moving statistics). Layers keep
    their names; the quantizer of tensor ``t`` of layer ``L`` is ``L_quant``.
    ``rewrites``: the graph rewrites the export converts with
    (:data:`export.formats.DEFAULT_REWRITES`); the model rounds as the
    rewritten graph does (a global average pool as ``AVERAGE_POOL_2D``).

    Raises:
      QATError: no spiking neuron, a shared layer, or a layer it cannot simulate.
    """
    if not isinstance(model, keras.Model) or not any(is_spiking_neuron(l) for l in model.layers):
        raise QATError("quantization-aware fine-tuning needs a spiking model (S2Activation layers); "
                       "a ReLU model is exported by post-training quantization")
    try:
        model = split_separable_convs(model)
        graph = LayerGraph(model)
    except (GraphError, FoldError) as err:
        raise QATError(f"quantization-aware fine-tuning needs a layer graph: {err}") from None
    points, _, exact = _quantized_points(graph, tuple(rewrites))
    quantized = {(r.layer, r.call): r for r in points}

    def call(node, args, kwargs):
        layer = node.layer
        if node.class_name in QAT_CLASSES:
            new = clone_layer(layer, QAT_CLASSES[node.class_name])
        elif _is_bn(node):
            new = clone_layer(layer)
            new.trainable = False
        else:
            new = clone_layer(layer)
        out = new(*args, **kwargs)
        if layer.weights:
            new.set_weights(layer.get_weights())
        if _is_bn(node):
            new.trainable = False
        if (node.name, node.call) in exact:   # an average of spikes: a fixed, tie-free grid
            scale, zp, count = exact[(node.name, node.call)]
            return ActivationQuantizer(scale, zp, active=True, fixed=True, average_count=count,
                                       name=f"{node.name}_quant")(out)
        return _quantize_output(node, out, quantized)

    # Model inputs are quantized too (the int8 model's QUANTIZE at the boundary).
    raw = []
    for ref in graph.input_refs:
        spec = graph.node(ref.layer, ref.call).input_spec
        raw.append(keras.Input(batch_shape=spec["batch_shape"], dtype=spec["dtype"], name=spec["name"]))
    replay = graph.replay(call, inputs=[ActivationQuantizer(name=f"{r.layer}_quant")(t)
                                        for r, t in zip(graph.input_refs, raw)])
    outs = replay.outputs
    return keras.Model(raw[0] if len(raw) == 1 else raw, outs[0] if len(outs) == 1 else outs, name=model.name)


def _quantize_output(node, out, quantized):
    if (node.name, node.call) in quantized:
        return ActivationQuantizer(name=f"{node.name}_quant")(out)
    return out


# --------------------------------------------------------------------------
# Calibration.
# --------------------------------------------------------------------------


def _quantizers(model) -> List[ActivationQuantizer]:
    return [l for l in model.layers if isinstance(l, ActivationQuantizer)]


def grids(model) -> Dict[str, Tuple[float, int]]:
    """``{quantizer name: (scale, zero_point)}`` of a QAT model's active quantizers."""
    return {q.name: q.grid for q in _quantizers(model) if q.active}


def calibrate(model: keras.Model, images, batch_size: int = 100, max_rounds: Optional[int] = None) -> Dict:
    """Sets every :class:`ActivationQuantizer`'s grid to TFLite's int8
    quantization of its input's range over ``images`` (float32, the model's
    input convention), measured with every quantizer before it active, and
    repeats until no grid changes.

    Returns:
      ``{"rounds": int, "settled": bool, "grids": {name: [scale, zero_point]}}``.
    """
    from export.transform.calibration import RangeProbe
    from export.transform.edge import quantization_params

    quantizers = [q for q in _quantizers(model) if not q.fixed]
    fixed = {q.name: list(q.grid) for q in _quantizers(model) if q.fixed}
    if not quantizers:
        return {"rounds": 0, "settled": True, "grids": fixed}
    images = np.asarray(images, np.float32)
    if len(images) == 0:
        raise ValueError("calibration needs at least one image")
    graph = LayerGraph(model)
    refs = [graph.calls(q.name)[0].inputs[0] for q in quantizers]
    max_rounds = max_rounds or len(quantizers) + 2
    current = {q.name: (q.grid if q.active else None) for q in quantizers}
    probes = {}  # one trace per on/off pattern (the grids themselves are variables)

    for rounds in range(1, max_rounds + 1):
        state = tuple(q.active for q in quantizers)
        if state not in probes:
            probes[state] = RangeProbe(model, refs, traced=True)
        probe = probes[state]
        ranges = probe(images, batch_size)
        new = {q.name: quantization_params(*ranges[r], "int8") for q, r in zip(quantizers, refs)}
        new = {k: (float(np.float32(s)), int(z)) for k, (s, z) in new.items()}
        if new == current:
            return {"rounds": rounds, "settled": True, "grids": {**{k: list(v) for k, v in new.items()}, **fixed}}
        for q in quantizers:
            q.set_grid(*new[q.name])
        current = {q.name: q.grid for q in quantizers}
    return {"rounds": max_rounds, "settled": False, "grids": {**{k: list(v) for k, v in current.items()}, **fixed}}


# --------------------------------------------------------------------------
# Fine-tuning.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class QATConfig:
    """How long and how to fine-tune.

    Attributes:
      epochs: length in epochs over the fine-tuning images (fractions
        allowed; ``0.25`` is a quarter pass). Ignored when ``steps`` is set.
      steps: number of optimizer steps (overrides ``epochs``); 0 only
        calibrates (post-training quantization in a Keras model that
        simulates the int8 one).
      batch_size: images per step.
      learning_rate: Adam's learning rate (constant).
      train_examples: use only the first ``train_examples`` training
        images (``None``: all).
      seed: order of the images.
      task: what the model's outputs are (:data:`export.metrics.TASKS`):
        ``"classification"`` (logits; distillation by cross-entropy on the
        teacher's softmax) or ``"regression"`` (e.g. the autoencoder's
        reconstruction; distillation by mean squared error).
      rewrites: the graph rewrites the export converts with
        (:mod:`export.transform.rewrites`); the fine-tuned model rounds as the
        rewritten int8 graph does (:func:`export.export_run` passes its own).
    """

    epochs: float = 0.25
    steps: Optional[int] = None
    batch_size: int = 64
    learning_rate: float = 3e-5
    train_examples: Optional[int] = None
    seed: int = 0
    task: str = "classification"
    rewrites: Tuple[str, ...] = DEFAULT_REWRITES

    def __post_init__(self):
        if not (isinstance(self.epochs, (int, float)) and self.epochs >= 0 and math.isfinite(self.epochs)):
            raise ValueError(f"QAT epochs must be a finite number >= 0, got {self.epochs!r}")
        if self.steps is not None and not (isinstance(self.steps, int) and self.steps >= 0):
            raise ValueError(f"QAT steps must be an integer >= 0, got {self.steps!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"QAT batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            raise ValueError(f"QAT learning_rate must be > 0, got {self.learning_rate!r}")
        if self.train_examples is not None and not (isinstance(self.train_examples, int) and self.train_examples >= 1):
            raise ValueError(f"QAT train_examples must be an integer >= 1, got {self.train_examples!r}")
        if self.task not in TASKS:
            raise ValueError(f"QAT task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if isinstance(self.rewrites, str) or any(r not in REWRITES for r in self.rewrites):
            raise ValueError(f"QAT rewrites must be a sequence of names among {', '.join(REWRITES)}, "
                             f"got {self.rewrites!r}")
        self.rewrites = tuple(self.rewrites)

    def num_steps(self, num_images: int) -> int:
        if self.steps is not None:
            return int(self.steps)
        return int(math.ceil(self.epochs * num_images / self.batch_size))


def fine_tune(model: keras.Model, teacher: keras.Model, images, config: QATConfig = QATConfig()) -> Dict:
    """Fine-tunes a calibrated QAT model in place to reproduce ``teacher``
    (the trained float model): Adam on the cross-entropy between the
    teacher's softmax and the QAT model's (knowledge distillation at
    temperature 1; for ``config.task == "regression"`` the mean squared
    error between their outputs), via ``model.fit`` -- dropout active, BN frozen,
    surrogate gradients through the neurons, straight through the fake
    quantization. No labels: the float model's own predictions are the
    targets, which is what the export is checked against.

    ``images``: float32 in the model's input convention (or uint8:
    :func:`export.transform.inputs.model_inputs` of the teacher); the first ``config.train_examples`` are used, in a seeded
    random order, ``config.num_steps`` batches (cycling if needed).

    Returns:
      ``{"steps", "batch_size", "learning_rate", "train_examples",
      "images_seen", "epochs", "seconds", "teacher_seconds", "loss"}``
      (``loss``: the mean distillation loss over the steps).
    """
    images = np.asarray(images)
    if config.train_examples is not None:
        images = images[:config.train_examples]
    steps = config.num_steps(len(images))
    out = {"steps": steps, "batch_size": config.batch_size, "learning_rate": config.learning_rate,
           "train_examples": int(len(images)), "images_seen": steps * config.batch_size,
           "epochs": steps * config.batch_size / max(1, len(images)), "seconds": 0.0, "teacher_seconds": 0.0,
           "loss": None}
    if steps == 0:
        return out
    if len(images) == 0:
        raise ValueError("quantization-aware fine-tuning needs training images; got none")
    rng = np.random.default_rng(config.seed)
    n = steps * config.batch_size
    order = np.concatenate([rng.permutation(len(images)) for _ in range(int(math.ceil(n / len(images))))])[:n]
    x = model_inputs(images[order], teacher)
    t0 = time.perf_counter()
    outputs = np.asarray(teacher.predict(x, batch_size=256, verbose=0), np.float64)
    if config.task == "regression":
        targets, loss = outputs.astype(np.float32), keras.losses.MeanSquaredError()
    else:
        outputs -= outputs.max(axis=1, keepdims=True)
        targets = np.exp(outputs)
        targets = (targets / targets.sum(axis=1, keepdims=True)).astype(np.float32)
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
    t1 = time.perf_counter()
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss=loss)
    history = model.fit(x, targets, batch_size=config.batch_size, epochs=1, shuffle=False, verbose=0)
    out["teacher_seconds"] = t1 - t0
    out["seconds"] = time.perf_counter() - t1
    out["loss"] = float(history.history["loss"][-1])
    return out


# --------------------------------------------------------------------------
# The deployed model.
# --------------------------------------------------------------------------


def inference_model(model: keras.Model, name: Optional[str] = None) -> keras.Model:
    """The deployable Keras model of a calibrated QAT model: plain
    Conv/Dense layers holding the int8-grid kernels ``q(W)``, an
    :class:`export.transform.edge.GridQuantize` for every active quantizer (same grid,
    same name), BatchNormalization and neurons as they are. It computes
    what the QAT model computes in inference mode, and it is the model the
    int8 export reproduces; :func:`export.export_run` verifies against it."""
    from export.transform.edge import GridQuantize

    graph = LayerGraph(model)

    def call(node, args, kwargs):
        layer = node.layer
        if isinstance(layer, ActivationQuantizer):
            if not layer.active:
                return args[0]
            scale, zp = layer.grid
            return GridQuantize(scale, zp, average_count=layer.average_count, name=layer.name)(*args, **kwargs)
        if type(layer) in _PLAIN_CLASSES:
            new = clone_layer(layer, getattr(keras.layers, _PLAIN_CLASSES[type(layer)]))
            out = new(*args, **kwargs)
            weights = layer.get_weights()
            plain = _PLAIN_CLASSES[type(layer)]
            axes = (-2, -1) if layer_roles.is_depthwise(plain) else -2 if is_transposed(plain) else -1
            weights[0] = np.asarray(fake_quantize_per_channel(weights[0], axes), np.float32)
            new.set_weights(weights)
            return out
        new = clone_layer(layer)
        out = new(*args, **kwargs)
        if layer.weights:
            new.set_weights(layer.get_weights())
        return out

    return graph.replay(call).model(name=name or model.name)


def _log_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def distillation_match(teacher_logits, student_logits, task: str = "classification") -> Dict[str, float]:
    """How closely a student reproduces a teacher on the same images:
    ``{"kl": mean KL(teacher softmax || student softmax), "agreement"}``
    for classification, ``{"mse", "agreement"}`` for regression (agreement
    as :func:`export.metrics.agreement_fraction` defines it)."""
    t, s = np.asarray(teacher_logits, np.float64), np.asarray(student_logits, np.float64)
    match = agreement_fraction(t, s, task)
    if task == "regression":
        return {"mse": float(np.mean((t - s) ** 2)), "agreement": match}
    t, s = _log_softmax(t), _log_softmax(s)
    kl = float(np.mean(np.sum(np.exp(t) * (t - s), axis=1)))
    return {"kl": kl, "agreement": match}


@dataclasses.dataclass
class QATResult:
    """What :func:`quantization_aware_fine_tune` produced.

    Attributes:
      model: the deployable model (:func:`inference_model`).
      qat_model: the QAT training model (fake-quant layers).
      report: JSON-friendly figures (steps, seconds, calibration rounds, grids).
    """

    model: keras.Model
    qat_model: keras.Model
    report: Dict


def quantization_aware_fine_tune(model: keras.Model, images, calibration_images,
                                 config: QATConfig = QATConfig()) -> QATResult:
    """Builds the QAT model of a trained spiking ``model``, calibrates its
    grids on ``calibration_images``, fine-tunes it to reproduce ``model`` on
    ``images`` (:func:`fine_tune`; float32 in the model's input convention,
    or uint8) and recalibrates; returns the deployable model and the
    figures (:class:`QATResult`)."""
    t0 = time.perf_counter()
    calibration_images = model_inputs(calibration_images, model)
    qat = quantization_aware_model(model, config.rewrites)
    before = calibrate(qat, calibration_images)
    teacher = model_logits(model, calibration_images)
    match_before = distillation_match(teacher, model_logits(qat, calibration_images), config.task)
    train = fine_tune(qat, model, images, config)
    after = calibrate(qat, calibration_images) if train["steps"] else before
    deployed = inference_model(qat, name=model.name)
    match_after = distillation_match(teacher, model_logits(deployed, calibration_images), config.task)
    report = {"config": dataclasses.asdict(config), **train,
              "calibration_match": {"before": match_before, "after": match_after},
              "calibration_rounds": [before["rounds"], after["rounds"]],
              "calibration_settled": bool(before["settled"] and after["settled"]),
              "quantized_tensors": len(after["grids"]), "grids": after["grids"],
              "total_seconds": time.perf_counter() - t0}
    return QATResult(deployed, qat, report)
