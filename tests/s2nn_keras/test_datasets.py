"""s2nn_keras.datasets: the IDX reader, load_arrays and its one-line errors."""

import gzip
import os
import struct
import sys

import numpy as np
import pytest

from s2nn_keras import datasets


def _idx(array, type_code=0x08):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_fake(directory, n_train=12, n_test=5, gz=True):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            path = os.path.join(directory, stem + (".gz" if gz else ""))
            with (gzip.open if gz else open)(path, "wb") as f:
                f.write(_idx(arr))
        out[prefix] = (images, labels)
    return out


def test_read_idx_plain_gzip_and_errors(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(arr))
    with gzip.open(tmp_path / "a.gz", "wb") as f:
        f.write(_idx(arr))
    np.testing.assert_array_equal(datasets.read_idx(str(tmp_path / "a")), arr)
    np.testing.assert_array_equal(datasets.read_idx(str(tmp_path / "a.gz")), arr)
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="bad magic"):
        datasets.read_idx(str(tmp_path / "bad"))
    (tmp_path / "f32").write_bytes(_idx(arr, type_code=0x0D))
    with pytest.raises(ValueError, match="unsigned-byte"):
        datasets.read_idx(str(tmp_path / "f32"))
    (tmp_path / "short").write_bytes(_idx(arr)[:-3])
    with pytest.raises(ValueError, match="expected 24 values"):
        datasets.read_idx(str(tmp_path / "short"))


@pytest.mark.parametrize("gz", [True, False])
def test_load_arrays_from_data_dir(tmp_path, gz):
    truth = _write_fake(str(tmp_path / "fashion_mnist"), gz=gz)
    assert datasets.fashion_mnist_idx_dir(str(tmp_path)) == str(tmp_path / "fashion_mnist")
    x, y = datasets.load_arrays("fashion_mnist", "train", str(tmp_path))
    assert x.shape == (12, 28, 28, 1) and x.dtype == np.uint8 and y.dtype == np.int64
    np.testing.assert_array_equal(x[..., 0], truth["train"][0])
    np.testing.assert_array_equal(y, truth["train"][1])
    x, y = datasets.load_arrays("fashion_mnist", "test", str(tmp_path), max_examples=3)
    assert x.shape == (3, 28, 28, 1) and list(y) == list(truth["t10k"][1][:3])
    f = datasets.to_float(x)
    assert f.dtype == np.float32 and f.max() <= 1.0 and f.min() >= 0.0
    np.testing.assert_allclose(f * 255.0, x, atol=1e-4)


def test_bad_names():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid: fashion_mnist, cifar10, cifar100"):
        datasets.load_arrays("mnist", "train")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        datasets.load_arrays("fashion_mnist", "val")


def test_missing_tfds_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import raises ImportError
    with pytest.raises(datasets.DatasetNotFoundError) as info:
        datasets.load_arrays("cifar10", "test", data_dir=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and "s2nn_keras[tf]" in msg and "cifar10" in msg
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(datasets.DatasetNotFoundError, match="IDX files.*s2nn_keras\\[tf\\]"):
        datasets.load_arrays("fashion_mnist", "test", data_dir=str(tmp_path))


def test_cifar_through_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        x, y = datasets.load_arrays("cifar10", "test", max_examples=6)
    assert x.shape == (6, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (6,)


def test_debian_fashion_mnist_if_installed():
    if datasets.fashion_mnist_idx_dir(None) is None:
        pytest.skip("Debian dataset-fashion-mnist not installed")
    x, y = datasets.load_arrays("fashion_mnist", "test")
    assert x.shape == (10000,) + datasets.IMAGE_SHAPES["fashion_mnist"] and y.max() == 9
    assert datasets.NUM_CLASSES["fashion_mnist"] == 10
