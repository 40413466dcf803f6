"""Shared fixture: a small PreActResNet trained briefly on real Fashion-MNIST
(so BN statistics are realistic), with some BN scales forced negative and
some to zero, trained once per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

N_TRAIN = 6000
N_VERIFY = 300


def _force_bn_signs(model):
    """Makes every BN hold a negative and two zero scales (one channel that
    always fires, beta >= u_th, and one that never does), as trained models
    do; returns {bn_name: (neg_channel, zero_fire_channel, zero_silent_channel)}."""
    import keras

    forced = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization):
            continue
        gamma = layer.gamma.numpy()
        beta = layer.beta.numpy()
        gamma[0] = -abs(gamma[0]) - 0.1
        gamma[1] = 0.0
        beta[1] = 1.5  # >= u_th = 1: BN output constant 1.5, always fires
        gamma[2] = 0.0
        beta[2] = 0.2  # < u_th: never fires
        layer.gamma.assign(gamma)
        layer.beta.assign(beta)
        forced[layer.name] = (0, 1, 2)
    return forced


@pytest.fixture(scope="session")
def fmnist():
    from trainers.data import load_arrays

    x_train, y_train = load_arrays("fashion_mnist", "train", max_examples=N_TRAIN)
    x_test, y_test = load_arrays("fashion_mnist", "test", max_examples=N_VERIFY)
    return x_train, y_train, x_test, y_test


@pytest.fixture(scope="session")
def trained_model(fmnist):
    """PreActResNet [1, 1], width 8, 2 epochs on 6000 Fashion-MNIST images,
    then BN scales forced negative / zero in every BN layer."""
    import keras
    from s2nn_keras.models import PreActResNet

    x_train, y_train, _, _ = fmnist
    keras.utils.set_random_seed(1)
    model = PreActResNet([1, 1], (28, 28, 1), 10, width=8, dropout=0.0)
    model.compile(keras.optimizers.Adam(5e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train.astype("float32") / 255.0, y_train, batch_size=64, epochs=2, verbose=0)
    _force_bn_signs(model)
    return model


@pytest.fixture(scope="session")
def folded(trained_model):
    from export.transform.fold import fold_batchnorm_with_report

    return fold_batchnorm_with_report(trained_model)


@pytest.fixture(scope="session")
def calibration(fmnist):
    x_train = fmnist[0][-200:].astype("float32") / 255.0

    def representative():
        for i in range(0, len(x_train), 50):
            yield [x_train[i:i + 50]]

    return representative
