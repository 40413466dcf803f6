"""Names the export accepts: TFLite formats, neuron formulations, op sets.

Pure constants (no TensorFlow import), so command-line front ends
(``python -m export``, ``trainers.flags``) can validate their flags before
TensorFlow loads.
"""

#: TFLite formats ``export.to_tflite`` writes: no quantization, full-integer
#: int8 (int8 weights per channel, int8 activations and I/O), and int16
#: activations with int8 weights.
QUANTIZATIONS = ("float32", "int8", "int16x8")
DEFAULT_FORMATS = QUANTIZATIONS

#: How a spiking neuron is written in the flatbuffer (``to_tflite(neuron=...)``,
#: ``python -m export --neuron``):
#:
#: * ``"saturate"`` (default): the step is a saturating clamp fused into the
#:   convolution that produces the neuron's input (threshold in its bias, a
#:   large per-channel gain in its weight scale) or, when the neuron's input
#:   is shared (a residual sum), into one 1x1 ``DEPTHWISE_CONV_2D``; only
#:   ops edge NPUs and delegates run (see :data:`EDGE_OPS`).
#: * ``"compare"``: the earlier formulation (``GREATER_EQUAL`` /
#:   ``LESS_EQUAL`` / logical ops / ``SELECT_V2`` in float32 and int8, the
#:   ``ramp`` neuron in int16x8), kept for the ablation.
NEURON_FORMULATIONS = ("saturate", "compare")
DEFAULT_NEURON = "saturate"

#: Builtin ops every runtime we target (XNNPACK, CMSIS-NN / TFLite Micro,
#: Arm Ethos-U55 via Vela) runs for int8. The default int8 and int16x8
#: exports use only these; QUANTIZE / DEQUANTIZE only at the model
#: boundary (``export.tflite.boundary_ops`` checks where they sit).
EDGE_OPS = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MEAN", "AVERAGE_POOL_2D",
    "RESHAPE", "RELU", "RELU6", "RELU_N1_TO_1", "MINIMUM", "MAXIMUM",
    "QUANTIZE", "DEQUANTIZE",
})

#: Ops of the ``"compare"`` neuron (float32 and int8).
COMPARE_OPS = frozenset({"GREATER_EQUAL", "LESS_EQUAL", "LOGICAL_AND", "LOGICAL_OR", "SELECT_V2"})

#: Ops no default int8/int16x8 export may contain (edge NPUs have no
#: comparison, select or logical ops; CAST/GATHER are not in their op sets).
FORBIDDEN_EDGE_OPS = frozenset({
    "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL", "NOT_EQUAL", "SELECT", "SELECT_V2",
    "LOGICAL_AND", "LOGICAL_OR", "LOGICAL_NOT", "CAST", "GATHER", "GATHER_ND",
})

#: The two spike levels of the ``"saturate"`` neuron as real (dequantized)
#: values, by the neuron's off value: ``{0, 6}`` for {0, 1} neurons (the
#: consumers' kernels carry the factor 1/6), ``{-1, +1}`` for ``ste_b``.
SATURATE_LEVELS = {0.0: (0.0, 6.0), -1.0: (-1.0, 1.0)}
