"""The model zoo the export is tested on: the four MLPerf Tiny networks
(:mod:`s2nn_keras.models.mlperf_tiny`) and the layer patterns users write
by hand, each with data of its input shape and a short training run.

No keyword-spotting, visual-wake-words or ToyADMOS data is available
offline, so every model is trained on Fashion-MNIST reshaped to its input
(:func:`images_for`): nearest-neighbour resized to the model's height and
width, the gray channel repeated, and for a flat input (the autoencoder's
640 features) resized to a 20x32 map and flattened. Labels: the ten
classes where the head has at least ten outputs, "upper-body garment"
(T-shirt, pullover, dress, coat, shirt) against the rest for a two-class
head, and the input itself for the autoencoder (regression).

Example::

    from tests import zoo
    model = zoo.trained("resnet8")                  # cached per process
    x_train, y_train, x_test, y_test = zoo.data("resnet8")
    for name in zoo.MLPERF_TINY + zoo.USER_PATTERNS: ...
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Tuple

import numpy as np

__all__ = ["ZooModel", "ZOO", "MLPERF_TINY", "USER_PATTERNS", "entry", "images_for", "data", "build", "trained"]

UPPER_BODY = (0, 2, 3, 4, 6)  # Fashion-MNIST: T-shirt/top, pullover, dress, coat, shirt


@dataclasses.dataclass(frozen=True)
class ZooModel:
    """One zoo entry.

    Attributes:
      name: its key in :data:`ZOO`.
      builder: ``builder(activation) -> keras.Model`` (untrained; ``"s2nn"``
        or ``"relu"`` for the ReLU twin).
      input_shape: the model's input shape without the batch axis.
      task: ``"classification"`` (logits) or ``"regression"`` (the output
        reconstructs the input).
      num_classes: logits of a classifier (``None`` for regression).
      pattern: what the entry exercises, in a few words.
      raw: the model takes the pixels as they are (0..255; it rescales
        them itself, e.g. with a leading ``Rescaling(1/255)``), not in [0, 1].
    """

    name: str
    builder: Callable
    input_shape: Tuple[int, ...]
    task: str
    num_classes: int
    pattern: str
    raw: bool = False


def _mlperf(name):
    from s2nn_keras.models import mlperf_tiny

    return lambda activation="s2nn": mlperf_tiny.BUILDERS[name](activation=activation)


def _neuron(activation, name):
    from s2nn_keras.models import make_activation

    return make_activation(activation, name)


def sequential_cnn(activation="s2nn"):
    """The most ordinary CNN with an MLP head, as a ``keras.Sequential``:
    Conv -> BN -> neuron -> MaxPooling2D -> Flatten -> Dense -> BN -> neuron -> Dense."""
    import keras

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, use_bias=False, name="conv"),
        keras.layers.BatchNormalization(momentum=0.9, name="bn1"),
        _neuron(activation, "act1"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(32, name="hidden"),
        keras.layers.BatchNormalization(momentum=0.9, name="bn2"),
        _neuron(activation, "act2"),
        keras.layers.Dense(10, name="logits"),
    ], name="sequential_cnn")


def neuron_without_bn(activation="s2nn"):
    """A neuron reading a conv with a bias and no BN in front of it."""
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv1")(inputs)
    x = _neuron(activation, "act1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, name="conv2")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn2")(x)
    x = _neuron(activation, "act2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="neuron_without_bn")


def two_neurons_in_a_row(activation="s2nn"):
    """conv -> BN -> neuron -> neuron (the second reads {0, 1} spikes)."""
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = _neuron(activation, "act1")(x)
    x = _neuron(activation, "act1b")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, use_bias=False, name="conv2")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn2")(x)
    x = _neuron(activation, "act2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="two_neurons_in_a_row")


def neuron_after_add(activation="s2nn"):
    """Two branches of spikes and convs summed by an ``Add``; a neuron reads
    the sum with no BN in front, and the spikes of the first neuron reach
    the ``Add`` directly (an identity shortcut)."""
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    s = _neuron(activation, "stem_act")(x)
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(s)
    h = keras.layers.BatchNormalization(momentum=0.9, name="bn")(h)
    x = keras.layers.Add(name="add")([s, h])
    x = _neuron(activation, "add_act")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="neuron_after_add")


def dropout_and_reshape(activation="s2nn"):
    """Spikes through Dropout, Reshape and a Conv1D-free Dense head:
    conv -> BN -> neuron -> Dropout -> Reshape(positions, channels) ->
    Dense (per position) -> BN -> neuron -> Flatten -> Dense."""
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn1")(x)
    x = _neuron(activation, "act1")(x)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    x = keras.layers.Reshape((13 * 13, 8), name="reshape")(x)
    x = keras.layers.Dense(4, name="per_position")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn2")(x)
    x = _neuron(activation, "act2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name="dropout_and_reshape")


ZOO: Dict[str, ZooModel] = {
    "resnet8": ZooModel("resnet8", _mlperf("resnet8"), (32, 32, 3), "classification", 10,
                        "MLPerf Tiny ResNet-8: post-activation, neurons after residual Adds"),
    "ds_cnn": ZooModel("ds_cnn", _mlperf("ds_cnn"), (49, 10, 1), "classification", 12,
                       "MLPerf Tiny DS-CNN: depthwise-separable blocks, Dropout"),
    "mobilenet_v1": ZooModel("mobilenet_v1", _mlperf("mobilenet_v1"), (96, 96, 3), "classification", 2,
                             "MLPerf Tiny MobileNetV1 0.25: strided depthwise convs"),
    "fc_autoencoder": ZooModel("fc_autoencoder", _mlperf("fc_autoencoder"), (640,), "regression", None,
                               "MLPerf Tiny FC autoencoder: Dense -> BN -> neuron, regression output"),
    "sequential_cnn": ZooModel("sequential_cnn", sequential_cnn, (28, 28, 1), "classification", 10,
                               "keras.Sequential: MaxPooling2D, Flatten, hidden Dense -> BN -> neuron"),
    "neuron_without_bn": ZooModel("neuron_without_bn", neuron_without_bn, (28, 28, 1), "classification", 10,
                                  "a neuron after a biased conv with no BN"),
    "two_neurons_in_a_row": ZooModel("two_neurons_in_a_row", two_neurons_in_a_row, (28, 28, 1),
                                     "classification", 10, "a neuron reading another neuron's spikes"),
    "neuron_after_add": ZooModel("neuron_after_add", neuron_after_add, (28, 28, 1), "classification", 10,
                                 "spikes into an Add, a neuron after the Add"),
    "dropout_and_reshape": ZooModel("dropout_and_reshape", dropout_and_reshape, (28, 28, 1), "classification", 10,
                                    "spikes through Dropout and Reshape, a Dense neuron per position"),
}
MLPERF_TINY = ("resnet8", "ds_cnn", "mobilenet_v1", "fc_autoencoder")
USER_PATTERNS = ("sequential_cnn", "neuron_without_bn", "two_neurons_in_a_row", "neuron_after_add",
                 "dropout_and_reshape")


def entry(name: str) -> ZooModel:
    """The zoo entry ``name``: :data:`ZOO`, or a user model of
    :data:`tests.user_models.MODELS`."""
    if name in ZOO:
        return ZOO[name]
    from tests.user_models import MODELS

    return MODELS[name]


def _resize_nearest(x, height, width):
    rows = (np.arange(height) * x.shape[1] // height).astype(np.int64)
    cols = (np.arange(width) * x.shape[2] // width).astype(np.int64)
    return x[:, rows][:, :, cols]


def images_for(images, input_shape, raw: bool = False) -> np.ndarray:
    """Fashion-MNIST ``[N, 28, 28]`` uint8 images as float32 in [0, 1] of
    ``input_shape`` (module docstring); ``raw``: 0..255 instead. A
    ``(128, 3)`` input is the image resized to 16x24, read as 128 steps of
    3 channels."""
    x = np.asarray(images)
    x = x.reshape(x.shape[0], x.shape[1], x.shape[2]).astype(np.float32) / (1.0 if raw else 255.0)
    if tuple(input_shape) == (128, 3):
        return _resize_nearest(x, 16, 24).reshape(len(x), 128, 3)
    if len(input_shape) == 1:
        (features,) = input_shape
        if features != 640:
            raise ValueError(f"no flat layout for {features} features (the zoo has 640)")
        return _resize_nearest(x, 20, 32).reshape(len(x), 640)
    height, width, channels = input_shape
    x = _resize_nearest(x, height, width)[..., None]
    return np.repeat(x, channels, axis=-1)


def _labels(labels, entry):
    labels = np.asarray(labels).astype(np.int64)
    if entry.num_classes >= 10:
        return labels
    if entry.num_classes == 2:
        return np.isin(labels, UPPER_BODY).astype(np.int64)
    raise ValueError(f"no label mapping for {entry.num_classes} classes")


@functools.lru_cache(maxsize=None)
def data(name: str, n_train: int = 2000, n_test: int = 300):
    """``(x_train, y_train, x_test, y_test)`` for zoo entry ``name``: the
    first ``n_train`` / ``n_test`` Fashion-MNIST images in its input shape
    (float32 in [0, 1], or 0..255 for a ``raw`` entry); for regression
    ``y`` is ``x``."""
    from s2nn_keras.datasets import load_arrays

    e = entry(name)
    tr_x, tr_y = load_arrays("fashion_mnist", "train", max_examples=n_train)
    te_x, te_y = load_arrays("fashion_mnist", "test", max_examples=n_test)
    x_train, x_test = images_for(tr_x, e.input_shape, e.raw), images_for(te_x, e.input_shape, e.raw)
    if e.task == "regression":
        return x_train, x_train, x_test, x_test
    return x_train, _labels(tr_y, e), x_test, _labels(te_y, e)


def build(name: str, activation: str = "s2nn", seed: int = 0):
    """Zoo entry ``name``, untrained, with seeded weights."""
    import keras

    keras.utils.set_random_seed(seed)
    return entry(name).builder(activation)


@functools.lru_cache(maxsize=None)
def trained(name: str, activation: str = "s2nn", epochs: int = 1, n_train: int = 2000, seed: int = 0):
    """Zoo entry ``name`` trained ``epochs`` epochs on ``n_train`` images
    (Adam 3e-3, batch 64; cross-entropy on logits, or mean squared error for
    regression). Cached per process: do not modify the returned model."""
    import keras

    model = build(name, activation, seed)
    x_train, y_train, _, _ = data(name, n_train)
    loss = (keras.losses.MeanSquaredError() if entry(name).task == "regression"
            else keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.compile(keras.optimizers.Adam(3e-3), loss)
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, verbose=0, shuffle=True)
    return model
