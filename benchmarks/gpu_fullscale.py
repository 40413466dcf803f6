"""Full-scale run of the paper's Fashion-MNIST ResNet18 recipe under a
wall-clock budget: prints images/s and the accuracy reached.

Meant for a machine with a GPU (it runs anywhere; on CPU use a tiny budget
to check it works). The recipe and the model come from the project's
trainer: the flags of ``python -m trainers.cifar`` (default flagfile
``trainers/configs/table5_fashion_mnist_resnet18_s2nn.cfg``: PreActResNet18
width 64, SGD momentum 0.9, lr 0.05 cosine over 200 epochs, weight decay
5e-4, RandAugment 2 ops / 0.3, label smoothing 0.1, dropout 0.1, batch 128,
flip TTA) are parsed and validated by ``trainers.flags``, and the model,
optimizer, loss and tf.data pipelines are built with ``trainers.recipe`` /
``trainers.pipeline`` (TensorFlow; the TF-free GPU command is
``benchmarks.gpu_table5``). The learning-rate schedule is the full recipe's (the
budget cuts the run short; it does not compress the schedule).

Training stops at the first batch end after ``--time_budget_s`` seconds of
training (tracing/compilation included); then test and flip-TTA accuracy
are measured on the full test set. Reported: steady images/s (after
``--warmup_steps``), steps/epochs done, accuracy, TTA accuracy, and the
projected time of the full recipe at the measured rate.

Example:
  python -m benchmarks.gpu_fullscale --time_budget_s 3600 --jit_compile
  python -m benchmarks.gpu_fullscale --time_budget_s 3600 --activation relu
  python -m benchmarks.gpu_fullscale --time_budget_s 60 --max_test_examples 1000   # CPU smoke check
Any other ``trainers.cifar`` flag (``--activation``, ``--batch_size``,
``--flagfile``, ...) is passed through; ``--output_dir`` is not needed.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common as C  # noqa: E402

DEFAULT_FLAGFILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "trainers", "configs", "table5_fashion_mnist_resnet18_s2nn.cfg")


def parse_args(argv=None):
    p = C.OneLineParser(prog="benchmarks.gpu_fullscale", description=__doc__.split("\n")[0],
                        epilog="Unrecognised flags go to the trainers.cifar flag parser.")
    p.add_argument("--time_budget_s", type=C.positive_float, required=True,
                   help="wall-clock training budget in seconds")
    p.add_argument("--warmup_steps", type=C.nonneg_int, default=20,
                   help="steps excluded from the images/s figure (tracing, compilation)")
    p.add_argument("--output", default=os.path.join(C.RESULTS_DIR, "gpu_fullscale.json"))
    args, rest = p.parse_known_args(argv)
    if not any(a == "--flagfile" or a.startswith("--flagfile=") for a in rest):
        rest = [f"--flagfile={DEFAULT_FLAGFILE}"] + rest
    if not any(a == "--output_dir" or a.startswith("--output_dir=") for a in rest):
        rest = rest + ["--output_dir=runs/gpu_fullscale"]  # required by the trainer's validation; unused
    return args, rest


def main(argv=None):
    args, trainer_argv = parse_args(argv if argv is not None else sys.argv[1:])
    from absl import flags as absl_flags

    from trainers import flags as trainer_flags

    trainer_flags.import_tensorflow_quietly()
    fv = trainer_flags.new_flag_values()
    try:
        trainer_flags.parse_argv(["gpu_fullscale"] + trainer_argv, fv)
        config = trainer_flags.validate(fv)
    except trainer_flags.UsageError as err:
        C.fail("benchmarks.gpu_fullscale", str(err))
    del absl_flags

    import keras
    import numpy as np
    import tensorflow as tf

    from trainers import pipeline, recipe
    from trainers import data as data_lib

    f = config["flags"]
    machine = C.machine_info()
    keras.utils.set_random_seed(f["seed"])
    try:
        train_x, train_y = data_lib.load_arrays(f["dataset"], "train", f["data_dir"], f["max_train_examples"])
        test_x, test_y = data_lib.load_arrays(f["dataset"], "test", f["data_dir"], f["max_test_examples"])
    except data_lib.DatasetNotFoundError as err:
        C.fail("benchmarks.gpu_fullscale", str(err))
    num_classes = data_lib.NUM_CLASSES[f["dataset"]]
    crop_flip = f["crop_flip"] if f["crop_flip"] is not None else f["dataset"] != "fashion_mnist"
    train_ds = pipeline.train_dataset(train_x, train_y, num_classes, f["batch_size"], seed=f["seed"],
                                      crop_flip=crop_flip, randaugment_ops=f["randaugment_ops"],
                                      randaugment_magnitude=f["randaugment_magnitude"])
    test_ds = pipeline.eval_dataset(test_x, test_y, num_classes, f["batch_size"])
    steps_per_epoch = pipeline.steps_per_epoch(len(train_x), f["batch_size"])
    total_steps = steps_per_epoch * f["epochs"]

    model = recipe.build_model(config, train_x.shape[1:], num_classes)
    recipe.compile_model(model, config, total_steps)

    class Budget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps = 0
            self.images = 0
            self.t_start = None
            self.t_warm = None
            self.images_after_warmup = 0

        def on_train_begin(self, logs=None):
            self.t_start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.steps += 1
            self.images += f["batch_size"]  # the last batch of an epoch may be short; corrected below
            if self.steps == args.warmup_steps:
                self.t_warm = time.perf_counter()
            elif self.steps > args.warmup_steps:
                self.images_after_warmup += f["batch_size"]
            if time.perf_counter() - self.t_start >= args.time_budget_s:
                self.model.stop_training = True

    budget = Budget()
    print(f"training {f['model']} ({f['activation']}, width {f['width']}) on {f['dataset']} "
          f"({len(train_x)} images, {steps_per_epoch} steps/epoch, recipe {f['epochs']} epochs) "
          f"for at most {args.time_budget_s:.0f}s; devices: "
          f"{[d.name for d in tf.config.list_logical_devices()]}", flush=True)
    model.fit(train_ds, epochs=f["epochs"], callbacks=[budget], verbose=f["verbose"], shuffle=False)
    t_end = time.perf_counter()
    train_s = t_end - budget.t_start
    images_seen = min(budget.images, budget.steps * f["batch_size"])
    epochs_done = budget.steps / steps_per_epoch
    if budget.t_warm is not None and t_end > budget.t_warm and budget.images_after_warmup:
        steady, rate_kind = budget.images_after_warmup / (t_end - budget.t_warm), f"steady, after {args.warmup_steps} warm-up steps"
    else:
        steady, rate_kind = images_seen / train_s, "WARNING: budget ended within the warm-up steps; includes tracing"
    _, test_acc = model.evaluate(test_ds, verbose=0)
    tta = recipe.tta_model(model)
    tta.compile(loss=keras.losses.CategoricalCrossentropy(),
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    tta_acc = tta.evaluate(test_ds, verbose=0)[1]
    full_recipe_h = total_steps * f["batch_size"] / steady / 3600.0

    print()
    print(f"steps {budget.steps} ({epochs_done:.2f} epochs of {f['epochs']}) in {train_s:.1f}s")
    print(f"images/s ({rate_kind}): {steady:.1f}")
    print(f"test accuracy {100 * test_acc:.2f}%  TTA accuracy {100 * tta_acc:.2f}%  on {len(test_x)} test images")
    print(f"full recipe ({f['epochs']} epochs) at this rate: {full_recipe_h:.2f} h")
    payload = {
        "benchmark": "gpu_fullscale",
        "command": C.command_line(),
        "trainer_flags": f,
        "time_budget_s": args.time_budget_s,
        "train_seconds": round(train_s, 2), "steps": budget.steps, "epochs_done": round(epochs_done, 4),
        "images_per_s": round(steady, 2), "images_per_s_kind": rate_kind, "warmup_steps": args.warmup_steps,
        "test_accuracy": float(test_acc), "tta_accuracy": float(tta_acc), "test_examples": int(len(test_x)),
        "full_recipe_hours_at_this_rate": round(full_recipe_h, 3),
        "machine": machine,
    }
    C.write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
