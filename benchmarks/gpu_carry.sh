#!/usr/bin/env bash
# Prepares .gpu_carry/ (git-ignored) on a machine with network access: the
# wheels the GPU machine lacks (it has Python 3.12, JAX, PyTorch, numpy,
# absl-py, h5py, ml-dtypes, rich, tensorboard; no Keras, no TensorFlow, no
# network) and the Fashion-MNIST IDX files. About 34 MB in all.
#   bash benchmarks/gpu_carry.sh [FASHION_MNIST_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="${1:-/usr/share/datasets/fashion-mnist}"
mkdir -p .gpu_carry/wheels .gpu_carry/fashion-mnist
python3 -m pip download --only-binary=:all: --no-deps --python-version 3.12 --implementation cp \
    --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu_carry/wheels \
    keras==3.15.1 namex==0.1.0 optree==0.20.0 packaging spikingjelly==2.0.0
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    cp "$SRC/$f.gz" .gpu_carry/fashion-mnist/
done
du -sh .gpu_carry
