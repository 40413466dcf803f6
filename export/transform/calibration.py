"""The one range probe: min/max of any tensors of a model over calibration data.

Post-training quantization gives every activation the grid of its range on
the calibration images (:func:`export.transform.edge.quantization_params`); the export
predicts those grids (saturate neurons, :mod:`export.transform.edge`), places
thresholds on them (:func:`export.tflite.convert.int8_threshold_model`), scales the
ramp neuron (:func:`export.tflite.convert.ramp_model`) and calibrates the
quantization-aware model (:func:`export.transform.qat.calibrate`), all with
:class:`RangeProbe`: it replays the model's layer graph
(:class:`s2nn_keras.graph.LayerGraph`) with the chosen tensors as outputs
and reduces each batch to its minimum and maximum inside one traced
function (per tensor, or per channel along the last axis).

Example::

    from export.transform.calibration import RangeProbe, batches_of
    from s2nn_keras.graph import TensorRef

    probe = RangeProbe(model, [TensorRef("add", 0, 0)])
    lo, hi = probe(representative_data)[TensorRef("add", 0, 0)]
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Tuple, Union

import numpy as np

__all__ = ["RangeProbe", "tensor_ranges", "batches_of"]


def batches_of(data: Union[Callable[[], Iterable], np.ndarray], batch_size: int = 100) -> Iterator[np.ndarray]:
    """float32 input batches of ``data``: a representative-data callable
    (yielding ``[batch]`` lists or arrays, as ``to_tflite`` takes) or an
    array of inputs (cut into ``batch_size`` pieces)."""
    if callable(data):
        for batch in data():
            batch = batch[0] if isinstance(batch, (list, tuple)) else batch
            yield np.asarray(batch, dtype=np.float32)
        return
    data = np.asarray(data, dtype=np.float32)
    for start in range(0, len(data), batch_size):
        yield data[start:start + batch_size]


class RangeProbe:
    """Min/max of tensors ``refs`` (:class:`s2nn_keras.graph.TensorRef`) of
    ``model`` in inference mode.

    Args:
      model: a functional or Sequential Keras model (single input).
      refs: the tensors to measure.
      per_channel: reduce over every axis but the last (the channel) instead
        of over the whole tensor.
      traced: run the model and the reduction as one ``tf.function``, built
        once per probe (worth it for a probe called many times, e.g. the
        calibration rounds of :func:`export.transform.qat.calibrate`: changing a
        variable of the model, a quantizer's grid, does not retrace); else
        eagerly (no trace, no retracing warning for one-shot probes).

    Calling the probe on data (see :func:`batches_of`) returns
    ``{ref: (lo, hi)}``: floats, or float64 arrays of one value per channel.
    """

    def __init__(self, model, refs: Sequence, per_channel: bool = False, traced: bool = False):
        import keras
        import tensorflow as tf

        from s2nn_keras.graph import LayerGraph

        self.refs = list(refs)
        self.per_channel = bool(per_channel)
        replay = LayerGraph(model).replay()
        inputs = replay.inputs[0] if len(replay.inputs) == 1 else replay.inputs
        outputs = [replay.tensor(r) for r in self.refs]
        self._model = keras.Model(inputs, outputs)
        per = self.per_channel

        def reduce(x):
            outs = self._model(x, training=False)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            lo, hi = [], []
            for o in outs:
                axes = list(range(len(o.shape) - 1)) if per else None
                lo.append(tf.reduce_min(o, axis=axes))
                hi.append(tf.reduce_max(o, axis=axes))
            return lo, hi

        self._reduce = tf.function(reduce, reduce_retracing=True) if traced else reduce

    def __call__(self, data, batch_size: int = 100) -> Dict:
        if not self.refs:
            return {}
        lo: List = [None] * len(self.refs)
        hi: List = [None] * len(self.refs)
        for x in batches_of(data, batch_size):
            a, b = self._reduce(x)
            for i, (u, v) in enumerate(zip(a, b)):
                u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
                lo[i] = u if lo[i] is None else np.minimum(lo[i], u)
                hi[i] = v if hi[i] is None else np.maximum(hi[i], v)
        if lo[0] is None:
            raise ValueError("calibration data is empty: it must yield at least one batch")
        if self.per_channel:
            return {r: (lo[i], hi[i]) for i, r in enumerate(self.refs)}
        return {r: (float(lo[i]), float(hi[i])) for i, r in enumerate(self.refs)}


def tensor_ranges(model, refs: Sequence, data, per_channel: bool = False,
                  batch_size: int = 100) -> Dict[object, Tuple]:
    """``RangeProbe(model, refs, per_channel)(data)`` (see :class:`RangeProbe`)."""
    return RangeProbe(model, refs, per_channel)(data, batch_size)
