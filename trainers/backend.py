"""Which Keras backend runs, whether TensorFlow is installed, and the
device set-up that must happen before the backend starts computing.

Nothing here imports TensorFlow unless the Keras backend is TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
import sys


def tensorflow_installed() -> bool:
    """True when ``import tensorflow`` would find a package (nothing is
    imported; a ``sys.meta_path`` blocker that hides TensorFlow counts as
    not installed)."""
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def import_keras_quietly() -> str:
    """Imports Keras (and so its backend) and returns the backend name.

    With ``TF_CPP_MIN_LOG_LEVEL`` >= 1 stderr (fd 2) is silenced during the
    import: TensorFlow 2.21 prints start-up INFO lines before absl logging is
    initialised, and a flag error must be the only line on stderr. Python
    exceptions still propagate.
    """
    if "keras" not in sys.modules:
        try:
            level = int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
        except ValueError:
            level = 0
        if level >= 1:
            sys.stderr.flush()
            saved = os.dup(2)
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 2)
                _import_keras_and_backend()
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                os.close(devnull)
        else:
            _import_keras_and_backend()
    import keras

    return keras.backend.backend()


def _import_keras_and_backend():
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow  # noqa: F401


def keras_backend() -> str:
    """The name of the running Keras backend (imports Keras)."""
    return import_keras_quietly()


def configure_cpu_devices(n: int) -> None:
    """Splits the host CPU into ``n`` devices; must run before the backend
    computes anything. TensorFlow: ``n`` logical CPU devices (for
    ``tf.distribute.MirroredStrategy``); JAX: ``jax_num_cpu_devices`` (the
    same as ``XLA_FLAGS=--xla_force_host_platform_device_count=n``)."""
    if not n or n <= 1:
        return
    backend = keras_backend()
    if backend == "tensorflow":
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    elif backend == "jax":
        import jax

        try:
            jax.config.update("jax_num_cpu_devices", int(n))
        except (AttributeError, KeyError, ValueError):  # JAX < 0.4.38: XLA reads its flags at start-up
            flags = os.environ.get("XLA_FLAGS", "")
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={int(n)}".strip()


def device_names():
    """Names of the devices the backend computes on (for logs and JSON)."""
    backend = keras_backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_logical_devices("GPU")
        return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    if backend == "jax":
        import jax

        return [str(d) for d in jax.devices()]
    if backend == "torch":
        import torch

        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] or ["cpu"]
    return ["cpu"]
