"""BatchNorm folding (paper §4.3, Eq. 27) and the threshold neuron."""

import numpy as np
import pytest

import keras

from export.transform.fold import FoldError, bn_affine, fold_batchnorm, fold_batchnorm_with_report
from export.transform.neurons import ThresholdNeuron
from s2nn_keras import S2Activation, firing_rates, neuron_layers


# --------------------------------------------------------------------------
# ThresholdNeuron
# --------------------------------------------------------------------------


def _reference(u, th, pol, off=0.0):
    fire = np.where(pol > 0, u >= th, np.where(pol < 0, u <= th, th == 1.0))
    return np.where(fire, 1.0, off).astype(np.float32)


@pytest.mark.parametrize("off", [0.0, -1.0])
def test_threshold_neuron_all_polarities(off):
    th = np.array([0.5, -0.25, 1.0, 0.0, 2.0], np.float32)
    pol = np.array([1, -1, 0, 0, 1])
    layer = ThresholdNeuron(th, pol, off_value=off)
    u = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)
    u[:5] = th  # exact ties fire for both polarities (>= and <=)
    got = np.asarray(layer(u))
    np.testing.assert_array_equal(got, _reference(u, th, pol, off))
    assert got[:, 2].min() == 1.0 and got[:, 3].max() == off  # constant channels
    assert ThresholdNeuron.is_spiking_neuron


def test_threshold_neuron_ramp_equals_step_away_from_ties():
    th = np.array([0.5, -0.25, 1.0, 0.0], np.float32)
    pol = np.array([1, -1, 0, 0])
    u = np.random.default_rng(1).normal(size=(4, 6, 6, 4)).astype(np.float32)
    u[np.abs(u - th) < 1e-3] += 0.01
    ramp = ThresholdNeuron(th, pol, formulation="ramp", gain=1e4)
    np.testing.assert_array_equal(np.asarray(ramp(u)), _reference(u, th, pol))


def test_threshold_neuron_serializes(tmp_path):
    inputs = keras.Input((4, 4, 3))
    outputs = ThresholdNeuron([0.1, -0.2, 1.0], [1, -1, 0], off_value=-1.0, name="n")(inputs)
    model = keras.Model(inputs, outputs)
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    x = np.random.default_rng(2).normal(size=(3, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))
    layer = again.get_layer("n")
    assert list(layer.polarity) == [1, -1, 0] and layer.off_value == -1.0


@pytest.mark.parametrize("kwargs, match", [
    ({"thresholds": [0.1, 0.5], "polarity": [1, 0]}, "constant channels"),
    ({"thresholds": [0.1], "polarity": [2]}, "polarity"),
    ({"thresholds": [np.nan]}, "finite"),
    ({"formulation": "sigmoid"}, "formulation"),
    ({"off_value": 0.5}, "off_value"),
])
def test_threshold_neuron_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ThresholdNeuron(**kwargs)


# --------------------------------------------------------------------------
# Eq. 27 on a hand-built BN
# --------------------------------------------------------------------------


def _bn_neuron_model(surrogate="s2nn"):
    inputs = keras.Input((5, 5, 4), name="x")
    h = keras.layers.BatchNormalization(name="bn")(inputs)
    h = S2Activation(surrogate, name="act")(h)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(h))


@pytest.mark.parametrize("surrogate", ["s2nn", "ste_b", "sibnn"])
def test_eq27_threshold_per_sign(surrogate):
    model = _bn_neuron_model(surrogate)
    bn = model.get_layer("bn")
    u_th = model.get_layer("act").threshold
    bn.set_weights([np.array([2.0, -1.5, 0.0, 0.0], np.float32),   # gamma
                    np.array([0.3, 0.1, u_th + 0.5, u_th - 0.5], np.float32),  # beta
                    np.array([0.2, -0.4, 0.0, 0.0], np.float32),   # moving mean
                    np.array([4.0, 0.25, 1.0, 1.0], np.float32)])  # moving variance
    folded, report = fold_batchnorm_with_report(model)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
    neuron = folded.get_layer("act")
    g, b = bn_affine(bn)
    assert list(neuron.polarity) == [1, -1, 0, 0]
    np.testing.assert_allclose(neuron.thresholds[:2], (u_th - b[:2]) / g[:2], rtol=1e-6)
    assert list(neuron.thresholds[2:]) == [1.0, 0.0]  # always fires / never fires
    assert neuron.off_value == model.get_layer("act").off_value
    assert report["neurons"]["act"]["negative_scale"] == 1
    assert report["neurons"]["act"]["zero_scale"] == 2
    assert report["neurons"]["act"]["zero_scale_always_fires"] == 1
    x = np.random.default_rng(3).normal(scale=3.0, size=(256, 5, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(x, verbose=0), folded.predict(x, verbose=0))


def test_conv_bn_folds_into_kernel_and_bias_and_threshold_moves_to_bias():
    inputs = keras.Input((6, 6, 2))
    h = keras.layers.Conv2D(3, 3, use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = S2Activation("s2nn", name="act")(h)
    model = keras.Model(inputs, h)
    rng = np.random.default_rng(4)
    model.get_layer("bn").set_weights([
        np.array([1.5, -0.7, 0.0], np.float32), rng.normal(size=3).astype(np.float32),
        rng.normal(size=3).astype(np.float32), np.array([0.5, 2.0, 1.0], np.float32)])
    folded, report = fold_batchnorm_with_report(model)
    assert report["batchnorm"]["bn"]["kind"] == "conv_kernel_and_bias"
    assert report["neurons"]["act"]["threshold_from"] == "bias of conv"
    assert np.all(folded.get_layer("act").thresholds == 0.0)
    x = rng.normal(size=(128, 6, 6, 2)).astype(np.float32)
    a, b = model.predict(x, verbose=0), folded.predict(x, verbose=0)
    assert np.mean(a != b) < 1e-3  # float ties at the threshold only


# --------------------------------------------------------------------------
# Patterns that cannot be folded
# --------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tests_export")
class Scale2(keras.layers.Layer):
    def call(self, x):
        return 2.0 * x


def _add_then(layer_fn):
    inputs = keras.Input((4, 4, 3))
    a = keras.layers.Conv2D(3, 1, name="c1")(inputs)
    s = keras.layers.Add(name="add")([a, inputs])
    return inputs, s, layer_fn


def test_error_custom_layer_between_bn_and_neuron():
    inputs, s, _ = _add_then(None)
    h = keras.layers.BatchNormalization(name="the_bn")(s)
    h = Scale2(name="custom")(h)
    h = S2Activation(name="act")(h)
    with pytest.raises(FoldError, match="the_bn.*custom"):
        fold_batchnorm(keras.Model(inputs, h))


def test_error_bn_feeding_two_consumers():
    inputs, s, _ = _add_then(None)
    h = keras.layers.BatchNormalization(name="shared_bn")(s)
    a = S2Activation(name="act")(h)
    b = keras.layers.Conv2D(3, 1, name="side")(h)
    with pytest.raises(FoldError, match="shared_bn.*2 consumers"):
        fold_batchnorm(keras.Model(inputs, keras.layers.Add(name="join")([a, b])))


def test_error_bn_before_relu():
    inputs, s, _ = _add_then(None)
    h = keras.layers.BatchNormalization(name="relu_bn")(s)
    h = keras.layers.ReLU(name="relu")(h)
    with pytest.raises(FoldError, match="relu_bn.*relu"):
        fold_batchnorm(keras.Model(inputs, h))


def test_error_shared_layer():
    inputs = keras.Input((4, 4, 3))
    conv = keras.layers.Conv2D(3, 1, name="shared_conv")
    h = conv(conv(inputs))
    with pytest.raises(FoldError, match="shared_conv"):
        fold_batchnorm(keras.Model(inputs, h))


# --------------------------------------------------------------------------
# A trained PreActResNet with negative and zero BN scales
# --------------------------------------------------------------------------


def test_trained_model_fold_is_exact(trained_model, folded, fmnist):
    from export.tflite.verify import verify_fold

    model, (folded_model, report) = trained_model, folded
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in folded_model.layers)
    kinds = {v["kind"] for v in report["batchnorm"].values()}
    assert kinds == {"conv_kernel_and_bias", "firing_threshold"}
    neg = sum(v["negative_scale"] for v in report["neurons"].values())
    zero = sum(v["zero_scale"] for v in report["neurons"].values())
    fires = sum(v["zero_scale_always_fires"] for v in report["neurons"].values())
    assert neg >= 3 and zero >= 6 and fires >= 3  # the forced channels of the 3 threshold BNs
    x = fmnist[2].astype("float32") / 255.0
    check = verify_fold(model, folded_model, x)
    assert check["predictions_equal"], check["prediction_agreement"]
    elements = sum(v["elements"] for v in check["spike_mismatches"].values())
    assert check["total_spike_mismatches"] <= 1e-5 * elements  # float ties only
    assert check["neurons_compared"] == len(neuron_layers(model))
    # Firing rates work on the folded model and match the original.
    ra, rb = firing_rates(model, x), firing_rates(folded_model, x)
    assert list(ra) == list(rb)
    np.testing.assert_allclose(list(ra.values()), list(rb.values()), atol=1e-4)
    # Forced constant channels: channel 1 always fires, channel 2 never does.
    final = keras.Model(folded_model.inputs[0], folded_model.get_layer("final_act").output)
    spikes = np.asarray(final(x[:16]))
    assert spikes[..., 1].min() == 1.0 and spikes[..., 2].max() == 0.0


def test_folded_model_round_trips(folded, fmnist, tmp_path):
    from export.loader import load_model

    model = folded[0]
    path = str(tmp_path / "folded.keras")
    model.save(path)
    again = load_model(path)
    x = fmnist[2][:32].astype("float32") / 255.0
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))
