"""s2nn_keras: single-step spiking neural networks (S2NN) for Keras 3.

Runs on the TensorFlow, JAX and PyTorch backends (``KERAS_BACKEND``); only
Keras and NumPy are needed to import it.

    from s2nn_keras import S2Activation

Modules: ``surrogates`` (spike function and surrogate catalogue), ``layers``
(:class:`S2Activation`), ``models`` (PreActResNet builders), ``firing``
(firing rates, Eq. B.2), ``regularizers``, ``graph`` (the layer-graph
walker), ``flops`` (Eq. B.1), ``energy`` (Appendix B report), ``datasets``
(offline Fashion-MNIST reader), ``plot``.
"""

from s2nn_keras.surrogates import (
    Surrogate,
    available_surrogates,
    get_surrogate,
    register_surrogate,
    spike,
    surrogate_gradient,
)
from s2nn_keras.layers import S2Activation, is_spiking_neuron
from s2nn_keras.firing import FiringRateCallback, firing_rates, neuron_layers
from s2nn_keras.regularizers import FiringRateRegularizer
from s2nn_keras.graph import LayerGraph
from s2nn_keras.flops import layer_flops
from s2nn_keras.energy import energy_report
from s2nn_keras import datasets, energy, flops, graph, models, regularizers

__version__ = "0.1.0"

__all__ = [
    "S2Activation",
    "is_spiking_neuron",
    "Surrogate",
    "available_surrogates",
    "get_surrogate",
    "register_surrogate",
    "spike",
    "surrogate_gradient",
    "firing_rates",
    "FiringRateCallback",
    "neuron_layers",
    "FiringRateRegularizer",
    "LayerGraph",
    "layer_flops",
    "energy_report",
    "datasets",
    "energy",
    "flops",
    "graph",
    "models",
    "regularizers",
]
