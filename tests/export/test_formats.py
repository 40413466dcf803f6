"""The edge op set (export.formats.EDGE_OPS) agrees with what Arm's Vela
compiler places on the Ethos-U NPU -- read from the installed ethos-u-vela
package's own supported-operator table -- and names a TFLite Micro kernel
for every op; the formulation registry (export.transform.formulations) is the one
source of the spike levels."""

import pytest

from export.formats import COMPARE_OPS, EDGE_OP_KERNELS, EDGE_OPS, FORBIDDEN_EDGE_OPS, NEURON_FORMULATIONS
from export.transform.formulations import (available_formulations, get_formulation, reference_levels, register_formulation,
                                 selectable_formulations, spike_levels)


def _vela_npu_ops():
    """{TFLite builtin name: Vela supports it on the NPU} from Vela's tables."""
    pytest.importorskip("ethosu.vela")
    from ethosu.vela.tflite.BuiltinOperator import BuiltinOperator
    from ethosu.vela.tflite_mapping import builtin_operator_map
    from ethosu.vela.tflite_supported_operators import TFLiteSupportedOperators

    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    return {names[code]: entry[0] in TFLiteSupportedOperators.supported_operators
            for code, entry in builtin_operator_map.items() if code in names}


def test_every_edge_op_runs_on_the_ethos_u_npu():
    npu = _vela_npu_ops()
    assert EDGE_OPS <= set(npu), sorted(EDGE_OPS - set(npu))
    assert {op for op in EDGE_OPS if not npu[op]} == set()
    # MAX_POOL_2D is one (Vela runs it on the NPU); the ops the issue lists as CPU-only are not.
    assert "MAX_POOL_2D" in EDGE_OPS and npu["MAX_POOL_2D"]
    for op in ("GREATER_EQUAL", "SELECT_V2", "LOGICAL_AND", "DEQUANTIZE"):
        assert not npu[op], op
        assert op not in EDGE_OPS


def test_edge_ops_name_their_tflite_micro_kernel():
    assert set(EDGE_OP_KERNELS) == EDGE_OPS
    assert set(EDGE_OP_KERNELS.values()) <= {"cmsis-nn", "reference", "memory"}
    # the kernels tflite-micro's cmsis_nn directory provides (see the EDGE_OP_KERNELS comment)
    for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D"):
        assert EDGE_OP_KERNELS[op] == "cmsis-nn"
    assert EDGE_OP_KERNELS["MEAN"] == "reference"      # the reason for the AVERAGE_POOL_2D rewrite (issue 15 item 4)
    assert not EDGE_OPS & FORBIDDEN_EDGE_OPS and not EDGE_OPS & COMPARE_OPS


def test_formulations_are_registered_with_their_levels():
    assert set(available_formulations()) >= {"saturate", "compare", "ramp"}
    assert selectable_formulations() == NEURON_FORMULATIONS == ("saturate", "compare")
    assert spike_levels("saturate", 0.0) == (0.0, 6.0) and spike_levels("saturate", -1.0) == (-1.0, 1.0)
    assert reference_levels(0.0) == (0.0, 1.0) and reference_levels(-1.0) == (-1.0, 1.0)
    saturate = get_formulation("saturate")
    assert saturate.edge and saturate.ops <= EDGE_OPS and set(saturate.placements) == {"conv", "tensor"}
    assert get_formulation("compare").for_format("int16x8").name == "ramp"
    assert get_formulation("compare").for_format("int8").name == "compare"
    assert get_formulation("compare").ops == COMPARE_OPS and not get_formulation("compare").edge
    with pytest.raises(ValueError, match="unknown neuron formulation 'nope'.*saturate"):
        get_formulation("nope")
    with pytest.raises(ValueError, match="does not write"):
        get_formulation("ramp").for_format("int8")
    with pytest.raises(ValueError, match="already registered"):
        register_formulation("saturate", levels={0.0: (0.0, 6.0)}, formats=("int8",), ops=(), placements=())
    with pytest.raises(ValueError, match="levels"):
        register_formulation("bad", levels={0.0: (1.0, 0.0)}, formats=("int8",), ops=(), placements=())
    assert "bad" not in available_formulations()


def test_threshold_neuron_takes_its_levels_from_the_registry():
    from export.transform.neurons import ThresholdNeuron

    assert ThresholdNeuron(0.0, formulation="saturate").levels == (0.0, 6.0)
    assert ThresholdNeuron(0.0, formulation="ramp", off_value=-1.0).levels == (-1.0, 1.0)
    with pytest.raises(ValueError, match="saturate formulation writes the levels"):
        ThresholdNeuron(0.0, formulation="saturate", on_value=1.0)
