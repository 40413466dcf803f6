"""The export's own Keras layers; importing this module registers them all.

A model that holds them -- a folded model (``model_folded.keras``:
:class:`~export.transform.neurons.ThresholdNeuron`), a quantization-aware fine-tuned
one (``model_qat.keras``: :class:`GridQuantize`) or its training graph
(:class:`ActivationQuantizer`, the ``QAT*`` layers) -- loads with plain
Keras once this module is imported::

    import export.transform.layers  # noqa: F401  (registers the export's layers)
    model = keras.saving.load_model("run/export/model_qat.keras")

Every class is registered under the package ``s2nn_export`` (the name saved
models carry; importing it also registers :class:`s2nn_keras.S2Activation`,
which quantization-aware models keep), and nothing here imports TensorFlow
at import time: the TF
ops are imported when a layer runs, so importing the registry is as cheap as
importing Keras.

The layers:

* :class:`~export.transform.neurons.ThresholdNeuron` -- the folded neuron (Eq. 27);
* :class:`GridQuantize` -- rounds to a fixed int8 grid ``(scale, zero
  point)`` that the TFLite converter takes as the tensor's quantization;
* :class:`ActivationQuantizer` -- the same rounding on a grid held in
  variables, set by :func:`export.transform.qat.calibrate`;
* :class:`QATConv1D`/``2D``/``3D``, :class:`QATDepthwiseConv1D`/``2D``,
  :class:`QATDense`, :class:`QATConv1DTranspose`/``2D`` -- Keras' layers whose forward pass uses the kernel
  rounded to its per-output-channel int8 grid
  (:func:`fake_quantize_per_channel`, straight-through gradient).
"""

from __future__ import annotations

from typing import Sequence, Tuple, Union

import keras
import numpy as np

from export.transform.neurons import ThresholdNeuron
from s2nn_keras.layers import S2Activation  # noqa: F401  (QAT models keep their S2Activation neurons)

__all__ = ["ThresholdNeuron", "GridQuantize", "ActivationQuantizer", "QATConv1D", "QATConv2D", "QATConv3D",
           "QATDepthwiseConv1D", "QATDepthwiseConv2D", "QATDense", "QATConv1DTranspose", "QATConv2DTranspose",
           "QAT_CLASSES", "fake_quantize_per_channel",
           "grid_range", "average_pool_of_spikes"]


def grid_range(scale: float, zero_point: int) -> Tuple[float, float]:
    """``[(-128 - z) s, (127 - z) s]``: the range of an int8 grid as the
    float32 values a fake-quant op takes (TFLite reads the grid back as
    ``s = (max - min) / 255``, ``z = -128 - min / s``)."""
    return (float(np.float32((-128 - int(zero_point)) * float(scale))),
            float(np.float32((127 - int(zero_point)) * float(scale))))


def average_pool_of_spikes(x, count: int, scale: float, zero_point: int):
    """TFLite's int8 ``AVERAGE_POOL_2D`` of ``count`` {0, 1} spikes on the
    spike grid ``(scale, zero_point)``, exactly, with a straight-through
    gradient.

    ``AVERAGE_POOL_2D`` keeps its input's grid. With the codes ``c0 =
    z`` (a 0) and ``c1 = clip(round(1 / s) + z)`` (a 1), ``k`` spikes of
    ``count`` sum to ``acc = c0 (count - k) + c1 k`` and the kernel
    (TFLite's reference, CMSIS-NN and :mod:`export.mcu` alike) writes
    ``code = sign(acc) floor((|acc| + floor(count / 2)) / count)``: half away
    from zero in the *code* domain, which a fake-quant op (half up) does
    not reproduce where ``acc / count`` ends in .5 with ``acc < 0``.

    Forward: ``(code - z) s`` with ``k = round(x count)`` read from the
    float average ``x = k / count``; backward: the identity.

    Example:
      >>> import numpy as np
      >>> y = average_pool_of_spikes(np.array([0.5], np.float32), 4, 1 / 255, -128)
      >>> round(float(np.asarray(y)[0]) * 255)   # acc = -2: -0.5 rounds to -1, not 0
      127
    """
    import tensorflow as tf

    from export.quant import round_half_away

    x = tf.convert_to_tensor(x)
    n = int(count)
    zp = int(zero_point)
    c0 = zp
    c1 = int(np.clip(round_half_away(1.0 / scale) + zp, -128, 127))
    k = tf.cast(tf.clip_by_value(tf.round(tf.cast(x, tf.float64) * n), 0.0, float(n)), tf.int32)
    acc = c0 * n + (c1 - c0) * k
    code = tf.sign(acc) * ((tf.abs(acc) + n // 2) // n)
    y = tf.cast(tf.cast(code - zp, tf.float64) * float(scale), x.dtype)
    return x + tf.stop_gradient(y - x)


@keras.saving.register_keras_serializable(package="s2nn_export")
class GridQuantize(keras.layers.Layer):
    """Rounds to a fixed int8 grid: ``x -> (clip(round(x / s) + z, -128, 127) - z) * s``
    (``tf.quantization.fake_quant_with_min_max_args`` with the range
    ``[(-128 - z) s, (127 - z) s]``). The TFLite converter takes this range
    as the tensor's quantization instead of calibrating it, which is how the
    int8 export knows the exact grid a depthwise neuron compares on.

    ``average_count > 0`` marks the output of an int8 ``AVERAGE_POOL_2D``
    of that many {0, 1} spikes (the pool keeps its input's grid): the
    layer then rounds as that kernel does (:func:`average_pool_of_spikes`).
    The export prescribes the grid alone (:func:`export.transform.edge.edge_model`
    writes a plain ``GridQuantize(scale, zero_point)``).

    Example:
      >>> import numpy as np
      >>> q = GridQuantize(0.5, 0)
      >>> np.asarray(q(np.array([[0.2, 0.3, 100.0]], np.float32))).tolist()
      [[0.0, 0.5, 63.5]]
    """

    def __init__(self, scale, zero_point, average_count: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.zero_point = int(zero_point)
        self.average_count = int(average_count)

    def call(self, x):
        import tensorflow as tf

        if self.average_count:
            return average_pool_of_spikes(x, self.average_count, self.scale, self.zero_point)
        lo, hi = grid_range(self.scale, self.zero_point)
        return tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, zero_point=self.zero_point)
        if self.average_count:
            config.update(average_count=self.average_count)
        return config


@keras.saving.register_keras_serializable(package="s2nn_export")
class ActivationQuantizer(keras.layers.Layer):
    """Fake quantization onto a per-tensor int8 grid ``(scale s, zero point
    z)``: ``x -> (clip(round(x / s) + z, -128, 127) - z) s``, i.e.
    ``tf.quantization.fake_quant_with_min_max_vars`` over ``[(-128 - z) s,
    (127 - z) s]`` held in two non-trainable variables (gradient 1 inside the
    range, 0 outside: STE). The range is the float32 value of the same
    float64 product that :class:`GridQuantize` passes to
    ``fake_quant_with_min_max_args``, so both round every value alike.

    While ``active`` is False (before :func:`export.transform.qat.calibrate` sets a
    grid) it passes its input through. A ``fixed`` grid (an average of
    spikes, :func:`export.transform.qat.spike_average_grid`) is active from the start
    and calibration leaves it; with ``average_count > 0`` it is an int8
    ``AVERAGE_POOL_2D`` of that many spikes and rounds as that kernel does
    (:func:`average_pool_of_spikes`). :func:`export.transform.qat.inference_model`
    writes it as a :class:`GridQuantize` with the same grid (and count).
    """

    def __init__(self, scale: float = 1.0, zero_point: int = 0, active: bool = False, fixed: bool = False,
                 average_count: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.active = bool(active) or bool(fixed)
        self.fixed = bool(fixed)
        self.average_count = int(average_count)
        if self.average_count and not self.fixed:
            raise ValueError("ActivationQuantizer: average_count needs a fixed grid (the spike grid)")

    def build(self, input_shape):
        lo, hi = grid_range(self.scale, self.zero_point)
        self.minimum = self.add_weight(shape=(), initializer=keras.initializers.Constant(lo), trainable=False,
                                       name="minimum")
        self.maximum = self.add_weight(shape=(), initializer=keras.initializers.Constant(hi), trainable=False,
                                       name="maximum")
        super().build(input_shape)

    @property
    def grid(self) -> Tuple[float, int]:
        """``(scale, zero_point)``."""
        return self.scale, self.zero_point

    def set_grid(self, scale: float, zero_point: int):
        """Sets the grid and activates the quantizer."""
        self.scale, self.zero_point = float(scale), int(zero_point)
        lo, hi = grid_range(self.scale, self.zero_point)
        self.minimum.assign(lo)
        self.maximum.assign(hi)
        self.active = True

    def call(self, x):
        if not self.active:
            return x
        if self.average_count:
            return average_pool_of_spikes(x, self.average_count, self.scale, self.zero_point)
        import tensorflow as tf

        return tf.quantization.fake_quant_with_min_max_vars(x, self.minimum, self.maximum, num_bits=8)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(scale=self.scale, zero_point=self.zero_point, active=self.active, fixed=self.fixed)
        if self.average_count:
            config.update(average_count=self.average_count)
        return config


def fake_quantize_per_channel(kernel, channel_axes: Union[int, Sequence[int]] = -1):
    """``kernel`` on its per-output-channel symmetric int8 grid with a
    straight-through gradient.

    Forward: ``s_c = max|W_c| / 127`` (1 for an all-zero channel),
    ``q = sign(W / s) floor(|W / s| + 1/2)`` (round half away from zero, as
    :func:`export.transform.edge.fake_quantize_kernel` and the TFLite converter),
    result exactly ``q s`` (float32). Backward: the identity (a custom
    gradient; ``W + stop_gradient(q s - W)`` would be off the grid by an ulp).
    ``channel_axes``: the axis (or axes) indexing the output channel: ``-1``
    for Conv/Dense, ``(-2, -1)`` for a depthwise kernel ``[..., in, mult]``.

    Example:
      >>> import numpy as np
      >>> w = np.array([[0.5, -2.0], [1.0, 0.01]], np.float32)
      >>> np.round(np.asarray(fake_quantize_per_channel(w)) * 127).tolist()   # channel 1: s = 2 / 127
      [[64.0, -254.0], [127.0, 2.0]]
    """
    import tensorflow as tf

    w = tf.convert_to_tensor(kernel)
    keep = {a % len(w.shape) for a in np.atleast_1d(channel_axes)}
    axes = [i for i in range(len(w.shape)) if i not in keep]

    @tf.custom_gradient
    def quantize(w):
        m = tf.reduce_max(tf.abs(w), axis=axes, keepdims=True)
        s = tf.where(m > 0, m / 127.0, tf.ones_like(m))
        x = w / s
        q = tf.sign(x) * tf.floor(tf.abs(x) + 0.5)
        return q * s, lambda dy: dy

    return quantize(w)


def _kernel_quantized_call(base):
    """A subclass of ``base`` (a Conv) whose convolution uses the fake-quantized kernel."""

    class _QAT(base):
        def convolution_op(self, inputs, kernel):
            return super().convolution_op(inputs, fake_quantize_per_channel(kernel))

    return _QAT


def _bias_and_activation(layer, outputs):
    """A channels-last conv's bias and activation on ``outputs``."""
    from keras import ops

    if layer.use_bias:
        outputs = ops.add(outputs, ops.reshape(layer.bias, (1,) * (layer.rank + 1) + (-1,)))
    return outputs if layer.activation is None else layer.activation(outputs)


def _channels_last(layer):
    if layer.data_format != "channels_last":
        raise ValueError(f"layer {layer.name!r}: quantization-aware {type(layer).__name__} needs channels_last")


def _depthwise_quantized_call(base):
    """A subclass of ``base`` (a DepthwiseConv) that convolves with its
    kernel fake-quantized per output channel (``in * multiplier`` of them)."""

    class _QAT(base):
        def call(self, inputs):
            from keras import ops

            _channels_last(self)
            outputs = ops.depthwise_conv(inputs, fake_quantize_per_channel(self.kernel, (-2, -1)),
                                         strides=self.strides, padding=self.padding,
                                         dilation_rate=self.dilation_rate, data_format=self.data_format)
            return _bias_and_activation(self, outputs)

    return _QAT


def _transpose_quantized_call(base):
    """A subclass of ``base`` (a ConvTranspose, kernel ``[..., out, in]``)
    that convolves with its kernel fake-quantized per output channel."""

    class _QAT(base):
        def call(self, inputs):
            from keras import ops

            _channels_last(self)
            outputs = ops.conv_transpose(inputs, fake_quantize_per_channel(self.kernel, -2),
                                         strides=list(self.strides), padding=self.padding,
                                         output_padding=self.output_padding, dilation_rate=self.dilation_rate,
                                         data_format=self.data_format)
            return _bias_and_activation(self, outputs)

    return _QAT


def _qat_class(base, quantized_call):
    """The registered ``QAT<base>`` class: ``base`` with the forward pass of ``quantized_call``."""
    name = f"QAT{base.__name__}"
    cls = type(name, (quantized_call(base),), {
        "__module__": __name__, "__qualname__": name,
        "__doc__": f"``{base.__name__}`` whose forward pass uses :func:`fake_quantize_per_channel` of its kernel."})
    return keras.saving.register_keras_serializable(package="s2nn_export")(cls)


QATConv1D = _qat_class(keras.layers.Conv1D, _kernel_quantized_call)
QATConv2D = _qat_class(keras.layers.Conv2D, _kernel_quantized_call)
QATConv3D = _qat_class(keras.layers.Conv3D, _kernel_quantized_call)
QATDepthwiseConv1D = _qat_class(keras.layers.DepthwiseConv1D, _depthwise_quantized_call)
QATDepthwiseConv2D = _qat_class(keras.layers.DepthwiseConv2D, _depthwise_quantized_call)
QATConv1DTranspose = _qat_class(keras.layers.Conv1DTranspose, _transpose_quantized_call)
QATConv2DTranspose = _qat_class(keras.layers.Conv2DTranspose, _transpose_quantized_call)


@keras.saving.register_keras_serializable(package="s2nn_export")
class QATDense(keras.layers.Dense):
    """``Dense`` whose forward pass uses :func:`fake_quantize_per_channel` of its kernel."""

    def call(self, inputs, training=None):
        from keras import ops

        x = ops.matmul(inputs, fake_quantize_per_channel(self.kernel))
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


#: ``{Keras class name: quantization-aware class}``.
QAT_CLASSES = {"Conv1D": QATConv1D, "Conv2D": QATConv2D, "Conv3D": QATConv3D,
               "DepthwiseConv1D": QATDepthwiseConv1D, "DepthwiseConv2D": QATDepthwiseConv2D, "Dense": QATDense,
               "Conv1DTranspose": QATConv1DTranspose, "Conv2DTranspose": QATConv2DTranspose}
