"""The export on every model of the zoo (tests/zoo.py: the four MLPerf Tiny
networks and the layer patterns users write): for every format the fold is
exact, the flatbuffer holds edge ops only, every spike tensor is two-level in
LiteRT (XNNPACK and builtin kernels) and TFLite Micro, and the runtimes'
neurons agree bit for bit wherever their inputs do; slow: 100 % of the int8
ops on the Ethos-U55 NPU (Vela), and int8 agreement >= 99 % with the
quantization-aware fine-tuned Keras model.

The default tests use the zoo's cached one-epoch models (zoo.trained), a few
verification images and TFLite Micro on fewer still, to stay fast.
"""

import numpy as np
import pytest

from tests import zoo

FORMATS = ("float32", "int8", "int16x8")
N_CALIBRATION = 64
N_VERIFY = 24
N_TFLM = 4

#: Neurons the saturate export writes as their own 1x1 depthwise op (every
#: other neuron is fused into the Conv/Depthwise/Dense before it), per model.
TENSOR_NEURONS = {
    "resnet8": {"stack1_act", "stack2_act", "stack3_act"},     # after the residual Adds
    "two_neurons_in_a_row": {"act1b"},                          # reads another neuron's spikes
    "neuron_after_add": {"add_act"},
}


def _case(name):
    from export.transform.fold import fold_batchnorm

    model = zoo.trained(name)
    x_train, _, x_test, _ = zoo.data(name)
    calibration = x_train[-N_CALIBRATION:]

    def representative():
        for i in range(0, len(calibration), 32):
            yield [calibration[i:i + 32]]

    return model, fold_batchnorm(model), representative, x_test[:N_VERIFY]


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_fold_is_exact(name):
    from export.metrics import agreement_report
    from export.tflite.verify import verify_fold

    model, folded, _, x = _case(name)
    check = verify_fold(model, folded, x)
    spikes = sum(v["elements"] for v in check["spike_mismatches"].values())
    assert check["neurons_compared"] == sum(1 for l in model.layers if getattr(l, "surrogate", None))
    assert check["total_spike_mismatches"] <= 1e-5 * spikes, check["spike_mismatches"]
    task = zoo.ZOO[name].task
    assert agreement_report(check["logits_original"], check["logits_folded"], task)["agreement"] == 1.0
    if task == "regression":
        assert check["max_logit_abs_diff"] < 1e-4


@pytest.mark.parametrize("quantization", FORMATS)
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_every_format_is_edge_only_and_two_level(name, quantization):
    from export.formats import EDGE_OPS, FORBIDDEN_EDGE_OPS
    from export.tflite.convert import convert, op_names
    from export.metrics import agreement_report
    from export.tflite.verify import verify_spikes

    _, folded, representative, x = _case(name)
    conv = convert(folded, quantization, representative if quantization != "float32" else None)
    ops = op_names(conv.flatbuffer)
    assert set(ops) <= EDGE_OPS and not set(ops) & FORBIDDEN_EDGE_OPS, ops
    kinds = {n: p.kind for n, p in conv.plan.neurons.items()}
    tensor = {n for n, k in kinds.items() if k == "tensor"}
    expected = TENSOR_NEURONS.get(name, set())
    if name == "fc_autoencoder" and quantization != "float32":
        assert tensor <= {"encoder1_act"}             # 640 inputs: the fused form could overflow int32
        assert all("overflow" in conv.plan.neurons[n].reason for n in tensor)
    else:
        assert tensor == expected, kinds
    # a fused neuron costs no op: one weighted op per Conv/Depthwise/Dense, one more per tensor neuron
    # (int16x8: plus one level stage per neuron)
    layers = sum(1 for l in folded.layers if type(l).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense"))
    stages = len(kinds) if quantization == "int16x8" else 0
    weighted = sum(ops.get(op, 0) for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    assert weighted == layers + len(tensor) + stages, ops
    check = verify_spikes(conv, folded, x, max_tflm_examples=N_TFLM)
    assert check["two_level"], check["nonbinary_values"]
    assert check["neurons_equal_given_equal_inputs"], check["runtime_agreement"]
    assert set(check["runtimes"]) == {"litert", "litert_builtin", "tflm"}
    if quantization == "float32":
        from export.tflite.runtimes import run_litert

        assert check["end_to_end_agreement"] == 1.0
        out = run_litert(conv.flatbuffer, x)["outputs"]
        assert agreement_report(folded.predict(x, verbose=0), out, zoo.ZOO[name].task)["agreement"] == 1.0
    else:
        assert check["local_agreement"] >= 0.99, check["per_neuron"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_every_int8_model_runs_entirely_on_the_ethos_u55(name):
    pytest.importorskip("ethosu.vela")
    from export.tflite.convert import to_tflite
    from export.tflite.vela import compile_for_ethos_u

    model, _, representative, _ = _case(name)
    u55 = compile_for_ethos_u(to_tflite(model, "int8", representative), "ethos-u55-128")
    assert u55["npu_op_fraction"] == 1.0 and not u55["cpu_fallback"], u55["cpu_fallback"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_quantization_aware_int8_agrees_with_its_keras_model(name):
    from export.transform.qat import QATConfig, quantization_aware_fine_tune
    from export.tflite.runtimes import run_litert, run_tflm
    from export.tflite.convert import convert
    from export.metrics import agreement_report, model_logits

    model = zoo.trained(name)
    x_train, _, x_test, _ = zoo.data(name)
    task = zoo.ZOO[name].task
    result = quantization_aware_fine_tune(model, x_train, x_train[-500:], QATConfig(epochs=1.0, task=task))
    calibration = x_train[-500:]
    conv = convert(result.model, "int8", lambda: ([calibration[i:i + 50]] for i in range(0, 500, 50)))
    ref = model_logits(result.model, x_test)
    lite = agreement_report(ref, run_litert(conv.flatbuffer, x_test)["outputs"], task,
                            inputs=x_test if task == "regression" else None)
    assert lite["agreement"] >= 0.99, lite
    micro = agreement_report(ref[:50], run_tflm(conv.flatbuffer, x_test[:50])["outputs"], task)
    assert micro["agreement"] >= 0.98, micro
    if task == "regression":
        assert lite["score_spearman"] >= 0.99, lite
