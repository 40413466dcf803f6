#!/usr/bin/env bash
# One-shot set-up for a fresh machine: Fashion-MNIST (Debian package) and a
# virtual environment in .venv with the project installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "note: Fashion-MNIST not found; install Debian's dataset-fashion-mnist (as root) or pass --data_dir" >&2
  fi
fi
# Microcontroller C (export.mcu): host compiler, CMake (the generated firmware library), ARM toolchain with newlib, QEMU's Arm boards.
MCU_PACKAGES="gcc cmake gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
if ! command -v arm-none-eabi-gcc >/dev/null 2>&1 || ! command -v qemu-system-arm >/dev/null 2>&1 || ! command -v cmake >/dev/null 2>&1 \
    || [ ! -d /usr/lib/arm-none-eabi/newlib ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq $MCU_PACKAGES >/dev/null
  else
    echo "note: the microcontroller firmware (python -m export.mcu) needs $MCU_PACKAGES (Debian, as root)" >&2
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[tf,jax,edge,test]'
