"""Names the export accepts: TFLite formats, neuron formulations, op sets.

Pure constants (no TensorFlow import), so command-line front ends
(``python -m export``, ``trainers.flags``) can validate their flags before
TensorFlow loads.
"""

from export.transform.formulations import DEFAULT_FORMULATION, selectable_formulations

#: TFLite formats ``export.to_tflite`` writes: no quantization, full-integer
#: int8 (int8 weights per channel, int8 activations and I/O), and int16
#: activations with int8 weights.
QUANTIZATIONS = ("float32", "int8", "int16x8")
DEFAULT_FORMATS = QUANTIZATIONS

#: How a spiking neuron is written in the flatbuffer (``to_tflite(neuron=...)``,
#: ``python -m export --neuron``; the registry is :mod:`export.transform.formulations`):
#:
#: * ``"saturate"`` (default): the step is a saturating clamp fused into the
#:   convolution that produces the neuron's input (threshold in its bias, a
#:   large per-channel gain in its weight scale) or, when the neuron's input
#:   is shared (a residual sum), into one 1x1 ``DEPTHWISE_CONV_2D``; only
#:   ops edge NPUs and delegates run (see :data:`EDGE_OPS`).
#: * ``"compare"``: the earlier formulation (``GREATER_EQUAL`` /
#:   ``LESS_EQUAL`` / logical ops / ``SELECT_V2`` in float32 and int8, the
#:   ``ramp`` neuron in int16x8), kept for the ablation.
NEURON_FORMULATIONS = selectable_formulations()
DEFAULT_NEURON = DEFAULT_FORMULATION

#: The edge op set: ``{builtin op: how TFLite Micro runs it on a Cortex-M}``.
#: Every op is one Arm's Ethos-U compiler Vela places on the NPU (checked
#: against the installed ``ethos-u-vela``'s own supported-operator table by
#: ``tests/export/test_formats.py``).
#: The TFLite Micro column comes from tflite-micro's CMSIS-NN kernel
#: directory (``tensorflow/lite/micro/kernels/cmsis_nn/*.cc``, commit
#: 90b983c, 2026-08-20, which register these ops over CMSIS-NN functions
#: ``arm_convolve_*``, ``arm_depthwise_conv_*``, ``arm_fully_connected_*``,
#: ``arm_elementwise_add_*``, ``arm_avgpool_s8/s16``, ``arm_max_pool_s8/s16``,
#: ``arm_maximum_s8``/``arm_minimum_s8``, ``arm_pad_s8``; CMSIS-NN commit
#: 99f736a; ``transpose_conv.cc`` over ``arm_transpose_conv_wrapper_s8``,
#: int8 only, read at tflite-micro commit 0cc6f98): ``"cmsis-nn"``: an optimized CMSIS-NN kernel; ``"reference"``:
#: TFLite Micro's portable reference kernel (CMSIS-NN has none; slower);
#: ``"memory"``: no arithmetic (a view or a copy).
EDGE_OP_KERNELS = {
    "CONV_2D": "cmsis-nn",
    "DEPTHWISE_CONV_2D": "cmsis-nn",
    "FULLY_CONNECTED": "cmsis-nn",
    "ADD": "cmsis-nn",
    "AVERAGE_POOL_2D": "cmsis-nn",
    "MAX_POOL_2D": "cmsis-nn",
    "MAXIMUM": "cmsis-nn",
    "MINIMUM": "cmsis-nn",
    "PAD": "cmsis-nn",
    "TRANSPOSE_CONV": "cmsis-nn",
    "CONCATENATION": "reference",
    "RESIZE_NEAREST_NEIGHBOR": "reference",
    "MEAN": "reference",
    "RELU": "reference",
    "RELU6": "reference",
    "RELU_N1_TO_1": "reference",
    "QUANTIZE": "reference",
    "RESHAPE": "memory",
}

#: Builtin ops every runtime we target (XNNPACK, CMSIS-NN / TFLite Micro,
#: Arm Ethos-U55 via Vela) runs for int8. The default int8 and int16x8
#: exports use only these; QUANTIZE only at the model boundary
#: (``export.pipeline.inner_quantize_ops`` finds any that do not).
EDGE_OPS = frozenset(EDGE_OP_KERNELS)

#: Ops of the ``"compare"`` neuron (float32 and int8).
COMPARE_OPS = frozenset({"GREATER_EQUAL", "LESS_EQUAL", "LOGICAL_AND", "LOGICAL_OR", "SELECT_V2"})

#: Ops no default int8/int16x8 export may contain (edge NPUs have no
#: comparison, select or logical ops; CAST/GATHER are not in their op sets).
FORBIDDEN_EDGE_OPS = frozenset({
    "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL", "NOT_EQUAL", "SELECT", "SELECT_V2",
    "LOGICAL_AND", "LOGICAL_OR", "LOGICAL_NOT", "CAST", "GATHER", "GATHER_ND",
})

#: Graph rewrites ``export.tflite.convert.convert`` applies before converting
#: (:mod:`export.transform.rewrites`, the same function): ``"bn_as_depthwise"`` writes
#: a BatchNormalization that no conv absorbs as one 1x1 depthwise conv with
#: the ReLU fused (ReLU models; a spiking model's BNs are folded into its
#: neurons anyway), ``"gap_as_average_pool"`` global average pooling as
#: ``AVERAGE_POOL_2D`` instead of ``MEAN`` (TFLite Micro / CMSIS-NN run
#: MEAN with a reference kernel). Both by default; ``()`` keeps the
#: converter's own forms (``MUL`` + ``ADD``, ``MEAN``).
REWRITES = ("bn_as_depthwise", "gap_as_average_pool")
DEFAULT_REWRITES = REWRITES
