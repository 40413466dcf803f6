"""Model builders (functional Keras API, any backend).

* :mod:`s2nn_keras.models.preact_resnet` -- the paper's pre-activation
  ResNets (:func:`PreActResNet`, :func:`PreActResNet18`,
  :func:`PreActResNet106`);
* :mod:`s2nn_keras.models.mlperf_tiny` -- S²NN versions of the four MLPerf
  Tiny reference networks (:func:`ResNet8`, :func:`DSCNN`,
  :func:`MobileNetV1`, :func:`FCAutoencoder`);
* :mod:`s2nn_keras.models.common` -- the neuron factory
  (:func:`make_activation`) and option checks they share.

Example:
  >>> from s2nn_keras.models import PreActResNet18, mlperf_tiny
  >>> model = PreActResNet18((32, 32, 3), 10, activation="s2nn", width=16)
  >>> kws = mlperf_tiny.DSCNN()                 # 49x10x1 -> 12 logits
"""

from s2nn_keras.models import common, mlperf_tiny, preact_resnet
from s2nn_keras.models.common import make_activation
from s2nn_keras.models.mlperf_tiny import DSCNN, FCAutoencoder, MobileNetV1, ResNet8
from s2nn_keras.models.preact_resnet import PreActResNet, PreActResNet18, PreActResNet106

__all__ = ["PreActResNet", "PreActResNet18", "PreActResNet106", "make_activation", "ResNet8", "DSCNN",
           "MobileNetV1", "FCAutoencoder", "common", "mlperf_tiny", "preact_resnet"]
