"""Per-image augmentation in keras.ops (the device input pipeline), on the
running Keras backend, against NumPy references."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from trainers import augment  # noqa: E402


def _images(n, h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c)).astype(np.float32)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_crop_flip_gives_windows_of_the_padded_image_per_image():
    x = _images(16, 12, 10, 3)
    out = _np(augment.random_crop_flip(ops.convert_to_tensor(x), keras.random.SeedGenerator(0), padding=2))
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets = set()
    for b in range(16):
        found = [(i, j, fl) for i in range(5) for j in range(5) for fl in (0, 1)
                 if np.array_equal(out[b], padded[b, i:i + 12, j:j + 10][:, ::-1] if fl else padded[b, i:i + 12, j:j + 10])]
        assert found, b
        offsets.add(found[0])
    assert len(offsets) > 3  # drawn per image, not once per batch


def _equalize_reference(channel):
    """PIL ImageOps.equalize / keras-cv on one uint8 channel."""
    v = channel.astype(np.int64).ravel()
    hist = np.bincount(v, minlength=256)
    step = (hist.sum() - hist[hist > 0].min()) // 255
    if step == 0:
        return channel
    lut = (np.cumsum(hist) + step // 2) // step
    lut = np.clip(np.concatenate([[0], lut[:-1]]), 0, 255)
    return lut[v].reshape(channel.shape).astype(np.float32)


def test_equalize_matches_the_pil_rule():
    x = _images(3, 9, 7, 3, seed=1)
    x[1] = np.minimum(x[1], 40)        # narrow histogram
    x[2, ..., 0] = 17                  # constant channel: step 0, unchanged
    out = _np(augment.equalize(ops.convert_to_tensor(x)))
    for b in range(3):
        for c in range(3):
            np.testing.assert_array_equal(out[b, ..., c], _equalize_reference(x[b, ..., c]))


def test_auto_contrast_stretches_each_channel_and_keeps_constant_ones():
    x = _images(2, 5, 5, 1, seed=2) * 0.5 + 20
    x[1] = 33.0
    out = _np(augment.auto_contrast(ops.convert_to_tensor(x)))
    lo, hi = x[0].min(), x[0].max()
    np.testing.assert_allclose(out[0], (x[0] - lo) * 255.0 / (hi - lo), rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(out[1], x[1])


def test_rand_augment_per_image_range_and_identity_at_rate_zero():
    x = np.repeat(_images(1, 28, 28, 1, seed=3), 32, axis=0)
    gen = keras.random.SeedGenerator(4)
    out = _np(augment.rand_augment(ops.convert_to_tensor(x), gen, num_ops=2, magnitude=0.5))
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 255.0
    distinct = {out[b].tobytes() for b in range(32)}
    assert len(distinct) > 8  # the same image gets different operations and strengths
    same = _np(augment.rand_augment(ops.convert_to_tensor(x), gen, num_ops=2, magnitude=0.5, rate=0.0))
    np.testing.assert_array_equal(same, x)
    rgb = _np(augment.rand_augment(ops.convert_to_tensor(_images(4, 8, 8, 3)), gen, 2, 0.3))
    assert rgb.shape == (4, 8, 8, 3)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        augment.rand_augment(ops.convert_to_tensor(_images(1, 8, 8, 2)), gen, 1, 0.3)


def test_device_augmentation_layer_rescales_and_only_augments_in_training():
    layer = augment.DeviceAugmentation(crop_flip=True, randaugment_ops=2, seed=0)
    x = _images(8, 28, 28, 1).astype(np.uint8)
    np.testing.assert_allclose(_np(layer(x, training=False)), x / 255.0, rtol=1e-6)
    y = _np(layer(x, training=True))
    assert y.dtype == np.float32 and 0.0 <= y.min() and y.max() <= 1.0 and not np.allclose(y, x / 255.0)
    clone = augment.DeviceAugmentation.from_config(layer.get_config())
    assert clone.randaugment_ops == 2 and clone.crop_flip


def test_augmentation_runs_inside_a_jitted_train_step(tmp_path):
    """Model Input(uint8) -> DeviceAugmentation -> net trains with the backend's jit."""
    inputs = keras.Input((28, 28, 1), dtype="uint8")
    x = augment.DeviceAugmentation(crop_flip=True, randaugment_ops=2, seed=1)(inputs)
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", keras.losses.CategoricalCrossentropy(from_logits=True),
                  jit_compile=keras.backend.backend() != "torch")
    xs = _images(16, 28, 28, 1).astype(np.uint8)
    ys = np.eye(10, dtype=np.float32)[np.arange(16) % 10]
    history = model.fit(xs, ys, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_affine_warp_identity_translation_and_reflection():
    x = _images(2, 6, 5, 1, seed=5)
    ident = np.array([[1, 0, 0, 0, 1, 0]] * 2, np.float32)
    np.testing.assert_allclose(_np(augment.affine_warp(ops.convert_to_tensor(x), ident)), x, atol=1e-4)
    shift = np.array([[1, 0, 2, 0, 1, 0], [1, 0, 0, 0, 1, -1]], np.float32)  # x_in = x + 2; y_in = y - 1
    out = _np(augment.affine_warp(ops.convert_to_tensor(x), shift))
    np.testing.assert_allclose(out[0, :, :3], x[0, :, 2:], atol=1e-4)
    np.testing.assert_allclose(out[0, :, 3], x[0, :, 4], atol=1e-4)   # x_in = 5 reflects to 4
    np.testing.assert_allclose(out[0, :, 4], x[0, :, 3], atol=1e-4)   # x_in = 6 reflects to 3
    np.testing.assert_allclose(out[1, 1:], x[1, :-1], atol=1e-4)
    np.testing.assert_allclose(out[1, 0], x[1, 0], atol=1e-4)        # y_in = -1 reflects to 0
    half = np.array([[1, 0, 0.5, 0, 1, 0]], np.float32)
    out = _np(augment.affine_warp(ops.convert_to_tensor(x[:1]), half))
    np.testing.assert_allclose(out[0, :, :4], (x[0, :, :4] + x[0, :, 1:]) / 2, atol=1e-4)
