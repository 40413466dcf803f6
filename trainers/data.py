"""Data sets for the trainers: re-exports :mod:`s2nn_keras.datasets`.

Fashion-MNIST is read from IDX files without TensorFlow; CIFAR-10/100 come
through tensorflow-datasets (the ``tf`` extra). Images are ``uint8`` NHWC
arrays and labels ``int64``; the models consume ``float32`` images in
[0, 1] (:func:`to_float`). Kept so ``trainers.data.load_arrays`` (used by
benchmarks and tests) stays where it was.
"""

from s2nn_keras.datasets import (  # noqa: F401  (re-exports)
    DATASETS,
    DEBIAN_FASHION_MNIST_DIR,
    IMAGE_SHAPES,
    NUM_CLASSES,
    DatasetNotFoundError,
    fashion_mnist_idx_dir,
    load_arrays,
    read_idx,
    to_float,
)
