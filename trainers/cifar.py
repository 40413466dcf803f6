"""``python -m trainers.cifar --flagfile trainers/configs/quickstart.cfg``

Trains a PreActResNet with single-step spiking neurons (or the ReLU
baseline) with the recipe of paper §5.1 / Appendix A:

* loss: softmax cross-entropy with label smoothing (Eq. A.1)
  ``L = -sum_c (t_c (1 - eps) + eps / C) log softmax(y)_c``, eps = 0.1;
* dropout 0.1 before the classifier, RandAugment, and for CIFAR the
  standard random crop + horizontal flip;
* SGD (momentum 0.9) or Adam; the learning rate follows cosine annealing
  over the whole run, ``lr(t) = lr0 * (1 + cos(pi * t / T)) / 2`` with
  ``t`` the optimizer step and ``T = epochs * ceil(N / B)`` (Loshchilov &
  Hutter 2017, no restarts) -- so the schedule's state *is* the optimizer's
  iteration counter and is restored with it;
* weight decay as in PyTorch's SGD/Adam (which the paper used): ``wd * w``
  is added to the gradient of each conv/dense kernel. Implemented as an L2
  kernel regulariser ``(wd / 2) ||w||^2`` (its gradient is ``wd * w``), so
  with Adam it is the coupled "L2" form, not AdamW. BatchNorm parameters are
  not decayed;
* evaluation: plain test accuracy and flip-averaged test-time augmentation
  ``p = (softmax(f(x)) + softmax(f(flip(x)))) / 2``.

Outputs in ``--output_dir``: ``final.keras``, ``best.keras`` (highest test
accuracy seen at an epoch end), ``tensorboard/`` (loss, accuracy, learning
rate, per-layer firing rates), ``metrics.json`` and ``backup/`` (the
per-epoch resume checkpoint). Re-running the same command after a crash or
SIGKILL resumes after the last completed epoch, with the optimizer state and
therefore the learning-rate schedule.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, Optional

from absl import app
from absl import flags as absl_flags

from trainers import flags as trainer_flags

FLAGS = absl_flags.FLAGS
STATE_FILE = "state.json"
BACKUP_DIR = "backup"


# --------------------------------------------------------------------------
# Small file helpers.
# --------------------------------------------------------------------------


def _atomic_write_json(path: str, obj) -> None:
    """Writes JSON to a temporary file in the same folder, fsyncs, renames."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(value):
    import numpy as np

    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def _atomic_save_model(model, path: str) -> None:
    """``model.save`` (weights + optimizer state) to a temp name, then rename."""
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    model.save(tmp)
    os.replace(tmp, path)


def load_state(output_dir: str) -> Optional[Dict]:
    """The resume state of a run in ``output_dir`` (None if it never finished an epoch)."""
    path = os.path.join(output_dir, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------
# Devices and tf.distribute.
# --------------------------------------------------------------------------


def configure_cpu_devices(n: int) -> None:
    """Splits the CPU into ``n`` logical devices (must run before TF starts)."""
    import tensorflow as tf

    if n and n > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])


def make_strategy(name: str):
    """``default``: no distribution; ``mirrored``: all-reduce over the local
    GPUs (or the logical CPUs of --num_cpu_devices when there is no GPU);
    ``multi_worker``: MultiWorkerMirroredStrategy over the cluster in
    ``TF_CONFIG``."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise trainer_flags.UsageError("--strategy multi_worker needs the TF_CONFIG environment variable")
        return _multi_worker_strategy_class()()
    raise trainer_flags.UsageError(f"unknown --strategy {name!r}")


def is_chief(strategy) -> bool:
    """True on the worker that writes outputs (always True without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    spec = resolver.cluster_spec().as_dict()
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in spec


def _multi_worker_strategy_class():
    """MultiWorkerMirroredStrategy whose ``reduce`` accepts scalars with
    ``axis=0``.

    Keras 3 (<= 3.15) reduces every per-replica log value of a train/test
    step with ``strategy.reduce("MEAN", v, axis=0)`` under a multi-worker
    strategy; the loss and metric values are scalars, for which TF rejects
    ``axis=0``. For a scalar the mean over replicas is the same with
    ``axis=None``, which is what this subclass uses.
    """
    import tensorflow as tf

    class ScalarSafeMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):
            if axis is not None:
                local = self.experimental_local_results(value)
                if local and getattr(local[0], "shape", None) is not None and local[0].shape.rank == 0:
                    axis = None
            return super().reduce(reduce_op, value, axis)

    return ScalarSafeMultiWorkerMirroredStrategy


def use_local_batch_for_symbolic_build(model, strategy) -> None:
    """Works around Keras 3 (<= 3.15) failing ``fit`` under
    MultiWorkerMirroredStrategy.

    Before the first step Keras' TF trainer builds metrics and optimizer
    from one batch, which it gets by ``strategy.reduce("MEAN", batch)`` on
    the per-replica batch; with a multi-worker strategy that eager reduce
    of an input batch fails ("Attempt to convert a value (PerReplica...)").
    Only the batch's shapes matter for the build, so this instance override
    takes this worker's first local replica batch instead.
    """
    import tensorflow as tf
    import tree

    def _maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                batch = next(it)
                data_batch = tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v,
                    batch)
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = _maybe_symbolic_build


# --------------------------------------------------------------------------
# Model, optimizer, callbacks.
# --------------------------------------------------------------------------


def build_model(config: Dict, input_shape, num_classes: int):
    """The PreActResNet of the flags (uncompiled)."""
    import keras

    from s2nn_keras.models import PreActResNet

    f = config["flags"]
    regularizer = keras.regularizers.L2(f["weight_decay"] / 2.0) if f["weight_decay"] > 0 else None
    from s2nn_keras.regularizers import FiringRateRegularizer

    rate_reg = (FiringRateRegularizer(f.get("rate_l1", 0.0), f.get("target_rate"), f.get("rate_strength", 1.0))
                if f.get("rate_l1") or f.get("target_rate") is not None else None)
    depth = 2 + 2 * sum(config["blocks"])
    name = f["model"] if f["model"] != "custom" else f"preact_resnet{depth}"
    return PreActResNet(
        config["blocks"], tuple(input_shape), num_classes, activation=f["activation"],
        width=f["width"], dropout=f["dropout"], kernel_regularizer=regularizer, name=name,
        activity_regularizer=rate_reg, **config["surrogate_params"],
    )


def build_optimizer(config: Dict, total_steps: int):
    """SGD (momentum) or Adam with a cosine-annealed learning rate."""
    import keras

    f = config["flags"]
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=f["learning_rate"], decay_steps=max(1, int(total_steps)), alpha=0.0)
    if f["optimizer"] == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=f["momentum"])
    return keras.optimizers.Adam(learning_rate=schedule)


def compile_model(model, config: Dict, total_steps: int) -> None:
    import keras

    f = config["flags"]
    model.compile(
        optimizer=build_optimizer(config, total_steps),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=f["label_smoothing"]),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=bool(f["jit_compile"]),
    )


def tta_model(model):
    """``x -> (softmax(model(x)) + softmax(model(flip_lr(x)))) / 2``."""
    import keras

    inputs = keras.Input(model.input_shape[1:])
    flipped = keras.layers.Lambda(lambda t: keras.ops.flip(t, axis=2), name="flip_lr")(inputs)
    p = keras.layers.Softmax()(model(inputs, training=False))
    q = keras.layers.Softmax()(model(flipped, training=False))
    outputs = keras.layers.Average(name="tta_mean")([p, q])
    return keras.Model(inputs, outputs, name="tta")


def _make_callbacks(config, model_dir, output_dir, chief, state, test_ds, start_time, prior_wall):
    import keras
    import numpy as np

    from s2nn_keras.firing import FiringRateCallback

    f = config["flags"]

    class LearningRateLogger(keras.callbacks.Callback):
        """Puts the learning rate used by the epoch's last step into the logs."""

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                opt = self.model.optimizer
                lr = opt.learning_rate
                logs["learning_rate"] = float(np.asarray(keras.ops.convert_to_numpy(lr)))

    class EpochCheckpoint(keras.callbacks.Callback):
        """After each epoch: best model, resume checkpoint, then state.json.

        Files are written to temporary names and renamed, and state.json,
        which points at the checkpoint, is replaced last: a SIGKILL at any
        moment leaves either the previous or the new consistent state.
        """

        def __init__(self):
            super().__init__()
            self.history = list(state["history"]) if state else []
            self.best = dict(state["best"]) if state and state.get("best") else None

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            record = {"epoch": epoch + 1}
            record.update({k: float(v) for k, v in logs.items()})
            self.history.append(record)
            val = logs.get("val_accuracy")
            if val is not None and (self.best is None or val > self.best["val_accuracy"]):
                self.best = {"epoch": epoch + 1, "val_accuracy": float(val)}
                _atomic_save_model(self.model, os.path.join(model_dir, "best.keras"))
            backup = os.path.join(model_dir, BACKUP_DIR)
            os.makedirs(backup, exist_ok=True)
            ckpt_name = f"epoch-{epoch + 1:04d}.keras"
            _atomic_save_model(self.model, os.path.join(backup, ckpt_name))
            if chief:
                _atomic_write_json(os.path.join(output_dir, STATE_FILE), {
                    "epochs_completed": epoch + 1,
                    "checkpoint": os.path.join(BACKUP_DIR, ckpt_name),
                    "history": self.history,
                    "best": self.best,
                    "flags": f,
                    "wall_time_s": prior_wall + time.time() - start_time,
                })
            for old in os.listdir(backup):
                if old.endswith(".keras") and old != ckpt_name:
                    os.remove(os.path.join(backup, old))

    callbacks = [LearningRateLogger()]
    if f["activation"] != "relu":
        callbacks.append(FiringRateCallback(test_ds, max_batches=f["firing_rate_batches"] or None))
    checkpoint = EpochCheckpoint()
    callbacks.append(checkpoint)
    # TensorBoard last: it must see the learning rate and firing rates that
    # the callbacks above added to the epoch logs.
    try:
        import tensorboard  # noqa: F401  (tf.summary needs it since TF 2.16)
    except ImportError:
        print("warning: the tensorboard package is not installed; no TensorBoard logs "
              "(pip install tensorboard)", file=sys.stderr)
    else:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=os.path.join(model_dir, "tensorboard"),
                                                     update_freq="epoch", write_graph=False))
    return callbacks, checkpoint


# --------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------


def post_training_reports(model, config: Dict, data: Dict, output_dir: str, metrics: Dict) -> None:
    """Reports written after training (called on the chief only).

    ``data`` holds the uint8 arrays (``train_images``, ``test_images``,
    ...) and the ``test_ds`` tf.data pipeline; reports add their results to
    ``metrics`` (written to metrics.json afterwards) and their files to
    ``output_dir``:

    * ``firing_rates``: R(l) of every neuron layer over the whole test set;
    * with ``--export``: ``output_dir/export`` (BN-folded model, TFLite
      models, C array, ``export_report.json``; see :func:`export.export_run`)
      verified on the first ``--export_max_examples`` test images;
    * always: the Appendix B energy report in ``output_dir/energy``
      (:func:`export.energy.write_energy_report`), over the whole test set,
      or, with ``--export``, over the verification images with the exported
      float32/int8 TFLite models reported beside the Keras model.
    """
    import keras

    from export.energy import write_energy_report
    from s2nn_keras.firing import firing_rates

    f = config["flags"]
    metrics["firing_rates"] = dict(firing_rates(model, data["test_ds"]))
    energy_data, tflite_models, folded = data["test_ds"], None, None
    if f["export"]:
        import export
        from trainers.data import to_float

        n = f["export_max_examples"] or len(data["test_images"])
        images, labels = data["test_images"][:n], data["test_labels"][:n]
        export_dir = os.path.join(output_dir, "export")
        report = export.export_run(
            model, export_dir, images, labels, formats=f["export_formats"],
            calibration_images=data["train_images"][-500:],
            max_tflm_examples=f["export_tflm_examples"] or None,
            extra={"model_path": os.path.join(output_dir, "final.keras")})
        metrics["export"] = {
            "dir": export_dir,
            "num_verification": report["num_verification"],
            "fold_prediction_agreement": report["fold"]["prediction_agreement"],
            "formats": {fmt: {"size_bytes": e["size_bytes"], "accuracy": e["litert"]["accuracy"],
                              "agreement_with_keras": e["litert"]["agreement_with_keras"],
                              "tflm_arena_bytes": e["tflm"]["arena_bytes"]}
                        for fmt, e in report["formats"].items()},
        }
        energy_data = to_float(images)
        tflite_models = {fmt: os.path.join(export_dir, report["formats"][fmt]["file"])
                         for fmt in ("float32", "int8") if fmt in report["formats"]}
        folded = keras.saving.load_model(os.path.join(export_dir, "model_folded.keras"))
    energy = write_energy_report(model, energy_data, os.path.join(output_dir, "energy"),
                                 convention=f["energy_convention"], preset=f["energy_preset"],
                                 tflite_models=tflite_models, folded_model=folded)
    metrics["energy"] = {k: energy[k] for k in ("convention", "preset", "total_flops", "e_full_pj",
                                                "e_method_pj", "efficiency")}


def train(config: Dict) -> Dict:
    """Runs (or resumes) the training described by validated ``config``.

    Returns the metrics dict that is also written to ``metrics.json``.
    """
    f = config["flags"]
    configure_cpu_devices(f["num_cpu_devices"])
    import keras
    import numpy as np

    from trainers import data as data_lib
    from trainers import pipeline

    session_start = time.time()
    strategy = make_strategy(f["strategy"])
    chief = is_chief(strategy)
    distributed = f["strategy"] != "default"
    output_dir = f["output_dir"]

    # Resume state (read before anything is written).
    state = load_state(output_dir)
    if state is not None:
        diff = trainer_flags.recipe_differences(state["flags"], f)
        if diff:
            raise trainer_flags.UsageError(
                f"{output_dir} holds a run with other flags ({diff}); use a new --output_dir")

    # A resumed run continues with fresh (but reproducible) random streams
    # instead of replaying the first epochs' shuffles and augmentations.
    done = int(state["epochs_completed"]) if state else 0
    keras.utils.set_random_seed(f["seed"] + done)
    train_x, train_y = data_lib.load_arrays(f["dataset"], "train", f["data_dir"], f["max_train_examples"])
    test_x, test_y = data_lib.load_arrays(f["dataset"], "test", f["data_dir"], f["max_test_examples"])
    num_classes = data_lib.NUM_CLASSES[f["dataset"]]
    crop_flip = f["crop_flip"] if f["crop_flip"] is not None else f["dataset"] != "fashion_mnist"
    train_ds = pipeline.train_dataset(
        train_x, train_y, num_classes, f["batch_size"], seed=f["seed"] + done, crop_flip=crop_flip,
        randaugment_ops=f["randaugment_ops"], randaugment_magnitude=f["randaugment_magnitude"],
        distributed=distributed)
    test_ds = pipeline.eval_dataset(test_x, test_y, num_classes, f["batch_size"], distributed=distributed)
    steps = pipeline.steps_per_epoch(len(train_x), f["batch_size"])
    total_steps = steps * f["epochs"]

    if chief:
        model_dir = output_dir
    else:  # Non-chief workers write to a private scratch folder, removed at the end.
        model_dir = os.path.join(output_dir, f".worker-{strategy.cluster_resolver.task_id}")
    os.makedirs(model_dir, exist_ok=True)

    with strategy.scope():
        model = build_model(config, train_x.shape[1:], num_classes)
        compile_model(model, config, total_steps)
        if f["strategy"] == "multi_worker":
            use_local_batch_for_symbolic_build(model, strategy)
        initial_epoch = 0
        if state is not None:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(os.path.join(output_dir, state["checkpoint"]))
            initial_epoch = int(state["epochs_completed"])
            print(f"resuming from epoch {initial_epoch}/{f['epochs']} "
                  f"(optimizer step {int(model.optimizer.iterations.numpy())})", flush=True)

    prior_wall = float(state["wall_time_s"]) if state else 0.0
    callbacks, checkpoint = _make_callbacks(
        config, model_dir, output_dir, chief, state, test_ds, session_start, prior_wall)
    train_start = time.time()
    if initial_epoch < f["epochs"]:
        model.fit(train_ds, epochs=f["epochs"], initial_epoch=initial_epoch, validation_data=test_ds,
                  callbacks=callbacks, verbose=f["verbose"], shuffle=False)
    train_time = time.time() - train_start

    # Final evaluation.
    test_loss, test_acc = model.evaluate(test_ds, verbose=0)
    metrics = {
        "test_accuracy": float(test_acc),
        "test_loss": float(test_loss),
        "tta_accuracy": None,
        "epochs_completed": len(checkpoint.history),
        "best": checkpoint.best,
        "history": checkpoint.history,
        "num_train_examples": int(len(train_x)),
        "num_test_examples": int(len(test_x)),
        "num_parameters": int(model.count_params()),
        "steps_per_epoch": steps,
        "num_replicas": int(strategy.num_replicas_in_sync),
        "flags": f,
    }
    if f["tta"]:
        with strategy.scope():
            tta = tta_model(model)
            tta.compile(loss=keras.losses.CategoricalCrossentropy(),
                        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
            if f["strategy"] == "multi_worker":
                use_local_batch_for_symbolic_build(tta, strategy)
        metrics["tta_accuracy"] = float(tta.evaluate(test_ds, verbose=0)[1])

    data = {"train_images": train_x, "train_labels": train_y, "test_images": test_x,
            "test_labels": test_y, "test_ds": test_ds, "num_classes": num_classes}
    if chief:
        post_training_reports(model, config, data, output_dir, metrics)
    metrics.setdefault("firing_rates", {})
    metrics["session_wall_time_s"] = time.time() - session_start
    metrics["session_train_time_s"] = train_time
    metrics["wall_time_s"] = prior_wall + metrics["session_wall_time_s"] if state else metrics["session_wall_time_s"]
    _atomic_save_model(model, os.path.join(model_dir, "final.keras"))
    if chief:
        _atomic_write_json(os.path.join(output_dir, "metrics.json"), metrics)
        tta_text = f"{metrics['tta_accuracy']:.4f}" if metrics["tta_accuracy"] is not None else "n/a"
        print(f"test_accuracy {metrics['test_accuracy']:.4f}  tta_accuracy {tta_text}  "
              f"epochs {metrics['epochs_completed']}  wall_time_s {metrics['wall_time_s']:.1f}  "
              f"-> {os.path.join(output_dir, 'metrics.json')}", flush=True)
    else:
        shutil.rmtree(model_dir, ignore_errors=True)
    return metrics


def _main(config):
    from trainers.data import DatasetNotFoundError

    try:
        train(config)
    except (DatasetNotFoundError, trainer_flags.UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(2)


def main(argv=None) -> None:
    """Console entry point: parse and validate flags, then train."""
    # TF's C++ start-up INFO lines are noise for a CLI (and would precede a
    # flag error); set TF_CPP_MIN_LOG_LEVEL=0 to see them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    trainer_flags.import_tensorflow_quietly()
    trainer_flags.define_flags(FLAGS)
    app.run(_main, argv=argv, flags_parser=lambda a: trainer_flags.parse_or_exit(a, FLAGS))


if __name__ == "__main__":
    main()
