"""TFLite: conversion of the transformed Keras model
(:mod:`~export.tflite.convert`, with the spike-grid fix-up
:mod:`~export.tflite.spike_grids`), the flatbuffer reader and its queries
(:mod:`~export.tflite.flatbuffer`), the runtimes (LiteRT, TFLite Micro:
:mod:`~export.tflite.runtimes`), spike-tensor capture and verification
(:mod:`~export.tflite.spikes`, :mod:`~export.tflite.verify`), the C array
(:mod:`~export.tflite.c_array`), Vela (:mod:`~export.tflite.vela`) and
TensorFlow's log silencing (:mod:`~export.tflite.quiet`).
"""
