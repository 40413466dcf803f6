"""Keras layers over the pure spike functions of :mod:`s2nn_keras.surrogates`
(backend-agnostic: TensorFlow, JAX and PyTorch)."""

from __future__ import annotations

import keras

from s2nn_keras import surrogates

__all__ = ["S2Activation", "is_spiking_neuron"]

_LAYER_KWARGS = frozenset(
    ["name", "dtype", "trainable", "activity_regularizer", "autocast", "input_shape",
     "batch_input_shape", "batch_size", "input_dim", "weights", "input_dtype"]
)


@keras.saving.register_keras_serializable(package="s2nn_keras")
class S2Activation(keras.layers.Layer):
    """Single-step spiking neuron as a Keras activation layer.

    Forward (paper Eq. 16): ``s = H(u - threshold)`` in {0, 1} (+-1 for
    ``ste_b``), firing when ``u >= threshold``. Backward: the surrogate named
    by ``surrogate`` (Eq. 23 for the default ``"s2nn"``:
    ``1/(tau_s u)`` above threshold, ``(1/alpha) sig_a(u)(1 - sig_a(u))``
    below). The layer has no weights.

    Args:
      surrogate: a name from :func:`s2nn_keras.available_surrogates`.
      threshold: firing threshold u_th; ``None`` uses the surrogate's default
        (paper Table 3: s2nn 1, ste_b 0, ste_s 1, sibnn 0.3, slayer 1).
      **params: surrogate parameters by name: ``tau_s``, ``alpha`` (s2nn),
        ``rho``, ``delta`` (sibnn), ``alpha1``, ``beta1`` (slayer), ``beta0``
        (superspike).

    Example:
      >>> import keras
      >>> from s2nn_keras import S2Activation
      >>> model = keras.Sequential([
      ...     keras.Input((28, 28, 1)),
      ...     keras.layers.Conv2D(8, 3, use_bias=False),
      ...     keras.layers.BatchNormalization(),
      ...     S2Activation("s2nn", tau_s=1.0, alpha=0.2),
      ...     keras.layers.GlobalAveragePooling2D(),
      ...     keras.layers.Dense(10)])
    """

    def __init__(self, surrogate="s2nn", threshold=None, **kwargs):
        # Everything that is not a base-Layer keyword is a surrogate parameter;
        # resolve_params rejects unknown ones with the list of valid names.
        params = {k: kwargs.pop(k) for k in list(kwargs) if k not in _LAYER_KWARGS}
        super().__init__(**kwargs)
        entry, th, merged = surrogates.resolve_params(surrogate, threshold, **params)
        self._entry = entry
        self.surrogate = surrogate
        self.threshold = th
        self.params = merged
        self.off_value = entry.off_value

    def call(self, inputs):
        return surrogates._spike(inputs, self._entry, self.threshold, self.params)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"surrogate": self.surrogate, "threshold": self.threshold})
        config.update(self.params)
        if self.activity_regularizer is not None:
            config["activity_regularizer"] = keras.regularizers.serialize(self.activity_regularizer)
        return config


def is_spiking_neuron(layer) -> bool:
    """True for a single-step spiking-neuron layer: an :class:`S2Activation`,
    or any layer whose class sets ``is_spiking_neuron = True`` (the export
    package's folded ``ThresholdNeuron``). The one test every module uses to
    recognise a neuron (firing rates, energy accounting, folding, export).

    A neuron layer outputs spikes: 1 where it fires and ``layer.off_value``
    (0, or -1 for ``ste_b``) elsewhere.
    """
    return isinstance(layer, S2Activation) or getattr(type(layer), "is_spiking_neuron", False) is True
