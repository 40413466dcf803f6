"""Per-layer firing rates R(l) (paper Appendix B, Eq. B.2).

R(l) = E_data[ #spikes of layer l / #neurons of layer l ], where a spike is a
neuron with u >= u_th (an output equal to 1; for the +-1 ``ste_b`` neuron an
output of +1). Rates are averaged over every example of the data set, each
example weighted equally.
"""

from __future__ import annotations

import collections
from typing import Dict, List

import keras
import numpy as np
import tensorflow as tf

from s2nn_keras.layers import is_spiking_neuron

__all__ = ["neuron_layers", "firing_rates", "FiringRateCallback"]


def neuron_layers(model: keras.Model) -> List[keras.layers.Layer]:
    """The spiking-neuron layers of ``model`` in graph order.

    A neuron is what :func:`s2nn_keras.layers.is_spiking_neuron` accepts.
    """
    return [layer for layer in model.layers if is_spiking_neuron(layer)]


def _probe(model, layers):
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, [layer.output for layer in layers])


class _RateCounter:
    """Per-batch spike counting for one model: the probe model and its traced
    ``tf.function`` are built once and reused across calls (the callback
    measures every epoch)."""

    def __init__(self, model):
        self.model = model
        self.layers = neuron_layers(model)
        if self.layers:
            probe = _probe(model, self.layers)

            @tf.function(reduce_retracing=True)
            def batch_rates(x):
                outs = probe(x, training=False)
                if not isinstance(outs, (list, tuple)):
                    outs = [outs]
                rates = []
                for out in outs:
                    fired = tf.cast(out > 0, tf.float32)
                    per_example = tf.reduce_mean(tf.reshape(fired, [tf.shape(fired)[0], -1]), axis=1)
                    rates.append(tf.reduce_sum(per_example))
                return tf.stack(rates), tf.shape(x)[0]

            self.batch_rates = batch_rates

    def __call__(self, data, max_batches=None) -> Dict[str, float]:
        if not self.layers:
            return {}
        fire_counts = np.zeros(len(self.layers), dtype=np.float64)
        n_examples = 0
        if isinstance(data, np.ndarray):
            data = tf.data.Dataset.from_tensor_slices(data).batch(256)
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            sums, n = self.batch_rates(x)
            fire_counts += sums.numpy()
            n_examples += int(n)
        if n_examples == 0:
            raise ValueError("firing_rates got an empty data set")
        rates = fire_counts / n_examples
        return collections.OrderedDict((layer.name, float(r)) for layer, r in zip(self.layers, rates))


def firing_rates(model: keras.Model, data, *, max_batches=None) -> Dict[str, float]:
    """Measures R(l) for every neuron layer of ``model`` over ``data``.

    Args:
      model: a functional Keras model containing neuron layers.
      data: a ``tf.data.Dataset`` (or any iterable) yielding ``x`` or
        ``(x, y[, w])`` batches, or a NumPy array of inputs.
      max_batches: optional cap on the number of batches read.

    Returns:
      ``{layer_name: rate}`` in graph order, rates in [0, 1]. Empty if the
      model has no neuron layers (e.g. the ReLU baseline).
    """
    return _RateCounter(model)(data, max_batches)


class FiringRateCallback(keras.callbacks.Callback):
    """Logs per-layer firing rates at the end of every epoch.

    Adds ``firing_rate/<layer>`` and ``firing_rate/mean`` to the epoch logs,
    so ``History``, ``CSVLogger`` and ``TensorBoard`` record them.

    Args:
      data: validation inputs (same forms as :func:`firing_rates`).
      max_batches: cap on batches measured per epoch (keeps it cheap).
    """

    def __init__(self, data, max_batches=None):
        super().__init__()
        self.data = data
        self.max_batches = max_batches
        self.history = []
        self._counter = None

    def on_epoch_end(self, epoch, logs=None):
        if self._counter is None or self._counter.model is not self.model:
            self._counter = _RateCounter(self.model)
        rates = self._counter(self.data, max_batches=self.max_batches)
        self.history.append(rates)
        if logs is not None and rates:
            for name, rate in rates.items():
                logs[f"firing_rate/{name}"] = rate
            logs["firing_rate/mean"] = float(np.mean(list(rates.values())))
