"""s2nn_keras: single-step spiking neural networks for Keras 3, with TFLite export.

The library (``s2nn_keras``) needs only Keras 3 and NumPy and runs on the
TensorFlow, JAX and PyTorch backends. Everything TensorFlow-specific --
tf.data/keras-cv RandAugment pipelines, CIFAR through tensorflow-datasets,
the TFLite export and its runtimes -- comes with the ``tf`` extra.
"""

from setuptools import find_packages, setup

TF = [
    "tensorflow>=2.20,<2.22",
    "keras-cv>=0.9,<0.10",
    "tensorflow-datasets>=4.9,<5",
    "ai-edge-litert>=1.2,<3",
    "tflite-micro",
]
LOGS = ["tensorboard>=2.16,<3"]  # the trainer's TensorBoard logs (TF 2.21 no longer pulls it in)
PLOT = ["matplotlib>=3.8,<4"]    # s2nn_keras.plot and the energy report's PNG
JAX = ["jax>=0.4.34"]
EDGE = ["ethos-u-vela>=5.2,<6"]  # Arm Ethos-U NPU compiler, for the export report's Vela figures
TEST = ["pytest>=8", "pytest-xdist>=3"]

setup(
    name="s2nn_keras",
    version="0.1.0",
    description="Single-step spiking neural networks (S2NN) as Keras 3 layers, "
    "PreActResNet builders, trainers and BN-folded TFLite export",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["s2nn_keras*", "trainers*", "export*"]),
    package_data={"trainers": ["configs/*.cfg"], "export.mcu": ["c/*", "boards/*"]},
    install_requires=[
        "keras>=3.10,<4",
        "numpy>=1.26,<3",
        "absl-py>=2.1,<3",
    ],
    extras_require={
        # TensorFlow backend, tf.data pipelines, TFLite export and runtimes.
        "tf": TF + LOGS + PLOT,
        # JAX backend (CPU wheels from PyPI; on a GPU install jax[cuda12] yourself).
        "jax": JAX + LOGS,
        "edge": EDGE,
        "plot": PLOT,
        "test": TEST,
        "all": TF + LOGS + PLOT + JAX + EDGE,
        # tensorflow-model-optimization needs tf-keras (Keras 2); see README.
        "tfmot": ["tensorflow-model-optimization>=0.8,<0.9", "tf-keras>=2.20,<2.22"],
    },
    license="Apache-2.0",
)
