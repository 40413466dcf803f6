"""CI check of the microcontroller path on a quickstart-size model, on
every core.

Builds the quickstart's architecture (PreActResNet [1, 1, 1], width 32,
stride-2 stem, Fashion-MNIST 28x28x1), trains it one short epoch so its
neurons fire as a trained model's do, saves it, and runs the CLI
``python -m export.mcu --model`` on it: the verified int8 export first
(``python -m export``'s, into ``WORK/mcu/export``), then from its
``model_int8.tflite`` the host build against the tflite-micro interpreter,
the firmware of every core with a QEMU board (Cortex-M3, M4, M7, M33, M55;
the Cortex-M0+'s stand-in, the microbit, has 16 KiB of RAM: this model is
linked for its sizes there, not run) on a few test images, compared byte
for byte with TFLM, and ``generic`` built and run by the host compiler.
Prints one row per core: retired instructions per inference (chosen
layouts and all-dense), flash, RAM (static + measured stack) and
bit-exactness -- the docs' cores table (docs/MCU.md). Exit status: the
CLI's (0 only if every image is byte-identical). A CI check, not the
published measurement of the trained quickstart
(benchmarks/results/mcu_quickstart.json, ``python -m benchmarks.mcu``).

    python -m benchmarks.mcu_ci [--images 8] [--cores ...] [--work_dir DIR]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402
from export.mcu.targets import MCU_TARGETS  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def core_rows(report):
    """One printed row per core of an ``mcu_report.json``."""
    rows = [f"{'core':<14} {'board':<11} {'instructions':>13} {'dense':>12} {'flash [B]':>10} {'RAM [B]':>8} "
            f"{'(stack)':>8}  bit-exact"]
    for core, e in report["cores"].items():
        exact = e.get("bit_exact")
        same = f"{exact['equal']}/{exact['images']}" if exact else "-"
        if e.get("compiled_only"):
            rows.append(f"{core:<14} {'-':<11} {'not run':>13} {'':>12} {e['flash_bytes']:>10,} "
                        f"{e['static_ram_bytes']:>8,} {'static':>8}  {same:<9} {e['why']}")
            continue
        rows.append(f"{core:<14} {e['board']:<11} {e['instructions']['mean']:>13,.0f} "
                    f"{e['instructions_dense']['mean']:>12,.0f} {e['flash_bytes']:>10,} {e['ram_bytes']:>8,} "
                    f"{e['stack_bytes']:>8,}  {same}")
    return rows


def main(argv=None):
    p = C.OneLineParser(prog="python -m benchmarks.mcu_ci", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=C.positive_int, default=8)
    p.add_argument("--train_examples", type=C.positive_int, default=3000)
    p.add_argument("--cores", type=C.csv_list(str, MCU_TARGETS, "core"), default=list(MCU_TARGETS))
    p.add_argument("--work_dir", default=None)
    args = p.parse_args(argv)
    from export.tflite.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import json

    import keras

    from s2nn_keras.datasets import load_arrays
    from s2nn_keras.models import PreActResNet

    x, y = load_arrays("fashion_mnist", "train", None, args.train_examples)
    keras.utils.set_random_seed(0)
    model = PreActResNet([1, 1, 1], (28, 28, 1), 10, width=32, stem_stride=2, dropout=0.0)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x.astype("float32") / 255.0, y, batch_size=128, epochs=1, verbose=0)
    tmp = None
    work = args.work_dir
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="s2mcu_ci_")
        work = tmp.name
    try:
        os.makedirs(work, exist_ok=True)
        path = os.path.join(work, "quickstart_size.keras")
        model.save(path)
        cmd = [sys.executable, "-m", "export.mcu", "--model", path, "--output_dir", os.path.join(work, "mcu"),
               "--cores", ",".join(args.cores), "--images", str(args.images), "--measure_images",
               str(min(4, args.images)), "--host_images", "200", "--num_calibration", "200"]
        print("$ " + " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=REPO).returncode
        if rc == 0:
            with open(os.path.join(work, "mcu", "mcu_report.json")) as f:
                report = json.load(f)
            print(f"ci: every core byte-identical with TFLM; the verified model_int8.tflite "
                  f"(sha256 {report['source']['sha256'][:12]}...), {report['tflite_bytes']:,} B")
            for row in core_rows(report):
                print("ci: " + row)
        return rc
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
