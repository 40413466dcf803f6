"""Keras -> Keras transforms of the export: the neuron formulations and
their layers (:mod:`~export.transform.formulations`,
:mod:`~export.transform.neurons`, :mod:`~export.transform.layers`),
BatchNorm folding (:mod:`~export.transform.fold`, paper Eq. 27), graph
rewrites (:mod:`~export.transform.rewrites`), what a model takes as input
and its own input scaling (:mod:`~export.transform.inputs`), the edge model whose neurons
are fused clamps (:mod:`~export.transform.edge`), range calibration
(:mod:`~export.transform.calibration`) and quantization-aware fine-tuning
(:mod:`~export.transform.qat`). Nothing here imports :mod:`export.tflite`.
"""
