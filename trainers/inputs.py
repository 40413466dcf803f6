"""Training and evaluation inputs for ``model.fit``, per input pipeline.

``--input_pipeline``:

* ``tf_data`` -- :mod:`trainers.pipeline` (tf.data; crop/flip per image,
  keras-cv RandAugment per image, both on the host CPU); needs TensorFlow.
  The fitted model is the network itself, fed float32 images in [0, 1].
* ``device`` -- no TensorFlow: NumPy batches of ``uint8`` images
  (:class:`ArrayBatches`, a ``keras.utils.PyDataset`` reshuffled every
  epoch from a seeded generator), augmented per image on the accelerator
  inside the jitted train step by :class:`trainers.augment.DeviceAugmentation`
  (same policy). The fitted model is
  :func:`trainers.recipe.training_model`; the saved one is the network.
* ``auto`` (default) -- ``tf_data`` on the TensorFlow backend, ``device``
  on the others.

Labels are one-hot float32 (Keras' ``CategoricalCrossentropy(label_smoothing
=eps)`` then forms the targets of Eq. A.1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import numpy as np

PIPELINES = ("auto", "tf_data", "device")


def resolve_pipeline(name: str, backend: str) -> str:
    """``auto`` -> ``tf_data`` on TensorFlow, ``device`` elsewhere."""
    if name == "auto":
        return "tf_data" if backend == "tensorflow" else "device"
    return name


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    out[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = 1.0
    return out


def _keras_pydataset():
    import keras

    return keras.utils.PyDataset


class ArrayBatches:
    """Batches of in-memory arrays for ``fit``/``evaluate`` (a
    ``keras.utils.PyDataset``; built by :func:`array_batches`).

    Training (``shuffle=True``): a fresh permutation of all examples every
    epoch from ``np.random.default_rng(seed)`` (so a resumed run, which
    passes ``seed + epochs done``, is reproducible), ``ceil(N / B)`` batches
    with a short last one -- or, with ``multiple > 1`` (data parallelism over
    ``multiple`` devices), that last batch cut to a multiple of ``multiple``
    examples. Evaluation (``shuffle=False``): the arrays in order; a last
    batch that is not a multiple of ``multiple`` is padded with
    zero-weight copies of its first example, so every example counts once
    in the (weighted) accuracy; the loss of such a batch is averaged over
    the padded batch (the only case where ``val_loss`` is approximate).

    With ``num_shards > 1`` (JAX multi-process data parallelism) every
    process builds the same global batches (same seed, same order) and
    returns only its slice ``shard_index`` of each one; Keras assembles the
    global batch from the processes' slices
    (``jax.make_array_from_process_local_data``).
    """


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int = 0,
                  multiple: int = 1, num_shards: int = 1, shard_index: int = 0):
    """A :class:`ArrayBatches` PyDataset over ``(x, y)``."""
    PyDataset = _keras_pydataset()

    class _ArrayBatches(PyDataset, ArrayBatches):
        def __init__(self):
            super().__init__()
            self.x, self.y = x, y
            self.batch_size = int(batch_size)
            self.shuffle = shuffle
            self.multiple = max(1, int(multiple))
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x)) if shuffle else None
            n = len(x)
            full, rest = divmod(n, self.batch_size)
            if shuffle and self.multiple > 1:
                rest -= rest % self.multiple
            self.sizes = [self.batch_size] * full + ([rest] if rest else [])
            self.weighted = (not shuffle) and any(s % self.multiple for s in self.sizes)
            self.num_shards, self.shard_index = max(1, int(num_shards)), int(shard_index)

        def __len__(self):
            return len(self.sizes)

        def __getitem__(self, index):
            start = index * self.batch_size
            stop = start + self.sizes[index]
            idx = self.order[start:stop] if self.shuffle else slice(start, stop)
            bx, by = self.x[idx], self.y[idx]
            if not self.weighted:
                return self._shard((bx, by))
            w = np.ones(len(bx), dtype=np.float32)
            pad = (-len(bx)) % self.multiple
            if pad:
                bx = np.concatenate([bx, np.repeat(bx[:1], pad, axis=0)])
                by = np.concatenate([by, np.repeat(by[:1], pad, axis=0)])
                w = np.concatenate([w, np.zeros(pad, dtype=np.float32)])
            return self._shard((bx, by, w))

        def _shard(self, batch):
            if self.num_shards == 1:
                return batch
            n = len(batch[0]) // self.num_shards
            return tuple(t[self.shard_index * n:(self.shard_index + 1) * n] for t in batch)

        def on_epoch_end(self):
            if self.shuffle:
                self.order = self.rng.permutation(len(self.x))

    return _ArrayBatches()


#: The most training images the default ``--validation_examples`` holds out.
DEFAULT_MAX_VALIDATION_EXAMPLES = 5000


def default_validation_examples(num_train_examples: int) -> int:
    """The default ``--validation_examples``: 10 % of the ``num_train_examples``
    training images loaded (rounded down), at most 5,000 -- 5,000 of the full
    CIFAR (50,000) and Fashion-MNIST (60,000) training sets, 307 of 3,072,
    none of fewer than 10."""
    return min(DEFAULT_MAX_VALIDATION_EXAMPLES, int(num_train_examples) // 10)


def split_validation(images: np.ndarray, labels: np.ndarray, num_validation: Optional[int], seed: int):
    """Holds ``num_validation`` examples out of the training set
    (None: :func:`default_validation_examples` of them).

    The held-out indices are the first ``num_validation`` of
    ``np.random.default_rng(seed).permutation(N)`` -- NumPy only, so the
    split is the same on every backend, in every process of a data-parallel
    run and on resume. Both parts keep the original order.

    Returns:
      ``(train_images, train_labels, val_images, val_labels)``; the
      validation arrays are None when none are held out (``num_validation
      == 0``, or the default of fewer than 10 images).
    """
    n = len(images)
    if num_validation is None:
        num_validation = default_validation_examples(n)
    if num_validation <= 0:
        return images, labels, None, None
    if num_validation >= n:
        raise ValueError(f"--validation_examples {num_validation} leaves no training images of the {n} loaded")
    order = np.random.default_rng(seed).permutation(n)
    val, train = np.sort(order[:num_validation]), np.sort(order[num_validation:])
    return images[train], labels[train], images[val], labels[val]


@dataclasses.dataclass
class RunInputs:
    """What the run feeds to Keras.

    Attributes:
      pipeline: ``tf_data`` or ``device``.
      train: ``fit``'s ``x`` (a tf.data.Dataset or a PyDataset).
      validation: ``fit``'s ``validation_data`` for the fitted model (the
        held-out part of the training set), or None without one.
      validation_float: the validation split for the *network* (float32
        images in [0, 1], one-hot labels) -- the per-epoch firing rates use it.
      test_float: the test split for the network (tf.data.Dataset or
        PyDataset): evaluated only at the end (final and best model, TTA,
        firing rates, the energy report).
      steps_per_epoch: optimizer steps per epoch.
      examples_per_epoch: training examples per epoch (all of them, except
        the remainder a data-parallel ``device`` pipeline drops).
      augmentation: the DeviceAugmentation layer (``device`` pipeline) or None.
    """

    pipeline: str
    train: object
    validation: object
    validation_float: object
    test_float: object
    steps_per_epoch: int
    examples_per_epoch: int
    augmentation: Optional[object] = None


def make_inputs(pipeline: str, train_x, train_y, test_x, test_y, num_classes: int, flags: dict,
                *, seed: int, crop_flip: bool, distribution, val_x=None, val_y=None) -> RunInputs:
    """Builds the inputs of ``pipeline`` (resolved: ``tf_data`` or ``device``);
    ``val_x``/``val_y``: the validation split (None: no validation)."""
    batch = int(flags["batch_size"])
    if pipeline == "tf_data":
        from trainers import pipeline as tf_pipeline

        shard = distribution.shard_tf_data
        train = tf_pipeline.train_dataset(
            train_x, train_y, num_classes, batch, seed=seed, crop_flip=crop_flip,
            crop_padding=flags.get("crop_padding", 4), randaugment_ops=flags["randaugment_ops"],
            randaugment_magnitude=flags["randaugment_magnitude"],
            distributed=shard)
        val = (tf_pipeline.eval_dataset(val_x, val_y, num_classes, batch, distributed=shard)
               if val_x is not None else None)
        test = tf_pipeline.eval_dataset(test_x, test_y, num_classes, batch, distributed=shard)
        return RunInputs("tf_data", train, val, val, test, tf_pipeline.steps_per_epoch(len(train_x), batch),
                         len(train_x))

    from trainers.augment import DeviceAugmentation

    multiple = (distribution.num_replicas
                if distribution.name == "mirrored" or distribution.num_processes > 1 else 1)
    shards = dict(num_shards=distribution.num_processes, shard_index=distribution.worker_index)
    train_hot, test_hot = one_hot(train_y, num_classes), one_hot(test_y, num_classes)
    train = array_batches(train_x, train_hot, batch, shuffle=True, seed=seed, multiple=multiple, **shards)
    validation = validation_float = None
    if val_x is not None:
        val_hot = one_hot(val_y, num_classes)
        validation = array_batches(val_x, val_hot, batch, shuffle=False, multiple=multiple, **shards)
        validation_float = array_batches(val_x.astype(np.float32) / 255.0, val_hot, batch, shuffle=False,
                                         multiple=multiple)
    test_float = array_batches(test_x.astype(np.float32) / 255.0, test_hot, batch, shuffle=False,
                               multiple=multiple, **shards)
    augmentation = DeviceAugmentation(crop_flip=crop_flip, padding=flags.get("crop_padding", 4),
                                      randaugment_ops=flags["randaugment_ops"],
                                      randaugment_magnitude=flags["randaugment_magnitude"], seed=seed,
                                      name="device_augmentation")
    return RunInputs("device", train, validation, validation_float, test_float, len(train),
                     int(sum(train.sizes)), augmentation)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimizer steps per epoch: ceil(N / B) (the last batch may be short)."""
    return int(math.ceil(int(num_examples) / int(batch_size)))
