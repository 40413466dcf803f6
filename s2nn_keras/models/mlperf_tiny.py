"""S²NN versions of the four MLPerf Tiny reference networks, functional API.

MLPerf Tiny (Banbury et al., 2021) is the benchmark TinyML deployments are
measured against. Its reference models, rebuilt here layer for layer with a
single-step neuron (``activation="s2nn"``, the default) wherever the
reference has a ReLU, and with ``activation="relu"`` as the reference itself:

* :func:`ResNet8` -- image classification (CIFAR-10, 32x32x3): a
  *post*-activation ResNet. Each of its three stacks is
  ``conv -> BN -> neuron -> conv -> BN``, added to the shortcut (the
  identity, or a strided 1x1 conv), and a neuron right after the ``Add``
  with no BN in front of it.
* :func:`DSCNN` -- keyword spotting (49x10x1 MFCC features, 12 classes):
  a ``(10, 4)`` stride-2 conv, then four depthwise-separable blocks
  ``depthwise 3x3 -> BN -> neuron -> 1x1 conv -> BN -> neuron``.
* :func:`MobileNetV1` -- visual wake words (96x96x3, 2 classes), width
  multiplier ``alpha = 0.25``: a stride-2 stem conv and 13
  depthwise-separable blocks.
* :func:`FCAutoencoder` -- anomaly detection (640 log-mel features = 5
  frames x 128 bands): ``Dense -> BN -> neuron`` layers 128-128-128-128-8-
  128-128-128-128 and a linear ``Dense(640)`` reconstruction (a regression
  output).

Every convolution and dense layer except the shortcuts is followed by a
BatchNormalization, so the export folds each BN into its kernel and every
neuron's threshold into the bias of the layer before it (paper Eq. 27).
Where the reference differs from what a spiking network needs, the builders
follow the reference and say so:

* the classifier heads end in logits (``classifier_activation=None``, what
  the trainers and the export use); ``"softmax"`` gives the reference's
  probabilities;
* BatchNormalization momentum is 0.9 (the reference uses Keras' 0.99): a
  neuron's inference threshold is set by the BN's moving statistics
  (Eq. 27), which must have converged by the end of a short training run;
* ``bn_beta_initializer``: ``"threshold"`` starts each BN that feeds a
  neuron at ``beta = u_th``, so the neuron first fires about half the time
  instead of only where its normalized input exceeds ``u_th`` standard
  deviations (16 % at ``u_th = 1``); ``"zeros"`` is the reference's start.
  The default is chosen per network by measurement (seed 0, the export
  zoo's recipe: 3 epochs, Adam 3e-3, batch 64, 5,000 Fashion-MNIST images
  in each input shape, 1,000 test images; median firing rate in brackets):

  ==============  ==========================  ==========================  =========
  network         zeros                       threshold                   default
  ==============  ==========================  ==========================  =========
  ResNet-8        69.4 % (0.20)               67.4 % (0.49)               zeros
  DS-CNN          70.6 % (0.17)               69.3 % (0.48)               zeros
  MobileNetV1     63.9 % (0.13)               95.5 % (0.50)               threshold
  FC autoencoder  test MSE 0.0628 (0.13)      test MSE 0.0464 (0.49)      threshold
  ==============  ==========================  ==========================  =========

  Through MobileNetV1's 27 neurons in a row (and the autoencoder's 8) the
  zeros start leaves too few spikes to learn from (its ReLU twin: 96.9 %,
  MSE 0.0300); on the shallow two, the threshold start gains nothing and
  more than doubles the firing rate, i.e. the energy (Appendix B);
* the reference's ``kernel_regularizer=l2(1e-4)`` is not the default here
  (pass ``kernel_regularizer=keras.regularizers.L2(1e-4)`` for it);
* DS-CNN's reference pools ``(24, 5)`` of its 25x5 final map (it computes
  the pool size as ``49 // 2``), leaving the last row out; here the pool is
  the whole map;
* strided 1x1 shortcuts are written as ``AveragePooling2D(1, strides) ->
  Conv2D(1x1)`` (:func:`s2nn_keras.models.common.strided_pointwise_conv`,
  the same function; a TF 2.21 oneDNN training bug).

Example:
  >>> from s2nn_keras.models import mlperf_tiny
  >>> model = mlperf_tiny.ResNet8()                     # S2NN, 10 logits
  >>> twin = mlperf_tiny.ResNet8(activation="relu")     # the reference network
  >>> model.count_params() == twin.count_params()
  True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

import keras
import numpy as np

from s2nn_keras.layers import S2Activation
from s2nn_keras.models.common import (ActivationSpec, check_activation, check_classifier_activation,
                                      check_num_classes, check_positive_int, check_rate, check_shape,
                                      make_activation, strided_pointwise_conv)

__all__ = ["LayerOptions", "conv_bn_neuron", "depthwise_bn_neuron", "dense_bn_neuron", "resnet8_stack",
           "depthwise_separable_block", "ResNet8", "DSCNN", "MobileNetV1", "FCAutoencoder",
           "MOBILENET_V1_BLOCKS", "BUILDERS"]

#: MobileNetV1's 13 depthwise-separable blocks: ``(stride, pointwise filters
#: at alpha = 1)``; the filters are multiplied by ``alpha``.
MOBILENET_V1_BLOCKS = ((1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
                       (1, 512), (1, 512), (1, 512), (1, 512), (1, 512), (2, 1024), (1, 1024))


@dataclasses.dataclass(frozen=True)
class LayerOptions:
    """The settings every block of a builder shares.

    Attributes:
      activation: surrogate name (``"s2nn"``, ...), ``"relu"`` or a factory
        ``factory(layer_name) -> Layer``.
      surrogate_params: ``threshold`` and the surrogate's own parameters,
        given to every neuron.
      bn_momentum, bn_epsilon: BatchNormalization settings.
      kernel_initializer, kernel_regularizer: for every conv and dense kernel.
      use_bias: whether convs and dense layers carry a bias (the references
        do, although a BN follows).
      bn_beta_initializer: initial beta of each BN right before a neuron:
        ``"threshold"`` (the neuron's own threshold, so that at
        initialisation it fires where its normalized input is above the
        batch mean: half the time; zeros for ReLU) or any Keras initializer
        (``"zeros"``, the Keras / reference start). A BN that feeds
        anything else (ResNet-8's ``<stack>_b_bn`` before the ``Add``) always
        starts at zeros. Each builder's default: module docstring.
    """

    activation: ActivationSpec = "s2nn"
    surrogate_params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-3
    kernel_initializer: Any = "he_normal"
    kernel_regularizer: Any = None
    use_bias: bool = True
    bn_beta_initializer: Any = "zeros"

    def neuron(self, x, name: str):
        return make_activation(self.activation, name, **self.surrogate_params)(x)

    def bn(self, x, name: str, beta_initializer="zeros"):
        return keras.layers.BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                               beta_initializer=beta_initializer, name=name)(x)

    def bn_neuron(self, x, bn_name: str, name: str):
        """``BN -> neuron``, the BN's beta initialised by
        :attr:`bn_beta_initializer` (``"threshold"``: the neuron's threshold)."""
        neuron = make_activation(self.activation, name, **self.surrogate_params)
        beta = self.bn_beta_initializer
        if isinstance(beta, str) and beta == "threshold":
            beta = keras.initializers.Constant(_initial_threshold(neuron))
        return neuron(self.bn(x, bn_name, beta))


    def kernel_args(self) -> Dict[str, Any]:
        return dict(use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
                    kernel_regularizer=self.kernel_regularizer)


def _initial_threshold(layer) -> float:
    """The firing threshold a neuron layer starts with: an
    :class:`~s2nn_keras.S2Activation`'s (its initial value when learned);
    0 for ReLU and any other layer (where its output starts to rise)."""
    if isinstance(layer, S2Activation):
        return float(np.mean(layer.neuron_parameters()["threshold"]))
    return 0.0


def _options(activation, surrogate_params, bn_momentum, bn_epsilon, kernel_initializer, kernel_regularizer,
             bn_beta_initializer="zeros"):
    check_activation(activation, surrogate_params)
    if not (isinstance(bn_beta_initializer, str) and bn_beta_initializer == "threshold"):
        try:
            keras.initializers.get(bn_beta_initializer)
        except (ValueError, TypeError):
            raise ValueError(f"bn_beta_initializer must be 'threshold' or a Keras initializer, "
                             f"got {bn_beta_initializer!r}") from None
    if isinstance(bn_momentum, bool) or not (isinstance(bn_momentum, (int, float)) and 0.0 <= bn_momentum < 1.0):
        raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum!r}")
    if isinstance(bn_epsilon, bool) or not (isinstance(bn_epsilon, (int, float)) and bn_epsilon > 0):
        raise ValueError(f"bn_epsilon must be a number > 0, got {bn_epsilon!r}")
    return LayerOptions(activation, dict(surrogate_params), float(bn_momentum), float(bn_epsilon),
                        kernel_initializer, kernel_regularizer, bn_beta_initializer=bn_beta_initializer)


# --------------------------------------------------------------------------
# Blocks.
# --------------------------------------------------------------------------


def conv_bn_neuron(x, filters: int, kernel_size, strides=1, *, name: str, options: LayerOptions):
    """``Conv2D (same padding) -> BN -> neuron``: layers ``<name>_conv``,
    ``<name>_bn``, ``<name>_act``."""
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", name=f"{name}_conv",
                            **options.kernel_args())(x)
    return options.bn_neuron(x, f"{name}_bn", f"{name}_act")


def depthwise_bn_neuron(x, kernel_size=3, strides=1, *, name: str, options: LayerOptions):
    """``DepthwiseConv2D (same padding) -> BN -> neuron``: layers
    ``<name>_dw``, ``<name>_bn``, ``<name>_act``."""
    x = keras.layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", name=f"{name}_dw",
                                     use_bias=options.use_bias, depthwise_initializer=options.kernel_initializer,
                                     depthwise_regularizer=options.kernel_regularizer)(x)
    return options.bn_neuron(x, f"{name}_bn", f"{name}_act")


def dense_bn_neuron(x, units: int, *, name: str, options: LayerOptions):
    """``Dense -> BN -> neuron``: layers ``<name>_dense``, ``<name>_bn``,
    ``<name>_act``."""
    x = keras.layers.Dense(units, name=f"{name}_dense", **options.kernel_args())(x)
    return options.bn_neuron(x, f"{name}_bn", f"{name}_act")


def resnet8_stack(x, filters: int, strides: int = 1, *, name: str, options: LayerOptions):
    """One post-activation residual stack of ResNet-8:
    ``y = BN(conv3x3(neuron(BN(conv3x3_strided(x)))))``, shortcut ``x`` (or
    a strided 1x1 conv of ``x`` where the shape changes, no BN), then
    ``neuron(shortcut + y)`` -- the neuron reads the sum directly, without a
    BN (layers ``<name>_a_*``, ``<name>_b_conv``, ``<name>_b_bn``,
    ``<name>_shortcut``, ``<name>_add``, ``<name>_act``)."""
    y = conv_bn_neuron(x, filters, 3, strides, name=f"{name}_a", options=options)
    y = keras.layers.Conv2D(filters, 3, strides=1, padding="same", name=f"{name}_b_conv", **options.kernel_args())(y)
    y = options.bn(y, f"{name}_b_bn")
    if strides != 1 or int(x.shape[-1]) != filters:
        shortcut = strided_pointwise_conv(x, filters, strides, name=f"{name}_shortcut", **options.kernel_args())
    else:
        shortcut = x
    x = keras.layers.Add(name=f"{name}_add")([shortcut, y])
    return options.neuron(x, f"{name}_act")


def depthwise_separable_block(x, filters: int, strides: int = 1, *, name: str, options: LayerOptions):
    """``depthwise 3x3 (stride) -> BN -> neuron -> 1x1 conv -> BN -> neuron``
    (layers ``<name>_dw_*`` and ``<name>_pw_*``)."""
    x = depthwise_bn_neuron(x, 3, strides, name=f"{name}_dw", options=options)
    return conv_bn_neuron(x, filters, 1, 1, name=f"{name}_pw", options=options)


def _classifier(x, num_classes, classifier_activation, options):
    """Average pool over the whole map -> Flatten -> Dense (the references'
    head; an ``AveragePooling2D`` of the map's size is a global average)."""
    x = keras.layers.AveragePooling2D(pool_size=tuple(int(d) for d in x.shape[1:3]), name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.layers.Dense(num_classes, activation=classifier_activation, name="logits", dtype="float32",
                              kernel_initializer=options.kernel_initializer,
                              kernel_regularizer=options.kernel_regularizer)(x)


# --------------------------------------------------------------------------
# The networks.
# --------------------------------------------------------------------------


def ResNet8(input_shape=(32, 32, 3), num_classes: int = 10, *, activation: ActivationSpec = "s2nn",
            filters=(16, 32, 64), classifier_activation: Optional[str] = None, bn_momentum: float = 0.9,
            bn_epsilon: float = 1e-3, kernel_initializer="he_normal", kernel_regularizer=None,
            bn_beta_initializer="zeros", name: str = "resnet8", **surrogate_params) -> keras.Model:
    """MLPerf Tiny's image-classification ResNet-8 (CIFAR-10).

    Stem ``conv3x3(16) -> BN -> neuron``, then three :func:`resnet8_stack`
    of ``filters`` channels (strides 1, 2, 2; the first keeps the identity
    shortcut), an average pool over the 8x8 map, Flatten and ``Dense``.
    With ``activation="relu"``: the reference, 78,666 parameters at the
    defaults.

    Args:
      input_shape: ``(height, width, channels)``.
      num_classes: number of outputs.
      activation: surrogate name, ``"relu"`` or a layer factory.
      filters: channels of the three stacks (the stem has ``filters[0]``).
      classifier_activation: ``None`` (logits) or ``"softmax"``.
      bn_momentum, bn_epsilon: BatchNormalization settings.
      kernel_initializer, kernel_regularizer: for every kernel.
      name: model name.
      **surrogate_params: ``threshold`` and surrogate parameters of every neuron.
    """
    input_shape = check_shape(input_shape, 3)
    check_num_classes(num_classes)
    if not isinstance(filters, (tuple, list)) or len(filters) != 3:
        raise ValueError(f"filters must be three ints >= 1 (one per stack), got {filters!r}")
    for f in filters:
        check_positive_int(f, "filters")
    check_classifier_activation(classifier_activation)
    options = _options(activation, surrogate_params, bn_momentum, bn_epsilon, kernel_initializer,
                       kernel_regularizer, bn_beta_initializer)
    inputs = keras.Input(shape=input_shape, name="image")
    x = conv_bn_neuron(inputs, filters[0], 3, 1, name="stem", options=options)
    for i, (f, stride) in enumerate(zip(filters, (1, 2, 2))):
        x = resnet8_stack(x, f, stride, name=f"stack{i + 1}", options=options)
    outputs = _classifier(x, num_classes, classifier_activation, options)
    return keras.Model(inputs, outputs, name=name)


def DSCNN(input_shape=(49, 10, 1), num_classes: int = 12, *, activation: ActivationSpec = "s2nn",
          filters: int = 64, blocks: int = 4, dropout: float = 0.2, head_dropout: float = 0.4,
          classifier_activation: Optional[str] = None, bn_momentum: float = 0.9, bn_epsilon: float = 1e-3,
          kernel_initializer="glorot_uniform", kernel_regularizer=None, bn_beta_initializer="zeros",
          name: str = "ds_cnn",
          **surrogate_params) -> keras.Model:
    """MLPerf Tiny's keyword-spotting DS-CNN (Speech Commands, 49x10 MFCCs).

    ``conv(10x4, stride 2, filters) -> BN -> neuron -> Dropout(dropout)``,
    ``blocks`` :func:`depthwise_separable_block` of ``filters`` channels,
    ``Dropout(head_dropout)``, an average pool over the 25x5 map, Flatten and
    ``Dense``. With ``activation="relu"`` at the defaults: the reference
    layout (its pool covers 24 of the 25 rows; module docstring).
    """
    input_shape = check_shape(input_shape, 3)
    check_num_classes(num_classes)
    check_positive_int(filters, "filters")
    check_positive_int(blocks, "blocks")
    check_rate(dropout, "dropout")
    check_rate(head_dropout, "head_dropout")
    check_classifier_activation(classifier_activation)
    options = _options(activation, surrogate_params, bn_momentum, bn_epsilon, kernel_initializer,
                       kernel_regularizer, bn_beta_initializer)
    inputs = keras.Input(shape=input_shape, name="features")
    x = conv_bn_neuron(inputs, filters, (10, 4), (2, 2), name="stem", options=options)
    x = keras.layers.Dropout(dropout, name="stem_dropout")(x)
    for i in range(blocks):
        x = depthwise_separable_block(x, filters, 1, name=f"block{i + 1}", options=options)
    x = keras.layers.Dropout(head_dropout, name="head_dropout")(x)
    outputs = _classifier(x, num_classes, classifier_activation, options)
    return keras.Model(inputs, outputs, name=name)


def MobileNetV1(input_shape=(96, 96, 3), num_classes: int = 2, *, alpha: float = 0.25,
                activation: ActivationSpec = "s2nn", classifier_activation: Optional[str] = None,
                bn_momentum: float = 0.9, bn_epsilon: float = 1e-3, kernel_initializer="he_normal",
                kernel_regularizer=None, bn_beta_initializer="threshold", name: str = "mobilenet_v1",
                **surrogate_params) -> keras.Model:
    """MLPerf Tiny's visual-wake-words MobileNetV1 (96x96x3, person / no person).

    Stem ``conv3x3(32 alpha, stride 2) -> BN -> neuron``, the 13
    :func:`depthwise_separable_block` of :data:`MOBILENET_V1_BLOCKS`
    (pointwise filters times ``alpha``), an average pool over the 3x3 map,
    Flatten and ``Dense``. ``alpha = 0.25`` is the MLPerf Tiny size.
    """
    input_shape = check_shape(input_shape, 3)
    check_num_classes(num_classes)
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and alpha > 0):
        raise ValueError(f"alpha must be a number > 0, got {alpha!r}")
    check_classifier_activation(classifier_activation)
    options = _options(activation, surrogate_params, bn_momentum, bn_epsilon, kernel_initializer,
                       kernel_regularizer, bn_beta_initializer)

    def width(f):
        return max(1, int(round(f * alpha)))

    inputs = keras.Input(shape=input_shape, name="image")
    x = conv_bn_neuron(inputs, width(32), 3, 2, name="stem", options=options)
    for i, (stride, f) in enumerate(MOBILENET_V1_BLOCKS):
        x = depthwise_separable_block(x, width(f), stride, name=f"block{i + 1}", options=options)
    outputs = _classifier(x, num_classes, classifier_activation, options)
    return keras.Model(inputs, outputs, name=name)


def FCAutoencoder(input_dim: int = 640, *, activation: ActivationSpec = "s2nn", hidden: int = 128,
                  bottleneck: int = 8, depth: int = 4, bn_momentum: float = 0.9, bn_epsilon: float = 1e-3,
                  kernel_initializer="glorot_uniform", kernel_regularizer=None, bn_beta_initializer="threshold",
                  name: str = "fc_autoencoder",
                  **surrogate_params) -> keras.Model:
    """MLPerf Tiny's anomaly-detection autoencoder (ToyADMOS, 640 features).

    ``depth`` :func:`dense_bn_neuron` of ``hidden`` units, one of
    ``bottleneck`` units, ``depth`` more of ``hidden``, and a linear
    ``Dense(input_dim)`` reconstruction (the anomaly score is its error).
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(hidden, "hidden")
    check_positive_int(bottleneck, "bottleneck")
    check_positive_int(depth, "depth")
    options = _options(activation, surrogate_params, bn_momentum, bn_epsilon, kernel_initializer,
                       kernel_regularizer, bn_beta_initializer)
    inputs = keras.Input(shape=(input_dim,), name="features")
    x = inputs
    for i in range(depth):
        x = dense_bn_neuron(x, hidden, name=f"encoder{i + 1}", options=options)
    x = dense_bn_neuron(x, bottleneck, name="bottleneck", options=options)
    for i in range(depth):
        x = dense_bn_neuron(x, hidden, name=f"decoder{i + 1}", options=options)
    outputs = keras.layers.Dense(input_dim, name="reconstruction", dtype="float32",
                                 kernel_initializer=kernel_initializer, kernel_regularizer=kernel_regularizer)(x)
    return keras.Model(inputs, outputs, name=name)


#: ``{name: builder}`` of the four networks.
BUILDERS = {"resnet8": ResNet8, "ds_cnn": DSCNN, "mobilenet_v1": MobileNetV1, "fc_autoencoder": FCAutoencoder}
