"""tf.data input pipelines and augmentation for the trainers.

Training pipeline (per epoch)::

    uint8 arrays -> cache -> shuffle (reshuffled each epoch, seeded)
      -> [random padded crop (--crop_padding) + horizontal flip, per image, parallel map]
      -> batch -> [RandAugment, per batch, parallel map]
      -> float32 in [0, 1] + one-hot labels -> prefetch

Evaluation pipeline: cast + one-hot -> cache -> batch -> prefetch.

Images stay ``uint8`` until the last map, so the cache holds 1 byte per
pixel. Labels are one-hot because Keras' categorical cross-entropy with
``label_smoothing=eps`` then uses targets ``t_c (1 - eps) + eps / C``
(paper Eq. A.1).

RandAugment (Cubuk et al., 2020) is keras-cv's ``RandAugment`` with
``value_range=(0, 255)``: each image gets ``augmentations_per_image``
operations drawn uniformly from its policy, with strength ``magnitude`` in
[0, 1]. Its colour operations need RGB, so grayscale images (Fashion-MNIST)
are tiled to three equal channels, augmented, and averaged back to one
channel; for a gray RGB image every colour op keeps the three channels
equal, so the average loses nothing.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
CROP_PADDING = 4


def random_crop_flip(image: tf.Tensor, padding: int = CROP_PADDING) -> tf.Tensor:
    """The standard CIFAR augmentation for one HWC image: zero-pad by
    ``padding`` pixels on each side, crop back to the original size at a
    uniformly random offset, and flip left-right with probability 1/2."""
    shape = tf.shape(image)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    cropped = tf.image.random_crop(padded, shape)
    return tf.image.random_flip_left_right(cropped)


def make_randaugment(ops: int, magnitude: float, channels: int, seed: Optional[int] = None) -> Optional[Callable]:
    """Returns ``fn(uint8 images [B, H, W, C]) -> float32 images in [0, 255]``
    applying keras-cv RandAugment, or ``None`` when ``ops == 0``.

    Grayscale (``channels == 1``) batches are tiled to RGB for the colour
    operations and averaged back to one channel afterwards.
    """
    if ops <= 0:
        return None
    if channels not in (1, 3):
        raise ValueError(f"RandAugment needs 1 or 3 channels, got {channels}")
    import keras_cv  # heavy import; only when RandAugment is used

    layer = keras_cv.layers.RandAugment(
        value_range=(0, 255), augmentations_per_image=int(ops), magnitude=float(magnitude), seed=seed
    )

    def augment(images):
        x = tf.cast(images, tf.float32)
        if channels == 1:
            x = tf.tile(x, [1, 1, 1, 3])
        x = layer(x, training=True)
        x = tf.clip_by_value(tf.cast(x, tf.float32), 0.0, 255.0)
        if channels == 1:
            x = tf.reduce_mean(x, axis=-1, keepdims=True)
        return x

    return augment


def _finish(images, labels, num_classes):
    """uint8/float [0, 255] images -> float32 [0, 1]; int labels -> one-hot."""
    x = tf.cast(images, tf.float32) / 255.0
    y = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    return x, y


def _options(distributed: bool) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = False
    # No tf.data autotuning model thread. Keras makes a new iterator every
    # epoch (training and validation), and in TF 2.21 destroying one waits
    # for the model thread's timed wait (Model::OptimizeLoop) to run out:
    # 0 to 40+ s of an idle process at epoch ends (seen with gdb; the
    # quickstart's XLA epochs took 43 s or 87 s at random). Without it, an
    # AUTOTUNE parallel map keeps tf.data's initial parallelism,
    # min(16, runner threads) -- one call per core up to 16.
    options.autotune.enabled = False
    if distributed:
        # In-memory arrays have no files to shard; shard by element instead.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    seed: int = 0,
    crop_flip: bool = False,
    crop_padding: int = CROP_PADDING,
    randaugment_ops: int = 0,
    randaugment_magnitude: float = 0.3,
    distributed: bool = False,
) -> tf.data.Dataset:
    """Shuffled, augmented, batched training data: ``(x float32 [0,1], y one-hot)``."""
    channels = int(images.shape[-1])
    randaugment = make_randaugment(randaugment_ops, randaugment_magnitude, channels, seed)
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    if crop_flip:
        ds = ds.map(lambda x, y: (random_crop_flip(x, crop_padding), y), num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size)
    if randaugment is not None:
        ds = ds.map(lambda x, y: (randaugment(x), y), num_parallel_calls=AUTOTUNE)
    ds = ds.map(lambda x, y: _finish(x, y, num_classes), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE).with_options(_options(distributed))


def eval_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    batch_size: int,
    *,
    flip: bool = False,
    distributed: bool = False,
) -> tf.data.Dataset:
    """Batched evaluation data in order; ``flip=True`` mirrors every image
    left-right (the second view of flip-averaging TTA)."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    ds = ds.map(lambda x, y: _finish(x, y, num_classes), num_parallel_calls=AUTOTUNE)
    if flip:
        ds = ds.map(lambda x, y: (tf.image.flip_left_right(x), y), num_parallel_calls=AUTOTUNE)
    ds = ds.cache().batch(batch_size).prefetch(AUTOTUNE)
    options = _options(distributed)
    options.deterministic = True
    return ds.with_options(options)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimizer steps per epoch: ceil(N / B) (the last batch may be short)."""
    return int(-(-int(num_examples) // int(batch_size)))
