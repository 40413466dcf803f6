"""export.tflite.vela: Ethos-U compilation with Arm's Vela.

The compile tests need ``ethos-u-vela`` (the ``edge`` extra) and skip
without it; each Vela run on the small model takes about a second.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from export.tflite import vela

U55, U85 = "ethos-u55-128", "ethos-u85-256"


needs_vela = pytest.mark.skipif(not vela.available(), reason="ethos-u-vela not installed (pip install 's2nn_keras[edge]')")


@pytest.fixture(scope="module")
def small_model(fmnist):
    """A small PreActResNet S2NN (blocks [1, 1], width 8) with BN statistics
    from real images, and the calibration callable for its int8 export."""
    import keras
    from s2nn_keras.models import PreActResNet

    x_train = fmnist[0][:512].astype("float32") / 255.0
    keras.utils.set_random_seed(3)
    model = PreActResNet([1, 1], (28, 28, 1), 10, width=8, dropout=0.0)
    # BN statistics from data (momentum 0: one training-mode pass sets them).
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    for l in bns:
        l.momentum = 0.0
    model(x_train[:256], training=True)
    rng = np.random.default_rng(0)
    for l in bns:  # some negative scales, as trained models have
        gamma = l.gamma.numpy()
        gamma[rng.random(gamma.shape) < 0.25] *= -1.0
        l.gamma.assign(gamma)

    def rep():
        for i in range(0, 128, 32):
            yield [x_train[256 + i:256 + i + 32]]

    return model, rep


@pytest.fixture(scope="module")
def int8_default(small_model):
    from export import to_tflite

    model, rep = small_model
    return to_tflite(model, "int8", rep)


@pytest.fixture(scope="module")
def int8_compare(small_model):
    from export import to_tflite

    model, rep = small_model
    return to_tflite(model, "int8", rep, neuron="compare")


@needs_vela
@pytest.mark.parametrize("accelerator", [U55, U85])
def test_default_int8_export_runs_entirely_on_the_npu(int8_default, accelerator):
    r = vela.compile_for_ethos_u(int8_default, accelerator)
    assert r["cpu_fallback"] == [], r["cpu_fallback"]
    assert r["cpu_op_types"] == {}
    assert r["cpu_ops"] == 0 and r["npu_op_fraction"] == 1.0
    assert r["npu_partitions"] == 1  # one command stream: the graph is not split
    assert r["npu_ops"] == r["input_ops"] > 0


@needs_vela
def test_compare_formulation_falls_back_to_the_cpu_on_u55(int8_compare):
    """The ablation's GREATER_EQUAL/SELECT_V2 neurons: the U55 has no
    comparison or select ops, so the check above can fail; the U85 maps them."""
    r = vela.compile_for_ethos_u(int8_compare, U55)
    assert r["npu_op_fraction"] < 1.0 and r["cpu_ops"] > 0
    assert {"GREATER_EQUAL", "SELECT_V2"} <= set(r["cpu_op_types"])
    assert set(r["cpu_op_types"]) <= {f["op"] for f in r["cpu_fallback"]}
    assert all(f["reason"] and f["name"] for f in r["cpu_fallback"])
    assert r["npu_partitions"] > 1  # the graph is cut at every neuron
    assert sum(r["cpu_op_types"].values()) == r["cpu_ops"] == r["input_ops"] - r["npu_ops"]
    r85 = vela.compile_for_ethos_u(int8_compare, U85)
    assert r85["cpu_ops"] == 0 and r85["npu_partitions"] == 1


@needs_vela
def test_figures_and_system_config(int8_default):
    from export.tflite.flatbuffer import op_counts

    r = vela.compile_for_ethos_u(int8_default, U55, keep_model=True)
    assert (r["system_config"], r["memory_mode"]) == vela.DEFAULT_SYSTEMS["ethos-u55"]
    assert r["core_clock_hz"] == 500e6
    assert r["input_ops"] == sum(op_counts(int8_default).values())
    assert r["estimated_cycles"] > 0 and r["npu_cycles"] > 0 and r["macs"] > 0
    # inference time = total cycles / clock
    assert r["estimated_inference_ms"] == pytest.approx(1e3 * r["estimated_cycles"] / 500e6, rel=1e-4)
    assert r["sram_bytes"] > 0 and r["flash_bytes"] > 0 and r["dram_bytes"] == 0
    assert (r["weights_in"], r["feature_maps_in"]) == ("Off-chip Flash", "SRAM")
    assert r["optimized_model_bytes"] == len(r["optimized_model"])
    assert op_counts(r["optimized_model"]) == {"CUSTOM:ethos-u": 1}
    # A different system changes the estimate, and is reported as used.
    slow = vela.compile_for_ethos_u(int8_default, U55, system_config="Ethos_U55_Deep_Embedded")
    assert slow["system_config"] == "Ethos_U55_Deep_Embedded" and slow["core_clock_hz"] == 200e6
    assert slow["estimated_inference_ms"] > r["estimated_inference_ms"]
    table = vela.format_table({U55: r})
    assert U55 in table and "100.0%" in table


@needs_vela
def test_float_model_stays_on_the_cpu():
    """Vela takes only quantized operators: a float32 conv falls back, with Vela's reason."""
    import tensorflow as tf

    conv = tf.function(lambda x: tf.nn.relu(tf.nn.conv2d(x, tf.ones([3, 3, 1, 4]), 1, "SAME")),
                       input_signature=[tf.TensorSpec([1, 8, 8, 1], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([conv.get_concrete_function()], conv)
    r = vela.compile_for_ethos_u(converter.convert(), U55)
    assert r["npu_op_fraction"] == 0.0 and r["npu_partitions"] == 0
    assert r["cpu_op_types"] == {"CONV_2D": 1} and r["cpu_ops"] == r["input_ops"] == 1
    # Vela warns about the fused RELU it splits off the conv; the reason names the dtype.
    assert r["cpu_fallback"] and all("Float32" in f["reason"] for f in r["cpu_fallback"])


@needs_vela
def test_pipeline_reporter(int8_default):
    """The FormatReporter export_run takes: figures per accelerator, summary lines."""
    import types

    rep = vela.reporter()
    assert rep.name == "vela" and tuple(rep.formats) == ("int8",)
    figures = rep.run("int8", types.SimpleNamespace(flatbuffer=int8_default))
    assert list(figures) == list(vela.REPORT_ACCELERATORS)
    assert all(f["npu_op_fraction"] == 1.0 for f in figures.values())
    text = rep.summary("int8", figures)
    assert all(acc in text for acc in vela.REPORT_ACCELERATORS) and "Ethos_U55_High_End_Embedded" in text
    with pytest.raises(ValueError, match="unknown Ethos-U accelerator"):
        vela.reporter(["ethos-u99"])


@needs_vela
def test_vela_failure_is_one_clear_error(int8_default):
    with pytest.raises(vela.VelaError, match="ethos-u55-128.*No_Such_System"):
        vela.compile_for_ethos_u(int8_default, U55, system_config="No_Such_System")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown Ethos-U accelerator 'ethos-u99'; valid: ethos-u55-32"):
        vela.compile_for_ethos_u(b"x" * 16, "ethos-u99")
    with pytest.raises(ValueError, match="TFLite flatbuffer"):
        vela.compile_for_ethos_u(b"not a model", U55)
    with pytest.raises(ValueError, match="TFLite flatbuffer"):
        vela.compile_for_ethos_u("model.tflite", U55)
    with pytest.raises(ValueError, match="optimise"):
        vela.compile_for_ethos_u(b"\0\0\0\0TFL3", U55, optimise="Fast")


def test_missing_vela_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("ethosu") else real(name, *a))
    with pytest.raises(vela.VelaNotInstalledError, match=r"pip install 's2nn_keras\[edge\]'") as e:
        vela.compile_for_ethos_u(b"\0\0\0\0TFL3", U55)
    assert isinstance(e.value, ImportError)
    with pytest.raises(vela.VelaNotInstalledError):
        vela.vela_version()
    assert not vela.available()
