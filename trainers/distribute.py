"""Data parallelism for the trainer, per backend.

``--strategy``:

* ``default`` -- one device;
* ``mirrored`` -- synchronous data parallelism over the local devices:
  ``tf.distribute.MirroredStrategy`` (GPUs, or the logical CPUs of
  ``--num_cpu_devices``) on TensorFlow, ``keras.distribution.DataParallel``
  (every local JAX device; on CPU ``--num_cpu_devices`` or
  ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) on JAX;
* ``multi_worker`` -- several processes (machines), the cluster named by
  ``TF_CONFIG`` on both backends (the same command everywhere):
  ``tf.distribute.MultiWorkerMirroredStrategy`` on TensorFlow;
  ``jax.distributed.initialize`` (through ``keras.distribution.initialize``)
  and ``keras.distribution.DataParallel`` over every device of every
  process on JAX (:class:`JaxMultiWorker`). On JAX the Keras variables
  ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` / ``_NUM_PROCESSES`` /
  ``_PROCESS_ID`` may name the cluster instead.

:func:`make_distribution` returns a :class:`Distribution` with a common
interface: ``scope()``, ``num_replicas``, ``num_processes``, ``chief``,
``worker_index``, ``shard_tf_data`` and ``release()``.
"""

from __future__ import annotations

import contextlib
import os

from trainers.errors import UsageError


class Distribution:
    """One device (the base class is the ``default`` strategy)."""

    name = "default"
    num_replicas = 1
    num_processes = 1  # >1: each process feeds its slice of every batch (JAX multi-process)
    chief = True
    worker_index = 0
    shard_tf_data = False  # tf.data must shard by element (MirroredStrategy)

    def scope(self):
        return contextlib.nullcontext()

    def release(self) -> None:
        """Ends the data-parallel set-up (post-training reports run on one device)."""


class TFStrategy(Distribution):
    """A ``tf.distribute`` strategy."""

    def __init__(self, name, strategy):
        self.name = name
        self.strategy = strategy
        self.num_replicas = int(strategy.num_replicas_in_sync)
        self.chief = is_chief(strategy)
        resolver = getattr(strategy, "cluster_resolver", None)
        self.worker_index = int(getattr(resolver, "task_id", 0) or 0) if resolver is not None else 0
        self.shard_tf_data = name != "default"

    def scope(self):
        return self.strategy.scope()


class JaxDataParallel(Distribution):
    """``keras.distribution.DataParallel`` over every local JAX device: the
    weights are replicated, each batch is split along its first axis."""

    name = "mirrored"

    def __init__(self):
        import keras

        devices = keras.distribution.list_devices()
        self.devices = devices
        self.num_replicas = len(devices)
        self._distribution = keras.distribution.DataParallel(devices=devices)
        keras.distribution.set_distribution(self._distribution)

    def release(self) -> None:
        import keras

        keras.distribution.set_distribution(None)


def jax_cluster_from_env(environ=None):
    """``(coordinator "host:port", num_processes, process_id)`` of a JAX
    multi-process run: from ``TF_CONFIG`` (``cluster.chief`` then
    ``cluster.worker`` in order; the coordinator is the first, process 0 =
    the chief), else from Keras' ``KERAS_DISTRIBUTION_JOB_ADDRESSES``
    (comma-separated, coordinator first), ``KERAS_DISTRIBUTION_NUM_PROCESSES``
    and ``KERAS_DISTRIBUTION_PROCESS_ID``.

    Raises:
      UsageError: neither is set, or the description is inconsistent.
    """
    import json

    env = os.environ if environ is None else environ
    if env.get("TF_CONFIG"):
        try:
            config = json.loads(env["TF_CONFIG"])
            cluster = config["cluster"]
            tasks = [("chief", a) for a in cluster.get("chief", [])] + [("worker", a) for a in cluster.get("worker", [])]
            task = config["task"]
            index = [i for i, (kind, _) in enumerate(tasks) if kind == task["type"]][int(task["index"])]
        except (ValueError, KeyError, TypeError, IndexError):
            raise UsageError("TF_CONFIG must look like {\"cluster\": {\"worker\": [\"host:port\", ...]}, "
                             "\"task\": {\"type\": \"worker\", \"index\": I}}") from None
        return tasks[0][1], len(tasks), index
    addresses = env.get("KERAS_DISTRIBUTION_JOB_ADDRESSES")
    if addresses:
        jobs = [a.strip() for a in addresses.split(",") if a.strip()]
        try:
            num = int(env.get("KERAS_DISTRIBUTION_NUM_PROCESSES", len(jobs)))
            pid = int(env["KERAS_DISTRIBUTION_PROCESS_ID"])
        except (KeyError, ValueError):
            raise UsageError("KERAS_DISTRIBUTION_JOB_ADDRESSES needs KERAS_DISTRIBUTION_PROCESS_ID "
                             "(an integer)") from None
        if not 0 <= pid < num:
            raise UsageError(f"KERAS_DISTRIBUTION_PROCESS_ID {pid} is not in [0, {num})")
        return jobs[0], num, pid
    raise UsageError("--strategy multi_worker needs the TF_CONFIG environment variable (or on jax "
                     "KERAS_DISTRIBUTION_JOB_ADDRESSES and KERAS_DISTRIBUTION_PROCESS_ID)")


class JaxMultiWorker(Distribution):
    """Data parallelism over the devices of several JAX processes.

    ``keras.distribution.initialize`` (``jax.distributed.initialize``) joins
    the cluster before JAX computes anything; then
    ``keras.distribution.DataParallel`` over ``list_devices()`` (every
    device of every process) replicates the weights, and each process feeds
    its slice of every global batch (``auto_shard_dataset = False``; the
    trainer's :class:`trainers.inputs.ArrayBatches` does the slicing).
    Process 0 is the chief.
    """

    name = "multi_worker"

    def __init__(self, environ=None):
        import keras

        coordinator, num, pid = jax_cluster_from_env(environ)
        keras.distribution.initialize(coordinator, num, pid)
        devices = keras.distribution.list_devices()
        self.devices = devices
        self.num_replicas = len(devices)
        self.num_processes = int(num)
        self.worker_index = int(pid)
        self.chief = pid == 0
        self._distribution = keras.distribution.DataParallel(devices=devices)
        self._distribution.auto_shard_dataset = False
        keras.distribution.set_distribution(self._distribution)

    def release(self) -> None:
        import keras

        keras.distribution.set_distribution(None)


def make_distribution(name: str, backend: str) -> Distribution:
    """The :class:`Distribution` for ``--strategy name`` on ``backend``."""
    if backend == "tensorflow":
        import tensorflow as tf

        if name == "default":
            return TFStrategy(name, tf.distribute.get_strategy())
        if name == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
            return TFStrategy(name, tf.distribute.MirroredStrategy(devices=devices))
        if name == "multi_worker":
            if not os.environ.get("TF_CONFIG"):
                raise UsageError("--strategy multi_worker needs the TF_CONFIG environment variable")
            return TFStrategy(name, _multi_worker_strategy_class()())
        raise UsageError(f"unknown --strategy {name!r}")
    if name == "default":
        return Distribution()
    if name == "mirrored" and backend == "jax":
        return JaxDataParallel()
    if name == "multi_worker" and backend == "jax":
        return JaxMultiWorker()
    raise UsageError(f"--strategy {name} is not available on the {backend} backend "
                     f"(tensorflow and jax: default, mirrored, multi_worker)")


def is_chief(strategy) -> bool:
    """True on the worker that writes outputs (always True without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    spec = resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in spec


def _multi_worker_strategy_class():
    """MultiWorkerMirroredStrategy whose ``reduce`` accepts scalars with
    ``axis=0``.

    Keras 3 (<= 3.15) reduces every per-replica log value of a train/test
    step with ``strategy.reduce("MEAN", v, axis=0)`` under a multi-worker
    strategy; the loss and metric values are scalars, for which TF rejects
    ``axis=0``. For a scalar the mean over replicas is the same with
    ``axis=None``, which is what this subclass uses.
    """
    import tensorflow as tf

    class ScalarSafeMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            if axis is not None:
                local = self.experimental_local_results(value)
                if local and getattr(local[0], "shape", None) is not None and local[0].shape.rank == 0:
                    axis = None
            return super().reduce(reduce_op, value, axis)

    return ScalarSafeMultiWorkerMirroredStrategy


def use_local_batch_for_symbolic_build(model, distribution: Distribution) -> None:
    """Works around Keras 3 (<= 3.15) failing ``fit`` under
    MultiWorkerMirroredStrategy (no-op for other strategies).

    Before the first step Keras' TF trainer builds metrics and optimizer
    from one batch, which it gets by ``strategy.reduce("MEAN", batch)`` on
    the per-replica batch; with a multi-worker strategy that eager reduce
    of an input batch fails ("Attempt to convert a value (PerReplica...)").
    Only the batch's shapes matter for the build, so this instance override
    takes this worker's first local replica batch instead.
    """
    if not isinstance(distribution, TFStrategy) or distribution.name != "multi_worker":
        return
    import tensorflow as tf
    import tree

    strategy = distribution.strategy

    def _maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v,
                    batch)
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = _maybe_symbolic_build
