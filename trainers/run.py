"""One training run (or its resumption) from a validated configuration:
:func:`train`.

Order of work: devices and distribution, resume point (read before anything
is written; a damaged newest checkpoint falls back to the previous one), data
and the validation split, inputs, model, callbacks, ``fit`` (validation after
every epoch, ``best.keras`` chosen on it), then -- only now -- the test set:
``final.keras`` and ``best.keras`` evaluated once each (and flip-TTA for a
model trained with flips), end-of-run reports, ``metrics.json``.

Figures in ``metrics.json`` and the summary line, by name:

* ``validation_accuracy_final`` / ``validation_accuracy_best``: the held-out
  part of the *training* set (``--validation_examples``; default 10 % of
  the training images loaded, at most 5,000), final model and
  the best epoch; ``best.keras`` is the epoch with the highest validation
  accuracy;
* ``test_accuracy_final`` / ``test_accuracy_best``: the test set, evaluated
  once at the end on ``final.keras`` and on ``best.keras``
  (``test_accuracy`` repeats ``test_accuracy_final`` for older readers);
* ``tta_accuracy_final`` / ``tta_accuracy_best``: flip-averaged test
  accuracy, only for a model trained with flips (``tta`` says why not).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Dict

from trainers import backend as backend_lib
from trainers import callbacks as callbacks_lib
from trainers import files
from trainers import flags as trainer_flags


def _evaluate(model, data, distribution):
    with distribution.scope():
        result = model.evaluate(data, verbose=0, return_dict=True)
    return float(result["loss"]), float(result["accuracy"])


def _finished_metrics(output_dir, state, flags):
    """The metrics of a run whose every epoch and final report are done, else None."""
    if state is None or int(state["epochs_completed"]) < int(flags["epochs"]):
        return None
    metrics, _ = files.read_json(os.path.join(output_dir, files.METRICS_FILE))
    if metrics is None or metrics.get("epochs_completed") != state["epochs_completed"]:
        return None
    return metrics


def _check_recipe(output_dir, state, flags, num_train_examples=None):
    """Refuses to resume a run with other recipe flags (one line);
    ``num_train_examples``: the training images loaded, which a default
    ``--validation_examples`` depends on (see
    :func:`trainers.flags.recipe_differences`)."""
    diff = trainer_flags.recipe_differences(state["flags"], flags, num_train_examples)
    if diff:
        raise trainer_flags.UsageError(f"{output_dir} holds a run with other flags ({diff}); use a new --output_dir")


def _loaded_train_examples(metrics):
    """Training images a finished run loaded (trained on plus held out), or None."""
    try:
        return int(metrics["num_train_examples"]) + int(metrics["validation"]["examples"])
    except (KeyError, TypeError, ValueError):
        return None


def _fmt(value):
    return f"{value:.4f}" if isinstance(value, float) else "n/a"


def summary_lines(metrics: Dict) -> list:
    """The end-of-run summary, each figure named for what it is."""
    val = metrics["validation"]
    best = metrics.get("best") or {}
    lines = []
    if val["examples"]:
        lines.append(f"validation ({val['examples']} held-out training images, seed {val['seed']}): "
                     f"final {_fmt(metrics['validation_accuracy_final'])}  "
                     f"best {_fmt(metrics['validation_accuracy_best'])} (epoch {best.get('epoch', '?')}, "
                     "selects best.keras)")
    else:
        why = ("--validation_examples 0" if (metrics.get("flags") or {}).get("validation_examples") is not None
               else "the default holds out 10% of the training images: none of fewer than 10")
        lines.append(f"validation: none ({why}): no best.keras")
    test = (f"test ({metrics['num_test_examples']} images, evaluated once at the end): "
            f"final.keras {_fmt(metrics['test_accuracy_final'])}")
    if metrics.get("test_accuracy_best") is not None:
        test += f"  best.keras {_fmt(metrics['test_accuracy_best'])}"
    lines.append(test)
    tta = metrics.get("tta") or {}
    if tta.get("skipped"):
        lines.append(f"flip-TTA skipped: {tta['skipped']}")
    elif metrics.get("tta_accuracy_final") is not None:
        text = f"flip-TTA test: final.keras {_fmt(metrics['tta_accuracy_final'])}"
        if metrics.get("tta_accuracy_best") is not None:
            text += f"  best.keras {_fmt(metrics['tta_accuracy_best'])}"
        lines.append(text)
    lines.append(f"epochs {metrics['epochs_completed']}  wall_time_s {metrics['wall_time_s']:.1f}")
    return lines


def _tta_reason(f, crop_flip):
    if not f["tta"]:
        return "--notta"
    if not crop_flip:
        return ("the model was trained without flips (--crop_flip off), so a mirrored image is out of its "
                "training distribution")
    return None


def train(config: Dict) -> Dict:
    """Runs (or resumes) the training described by validated ``config``.

    Returns the metrics dict that is also written to ``metrics.json``.

    Raises:
      trainer_flags.UsageError: other recipe flags than the run in
        ``--output_dir``, or no usable resume point (one line, for the CLI).
    """
    f = config["flags"]
    backend = backend_lib.keras_backend()
    backend_lib.configure_cpu_devices(f["num_cpu_devices"])
    output_dir = f["output_dir"]
    if f.get("restart") and os.path.isdir(output_dir):
        files.remove_run_state(output_dir)

    # Resume point (read before anything is written).
    try:
        state, problems = files.find_resume_point(output_dir)
    except files.ResumeError as err:
        raise trainer_flags.UsageError(str(err)) from None
    if state is not None:
        _check_recipe(output_dir, state, f)
        finished = _finished_metrics(output_dir, state, f)
        if finished is not None and not problems:
            _check_recipe(output_dir, state, f, _loaded_train_examples(finished))
            print(f"the run in {output_dir} is finished ({state['epochs_completed']}/{f['epochs']} epochs, "
                  f"{os.path.join(output_dir, files.METRICS_FILE)}); nothing changed. Start afresh with "
                  "--restart or use a new --output_dir", flush=True)
            return finished

    import keras

    from trainers import data as data_lib
    from trainers import distribute, inputs, progress, recipe, reports, scalars

    session_start = time.time()
    distribution = distribute.make_distribution(f["strategy"], backend)
    chief = distribution.chief
    pipeline = inputs.resolve_pipeline(f["input_pipeline"], backend)
    if problems and chief:
        print(f"warning: {'; '.join(problems)}; resuming from the previous good checkpoint "
              f"{state['checkpoint']} (epoch {state['epochs_completed']})", file=sys.stderr, flush=True)
        files.atomic_write_json(os.path.join(output_dir, files.STATE_FILE), state)  # points at the good one

    # A resumed run continues with fresh (but reproducible) random streams
    # instead of replaying the first epochs' shuffles and augmentations.
    done = int(state["epochs_completed"]) if state else 0
    keras.utils.set_random_seed(f["seed"] + done)
    recipe.set_dtype_policy(f["dtype_policy"])
    all_x, all_y = data_lib.load_arrays(f["dataset"], "train", f["data_dir"], f["max_train_examples"])
    test_x, test_y = data_lib.load_arrays(f["dataset"], "test", f["data_dir"], f["max_test_examples"])
    if state is not None:  # a default --validation_examples depends on the images loaded
        _check_recipe(output_dir, state, f, len(all_x))
    try:
        train_x, train_y, val_x, val_y = inputs.split_validation(all_x, all_y, f["validation_examples"],
                                                                 f["validation_seed"])
    except ValueError as err:
        raise trainer_flags.UsageError(str(err)) from None
    num_classes = data_lib.NUM_CLASSES[f["dataset"]]
    crop_flip = f["crop_flip"] if f["crop_flip"] is not None else f["dataset"] != "fashion_mnist"
    run_inputs = inputs.make_inputs(pipeline, train_x, train_y, test_x, test_y, num_classes, f,
                                    seed=f["seed"] + done, crop_flip=crop_flip, distribution=distribution,
                                    val_x=val_x, val_y=val_y)
    steps = run_inputs.steps_per_epoch
    total_steps = steps * f["epochs"]

    if chief:
        model_dir = output_dir
    else:  # Non-chief workers write to a private scratch folder, removed at the end.
        model_dir = os.path.join(output_dir, f".worker-{distribution.worker_index}")
    os.makedirs(model_dir, exist_ok=True)

    with distribution.scope():
        network = recipe.build_model(config, train_x.shape[1:], num_classes)
        fit_model = (recipe.training_model(network, run_inputs.augmentation)
                     if run_inputs.augmentation is not None else network)
        recipe.compile_model(fit_model, config, total_steps)
        distribute.use_local_batch_for_symbolic_build(fit_model, distribution)
        initial_epoch = 0
        if state is not None:
            fit_model.optimizer.build(fit_model.trainable_variables)
            fit_model.load_weights(os.path.join(output_dir, state["checkpoint"]))
            initial_epoch = int(state["epochs_completed"])
            step = int(keras.ops.convert_to_numpy(fit_model.optimizer.iterations))
            print(f"resuming from epoch {initial_epoch}/{f['epochs']} (optimizer step {step})", flush=True)

    prior_wall = float(state["wall_time_s"]) if state else 0.0
    cbs = [progress.epoch_timer(f["batch_size"], steps, run_inputs.examples_per_epoch),
           callbacks_lib.learning_rate_logger()]
    if f["activation"] != "relu" and run_inputs.validation_float is not None:
        cbs.append(callbacks_lib.network_firing_rates(network, run_inputs.validation_float,
                                                      f["firing_rate_batches"] or None))
    checkpoint = callbacks_lib.epoch_checkpoint(
        network=network, model_dir=model_dir, output_dir=output_dir, chief=chief, state=state, flags=f,
        start_time=session_start, prior_wall=prior_wall)
    cbs.append(checkpoint)
    # The loggers last: they must see the learning rate and firing rates
    # that the callbacks above add to the epoch logs.
    if chief and scalars.tensorboard_available():
        cbs.append(scalars.scalar_logger(os.path.join(model_dir, "tensorboard")))
    elif chief:
        print("warning: the tensorboard package is not installed; no TensorBoard logs "
              "(pip install tensorboard)", flush=True)
    if f["verbose"] == 2 and chief:
        cbs.append(progress.epoch_logger(f["epochs"], steps, f["batch_size"],
                                          num_examples=run_inputs.examples_per_epoch))
    if chief:
        for line in config.get("notes", ()):
            print(line, flush=True)
        val_text = f"{len(val_x)} validation" if val_x is not None else "no validation"
        print(f"backend {backend}, input pipeline {pipeline}, {distribution.num_replicas} replica(s), "
              f"dtype policy {f['dtype_policy']}: {len(train_x)} training images ({val_text} images held "
              f"out), {steps} steps/epoch", flush=True)

    train_start = time.time()
    if initial_epoch < f["epochs"]:
        fit_model.fit(run_inputs.train, epochs=f["epochs"], initial_epoch=initial_epoch,
                      validation_data=run_inputs.validation, callbacks=cbs,
                      verbose=1 if f["verbose"] == 1 else 0, shuffle=False)
    train_time = time.time() - train_start

    # The test set, once, at the end: final.keras and best.keras.
    files.atomic_save_model(network, os.path.join(model_dir, "final.keras"))
    best_path = os.path.join(model_dir, "best.keras")
    best_model = None
    if checkpoint.best is not None and os.path.isfile(best_path):
        with distribution.scope():
            best_model = keras.saving.load_model(best_path, compile=False)
    tta_reason = _tta_reason(f, crop_flip)
    results = {}
    for label, model in (("final", network), ("best", best_model)):
        if model is None:
            results[label] = (None, None, None)
            continue
        with distribution.scope():
            evaluator = recipe.evaluation_model(model, config)
            distribute.use_local_batch_for_symbolic_build(evaluator, distribution)
        loss, acc = _evaluate(evaluator, run_inputs.test_float, distribution)
        tta_acc = None
        if tta_reason is None:
            with distribution.scope():
                tta = recipe.tta_model(model)
                recipe.compile_for_evaluation(tta)
                distribute.use_local_batch_for_symbolic_build(tta, distribution)
            tta_acc = _evaluate(tta, run_inputs.test_float, distribution)[1]
        results[label] = (loss, acc, tta_acc)
    history = checkpoint.history
    best = checkpoint.best
    val_final = history[-1].get("val_accuracy") if history else None
    metrics = {
        "test_accuracy_final": results["final"][1],
        "test_loss_final": results["final"][0],
        "test_accuracy_best": results["best"][1],
        "test_loss_best": results["best"][0],
        "validation_accuracy_final": val_final,
        "validation_accuracy_best": best["val_accuracy"] if best else None,
        "tta_accuracy_final": results["final"][2],
        "tta_accuracy_best": results["best"][2],
        "tta": {"skipped": tta_reason} if tta_reason else {"trained_with_flips": True},
        "test_accuracy": results["final"][1],
        "test_loss": results["final"][0],
        "tta_accuracy": results["final"][2],
        "validation": {"examples": int(len(val_x)) if val_x is not None else 0,
                       "seed": int(f["validation_seed"]),
                       "selects": "best.keras (highest val_accuracy at an epoch end)"},
        "figures": {
            "validation_accuracy_*": "held-out part of the training set (--validation_examples), after each epoch",
            "test_accuracy_final": "final.keras on the test set, evaluated once after training",
            "test_accuracy_best": "best.keras (chosen on validation) on the test set, evaluated once after training",
            "tta_accuracy_*": "flip-averaged test accuracy; only for models trained with flips",
        },
        "epochs_completed": len(history),
        "best": best,
        "history": history,
        "num_train_examples": int(len(train_x)),
        "num_test_examples": int(len(test_x)),
        "data_dir": f["data_dir"],
        "num_parameters": int(network.count_params()),
        "steps_per_epoch": steps,
        "num_replicas": int(distribution.num_replicas),
        "num_processes": int(distribution.num_processes),
        "backend": backend,
        "input_pipeline": pipeline,
        "devices": backend_lib.device_names(),
        "flags": f,
    }
    if chief:
        report_network, test_float = network, run_inputs.test_float
        if distribution.num_processes > 1:
            # Reports run on the chief alone: a local copy of the network,
            # outside the cluster-wide distribution.
            distribution.release()
            report_network = keras.saving.load_model(os.path.join(model_dir, "final.keras"), compile=False)
            test_float = inputs.array_batches(test_x.astype("float32") / 255.0,
                                              inputs.one_hot(test_y, num_classes), f["batch_size"],
                                              shuffle=False)
        data = {"train_images": train_x, "test_images": test_x, "test_labels": test_y, "test_float": test_float}
        reports.post_training_reports(report_network, f, data, output_dir, metrics)
    metrics.setdefault("firing_rates", {})
    metrics["session_wall_time_s"] = time.time() - session_start
    metrics["session_train_time_s"] = train_time
    metrics["wall_time_s"] = prior_wall + metrics["session_wall_time_s"] if state else metrics["session_wall_time_s"]
    if chief:
        files.atomic_write_json(os.path.join(output_dir, files.METRICS_FILE), metrics)
        for line in summary_lines(metrics):
            print(line, flush=True)
        print(f"-> {os.path.join(output_dir, files.METRICS_FILE)}", flush=True)
    else:
        shutil.rmtree(model_dir, ignore_errors=True)
    failed = (metrics.get("export") or {}).get("failed_checks")
    if failed:
        raise ExportChecksFailed(f"the export's own checks failed ({', '.join(failed)}); no export files were "
                                 f"written; the trained model is {os.path.join(output_dir, 'final.keras')}")
    return metrics


class ExportChecksFailed(RuntimeError):
    """The run trained and saved its model, but ``--export``'s checks failed
    (``python -m trainers.cifar`` exits with status 3, as ``python -m
    export`` does)."""
