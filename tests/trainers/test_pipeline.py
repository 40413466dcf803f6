"""tf.data pipeline and augmentation."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("keras_cv")

from trainers import pipeline  # noqa: E402


def _images(n, h, w, c, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, h, w, c)).astype(np.uint8)


def test_random_crop_flip_keeps_shape_and_moves_pixels():
    tf.random.set_seed(1)
    img = tf.constant(_images(1, 32, 32, 3)[0])
    outs = [pipeline.random_crop_flip(img).numpy() for _ in range(8)]
    assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, img.numpy()) for o in outs)
    # Every output is a shifted (and maybe mirrored) window of the zero-padded image.
    padded = np.pad(img.numpy(), ((4, 4), (4, 4), (0, 0)))
    for o in outs:
        windows = [padded[i:i + 32, j:j + 32] for i in range(9) for j in range(9)]
        assert any(np.array_equal(o, w) or np.array_equal(o, w[:, ::-1]) for w in windows)


@pytest.mark.parametrize("shape", [(4, 28, 28, 1), (4, 32, 32, 3)])
def test_randaugment_handles_grayscale_and_rgb(shape):
    augment = pipeline.make_randaugment(2, 0.5, shape[-1], seed=3)
    images = _images(*shape)
    changed = False
    for _ in range(3):
        out = augment(tf.constant(images)).numpy()
        assert out.shape == shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 255.0
        changed |= not np.allclose(out, images)
    assert changed


def test_randaugment_off():
    assert pipeline.make_randaugment(0, 0.5, 1) is None
    with pytest.raises(ValueError, match="1 or 3 channels"):
        pipeline.make_randaugment(1, 0.5, 2)


def test_train_dataset_batches_one_hot_float_images():
    images, labels = _images(70, 28, 28, 1), np.arange(70) % 10
    ds = pipeline.train_dataset(images, labels, 10, 32, seed=0, crop_flip=True,
                                randaugment_ops=1, randaugment_magnitude=0.3)
    batches = list(ds)
    assert sorted(int(x.shape[0]) for x, _ in batches) == [6, 32, 32]
    assert pipeline.steps_per_epoch(70, 32) == 3
    seen = []
    for x, y in batches:
        assert x.dtype == tf.float32 and x.shape[1:] == (28, 28, 1)
        assert float(tf.reduce_min(x)) >= 0.0 and float(tf.reduce_max(x)) <= 1.0
        np.testing.assert_allclose(tf.reduce_sum(y, axis=1).numpy(), 1.0)
        seen += list(np.argmax(y.numpy(), axis=1))
    assert sorted(seen) == sorted(labels.tolist())


def test_train_dataset_without_augmentation_is_a_permutation():
    images, labels = _images(20, 8, 8, 1), np.arange(20) % 10
    ds = pipeline.train_dataset(images, labels, 10, 20, seed=0)
    x, _ = next(iter(ds))
    got = sorted(map(bytes, np.round(x.numpy() * 255).astype(np.uint8)))
    assert got == sorted(map(bytes, images))


def test_eval_dataset_is_ordered_and_flip_mirrors():
    images, labels = _images(10, 28, 28, 1), np.arange(10)
    plain = np.concatenate([x.numpy() for x, _ in pipeline.eval_dataset(images, labels, 10, 4)])
    flipped = np.concatenate([x.numpy() for x, _ in pipeline.eval_dataset(images, labels, 10, 4, flip=True)])
    np.testing.assert_allclose(plain, images / 255.0, rtol=1e-6)
    np.testing.assert_allclose(flipped, plain[:, :, ::-1, :])


@pytest.mark.parametrize("distributed", [False, True])
def test_no_autotune_model_thread(distributed):
    """Keras makes new iterators every epoch; with tf.data autotuning on, TF
    2.21 stalls each destruction on the model thread's timed wait (up to
    tens of seconds per epoch, see trainers/pipeline.py). Both pipelines run
    without it, and a fresh iterator per epoch still yields every batch."""
    images, labels = _images(64, 8, 8, 1), np.arange(64) % 10
    train = pipeline.train_dataset(images, labels, 10, 16, seed=0, distributed=distributed)
    evaluation = pipeline.eval_dataset(images, labels, 10, 16, distributed=distributed)
    for ds in (train, evaluation):
        assert ds.options().autotune.enabled is False
    for _ in range(3):  # one iterator per epoch, as fit makes them
        assert sum(int(x.shape[0]) for x, _ in train) == 64
        assert sum(int(x.shape[0]) for x, _ in evaluation) == 64
