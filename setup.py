"""s2nn_keras: single-step spiking neural networks for Keras 3, with TFLite export."""

from setuptools import find_packages, setup

setup(
    name="s2nn_keras",
    version="0.1.0",
    description="Single-step spiking neural networks (S2NN) as Keras 3 layers, "
    "PreActResNet builders, trainers and BN-folded TFLite export",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["s2nn_keras*", "trainers*", "export*"]),
    package_data={"trainers": ["configs/*.cfg"]},
    install_requires=[
        "tensorflow>=2.20,<2.22",
        "tensorboard>=2.20,<2.22",  # not a dependency of tensorflow 2.21; the trainer writes TensorBoard logs
        "keras>=3.10,<4",
        "keras-cv>=0.9,<0.10",
        "tensorflow-datasets>=4.9,<5",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "matplotlib>=3.8,<4",
        "ai-edge-litert>=1.2,<3",
        "tflite-micro",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3"],
        # tensorflow-model-optimization needs tf-keras (Keras 2); see README.
        "tfmot": ["tensorflow-model-optimization>=0.8,<0.9", "tf-keras>=2.20,<2.22"],
    },
    license="Apache-2.0",
)
