"""The training recipe of paper §5.1 / Appendix A as Keras objects.

* :func:`build_model` -- the PreActResNet of the flags, with the coupled
  weight decay as an L2 kernel regulariser ``(wd / 2) ||w||^2`` (gradient
  ``wd * w``, PyTorch's SGD/Adam ``weight_decay``) and the optional
  firing-rate regulariser;
* :func:`build_optimizer` -- SGD (momentum) or Adam with cosine annealing
  ``lr(t) = lr0 (1 + cos(pi t / T)) / 2`` over ``T`` optimizer steps;
* :func:`compile_model` -- softmax cross-entropy with label smoothing
  (Eq. A.1) on one-hot labels, accuracy;
* :func:`training_model` -- ``Input(uint8) -> DeviceAugmentation -> model``
  for the ``device`` input pipeline;
* :func:`evaluation_model` -- a network compiled for the end-of-run test;
* :func:`tta_model` -- flip-averaged test-time augmentation.
"""

from __future__ import annotations

from typing import Dict


def set_dtype_policy(name: str) -> None:
    """``float32``, ``mixed_bfloat16`` or ``mixed_float16`` for every layer
    built afterwards (Keras mixed precision: float32 weights, low-precision
    compute; the loss is computed in float32)."""
    import keras

    keras.config.set_dtype_policy(name)


def build_model(config: Dict, input_shape, num_classes: int):
    """The PreActResNet of the flags (uncompiled)."""
    import keras

    from s2nn_keras.models import PreActResNet
    from s2nn_keras.regularizers import FiringRateRegularizer

    f = config["flags"]
    regularizer = keras.regularizers.L2(f["weight_decay"] / 2.0) if f["weight_decay"] > 0 else None
    rate_reg = (FiringRateRegularizer(f.get("rate_l1", 0.0), f.get("target_rate"), f.get("rate_strength", 1.0))
                if f.get("rate_l1") or f.get("target_rate") is not None else None)
    depth = 2 + 2 * sum(config["blocks"])
    name = f["model"] if f["model"] != "custom" else f"preact_resnet{depth}"
    return PreActResNet(
        config["blocks"], tuple(input_shape), num_classes, activation=f["activation"],
        width=f["width"], stem_stride=f.get("stem_stride", 1), dropout=f["dropout"], kernel_regularizer=regularizer, name=name,
        activity_regularizer=rate_reg, **config["surrogate_params"],
    )


def build_optimizer(config: Dict, total_steps: int):
    """SGD (momentum) or Adam with a cosine-annealed learning rate."""
    import keras

    f = config["flags"]
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=f["learning_rate"], decay_steps=max(1, int(total_steps)), alpha=0.0)
    if f["optimizer"] == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=f["momentum"],
                                    nesterov=bool(f.get("nesterov", False)))
    return keras.optimizers.Adam(learning_rate=schedule)


def compile_model(model, config: Dict, total_steps: int) -> None:
    """Optimizer, label-smoothed cross-entropy (Eq. A.1), accuracy."""
    import keras

    f = config["flags"]
    model.compile(
        optimizer=build_optimizer(config, total_steps),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=f["label_smoothing"]),
        # weighted_: the zero-weight padding of a data-parallel evaluation's
        # last batch (trainers.inputs.ArrayBatches) must not count.
        weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=bool(f["jit_compile"]) if f["jit_compile"] is not None else "auto",
    )


def training_model(model, augmentation):
    """``Input(uint8, model's input shape) -> augmentation -> model``: what
    the ``device`` pipeline fits. Its weights are ``model``'s (the
    augmentation has only its random-seed state)."""
    import keras

    inputs = keras.Input(model.input_shape[1:], dtype="uint8", name="images_uint8")
    outputs = model(augmentation(inputs))
    return keras.Model(inputs, outputs, name=f"{model.name}_train")


def tta_model(model):
    """``x -> (softmax(model(x)) + softmax(model(flip_lr(x)))) / 2``."""
    import keras

    inputs = keras.Input(model.input_shape[1:])
    flipped = keras.layers.Lambda(lambda t: keras.ops.flip(t, axis=2), name="flip_lr")(inputs)
    p = keras.layers.Softmax(dtype="float32")(model(inputs, training=False))
    q = keras.layers.Softmax(dtype="float32")(model(flipped, training=False))
    outputs = keras.layers.Average(name="tta_mean", dtype="float32")([p, q])
    return keras.Model(inputs, outputs, name="tta")


def evaluation_model(model, config: Dict):
    """``model`` (a network: float images -> logits) wrapped and compiled for
    ``evaluate`` with the training loss (Eq. A.1) and accuracy; the wrapper
    shares the weights, so ``model``'s own compile state (optimizer) is
    untouched."""
    import keras

    f = config["flags"]
    inputs = keras.Input(model.input_shape[1:])
    wrapper = keras.Model(inputs, model(inputs, training=False), name=f"{model.name}_eval")
    wrapper.compile(
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=f["label_smoothing"]),
        weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return wrapper


def compile_for_evaluation(model) -> None:
    """Accuracy of probabilities (the TTA model's output)."""
    import keras

    model.compile(loss=keras.losses.CategoricalCrossentropy(),
                  weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
