"""The Keras callbacks of a training run (besides progress and TensorBoard):

* :func:`learning_rate_logger` -- puts the learning rate of the epoch's last
  step into the epoch logs;
* :func:`network_firing_rates` -- per-layer firing rates of the *network*
  (not of the fitted wrapper of the ``device`` pipeline) every epoch;
* :func:`epoch_checkpoint` -- after every epoch: ``best.keras`` (highest
  *validation* accuracy), the resume checkpoint ``backup/epoch-NNNN.keras``
  with its state copy, then ``state.json``; the last two checkpoints are kept.
"""

from __future__ import annotations

import os
import time

from trainers import files


def learning_rate_logger():
    import keras
    import numpy as np

    class LearningRateLogger(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                lr = self.model.optimizer.learning_rate
                logs["learning_rate"] = float(np.asarray(keras.ops.convert_to_numpy(lr)))

    return LearningRateLogger()


def network_firing_rates(network, data, max_batches=None):
    """``s2nn_keras.firing.FiringRateCallback`` bound to ``network`` whatever
    model ``fit`` runs."""
    from s2nn_keras.firing import FiringRateCallback

    class NetworkFiringRates(FiringRateCallback):
        def set_model(self, model):
            super().set_model(network)

    return NetworkFiringRates(data, max_batches=max_batches)


def epoch_checkpoint(*, network, model_dir, output_dir, chief, state, flags, start_time, prior_wall):
    """The per-epoch checkpoint.

    ``best.keras`` is ``network`` at the highest ``val_accuracy`` so far
    (the validation split; never the test set); the resume checkpoint is the
    fitted model with its optimizer state. Files are
    written to temporary names and renamed, and ``state.json``, which points
    at the checkpoint, is replaced last: a SIGKILL at any moment leaves
    either the previous or the new consistent state. The object keeps
    ``history`` (one dict per epoch) and ``best``.
    """
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
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
                files.atomic_save_model(network, os.path.join(model_dir, "best.keras"))
            ckpt_name = f"epoch-{epoch + 1:04d}.keras"
            files.write_epoch_state(output_dir, model_dir, {
                "epochs_completed": epoch + 1,
                "checkpoint": os.path.join(files.BACKUP_DIR, ckpt_name),
                "history": self.history,
                "best": self.best,
                "flags": flags,
                "wall_time_s": prior_wall + time.time() - start_time,
            }, self.model, chief)

    return EpochCheckpoint()
