"""Helpers the export tests share (not fixtures: imported by name)."""

import contextlib
import io


def plain_tflite(model, representative=None) -> bytes:
    """``model`` through TensorFlow's own converter, none of the export's
    steps: float32, or with ``representative`` (a callable yielding
    ``[batch]`` lists) full integer int8 with int8 input and output. The
    converter's stdout chatter is dropped."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with contextlib.redirect_stdout(io.StringIO()):
        return converter.convert()


def two_neuron_model(input_shape, seed, flatten=False, logits_bias="zeros"):
    """A small S2NN with a conv neuron and a depthwise one: ``x -> conv ->
    bn1 -> act1 -> dw -> bn2 -> act2 -> gap`` (``flat`` with ``flatten``)
    ``-> logits`` (3 outputs, bias initializer ``logits_bias``), its
    weights drawn after ``keras.utils.set_random_seed(seed)``."""
    import keras

    from s2nn_keras import S2Activation

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="x")
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    h = S2Activation(name="act1")(keras.layers.BatchNormalization(name="bn1")(h))
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = S2Activation(name="act2")(keras.layers.BatchNormalization(name="bn2")(h))
    h = keras.layers.Flatten(name="flat")(h) if flatten else keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits", bias_initializer=logits_bias)(h))
