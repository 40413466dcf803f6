#!/usr/bin/env bash
# The GPU command (run from the repository root on the GPU machine, with
# .gpu_carry/ brought along; see docs/GPU.md). Installs the carried wheels
# into .gpu_carry/site (no network, no root), then runs one part:
#   bash benchmarks/gpu_command.sh table5 [gpu_table5 flags]   # e.g. --runs s2nn
#   bash benchmarks/gpu_command.sh spikingjelly [flags]
# Results (JSON + log) go to $OUT (default benchmarks/results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PART="${1:?usage: gpu_command.sh table5|spikingjelly [flags]}"
shift
CARRY="$PWD/.gpu_carry"
if [ ! -d "$CARRY/site/keras" ]; then
    python3 -m pip install -q --no-index --no-deps --target "$CARRY/site" "$CARRY"/wheels/*.whl
fi
export PYTHONPATH="$CARRY/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax
export OUT="${OUT:-$PWD/benchmarks/results/gpu}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1 || true
case "$PART" in
    table5) python3 -m benchmarks.gpu_table5 --data_dir "$CARRY/fashion-mnist" --out "$OUT" "$@" 2>&1 \
                | tee "$OUT/gpu_table5_$(date +%H%M%S).log" ;;
    spikingjelly) python3 -m benchmarks.gpu_spikingjelly --out "$OUT" "$@" 2>&1 \
                | tee "$OUT/gpu_spikingjelly.log" ;;
    *) echo "gpu_command.sh: error: unknown part '$PART' (table5 or spikingjelly)" >&2; exit 2 ;;
esac
