"""One training run (or its resumption) from a validated configuration:
:func:`train`.

Order of work: devices and distribution, resume state (read before anything
is written), data, inputs, model, callbacks, ``fit``, final evaluation and
TTA, end-of-run reports, ``final.keras``, ``metrics.json``.
"""

from __future__ import annotations

import os
import shutil
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


def train(config: Dict) -> Dict:
    """Runs (or resumes) the training described by validated ``config``.

    Returns the metrics dict that is also written to ``metrics.json``.
    """
    f = config["flags"]
    backend = backend_lib.keras_backend()
    backend_lib.configure_cpu_devices(f["num_cpu_devices"])
    import keras

    from trainers import data as data_lib
    from trainers import distribute, inputs, progress, recipe, reports, scalars

    session_start = time.time()
    distribution = distribute.make_distribution(f["strategy"], backend)
    chief = distribution.chief
    output_dir = f["output_dir"]
    pipeline = inputs.resolve_pipeline(f["input_pipeline"], backend)

    # Resume state (read before anything is written).
    state = files.load_state(output_dir)
    if state is not None:
        diff = trainer_flags.recipe_differences(state["flags"], f)
        if diff:
            raise trainer_flags.UsageError(
                f"{output_dir} holds a run with other flags ({diff}); use a new --output_dir")

    # A resumed run continues with fresh (but reproducible) random streams
    # instead of replaying the first epochs' shuffles and augmentations.
    done = int(state["epochs_completed"]) if state else 0
    keras.utils.set_random_seed(f["seed"] + done)
    recipe.set_dtype_policy(f["dtype_policy"])
    train_x, train_y = data_lib.load_arrays(f["dataset"], "train", f["data_dir"], f["max_train_examples"])
    test_x, test_y = data_lib.load_arrays(f["dataset"], "test", f["data_dir"], f["max_test_examples"])
    num_classes = data_lib.NUM_CLASSES[f["dataset"]]
    crop_flip = f["crop_flip"] if f["crop_flip"] is not None else f["dataset"] != "fashion_mnist"
    run_inputs = inputs.make_inputs(pipeline, train_x, train_y, test_x, test_y, num_classes, f,
                                    seed=f["seed"] + done, crop_flip=crop_flip, distribution=distribution)
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
    if f["activation"] != "relu":
        cbs.append(callbacks_lib.network_firing_rates(network, run_inputs.test_float,
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
        print(f"backend {backend}, input pipeline {pipeline}, {distribution.num_replicas} replica(s), "
              f"dtype policy {f['dtype_policy']}: {len(train_x)} training images, {steps} steps/epoch",
              flush=True)

    train_start = time.time()
    if initial_epoch < f["epochs"]:
        fit_model.fit(run_inputs.train, epochs=f["epochs"], initial_epoch=initial_epoch,
                      validation_data=run_inputs.validation, callbacks=cbs,
                      verbose=1 if f["verbose"] == 1 else 0, shuffle=False)
    train_time = time.time() - train_start

    # Final evaluation.
    test_loss, test_acc = _evaluate(fit_model, run_inputs.validation, distribution)
    metrics = {
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "tta_accuracy": None,
        "epochs_completed": len(checkpoint.history),
        "best": checkpoint.best,
        "history": checkpoint.history,
        "num_train_examples": int(len(train_x)),
        "num_test_examples": int(len(test_x)),
        "num_parameters": int(network.count_params()),
        "steps_per_epoch": steps,
        "num_replicas": int(distribution.num_replicas),
        "backend": backend,
        "input_pipeline": pipeline,
        "devices": backend_lib.device_names(),
        "flags": f,
    }
    if f["tta"]:
        with distribution.scope():
            tta = recipe.tta_model(network)
            recipe.compile_for_evaluation(tta)
            distribute.use_local_batch_for_symbolic_build(tta, distribution)
        metrics["tta_accuracy"] = _evaluate(tta, run_inputs.test_float, distribution)[1]

    files.atomic_save_model(network, os.path.join(model_dir, "final.keras"))
    if chief:
        data = {"train_images": train_x, "test_images": test_x, "test_labels": test_y,
                "test_float": run_inputs.test_float}
        reports.post_training_reports(network, f, data, output_dir, metrics)
    metrics.setdefault("firing_rates", {})
    metrics["session_wall_time_s"] = time.time() - session_start
    metrics["session_train_time_s"] = train_time
    metrics["wall_time_s"] = prior_wall + metrics["session_wall_time_s"] if state else metrics["session_wall_time_s"]
    if chief:
        files.atomic_write_json(os.path.join(output_dir, "metrics.json"), metrics)
        tta_text = f"{metrics['tta_accuracy']:.4f}" if metrics["tta_accuracy"] is not None else "n/a"
        print(f"test_accuracy {metrics['test_accuracy']:.4f}  tta_accuracy {tta_text}  "
              f"epochs {metrics['epochs_completed']}  wall_time_s {metrics['wall_time_s']:.1f}  "
              f"-> {os.path.join(output_dir, 'metrics.json')}", flush=True)
    else:
        shutil.rmtree(model_dir, ignore_errors=True)
    return metrics
