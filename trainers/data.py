"""Data sets as NumPy arrays: Fashion-MNIST from IDX files, CIFAR through tfds.

Images are returned as ``uint8`` NHWC arrays and labels as ``int64``; the
models consume ``float32`` images scaled to [0, 1] (see :func:`to_float`).
"""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATASETS = ("fashion_mnist", "cifar10", "cifar100")
NUM_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
IMAGE_SHAPES = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class DatasetNotFoundError(RuntimeError):
    """Raised with a one-line message saying how to obtain the data set."""


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed) into a NumPy array.

    IDX format: 2 zero bytes, a type code (0x08 = uint8), the number of
    dimensions, then one big-endian uint32 per dimension, then the data.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX data is supported, type code {data[2]:#x}")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} values for shape {dims}, found {body.size}")
    return body.reshape(dims)


def _find_idx(directory, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def fashion_mnist_idx_dir(data_dir=None):
    """The directory holding Fashion-MNIST IDX files: ``data_dir`` (or its
    ``fashion_mnist`` subfolder) when it holds them, else Debian's
    ``dataset-fashion-mnist`` location, else ``None``."""
    candidates = []
    if data_dir:
        candidates += [data_dir, os.path.join(data_dir, "fashion_mnist"), os.path.join(data_dir, "fashion-mnist")]
    candidates.append(DEBIAN_FASHION_MNIST_DIR)
    for directory in candidates:
        if all(_find_idx(directory, stem) for pair in _IDX_FILES.values() for stem in pair):
            return directory
    return None


def load_arrays(name: str, split: str, data_dir: str = None, max_examples: int = None):
    """Loads ``split`` ("train" or "test") of data set ``name`` as arrays.

    Returns:
      ``(images uint8 [N, H, W, C], labels int64 [N])``.

    Raises:
      ValueError: unknown data set or split.
      DatasetNotFoundError: the data cannot be found offline; the message
        says how to get it.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if split not in _IDX_FILES:
        raise ValueError(f"unknown split {split!r}; valid: train, test")
    if name == "fashion_mnist":
        directory = fashion_mnist_idx_dir(data_dir)
        if directory is not None:
            img_stem, lbl_stem = _IDX_FILES[split]
            images = read_idx(_find_idx(directory, img_stem))
            labels = read_idx(_find_idx(directory, lbl_stem)).astype(np.int64)
            if images.shape[0] != labels.shape[0]:
                raise ValueError(f"{directory}: {images.shape[0]} images but {labels.shape[0]} labels")
            images = images[..., None]
            if max_examples:
                images, labels = images[:max_examples], labels[:max_examples]
            return images, labels
    return _load_tfds(name, split, data_dir, max_examples)


def _load_tfds(name, split, data_dir, max_examples):
    import tensorflow_datasets as tfds

    tfds_split = split if not max_examples else f"{split}[:{int(max_examples)}]"
    try:
        ds = tfds.load(name, split=tfds_split, data_dir=data_dir, as_supervised=True, download=False)
    except Exception as err:  # tfds raises several types for "not prepared"
        hint = (
            "install Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist) "
            "or put the four IDX .gz files in --data_dir"
            if name == "fashion_mnist"
            else f"prepare it once with network access: python -c \"import tensorflow_datasets as tfds; "
            f"tfds.load('{name}', data_dir=DIR)\" and pass --data_dir DIR"
        )
        raise DatasetNotFoundError(
            f"dataset {name!r} not found offline ({type(err).__name__}); {hint}"
        ) from None
    # Read in moderate batches rather than batch_size=-1: one giant batch
    # aborts inside TensorFlow under tfds' mock_data (std::length_error), and
    # mock data ignores split slicing, hence the explicit take().
    if max_examples:
        ds = ds.take(int(max_examples))
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(4096)):
        images.append(x)
        labels.append(y)
    if not images:
        raise DatasetNotFoundError(f"dataset {name!r} split {split!r} is empty")
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int64)


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 in [0, 1], the models' input convention."""
    return images.astype(np.float32) / 255.0
