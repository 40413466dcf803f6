"""Data sets as NumPy arrays: Fashion-MNIST from IDX files, CIFAR through tfds.

Images come back as ``uint8`` NHWC arrays and labels as ``int64``; the
models take ``float32`` images in [0, 1] (:func:`to_float`). Fashion-MNIST
is read from its IDX files (Debian's ``dataset-fashion-mnist`` package puts
them in ``/usr/share/datasets/fashion-mnist``) with NumPy alone; CIFAR-10/100
(and Fashion-MNIST without IDX files) go through ``tensorflow-datasets``,
imported only then (the ``tf`` extra). Nothing is downloaded.

Example::

    from s2nn_keras.datasets import load_arrays, to_float

    images, labels = load_arrays("fashion_mnist", "test", max_examples=1000)
    x = to_float(images)            # float32 [1000, 28, 28, 1] in [0, 1]
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
from typing import Optional, Tuple

import numpy as np

__all__ = ["DATASETS", "NUM_CLASSES", "IMAGE_SHAPES", "DEBIAN_FASHION_MNIST_DIR", "DatasetNotFoundError",
           "read_idx", "fashion_mnist_idx_dir", "load_arrays", "to_float", "as_model_input"]

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
DATASETS = ("fashion_mnist", "cifar10", "cifar100")
NUM_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100}
IMAGE_SHAPES = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3)}

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_TF_EXTRA = "pip install 's2nn_keras[tf]'"


class DatasetNotFoundError(RuntimeError):
    """The data set cannot be read offline; the one-line message says how to
    obtain it (or which extra to install)."""


def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed) into a ``uint8`` array.

    IDX: two zero bytes, a type code (0x08 = unsigned byte), the number of
    dimensions, one big-endian uint32 per dimension, then the data.

    Raises:
      ValueError: not an IDX file, another element type, or a size mismatch.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    if data[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX data is supported, type code {data[2]:#x}")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
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


def fashion_mnist_idx_dir(data_dir: Optional[str] = None) -> Optional[str]:
    """The directory holding the four Fashion-MNIST IDX files: ``data_dir``
    (or its ``fashion_mnist`` / ``fashion-mnist`` subfolder); without a
    ``data_dir``, Debian's location. ``None`` when the files are not there
    (a given ``data_dir`` never falls back to another folder)."""
    if data_dir:
        candidates = [data_dir, os.path.join(data_dir, "fashion_mnist"), os.path.join(data_dir, "fashion-mnist")]
    else:
        candidates = [DEBIAN_FASHION_MNIST_DIR]
    for directory in candidates:
        if all(_find_idx(directory, stem) for pair in _IDX_FILES.values() for stem in pair):
            return directory
    return None


def load_arrays(name: str, split: str, data_dir: Optional[str] = None,
                max_examples: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Loads ``split`` (``"train"`` or ``"test"``) of data set ``name``.

    Returns:
      ``(images uint8 [N, H, W, C], labels int64 [N])``, the first
      ``max_examples`` examples when given.

    Raises:
      ValueError: unknown data set or split.
      DatasetNotFoundError: the data is not available offline, or
        ``tensorflow-datasets`` (the ``tf`` extra) is needed and missing;
        the message says what to do.
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
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        where = ("no Fashion-MNIST IDX files found (apt-get install -y dataset-fashion-mnist, or put the four "
                 "IDX files in data_dir); reading it through tensorflow-datasets needs "
                 if name == "fashion_mnist" else f"dataset {name!r} is read through tensorflow-datasets, which needs ")
        raise DatasetNotFoundError(f"{where}the 'tf' extra: {_TF_EXTRA}") from None
    tfds_split = split if not max_examples else f"{split}[:{int(max_examples)}]"
    # tfds logs probing warnings ("Variant folder ... has no dataset_info.json")
    # through absl's Python logger; a missing data set is reported once, below.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
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
        raise DatasetNotFoundError(f"dataset {name!r} not found offline ({type(err).__name__}); {hint}") from None
    finally:
        absl_logger.setLevel(level)
    # Moderate batches rather than batch_size=-1: one giant batch aborts
    # inside TensorFlow under tfds' mock_data (std::length_error), and mock
    # data ignores split slicing, hence the explicit take().
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
    """``uint8`` images -> ``float32`` in [0, 1], the models' input convention."""
    return np.asarray(images).astype(np.float32) / 255.0


def as_model_input(images) -> np.ndarray:
    """Inputs in the models' convention, as ``float32``: ``uint8`` images
    through :func:`to_float` (divided by 255), any other numbers taken as
    they are (already in the model's input convention).

    Example:
      >>> as_model_input(np.array([0, 255], np.uint8)).tolist(), as_model_input([0.5, 2.0]).tolist()
      ([0.0, 1.0], [0.5, 2.0])
    """
    images = np.asarray(images)
    return to_float(images) if images.dtype == np.uint8 else images.astype(np.float32)
