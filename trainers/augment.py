"""Per-image training augmentation in ``keras.ops``: runs on any Keras
backend, on the accelerator, inside the jitted training step.

Used by the ``device`` input pipeline (:mod:`trainers.inputs`): the trainer
fits ``uint8 images -> DeviceAugmentation -> model`` and saves only
``model``. Everything here works on float32 images in [0, 255] of shape
``[B, H, W, C]`` (C = 1 or 3) and draws independent random numbers for every
image.

* :func:`random_crop_flip` -- the standard CIFAR augmentation: zero-pad by
  ``padding`` pixels, crop back at a uniform random offset, flip left-right
  with probability 1/2. ``out[b] = R_b x_b C_b`` with 0/1 row/column
  selection matrices, i.e. exact pixel copies.
* :func:`rand_augment` -- RandAugment (Cubuk et al., 2020) with the policy
  of keras-cv 0.9's ``RandAugment(value_range=(0, 255))``, which the tf.data
  pipeline uses: for each of ``num_ops`` slots, every image independently
  draws one of ten operations uniformly and applies it with probability
  ``rate = 10/11`` (the paper's identity op). Magnitude ``m`` in [0, 1] and
  ``sigma = 0.15``, ``N_c(mu, s) = clip(Normal(mu, s), lo, hi)``:

  ==============  ==========================================================
  auto_contrast   per channel ``(x - min) * 255 / (max - min)``
  equalize        per-channel histogram equalization (PIL/keras-cv rule)
  solarize        ``y = clip(x + a, 0, 255)``, ``y < t ? y : 255 - y``,
                  ``a ~ N_c(110 m, 110 s)`` in [0, 110],
                  ``t ~ N_c(255 - 255 m, 255 s)`` in [0, 255]
  color           ``x + f (gray(x) - x)``, ``f ~ N_c(m, s)`` in [0, 1]
  contrast        ``(x - mean) c + mean``, ``c ~ U(1 - m, 1 + m)``
  brightness      ``x + d``, ``d ~ U(-255 m, 255 m)``
  shear_x/_y      affine ``x' = x + k y`` (resp. ``y' = y + k x``),
                  ``k = +-N_c(m, s)`` in [0, 1], bilinear, reflect fill
  translate_x/_y  shift by ``U(-m, m) * W`` (resp. ``H``) pixels, bilinear,
                  reflect fill
  ==============  ==========================================================

  Colour results are clipped to [0, 255]. For a one-channel image ``gray(x)
  = x``, so ``color`` is the identity, exactly as keras-cv on a gray image
  tiled to RGB.

  Keras 3's own ``keras.layers.RandAugment`` is not used: it draws the
  operations once per *batch* (every image of a batch gets the same two
  operations) and evaluates all eleven operations on the whole batch per
  slot.

Example::

    aug = DeviceAugmentation(crop_flip=True, randaugment_ops=2, randaugment_magnitude=0.3)
    x = aug(keras.ops.ones((8, 28, 28, 1), "uint8"), training=True)   # float32 in [0, 1]
"""

from __future__ import annotations

import keras
from keras import ops

NUM_RANDAUGMENT_OPS = 10
RANDAUGMENT_OPS = ("auto_contrast", "equalize", "solarize", "color", "contrast", "brightness",
                   "shear_x", "shear_y", "translate_x", "translate_y")
MAGNITUDE_STDDEV = 0.15
RATE = 10.0 / 11.0
_GEOMETRIC_FIRST = 6  # ops 6..9 are affine warps
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale


def _clipped_normal(shape, mean, stddev, lo, hi, seed):
    return ops.clip(keras.random.normal(shape, mean=mean, stddev=stddev, seed=seed), lo, hi)


def _per_image(values):
    """[B] -> [B, 1, 1, 1] for broadcasting over an image batch."""
    return ops.reshape(values, (-1, 1, 1, 1))


def random_crop_flip(images, seed, padding: int = 4):
    """Random ``padding``-px zero-padded crop + left-right flip, per image.

    Args:
      images: float ``[B, H, W, C]``.
      seed: a ``keras.random.SeedGenerator`` (or seed) for the draws.
      padding: pixels of zero padding on each side.

    Returns:
      ``[B, H, W, C]``, each image an exact (possibly mirrored) window of the
      zero-padded input.
    """
    shape = ops.shape(images)
    b, h, w = shape[0], images.shape[1], images.shape[2]
    dy = keras.random.randint((b,), -padding, padding + 1, seed=seed)
    dx = keras.random.randint((b,), -padding, padding + 1, seed=seed)
    flip = keras.random.uniform((b,), seed=seed) < 0.5
    i = ops.arange(h, dtype="int32")
    j = ops.arange(w, dtype="int32")
    src_rows = i[None, :] + ops.cast(dy, "int32")[:, None]                       # [B, H]
    src_cols = ops.where(flip[:, None], (w - 1) - j[None, :], j[None, :]) + ops.cast(dx, "int32")[:, None]
    rows = ops.cast(ops.equal(src_rows[:, :, None], i[None, None, :]), images.dtype)   # [B, H, H]
    cols = ops.cast(ops.equal(src_cols[:, :, None], j[None, None, :]), images.dtype)   # [B, W, W]
    out = ops.einsum("bik,bkwc->biwc", rows, images)
    return ops.einsum("bjk,bikc->bijc", cols, out)


def _gray(images):
    if images.shape[-1] == 1:
        return images
    wr, wg, wb = GRAY_WEIGHTS
    g = wr * images[..., 0:1] + wg * images[..., 1:2] + wb * images[..., 2:3]
    return ops.repeat(g, images.shape[-1], axis=-1)


def auto_contrast(images):
    lo = ops.min(images, axis=(1, 2), keepdims=True)
    hi = ops.max(images, axis=(1, 2), keepdims=True)
    spread = hi - lo
    safe = ops.where(spread > 0, spread, ops.ones_like(spread))
    out = ops.clip((images - lo) * (255.0 / safe), 0.0, 255.0)
    return ops.where(spread > 0, out, images)


def equalize(images):
    """Histogram equalization of every channel of every image, as PIL's
    ``ImageOps.equalize`` / keras-cv: 256 bins over the integer part of the
    values, ``step = (N - min nonzero bin count) // 255``, lookup table
    ``lut[v] = (cumsum(hist)[v - 1] + step // 2) // step`` (``lut[0] = 0``),
    identity when ``step == 0``."""
    b = ops.shape(images)[0]
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    v = ops.cast(ops.clip(ops.floor(images), 0.0, 255.0), "int32")             # [B, H, W, C]
    v = ops.reshape(ops.transpose(v, (0, 3, 1, 2)), (-1, h * w))                # [B*C, HW]
    rows = ops.shape(v)[0]
    ids = ops.reshape(v + 256 * ops.arange(rows, dtype="int32")[:, None], (-1,))
    hist = ops.segment_sum(ops.ones_like(ids, dtype="int32"), ids, num_segments=rows * 256)
    hist = ops.reshape(hist, (-1, 256))                                          # [B*C, 256]
    nonzero_min = ops.min(ops.where(hist > 0, hist, ops.full_like(hist, h * w + 1)), axis=1, keepdims=True)
    step = (ops.sum(hist, axis=1, keepdims=True) - nonzero_min) // 255           # [B*C, 1]
    safe_step = ops.where(step > 0, step, ops.ones_like(step))
    lut = (ops.cumsum(hist, axis=1) + safe_step // 2) // safe_step
    lut = ops.clip(ops.concatenate([ops.zeros_like(lut[:, :1]), lut[:, :-1]], axis=1), 0, 255)
    mapped = ops.take_along_axis(lut, v, axis=1)
    mapped = ops.where(step > 0, mapped, v)
    mapped = ops.transpose(ops.reshape(mapped, (b, c, h, w)), (0, 2, 3, 1))
    return ops.cast(mapped, images.dtype)


def _reflect(coord, size):
    """Continuous coordinate -> [0, size - 1] by reflection about the edges
    (``d c b a | a b c d | d c b a``, TF's ``fill_mode="reflect"``)."""
    period = 2.0 * size
    m = coord - period * ops.floor(coord / period)
    m = ops.where(m >= size, period - 1.0 - m, m)
    return ops.clip(m, 0.0, size - 1.0)


def affine_warp(images, transform):
    """Bilinear affine warp with reflect fill, per image.

    Output pixel ``(x, y)`` (column, row) reads the input at
    ``(a0 x + a1 y + a2, b0 x + b1 y + b2)`` for ``transform[b] = [a0, a1,
    a2, b0, b1, b2]`` (the first six entries of the projective transforms of
    ``tf.raw_ops.ImageProjectiveTransformV3``). Written with gathers only,
    so it compiles under XLA on every backend (TensorFlow's
    ImageProjectiveTransformV3 has no XLA kernel).
    """
    b = ops.shape(images)[0]
    h, w, c = images.shape[1], images.shape[2], images.shape[3]
    ys, xs = ops.meshgrid(ops.arange(h, dtype="float32"), ops.arange(w, dtype="float32"), indexing="ij")
    xs, ys = ops.reshape(xs, (1, -1)), ops.reshape(ys, (1, -1))                  # [1, HW]
    t = [transform[:, k:k + 1] for k in range(6)]                                # each [B, 1]
    x_in = _reflect(t[0] * xs + t[1] * ys + t[2], float(w))
    y_in = _reflect(t[3] * xs + t[4] * ys + t[5], float(h))
    x0, y0 = ops.floor(x_in), ops.floor(y_in)
    fx, fy = (x_in - x0)[..., None], (y_in - y0)[..., None]
    x0i = ops.cast(x0, "int32")
    y0i = ops.cast(y0, "int32")
    x1i = ops.minimum(x0i + 1, w - 1)
    y1i = ops.minimum(y0i + 1, h - 1)
    flat = ops.reshape(images, (b, h * w, c))

    def at(yi, xi):
        index = ops.repeat((yi * w + xi)[..., None], c, axis=-1)
        return ops.take_along_axis(flat, index, axis=1)

    top = at(y0i, x0i) * (1.0 - fx) + at(y0i, x1i) * fx
    bottom = at(y1i, x0i) * (1.0 - fx) + at(y1i, x1i) * fx
    return ops.reshape(top * (1.0 - fy) + bottom * fy, (b, h, w, c))


def _geometric(images, op, magnitude, seed):
    """One affine warp per image: shear/translate for ops 6..9, identity otherwise."""
    b = ops.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    k = _clipped_normal((b,), magnitude, MAGNITUDE_STDDEV, 0.0, 1.0, seed)
    k = k * ops.where(keras.random.uniform((b,), seed=seed) > 0.5, -1.0, 1.0)
    t = keras.random.uniform((b,), -magnitude, magnitude, seed=seed)
    zero, one = ops.zeros_like(k), ops.ones_like(k)
    a1 = ops.where(op == 6, k, zero)                 # shear_x: x_in = x + k y
    b0 = ops.where(op == 7, k, zero)                 # shear_y: y_in = k x + y
    a2 = ops.where(op == 8, -t * w, zero)            # translate_x by t W
    b2 = ops.where(op == 9, -t * h, zero)            # translate_y by t H
    return affine_warp(images, ops.stack([one, a1, a2, b0, one, b2], axis=1))


def _one_slot(images, op, magnitude, seed):
    """Applies operation ``op[b]`` (-1 = none) to image ``b``."""
    b = ops.shape(images)[0]
    m = float(magnitude)
    s = MAGNITUDE_STDDEV
    add = _per_image(_clipped_normal((b,), 110.0 * m, 110.0 * s, 0.0, 110.0, seed))
    thr = _per_image(_clipped_normal((b,), 255.0 - 255.0 * m, 255.0 * s, 0.0, 255.0, seed))
    f = _per_image(_clipped_normal((b,), m, s, 0.0, 1.0, seed))
    cm = max(m, 0.001)
    c = _per_image(keras.random.uniform((b,), 1.0 - cm, 1.0 + cm, seed=seed))
    d = _per_image(keras.random.uniform((b,), -m, m, seed=seed)) * 255.0

    sol = ops.clip(images + add, 0.0, 255.0)
    candidates = [
        auto_contrast(images),
        equalize(images),
        ops.where(sol < thr, sol, 255.0 - sol),
        ops.clip(images + f * (_gray(images) - images), 0.0, 255.0),
        ops.clip((images - ops.mean(images, axis=(1, 2), keepdims=True)) * c
                 + ops.mean(images, axis=(1, 2), keepdims=True), 0.0, 255.0),
        ops.clip(images + d, 0.0, 255.0),
    ]
    out = _geometric(images, op, m, seed)
    sel = _per_image(op)
    for index, candidate in enumerate(candidates):
        out = ops.where(sel == index, candidate, out)
    return ops.where(sel < 0, images, out)


def rand_augment(images, seed, num_ops: int = 2, magnitude: float = 0.3, rate: float = RATE):
    """Per-image RandAugment with keras-cv's policy (see the module doc).

    Args:
      images: float ``[B, H, W, C]`` in [0, 255], C = 1 or 3.
      seed: a ``keras.random.SeedGenerator``.
      num_ops: operations per image (``augmentations_per_image``).
      magnitude: in [0, 1].
      rate: probability that a slot applies its operation.

    Returns:
      float ``[B, H, W, C]`` in [0, 255].
    """
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"RandAugment needs 1 or 3 channels, got {images.shape[-1]}")
    b = ops.shape(images)[0]
    for _ in range(int(num_ops)):
        choice = keras.random.randint((b,), 0, NUM_RANDAUGMENT_OPS, seed=seed)
        apply = keras.random.uniform((b,), seed=seed) < rate
        op = ops.where(apply, choice, -ops.ones_like(choice))
        images = _one_slot(images, op, magnitude, seed)
    return images


@keras.saving.register_keras_serializable(package="s2nn_trainers")
class DeviceAugmentation(keras.layers.Layer):
    """``uint8`` (or float in [0, 255]) images -> float32 in [0, 1], with
    per-image crop/flip and RandAugment when ``training``.

    At inference it only rescales, so a model ``Input(uint8) ->
    DeviceAugmentation -> net`` evaluates ``net`` on the same inputs as the
    tf.data pipeline gives it. Runs in float32 under any dtype policy.
    """

    def __init__(self, crop_flip=False, padding=4, randaugment_ops=0, randaugment_magnitude=0.3,
                 seed=None, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.crop_flip = bool(crop_flip)
        self.padding = int(padding)
        self.randaugment_ops = int(randaugment_ops)
        self.randaugment_magnitude = float(randaugment_magnitude)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=False):
        x = ops.cast(images, "float32")
        if training:
            if self.crop_flip:
                x = random_crop_flip(x, self.seed_generator, self.padding)
            if self.randaugment_ops > 0:
                x = rand_augment(x, self.seed_generator, self.randaugment_ops, self.randaugment_magnitude)
        return x / 255.0

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"crop_flip": self.crop_flip, "padding": self.padding,
                       "randaugment_ops": self.randaugment_ops,
                       "randaugment_magnitude": self.randaugment_magnitude, "seed": self.seed})
        return config
