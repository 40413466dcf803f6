"""NumPy batches of the device input pipeline (trainers.inputs)."""

import numpy as np
import pytest

pytest.importorskip("keras")

from trainers import inputs  # noqa: E402


def test_training_batches_are_a_fresh_permutation_every_epoch():
    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    y = inputs.one_hot(np.arange(10) % 3, 3)
    ds = inputs.array_batches(x, y, 4, shuffle=True, seed=0)
    assert len(ds) == 3 and ds.sizes == [4, 4, 2]
    first = np.concatenate([ds[i][0].ravel() for i in range(len(ds))])
    ds.on_epoch_end()
    second = np.concatenate([ds[i][0].ravel() for i in range(len(ds))])
    assert sorted(first) == sorted(second) == list(range(10)) and list(first) != list(second)
    # Labels travel with their images.
    bx, by = ds[0]
    np.testing.assert_array_equal(np.argmax(by, axis=1), bx.ravel() % 3)
    # The same seed gives the same order (a resumed run is reproducible).
    again = inputs.array_batches(x, y, 4, shuffle=True, seed=0)
    assert list(np.concatenate([again[i][0].ravel() for i in range(3)])) == list(first)


def test_data_parallel_training_cuts_and_evaluation_pads_to_the_device_count():
    x = np.arange(11, dtype=np.float32).reshape(11, 1)
    y = inputs.one_hot(np.zeros(11, int), 2)
    train = inputs.array_batches(x, y, 4, shuffle=True, multiple=2)
    assert train.sizes == [4, 4, 2]                       # 11 -> the odd example is dropped this epoch
    ev = inputs.array_batches(x, y, 4, shuffle=False, multiple=2)
    bx, by, w = ev[2]                                     # 3 examples + 1 zero-weight pad
    assert bx.shape == (4, 1) and list(w) == [1, 1, 1, 0] and list(bx.ravel()) == [8, 9, 10, 8]
    assert len(ev[0]) == 3 and list(ev[0][2]) == [1, 1, 1, 1]
    assert len(inputs.array_batches(x, y, 4, shuffle=False)[2]) == 2   # one device: (x, y), short batch


def test_resolve_pipeline():
    assert inputs.resolve_pipeline("auto", "tensorflow") == "tf_data"
    assert inputs.resolve_pipeline("auto", "jax") == "device"
    assert inputs.resolve_pipeline("device", "tensorflow") == "device"
