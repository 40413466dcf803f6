"""CI check of the microcontroller path on a quickstart-size model.

Builds the quickstart's architecture (PreActResNet [1, 1, 1], width 32,
stride-2 stem, Fashion-MNIST 28x28x1), trains it one short epoch so its
neurons fire as a trained model's do, saves it, and runs the CLI
``python -m export.mcu`` on it: host build against the tflite-micro
interpreter, firmware for the Cortex-M4 and Cortex-M55 boards under QEMU
on a few test images, compared byte for byte with TFLM. Exit status: the
CLI's (0 only if every image is byte-identical). A CI check, not a
measurement: the figures are in benchmarks/results/mcu_quickstart.json
(``python -m benchmarks.mcu``).

    python -m benchmarks.mcu_ci [--images 8] [--work_dir DIR]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = C.OneLineParser(prog="python -m benchmarks.mcu_ci", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=C.positive_int, default=8)
    p.add_argument("--train_examples", type=C.positive_int, default=3000)
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
        path = os.path.join(work, "quickstart_size.keras")
        model.save(path)
        cmd = [sys.executable, "-m", "export.mcu", "--model", path, "--output_dir", os.path.join(work, "mcu"),
               "--cores", "cortex-m4,cortex-m55", "--images", str(args.images), "--measure_images",
               str(min(4, args.images)), "--host_images", "200", "--num_calibration", "200"]
        print("$ " + " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, cwd=REPO).returncode
        if rc == 0:
            with open(os.path.join(work, "mcu", "mcu_report.json")) as f:
                report = json.load(f)
            for core, e in report["cores"].items():
                print(f"ci: {core}: {e['bit_exact']['equal']}/{e['bit_exact']['images']} images byte-identical with "
                      f"TFLM under QEMU, {e['instructions']['mean']:,.0f} instructions per inference "
                      f"(x{e['spike_vs_dense']:.2f} the dense path)")
        return rc
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
