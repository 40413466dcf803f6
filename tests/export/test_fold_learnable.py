"""Folding and TFLite export of a model with learned per-channel thresholds
(``S2Activation(learnable=("threshold",))``): Eq. 27 with ``u_th[c]``.

The learned thresholds are set to distinct values per channel, so a fold
that read one threshold per layer (or the initial value) would change spikes;
the negative control below checks that it would."""

import numpy as np
import pytest

import keras

from export.transform.fold import fold_batchnorm_with_report
from export.tflite.verify import verify_fold
from s2nn_keras import neuron_layers


@pytest.fixture(scope="module")
def learned_model(fmnist):
    from s2nn_keras.models import PreActResNet

    x_train, y_train, _, _ = fmnist
    keras.utils.set_random_seed(5)
    model = PreActResNet([1, 1], (28, 28, 1), 10, width=8, dropout=0.0, learnable=("threshold",))
    model.compile(keras.optimizers.Adam(5e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train[:2000].astype("float32") / 255.0, y_train[:2000], batch_size=64, epochs=1, verbose=0)
    rng = np.random.default_rng(0)
    for layer in neuron_layers(model):
        th = layer.threshold
        th.assign(rng.uniform(0.6, 1.6, th.shape).astype("float32"))
    return model


def test_every_neuron_holds_a_per_channel_threshold(learned_model):
    for layer in neuron_layers(learned_model):
        th = layer.neuron_parameters()["threshold"]
        assert th.ndim == 1 and len(np.unique(th)) == th.size, layer.name


def test_fold_reproduces_learned_thresholds_exactly(learned_model, fmnist):
    x = fmnist[2].astype("float32") / 255.0
    folded, report = fold_batchnorm_with_report(learned_model)
    kinds = {v["threshold_from"].split()[0] for v in report["neurons"].values()}
    assert kinds >= {"batchnorm", "bias"}  # both Eq. 27 and the bias move see u_th[c]
    check = verify_fold(learned_model, folded, x)
    assert check["predictions_equal"] and check["total_spike_mismatches"] == 0, check["spike_mismatches"]
    assert check["max_logit_abs_diff"] < 1e-4

    # Negative control: the same model with one threshold value per layer
    # (the channels' mean) spikes differently, so the check above sees u_th[c].
    clone = keras.models.clone_model(learned_model)
    clone.set_weights(learned_model.get_weights())
    for layer in neuron_layers(clone):
        layer.threshold.assign(np.full(layer.threshold.shape, float(np.mean(layer.threshold.numpy())), "float32"))
    wrong = verify_fold(learned_model, fold_batchnorm_with_report(clone)[0], x)
    assert wrong["total_spike_mismatches"] > 0


def test_float32_and_int8_export_of_learned_thresholds(learned_model, fmnist, tmp_path):
    from export import ExportConfig, export_run

    x_train, _, x_test, y_test = fmnist
    result = export_run(learned_model, ExportConfig(str(tmp_path / "export"), x_test[:60], y_test[:60],
                                                    formats=("float32", "int8"), calibration_images=x_train[-100:],
                                                    num_calibration=100, max_tflm_examples=20, c_array=False,
                                                    verbose=False))
    report = result.report
    assert report["fold"]["predictions_equal"] and report["fold"]["total_spike_mismatches"] == 0
    float32 = report["formats"]["float32"]
    assert float32["litert"]["agreement_with_keras"] == 1.0
    # float32 TFLite spikes equal the folded Keras model's, end to end.
    assert float32["spikes"]["end_to_end_agreement"] == 1.0, float32["spikes"]["per_neuron"]
    for fmt, entry in report["formats"].items():
        assert entry["spikes"]["two_level"], fmt
        assert entry["spikes"]["neurons_equal_given_equal_inputs"], (fmt, entry["spikes"]["runtime_agreement"])
