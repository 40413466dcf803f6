"""TensorBoard scalars without TensorFlow.

``keras.callbacks.TensorBoard`` writes through ``tf.summary`` and so needs
TensorFlow; :class:`ScalarLogger` writes the same per-epoch curves with the
``tensorboard`` package's own event writer (protobuf only; the writer that
PyTorch's ``SummaryWriter`` uses), on every Keras backend:

* ``LOGDIR/train``: ``epoch_<name>`` for every epoch log that does not start
  with ``val_`` (loss, accuracy, learning_rate, firing_rate/<layer>, ...);
* ``LOGDIR/validation``: ``epoch_<name>`` for ``val_<name>``.

The tags are those of ``keras.callbacks.TensorBoard`` and the step is the
0-based epoch index, as there. A resumed run appends a
new event file to the same folders. View with ``tensorboard --logdir LOGDIR``.
"""

from __future__ import annotations

import os
import time


class ScalarWriter:
    """Appends scalar summaries to one TensorBoard event file in ``logdir``."""

    def __init__(self, logdir: str):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        os.makedirs(logdir, exist_ok=True)
        self._writer = EventFileWriter(logdir)

    def scalars(self, step: int, values: dict, wall_time: float = None) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()])
        self._writer.add_event(event_pb2.Event(step=int(step), wall_time=wall_time or time.time(),
                                               summary=summary))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def tensorboard_available() -> bool:
    try:
        import tensorboard.summary.writer.event_file_writer  # noqa: F401
        from tensorboard.compat.proto import summary_pb2  # noqa: F401
    except ImportError:
        return False
    return True


def _keras_callback():
    import keras

    return keras.callbacks.Callback


def scalar_logger(logdir: str):
    """A Keras callback writing the epoch logs to ``logdir/{train,validation}``."""
    Callback = _keras_callback()

    class ScalarLogger(Callback):
        def __init__(self):
            super().__init__()
            self.logdir = logdir
            self._writers = {}

        def _writer(self, name):
            if name not in self._writers:
                self._writers[name] = ScalarWriter(os.path.join(self.logdir, name))
            return self._writers[name]

        def on_epoch_end(self, epoch, logs=None):
            train, validation = {}, {}
            for key, value in (logs or {}).items():
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    continue
                if key.startswith("val_"):
                    validation["epoch_" + key[len("val_"):]] = value
                else:
                    train["epoch_" + key] = value
            if train:
                self._writer("train").scalars(epoch, train)
            if validation:
                self._writer("validation").scalars(epoch, validation)

        def on_train_end(self, logs=None):
            for w in self._writers.values():
                w.close()
            self._writers = {}

    return ScalarLogger()
