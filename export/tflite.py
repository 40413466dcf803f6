"""TFLite conversion of folded spiking models: float32, int8, int16x8.

All three go through the public ``tf.lite.TFLiteConverter`` API with a
batch-1 input signature (what TFLite Micro runs).

* ``"float32"``: no quantization.
* ``"int8"``: full-integer post-training quantization (int8 weights per
  channel, int8 activations per tensor, int8 input/output tensors),
  calibrated on ``representative_data``. The neurons are
  ``GREATER_EQUAL``/``LESS_EQUAL`` (+ logical ops) on integers, followed by
  one ``SELECT_V2`` writing the spike values (exact in int8: 0 and 1 are both
  representable at the output scale). Nonzero thresholds are first moved to
  the middle of an int8 step of their input (:func:`int8_threshold_model`),
  so quantizing the threshold constant cannot flip a decision.
* ``"int16x8"``: 16-bit activations, 8-bit weights
  (``EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8``). This
  quantizer does not support comparison ops ("Quantization to 16x8-bit not
  yet supported for op: 'GREATER_EQUAL'"), so the neurons are rebuilt in the
  ``"ramp"`` formulation ``s = min(relu(gain * z), 1)``, with ``z`` the
  neuron's input measured from its threshold (``z = p_c (u_c - theta_c)``).
  ``gain = 32767 / max|z|`` (max over the calibration data) makes the int16
  scale of ``gain * z`` exactly 1, so the quantized ramp outputs 1 for every
  positive integer level of ``z`` and 0 otherwise: a step at int16
  resolution, with spike values 0 and 1 represented exactly.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
from typing import Callable, Iterable, Optional

import keras
import numpy as np
import tensorflow as tf

from export.neurons import ThresholdNeuron


def _single(tensors):
    """A lone input as itself (Keras warns when a one-input model gets a list)."""
    return tensors[0] if len(tensors) == 1 else tensors


__all__ = ["QUANTIZATIONS", "to_tflite", "ensure_folded", "ramp_model", "int8_threshold_model", "op_names"]

QUANTIZATIONS = ("float32", "int8", "int16x8")
INT16_MAX = 32767.0


def _has_unfolded(model):
    return any(
        isinstance(l, keras.layers.BatchNormalization) or type(l).__name__ == "S2Activation"
        for l in model.layers
    )


def ensure_folded(model: keras.Model, formulation: str = "compare") -> keras.Model:
    """``model`` itself if it holds no BN and no S2Activation, else its fold."""
    from export.fold import fold_batchnorm

    if _has_unfolded(model):
        return fold_batchnorm(model, formulation=formulation)
    return model


def _with_neurons(model, make):
    """Clone of a folded model where each ThresholdNeuron is replaced by
    ``make(layer)``; other layers keep their weights."""

    def clone(layer):
        if isinstance(layer, ThresholdNeuron):
            return make(layer)
        return layer.__class__.from_config(layer.get_config())

    new = keras.models.clone_model(model, clone_function=clone)
    new.set_weights(model.get_weights())
    return new


def _iter_batches(representative_data, limit=None):
    for i, batch in enumerate(representative_data()):
        if limit is not None and i >= limit:
            break
        yield batch[0] if isinstance(batch, (list, tuple)) else batch


def ramp_model(model: keras.Model, representative_data: Callable[[], Iterable]) -> keras.Model:
    """The folded model with every neuron in the ``"ramp"`` formulation and
    its gain set to ``32767 / max|z|`` measured on ``representative_data``
    (``z`` = neuron input relative to its threshold; see module docstring)."""
    neurons = [l for l in model.layers if isinstance(l, ThresholdNeuron)]
    if not neurons:
        return model
    probe = keras.Model(_single(model.inputs), [l.input for l in neurons])
    zmax = np.zeros(len(neurons))
    for x in _iter_batches(representative_data):
        outs = probe(np.asarray(x, dtype=np.float32), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, (layer, u) in enumerate(zip(neurons, outs)):
            u = np.asarray(u, dtype=np.float64)
            pol, th = layer.polarity, layer.thresholds
            z = np.where(pol != 0, pol * (u - th), 1.0)
            zmax[i] = max(zmax[i], float(np.max(np.abs(z))))
    gains = {l.name: INT16_MAX / (z if z > 0 else 1.0) for l, z in zip(neurons, zmax)}

    def make(layer):
        config = layer.get_config()
        config.update(formulation="ramp", gain=gains[layer.name])
        return ThresholdNeuron.from_config(config)

    return _with_neurons(model, make)


def _neuron_input_ranges(model, neurons, representative_data):
    probe = keras.Model(_single(model.inputs), [l.input for l in neurons])
    lo = np.full(len(neurons), np.inf)
    hi = np.full(len(neurons), -np.inf)
    for x in _iter_batches(representative_data):
        outs = probe(np.asarray(x, dtype=np.float32), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for i, u in enumerate(outs):
            u = np.asarray(u)
            lo[i] = min(lo[i], float(u.min()))
            hi[i] = max(hi[i], float(u.max()))
    return lo, hi


def int8_threshold_model(model: keras.Model, representative_data: Callable[[], Iterable]) -> keras.Model:
    """The folded model with every nonzero threshold moved to the middle of
    an int8 step of its input ("half-LSB placement").

    Post-training calibration gives a neuron's input ``u`` the grid
    ``u = (q - zp) * s`` with ``s = (max(hi, 0) - min(lo, 0)) / 255`` and
    ``zp = round(-128 - min(lo, 0) / s)`` (lo/hi: calibrated min/max). The
    exact decision on that grid is ``q >= k`` with ``k = ceil(theta / s) + zp``
    (``q <= floor(theta / s) + zp`` for negative polarity). TFLite also
    quantizes the threshold constant itself, with its own scale, and a
    threshold just above a grid point (e.g. 0.001 when ``u`` is exactly 0 on
    every background pixel) rounds onto it and flips every such neuron.
    Replacing ``theta`` by ``(k - zp - 1/2) * s`` (``+ 1/2`` for negative
    polarity) keeps the same integer decision while putting the threshold as
    far from every grid point as possible, so rounding the constant cannot
    cross one. In float the model changes only for inputs within one int8
    step of a threshold. Thresholds that are exactly 0 (moved into a conv
    bias) are already exact and stay.
    """
    neurons = [l for l in model.layers if isinstance(l, ThresholdNeuron)]
    if not neurons:
        return model
    lo, hi = _neuron_input_ranges(model, neurons, representative_data)
    placed = {}
    for layer, rmin, rmax in zip(neurons, lo, hi):
        th, pol = layer.thresholds.astype(np.float64), layer.polarity
        if np.all(th[pol != 0] == 0.0) or not np.isfinite(rmin):
            continue
        rmin, rmax = min(rmin, 0.0), max(rmax, 0.0)
        scale = (rmax - rmin) / 255.0
        if scale <= 0:
            continue
        zp = np.clip(np.round(-128.0 - rmin / scale), -128, 127)
        k_pos = np.ceil(th / scale - 1e-9) + zp
        k_neg = np.floor(th / scale + 1e-9) + zp
        new = np.where(pol > 0, (k_pos - zp - 0.5) * scale, np.where(pol < 0, (k_neg - zp + 0.5) * scale, th))
        new = np.where((pol != 0) & (th == 0.0), th, new)
        placed[layer.name] = new.astype(np.float32)
    if not placed:
        return model

    def make(layer):
        config = layer.get_config()
        if layer.name in placed:
            config["thresholds"] = [float(v) for v in placed[layer.name]]
        return ThresholdNeuron.from_config(config)

    return _with_neurons(model, make)


def _batch1_model(model):
    """``model`` behind batch-1 inputs (TFLite Micro runs static shapes)."""
    inputs = [keras.Input(batch_shape=(1,) + tuple(t.shape[1:]), dtype="float32", name=t.name)
              for t in model.inputs]
    outputs = model(inputs if len(inputs) > 1 else inputs[0], training=False)
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs, name=model.name)


def to_tflite(model: keras.Model, quantization: str = "float32",
              representative_data: Optional[Callable[[], Iterable]] = None) -> bytes:
    """Converts a (folded or foldable) Keras model to a TFLite flatbuffer.

    Args:
      model: a Keras model; one still holding BatchNormalization or
        S2Activation layers is folded first with :func:`export.fold_batchnorm`.
      quantization: ``"float32"``, ``"int8"`` (full integer, int8 I/O) or
        ``"int16x8"`` (int16 activations and I/O, int8 weights).
      representative_data: for the integer formats, a callable returning an
        iterable of input lists ``[batch]`` (float32 images in the model's
        input convention), as ``TFLiteConverter.representative_dataset``
        takes. Real data, a few hundred images, is what calibration needs.

    Returns:
      The ``.tflite`` flatbuffer bytes.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    if quantization != "float32" and representative_data is None:
        raise ValueError(f"{quantization} quantization needs representative_data (a callable yielding [input_batch] lists)")
    if representative_data is not None and not callable(representative_data):
        raise ValueError("representative_data must be a callable returning an iterable of [input_batch] lists")
    model = ensure_folded(model)
    if quantization == "int16x8":
        model = ramp_model(model, representative_data)
    elif quantization == "int8":
        model = int8_threshold_model(model, representative_data)

    converter = tf.lite.TFLiteConverter.from_keras_model(_batch1_model(model))
    if quantization != "float32":
        def rep():
            # The batch-1 signature takes one image at a time.
            for batch in representative_data():
                batch = batch if isinstance(batch, (list, tuple)) else [batch]
                arrays = [np.asarray(b, dtype=np.float32) for b in batch]
                for i in range(arrays[0].shape[0]):
                    yield [a[i:i + 1] for a in arrays]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = rep
        if quantization == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        else:
            converter.target_spec.supported_ops = [
                tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            converter.inference_input_type = tf.int16
            converter.inference_output_type = tf.int16
    # The Keras exporter prints "Saved artifact at ..." and its signature to
    # stdout on every conversion, and the converter logs a dozen INFO lines
    # through the "tensorflow"/"absl" loggers; keep callers' output to their
    # summaries (warnings and errors still show).
    with contextlib.redirect_stdout(io.StringIO()), _quiet_loggers("tensorflow", "absl"):
        return converter.convert()


@contextlib.contextmanager
def _quiet_loggers(*names):
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def op_names(tflite_model: bytes):
    """Sorted distinct builtin op names of a flatbuffer, read with the TFLite
    schema that ships with the ``tflite-micro`` package."""
    from tflite_micro.python.tflite_micro import runtime

    schema = runtime.schema_fb
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    obj = runtime.convert_bytearray_to_object(bytearray(tflite_model))
    found = collections.Counter()
    for sub in obj.subgraphs:
        for op in sub.operators or []:
            code = runtime.get_builtin_code_from_operator_code(obj.operatorCodes[op.opcodeIndex])
            found[names.get(code, f"BUILTIN_{code}")] += 1
    return dict(sorted(found.items()))

