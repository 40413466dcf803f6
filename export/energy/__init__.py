"""Energy report of a single-step SNN (paper Appendix B, Eqs. B.1-B.4).

This module gathers the energy API under one import and runs the command
line (``python -m export.energy``, :mod:`export.cli.energy`). The pieces
live in small modules:

* Keras side, backend-agnostic, in the library: Eq. B.1 FLOPs
  (:mod:`s2nn_keras.flops`: ``layer_flops``), input kinds, rates B.2 and
  B.3/B.4 (:mod:`s2nn_keras.energy`: ``energy_report``, ``resolve_inputs``,
  ``PRESETS``, ``CONVENTIONS``);
* the TFLite report (:mod:`export.energy.tflite`: ``tflite_energy_report``,
  ``compare_rates``), with the op reader :mod:`export.tflite.flatbuffer`;
* writing (:mod:`export.energy.report`: ``write_energy_report``,
  ``format_table``; the PNG in :mod:`export.energy.plot`).

Example::

    from export.energy import layer_flops, energy_report, write_energy_report, tflite_energy_report

    rep = energy_report(model, x_test, convention="default", preset="45nm_fp32")
    write_energy_report(model, x_test, "run/energy")     # json + csv + png + printed table

Command line::

    python -m export.energy --model run/model.keras --dataset fashion_mnist \\
        --max_test_examples 1000 --output_dir run/energy [--tflite m.tflite]
"""

from __future__ import annotations

from export.lazy import lazy_attributes

__all__ = [
    "PRESETS",
    "CONVENTIONS",
    "HOROWITZ_2014",
    "SPIKE_KINDS",
    "NEAR_BINARY_TOLERANCE",
    "layer_flops",
    "resolve_inputs",
    "energy_report",
    "tflite_energy_report",
    "compare_rates",
    "write_energy_report",
    "format_table",
]

# Loaded on first use, so ``python -m export.energy`` can silence
# TensorFlow's start-up before Keras (and with it TensorFlow) is imported.
_WHERE = {
    "PRESETS": "s2nn_keras.energy",
    "CONVENTIONS": "s2nn_keras.energy",
    "HOROWITZ_2014": "s2nn_keras.energy",
    "SPIKE_KINDS": "s2nn_keras.energy",
    "energy_report": "s2nn_keras.energy",
    "resolve_inputs": "s2nn_keras.energy",
    "layer_flops": "s2nn_keras.flops",
    "NEAR_BINARY_TOLERANCE": "export.energy.tflite",
    "tflite_energy_report": "export.energy.tflite",
    "compare_rates": "export.energy.tflite",
    "write_energy_report": "export.energy.report",
    "format_table": "export.energy.report",
}

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)

