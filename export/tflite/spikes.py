"""Reads the spike tensors of a TFLite model in every runtime.

Intermediate tensors inside a delegate (XNNPACK) are not readable, so the
spike tensors are made *model outputs*: :func:`add_outputs` appends tensor
indices to the main subgraph's output list of the flatbuffer (nothing else
changes: same ops, same quantization), and :func:`run_spikes` runs that
probe in

* ``"litert"``: LiteRT with its default XNNPACK delegate,
* ``"litert_builtin"``: LiteRT builtin kernels only
  (``OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES``),
* ``"tflm"``: the TensorFlow Lite Micro interpreter (reference kernels),

returning the raw integer (or float32) spike values, so runtimes can be
compared bit for bit and levels counted exactly.

Example::

    from export.tflite.convert import convert
    from export.tflite.spikes import run_spikes

    conv = convert(model, "int8", rep)
    logits, spikes = run_spikes(conv.flatbuffer, conv.spike_tensors, images, "tflm")
    spikes["stage1_block1_act1"].dtype      # int8, values in {-128, 127}
"""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from export.tflite.runtimes import RUNTIMES, Session, dequantize, tflm_arena_size

__all__ = ["RUNTIMES", "add_outputs", "run_spikes"]


def add_outputs(tflite_model: bytes, tensors: Sequence[int]) -> bytes:
    """The flatbuffer with ``tensors`` (indices in the main subgraph)
    appended to the main subgraph's outputs, in that order."""
    import flatbuffers

    from export.tflite.flatbuffer import schema

    s = schema()
    model = s.ModelT.InitFromObj(s.Model.GetRootAs(bytes(tflite_model), 0))
    graph = model.subgraphs[0]
    n = len(graph.tensors)
    bad = [t for t in tensors if not 0 <= int(t) < n]
    if bad:
        raise ValueError(f"tensor indices {bad} out of range (the subgraph has {n} tensors)")
    graph.outputs = [int(t) for t in graph.outputs] + [int(t) for t in tensors]
    builder = flatbuffers.Builder(len(tflite_model) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def run_spikes(tflite_model: bytes, spike_tensors: Dict[str, int], images: np.ndarray,
               runtime: str = "litert") -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Runs every image (float32, the model's input convention) and returns
    ``(outputs, spikes)``: the first model output dequantized to float32
    ``[N, ...]``, and per neuron its raw spike tensor values ``[N, ...]``
    (the tensor's own dtype: int8/int16 codes, or float32)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    names = list(spike_tensors)
    flat = add_outputs(tflite_model, [spike_tensors[n] for n in names])
    # The probe keeps every spike tensor alive to the end: TFLM gets its own arena.
    kwargs = {"arena_size": tflm_arena_size(flat) + 1024} if runtime == "tflm" else {}
    session = Session(flat, runtime, **kwargs)
    logits, spikes = [], {n: [] for n in names}
    for image in images:
        values = session.run(session.quantize_input(image[None]))
        logits.append(dequantize(values[0], session.outputs[0])[0])
        for n, v in zip(names, values[1:]):
            spikes[n].append(v[0])
    return np.stack(logits), {n: np.stack(v) for n, v in spikes.items()}
