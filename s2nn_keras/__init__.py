"""s2nn_keras: single-step spiking neural networks (S2NN) for Keras 3.

    from s2nn_keras import S2Activation
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
from s2nn_keras import models, regularizers

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
    "models",
    "regularizers",
]
