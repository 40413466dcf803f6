"""The README's first ``keras.Sequential`` snippet reaches at inference the
accuracy it shows in training (BatchNormalization momentum 0.9), and the
same snippet with Keras' default momentum 0.99 would not -- the reason the
README and ``S2Activation`` ask for 0.9."""

import logging
import os
import re

import keras
import numpy as np
import pytest

from s2nn_keras.datasets import fashion_mnist_idx_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _snippet():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    section = text[text.index("## The layer, on any backend"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "keras.Sequential" in code and "momentum=0.9" in code
    # Keep this process's backend (the snippet sets one for a fresh interpreter).
    return "\n".join(line for line in code.splitlines() if "KERAS_BACKEND" not in line)


def _run(code):
    keras.utils.set_random_seed(0)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    train_acc = model.history.history["accuracy"][-1]
    test_acc = model.evaluate(namespace["to_float"](namespace["x_test"]), namespace["y_test"], verbose=0)[1]
    return train_acc, test_acc


@pytest.mark.skipif(fashion_mnist_idx_dir() is None, reason="needs Debian's dataset-fashion-mnist")
def test_readme_snippet_keeps_its_training_accuracy_at_inference(caplog):
    code = _snippet()
    train_acc, test_acc = _run(code)
    assert train_acc > 0.7, train_acc
    assert test_acc > train_acc - 0.06, (train_acc, test_acc)
    # Control: the default momentum trains alike but evaluates far lower.
    train_99, test_99 = _run(code.replace("momentum=0.9", "momentum=0.99"))
    assert train_99 > 0.7 and test_99 < train_99 - 0.3, (train_99, test_99)


def test_a_neuron_that_never_fires_is_one_warning_line(caplog):
    from s2nn_keras import FiringRateCallback, S2Activation, firing_rates

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), S2Activation("s2nn", threshold=1e6,
                                                                                      name="deaf"),
                              keras.layers.Dense(2)])
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    with caplog.at_level(logging.WARNING, logger="s2nn_keras"):
        rates = firing_rates(model, x)
    assert rates == {"deaf": 0.0}
    lines = [r.getMessage() for r in caplog.records if r.name == "s2nn_keras"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("warning: neuron layer(s) deaf never fired at inference") and "momentum=0.9" in lines[0]
    caplog.clear()
    model.compile("sgd", "mse")
    with caplog.at_level(logging.WARNING, logger="s2nn_keras"):
        model.fit(x, np.zeros((16, 2)), epochs=3, verbose=0, callbacks=[FiringRateCallback(x)])
    lines = [r.getMessage() for r in caplog.records if r.name == "s2nn_keras"]
    assert len(lines) == 1 and "after epoch 1" in lines[0]  # once, not every epoch
    # A layer that fires gives no warning.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="s2nn_keras"):
        firing_rates(keras.Sequential([keras.Input((4,)), S2Activation("s2nn", threshold=0.01)]), np.ones((2, 4)))
    assert not caplog.records
