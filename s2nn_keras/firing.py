"""Per-layer firing rates R(l) (paper Appendix B, Eq. B.2), counted on the device.

    R(l) = E_data[ #spikes of layer l / #neurons of layer l ]

A spike is a neuron output ``> 0`` (``u >= u_th``): 1 for the {0, 1}
neurons, +1 for the {-1, +1} ``ste_b`` neuron. Every example of the data
counts once.

The counting runs where the model runs: a *probe* ``keras.Model`` is built
once per model from the model's own layers (replayed with
:class:`s2nn_keras.graph.LayerGraph`, so weights are shared and the probe
always sees the current values) whose outputs are the per-example spike
counts of each measured tensor, ``[batch]`` int32 numbers per layer; it runs
through Keras' compiled predict path (``predict_on_batch``: a
``tf.function``, ``jax.jit`` or the torch predict step), so a ResNet's
spike maps never travel to the host. Works on every backend; TensorFlow is
imported only when the data is a ``tf.data.Dataset`` (and then it is
already loaded).

Data forms (everywhere in the library): a NumPy (or backend) array of
inputs, a ``keras.utils.PyDataset``, a ``tf.data.Dataset``, or any iterable
of batches ``x`` / ``(x, y)`` / ``(x, y, sample_weight)``.

Example::

    from s2nn_keras import firing_rates, FiringRateCallback

    rates = firing_rates(model, x_test[:1000])      # {"stem_act": 0.21, ...}
    model.fit(x, y, callbacks=[FiringRateCallback(x_val[:512], max_batches=2)])
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence

import keras
import numpy as np

from s2nn_keras.graph import LayerGraph, TensorRef
from s2nn_keras.layers import is_spiking_neuron

__all__ = ["neuron_layers", "neuron_outputs", "iter_batches", "SpikeCounter", "SpikeCounts", "firing_rates",
           "FiringRateCallback", "silent_layers_message"]

DEFAULT_BATCH_SIZE = 256
logger = logging.getLogger("s2nn_keras")


def silent_layers_message(rates: Dict[str, float], when: str = "") -> Optional[str]:
    """The one-line warning for neuron layers that never fired (rate 0), or None."""
    silent = [name for name, rate in rates.items() if rate == 0.0]
    if not silent:
        return None
    shown = ", ".join(silent[:3]) + (f" (+{len(silent) - 3} more)" if len(silent) > 3 else "")
    return (f"warning: neuron layer(s) {shown} never fired at inference{when} (firing rate 0): the "
            "BatchNormalization before a neuron may not have converged its moving statistics "
            "(use momentum=0.9, see S2Activation) or the threshold is out of reach")


def neuron_layers(model: keras.Model) -> List[keras.layers.Layer]:
    """The spiking-neuron layers of ``model`` in graph order (what
    :func:`s2nn_keras.layers.is_spiking_neuron` accepts)."""
    return [layer for layer in model.layers if is_spiking_neuron(layer)]


def neuron_outputs(graph: LayerGraph) -> "collections.OrderedDict[str, TensorRef]":
    """``{node key: output TensorRef}`` of every neuron call in ``graph``
    (topological order; a neuron called twice appears as ``name`` and
    ``name#2``)."""
    return collections.OrderedDict(
        (n.key, n.output(0)) for n in graph.nodes if not n.is_input and is_spiking_neuron(n.layer))


# --------------------------------------------------------------------------
# Data.
# --------------------------------------------------------------------------


def _is_array(data) -> bool:
    return hasattr(data, "shape") and hasattr(data, "ndim") and hasattr(data, "__getitem__")


def _tf_dataset_type():
    tf = sys.modules.get("tensorflow")  # tf.data implies TensorFlow is already imported
    data_mod = getattr(tf, "data", None) if tf is not None else None
    return getattr(data_mod, "Dataset", None)


def iter_batches(data, batch_size: int = DEFAULT_BATCH_SIZE, max_batches: Optional[int] = None) -> Iterator[Any]:
    """Yields the input part ``x`` of every batch of ``data``.

    Args:
      data: an array of inputs (cut into ``batch_size`` slices), a
        ``keras.utils.PyDataset``, a ``tf.data.Dataset`` (yielded as NumPy)
        or any iterable of ``x`` / ``(x, y[, w])`` batches.
      max_batches: stop after this many batches.

    Raises:
      ValueError: a 0-d array, a bad batch size, or an endless PyDataset
        without ``max_batches``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    if _is_array(data):
        if len(data.shape) == 0:
            raise ValueError("data must be an array of examples (a batch axis first), got a 0-d array")
        source = (data[i:i + batch_size] for i in range(0, int(data.shape[0]), batch_size))
    elif isinstance(data, keras.utils.PyDataset):
        n = data.num_batches
        if n is None and max_batches is None:
            raise ValueError("an endless PyDataset (num_batches is None) needs max_batches")
        source = (data[i] for i in range(n if n is not None else max_batches))
    else:
        ds_type = _tf_dataset_type()
        if ds_type is not None and isinstance(data, ds_type):
            source = data.as_numpy_iterator()
        elif hasattr(data, "__iter__"):
            source = iter(data)
        else:
            raise ValueError(f"data must be an array, a PyDataset, a tf.data.Dataset or an iterable of batches; "
                             f"got {type(data).__name__}")
    for i, batch in enumerate(source):
        if max_batches is not None and i >= max_batches:
            break
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def _batch_size_of(x) -> int:
    first = keras.tree.flatten(x)[0]
    return int(first.shape[0])


# --------------------------------------------------------------------------
# The on-device counter.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class SpikeCounts:
    """Result of :meth:`SpikeCounter.count`, per measured tensor (float64
    arrays in the order of ``refs``): ``fired`` (elements ``> 0``),
    ``total`` (elements), ``nonbinary`` (elements outside {-1, 0, 1}; only
    with ``count_nonbinary``), over ``num_examples`` examples."""

    num_examples: int
    fired: np.ndarray
    total: np.ndarray
    nonbinary: Optional[np.ndarray] = None

    @property
    def rates(self) -> np.ndarray:
        """``fired / total`` (Eq. B.2), NaN where nothing was counted."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.fired / self.total


class _PerExampleCounts(keras.layers.Layer):
    """Per-example counts of one tensor, as an int32 ``[batch, k]`` tensor:
    column 0 the elements ``> 0``; then (``nonbinary``) the elements outside
    {-1, 0, 1}; then (``with_size``) the number of elements. A layer rather
    than bare ``keras.ops`` calls so that the probe's extra operations get
    names that cannot collide with the model's layer names."""

    def __init__(self, nonbinary=False, with_size=False, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.nonbinary = nonbinary
        self.with_size = with_size

    def call(self, t):
        ndim = len(t.shape)
        axes = tuple(range(1, ndim))

        def count(mask):
            c = keras.ops.cast(mask, "int32")
            return keras.ops.sum(c, axis=axes) if axes else c

        cols = [count(keras.ops.greater(t, 0))]
        if self.nonbinary:
            binary = keras.ops.logical_or(keras.ops.logical_or(keras.ops.equal(t, 0), keras.ops.equal(t, 1)),
                                          keras.ops.equal(t, -1))
            cols.append(count(keras.ops.logical_not(binary)))
        if self.with_size:
            cols.append(count(keras.ops.ones_like(t, dtype="bool")))
        return keras.ops.stack(cols, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1 + int(self.nonbinary) + int(self.with_size))


class SpikeCounter:
    """Counts the spikes of chosen tensors of a model on the device.

    The probe model is built once, here; :meth:`count` can be called any
    number of times (e.g. every epoch) and always uses the current weights.

    Args:
      graph: the model's :class:`~s2nn_keras.graph.LayerGraph` (or the model).
      refs: the tensors to measure (:class:`~s2nn_keras.graph.TensorRef`).
      count_nonbinary: also count the elements outside {-1, 0, 1} (to check
        that a tensor read as spikes really is binary).
    """

    def __init__(self, graph, refs: Sequence[TensorRef], *, count_nonbinary: bool = False):
        if isinstance(graph, keras.Model):
            graph = LayerGraph(graph)
        self.graph = graph
        self.refs = list(refs)
        self.count_nonbinary = count_nonbinary
        self.probe = None
        self._sizes = []
        if not self.refs:
            return
        replay = graph.replay()
        outputs = []
        for i, ref in enumerate(self.refs):
            t = replay.tensor(ref)
            dims = list(t.shape[1:])
            static = all(d is not None for d in dims)
            # a dynamic spatial size is counted per example too
            self._sizes.append(float(math.prod(int(d) for d in dims)) if static else None)
            counter = _PerExampleCounts(count_nonbinary, not static, name=f"__spike_count_{i}_{id(self):x}")
            outputs.append(counter(t))
        self.probe = keras.Model(replay.inputs[0] if len(replay.inputs) == 1 else replay.inputs, outputs,
                                 name=f"{graph.model.name}_spike_probe")

    def count(self, data, *, max_batches: Optional[int] = None,
              batch_size: int = DEFAULT_BATCH_SIZE) -> SpikeCounts:
        """One pass over ``data`` (forms of :func:`iter_batches`).

        Raises:
          ValueError: the data holds no example.
        """
        k = len(self.refs)
        fired, total, bad = np.zeros(k), np.zeros(k), np.zeros(k)
        n = 0
        for x in iter_batches(data, batch_size, max_batches):
            b = _batch_size_of(x)
            if b == 0:
                continue
            n += b
            if self.probe is None:
                continue
            outs = self.probe.predict_on_batch(x)
            outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
            for i, (size, out) in enumerate(zip(self._sizes, outs)):
                sums = np.asarray(out, dtype=np.float64).sum(axis=0)
                fired[i] += sums[0]
                if self.count_nonbinary:
                    bad[i] += sums[1]
                total[i] += sums[-1] if size is None else size * b
        if n == 0:
            raise ValueError("got an empty data set (no example to measure)")
        return SpikeCounts(n, fired, total, bad if self.count_nonbinary else None)


class _RateCounter:
    """Firing rates of every neuron call of one model (probe built once)."""

    def __init__(self, model):
        self.model = model
        self.graph = LayerGraph(model)
        self.neurons = neuron_outputs(self.graph)
        self.counter = SpikeCounter(self.graph, list(self.neurons.values())) if self.neurons else None

    def __call__(self, data, max_batches=None, batch_size=DEFAULT_BATCH_SIZE) -> Dict[str, float]:
        if self.counter is None:
            # Still validate the data (an empty set is an error for every model).
            if not any(_batch_size_of(x) for x in iter_batches(data, batch_size, max_batches)):
                raise ValueError("firing_rates got an empty data set")
            return collections.OrderedDict()
        try:
            counts = self.counter.count(data, max_batches=max_batches, batch_size=batch_size)
        except ValueError as err:
            if "empty data set" in str(err):
                raise ValueError("firing_rates got an empty data set") from None
            raise
        return collections.OrderedDict((name, float(r)) for name, r in zip(self.neurons, counts.rates))


def firing_rates(model: keras.Model, data, *, max_batches: Optional[int] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> Dict[str, float]:
    """Measures R(l) (Eq. B.2) of every neuron layer of ``model`` over ``data``.

    Args:
      model: a functional or built Sequential Keras model.
      data: inputs as an array, a ``keras.utils.PyDataset``, a
        ``tf.data.Dataset`` or an iterable of ``x`` / ``(x, y[, w])`` batches.
      max_batches: optional cap on the number of batches read.
      batch_size: slice size for array data.

    Returns:
      ``{layer_name: rate}`` in graph order, rates in [0, 1] (a neuron layer
      called twice has a second entry ``name#2``). Empty for a model without
      neurons (the ReLU baseline).

    A neuron layer that never fires (rate 0) is reported by one warning line
    on the ``s2nn_keras`` logger (:func:`silent_layers_message`).

    Raises:
      ValueError: empty data.
    """
    rates = _RateCounter(model)(data, max_batches, batch_size)
    message = silent_layers_message(rates)
    if message:
        logger.warning(message)
    return rates


class FiringRateCallback(keras.callbacks.Callback):
    """Logs per-layer firing rates at the end of every epoch.

    Adds ``firing_rate/<layer>`` and ``firing_rate/mean`` to the epoch logs,
    so ``History``, ``CSVLogger`` and ``TensorBoard`` record them. The probe
    model is built on the first epoch and reused (rebuilt only if the
    callback is attached to another model). When a neuron layer never fires
    at inference it logs one warning line (once per set of silent layers).

    Args:
      data: validation inputs (forms of :func:`firing_rates`).
      max_batches: cap on batches measured per epoch (keeps it cheap).
      batch_size: slice size for array data.
    """

    def __init__(self, data, max_batches: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__()
        self.data = data
        self.max_batches = max_batches
        self.batch_size = batch_size
        self.history: List[Dict[str, float]] = []
        self._counter = None
        self._warned = None

    def on_epoch_end(self, epoch, logs=None):
        if self._counter is None or self._counter.model is not self.model:
            self._counter = _RateCounter(self.model)
        rates = self._counter(self.data, max_batches=self.max_batches, batch_size=self.batch_size)
        self.history.append(rates)
        silent = tuple(name for name, rate in rates.items() if rate == 0.0)
        if silent and silent != self._warned:
            logger.warning(silent_layers_message(rates, f" after epoch {epoch + 1}"))
        self._warned = silent
        if logs is not None and rates:
            for name, rate in rates.items():
                logs[f"firing_rate/{name}"] = rate
            logs["firing_rate/mean"] = float(np.mean(list(rates.values())))
