"""The models a new user builds (the export issue's table), each a small
builder in the zoo's form (:class:`tests.zoo.ZooModel`), trained a few
batches on Fashion-MNIST in its input shape by :func:`tests.zoo.trained`.

They cover what the zoo's hand-written patterns do not: a pure MLP, a
Conv1D time-series classifier behind a per-channel ``Normalization``, a
model that starts with ``Rescaling(1/255)`` and takes raw pixels, neurons
without BN (superspike, threshold 0.5), an ``ste_b`` (+-1) network, a
``SeparableConv2D`` reading spikes, spike and non-spike branches joined by
``Concatenate``, stride-2 convs with Dropout, AveragePooling2D and
GlobalMaxPooling2D, and two autoencoders whose decoders up-sample with
``UpSampling2D`` and with ``Conv2DTranspose``.

Inputs: :func:`tests.zoo.images_for` (a 28x28 image resized to the input;
the time series is the image resized to 16x24 and read as 128 steps of 3
channels); ``raw=True`` models take the pixels as they are (0..255), the
others in [0, 1].

Example::

    from tests import zoo, user_models
    for name in user_models.MODELS:
        model = zoo.trained(name)
        x_train, y_train, x_test, y_test = zoo.data(name)
"""

from __future__ import annotations

from typing import Dict

__all__ = ["MODELS", "EXPECTED_OPS"]


def _neuron(activation, name, surrogate="s2nn", **params):
    from s2nn_keras.models import make_activation

    return make_activation(surrogate if activation == "s2nn" else activation, name, **params)


def _conv_bn_neuron(x, activation, name, filters, kernel=3, strides=1, padding="same", conv=None):
    import keras

    conv = conv or keras.layers.Conv2D
    x = conv(filters, kernel, strides=strides, padding=padding, use_bias=False, name=name)(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return _neuron(activation, f"{name}_act")(x)


def _classifier(inputs, x, name):
    import keras

    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x), name=name)


def mlp(activation="s2nn"):
    """Flatten -> (Dense -> BN -> neuron) x 2 -> Dense."""
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate((64, 32), 1):
        x = keras.layers.Dense(units, name=f"dense{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"dense{i}_bn")(x)
        x = _neuron(activation, f"dense{i}_act")(x)
    return _classifier(inputs, x, "mlp")


def conv1d_timeseries(activation="s2nn"):
    """A (128, 3) time series behind a per-channel ``Normalization``
    (adapted on raw values), two Conv1D -> BN -> neuron, GAP, Dense."""
    import keras

    inputs = keras.Input((128, 3), name="series")
    x = keras.layers.Normalization(axis=-1, mean=[96.0, 80.0, 64.0], variance=[6400.0, 8100.0, 4900.0],
                                   name="normalize")(inputs)
    x = _conv_bn_neuron(x, activation, "conv1", 8, 5, conv=keras.layers.Conv1D)
    x = _conv_bn_neuron(x, activation, "conv2", 16, 3, strides=2, conv=keras.layers.Conv1D)
    return _classifier(inputs, keras.layers.GlobalAveragePooling1D(name="gap")(x), "conv1d_timeseries")


def rescaling_raw_pixels(activation="s2nn"):
    """``Rescaling(1/255)`` first: the model takes raw pixels 0..255."""
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = _conv_bn_neuron(x, activation, "conv1", 8, strides=2)
    x = _conv_bn_neuron(x, activation, "conv2", 16, strides=2)
    return _classifier(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x), "rescaling_raw_pixels")


def superspike_without_bn(activation="s2nn"):
    """Neurons with no BN in front: superspike surrogate, threshold 0.5."""
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv1")(inputs)
    x = _neuron(activation, "act1", "superspike", threshold=0.5)(x) if activation == "s2nn" else \
        _neuron(activation, "act1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, name="conv2")(x)
    x = _neuron(activation, "act2", "superspike", threshold=0.5)(x) if activation == "s2nn" else \
        _neuron(activation, "act2")(x)
    return _classifier(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x), "superspike_without_bn")


def ste_b_cnn(activation="s2nn"):
    """A binary (+-1) network: ``ste_b`` neurons after conv -> BN."""
    import keras

    neuron = "ste_b" if activation == "s2nn" else activation
    inputs = keras.Input((28, 28, 1), name="image")
    x = _conv_bn_neuron(inputs, neuron, "conv1", 8, strides=2)
    x = _conv_bn_neuron(x, neuron, "conv2", 16, strides=2)
    return _classifier(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x), "ste_b_cnn")


def separable_after_neuron(activation="s2nn"):
    """A ``SeparableConv2D`` reading spikes (its depthwise part reads them)."""
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = _conv_bn_neuron(inputs, activation, "stem", 8, strides=2)
    x = _conv_bn_neuron(x, activation, "sep", 16, strides=2, conv=keras.layers.SeparableConv2D)
    return _classifier(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x), "separable_after_neuron")


def concatenate_branches(activation="s2nn"):
    """``Concatenate`` of two branches of spikes, of two conv outputs (no
    neuron; a BN-threshold neuron after the join), and of spikes with a
    conv output."""
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    s = _conv_bn_neuron(inputs, activation, "stem", 8, strides=2)
    a = _conv_bn_neuron(s, activation, "branch_a", 8)
    b = _conv_bn_neuron(s, activation, "branch_b", 8, kernel=1)
    x = keras.layers.Concatenate(name="join_spikes")([a, b])
    c = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv_c")(x)
    d = keras.layers.Conv2D(8, 1, strides=2, name="conv_d")(x)
    x = keras.layers.Concatenate(name="join_values")([c, d])
    x = keras.layers.BatchNormalization(momentum=0.9, name="join_bn")(x)
    x = _neuron(activation, "join_act")(x)
    x = keras.layers.Concatenate(name="join_mixed")([x, c])
    x = _conv_bn_neuron(x, activation, "head", 16, strides=2)
    return _classifier(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x), "concatenate_branches")


def strided_pools(activation="s2nn"):
    """Stride-2 convs, Dropout, AveragePooling2D, GlobalMaxPooling2D (an OR
    of the spikes)."""
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = _conv_bn_neuron(inputs, activation, "conv1", 8, strides=2)
    x = keras.layers.Dropout(0.2, name="dropout")(x)
    x = keras.layers.AveragePooling2D(2, name="avg_pool")(x)
    x = _conv_bn_neuron(x, activation, "conv2", 16, strides=2)
    return _classifier(inputs, keras.layers.GlobalMaxPooling2D(name="gmp")(x), "strided_pools")


def _encoder(activation):
    import keras

    inputs = keras.Input((28, 28, 1), name="image")
    x = _conv_bn_neuron(inputs, activation, "enc1", 8, strides=2)
    x = keras.layers.MaxPooling2D(2, name="enc_pool")(x)
    return inputs, _conv_bn_neuron(x, activation, "enc2", 16)


def upsampling_autoencoder(activation="s2nn"):
    """Encoder, then a decoder of UpSampling2D (nearest) -> conv."""
    import keras

    inputs, x = _encoder(activation)
    x = keras.layers.UpSampling2D(2, name="up1")(x)
    x = _conv_bn_neuron(x, activation, "dec1", 8)
    x = keras.layers.UpSampling2D(2, name="up2")(x)
    x = keras.layers.Conv2D(1, 3, padding="same", name="reconstruction")(x)
    return keras.Model(inputs, x, name="upsampling_autoencoder")


def transpose_autoencoder(activation="s2nn"):
    """Encoder, then a decoder of Conv2DTranspose (stride 2) -> BN -> neuron."""
    import keras

    inputs, x = _encoder(activation)
    x = _conv_bn_neuron(x, activation, "dec1", 8, strides=2, conv=keras.layers.Conv2DTranspose)
    x = keras.layers.Conv2DTranspose(1, 3, strides=2, padding="same", name="reconstruction")(x)
    return keras.Model(inputs, x, name="transpose_autoencoder")


def _models():
    from tests.zoo import ZooModel

    image = (28, 28, 1)
    rows = [
        ("mlp", mlp, image, "classification", "pure MLP: Flatten, (Dense -> BN -> neuron) x 2", False),
        ("conv1d_timeseries", conv1d_timeseries, (128, 3), "classification",
         "Conv1D time series behind a per-channel Normalization (raw values)", True),
        ("rescaling_raw_pixels", rescaling_raw_pixels, image, "classification",
         "Rescaling(1/255) first, fed raw uint8 pixels", True),
        ("superspike_without_bn", superspike_without_bn, image, "classification",
         "neurons without BN: superspike, threshold 0.5", False),
        ("ste_b_cnn", ste_b_cnn, image, "classification", "ste_b (+-1) neurons", False),
        ("separable_after_neuron", separable_after_neuron, image, "classification",
         "SeparableConv2D reading spikes", False),
        ("concatenate_branches", concatenate_branches, image, "classification",
         "Concatenate of spike branches, of conv outputs, and of spikes with a conv output", False),
        ("strided_pools", strided_pools, image, "classification",
         "stride-2 convs, Dropout, AveragePooling2D, GlobalMaxPooling2D", False),
        ("upsampling_autoencoder", upsampling_autoencoder, image, "regression",
         "autoencoder, UpSampling2D (nearest) decoder", False),
        ("transpose_autoencoder", transpose_autoencoder, image, "regression",
         "autoencoder, Conv2DTranspose decoder", False),
    ]
    return {name: ZooModel(name, builder, shape, task, 10 if task == "classification" else None, pattern, raw)
            for name, builder, shape, task, pattern, raw in rows}


MODELS: Dict[str, object] = _models()

#: Ops the int8 export writes beyond the edge ops every model has
#: (``CONV_2D``, ``DEPTHWISE_CONV_2D``, ``FULLY_CONNECTED``, ``RESHAPE``,
#: ``AVERAGE_POOL_2D``), per model: what the pattern turns into.
EXPECTED_OPS = {
    "strided_pools": {"MAX_POOL_2D"},
    "concatenate_branches": {"CONCATENATION"},
    "upsampling_autoencoder": {"MAX_POOL_2D", "RESIZE_NEAREST_NEIGHBOR"},
    "transpose_autoencoder": {"MAX_POOL_2D", "TRANSPOSE_CONV"},
}
