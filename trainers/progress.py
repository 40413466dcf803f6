"""What a person watching a run sees: one line per epoch, and, on a
terminal, a progress line within the epoch that is rewritten in place.

``--verbose 2`` (default) uses :func:`epoch_logger`:

* always, at every epoch end, one line::

    Epoch 3/6  48.1s  1244 img/s  loss 0.5312  accuracy 0.8861  val_loss 0.4788  val_accuracy 0.8962  learning_rate 0.002  firing_rate/mean 0.18

* only when stdout is a TTY, during the epoch, at most every ``interval``
  seconds: ``  step 120/469  26% 12.3s  1249 img/s  ETA 35s  loss 0.61`` with
  a carriage return, erased before the epoch line. Log files (stdout
  redirected) therefore get exactly one line per epoch.

The per-step hooks are marked ``async_safe``: on backends that allow it
(JAX, torch) Keras runs them in a worker thread, so the training loop never
waits for a step's logs (a synchronous per-step hook would make Keras read
every step's loss back from the GPU and stall JAX's asynchronous dispatch).
"""

from __future__ import annotations

import sys
import threading
import time

EPOCH_KEYS_FIRST = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "firing_rate/mean")


def epoch_timer(batch_size: int, steps_per_epoch: int, num_examples: int):
    """A Keras callback adding ``train_time_s`` (epoch start to the moment
    the last training step's logs were ready, i.e. that step had finished;
    validation excluded) and
    ``train_images_per_s`` to the epoch logs; put it first, so the history,
    TensorBoard and the epoch line get them."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        # Keras may then run on_train_batch_end in a worker thread (JAX,
        # torch), so the step loop never waits for the logs' values; the
        # epoch end waits for all of them.
        async_safe = True

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = self.t_last = time.perf_counter()
            self.steps = 0

        def on_train_batch_end(self, batch, logs=None):
            self.steps = max(self.steps, batch + 1)
            self.t_last = max(self.t_last, time.perf_counter())

        def on_epoch_end(self, epoch, logs=None):
            if logs is None or self.steps == 0:
                return
            images = num_examples if self.steps >= steps_per_epoch else self.steps * batch_size
            seconds = self.t_last - self.t0
            logs["train_time_s"] = seconds
            logs["train_images_per_s"] = images / seconds if seconds > 0 else 0.0

    return EpochTimer()


def format_epoch_line(epoch: int, epochs: int, seconds: float, images_per_s: float, logs: dict) -> str:
    parts = [f"Epoch {epoch}/{epochs}", f"{seconds:.1f}s", f"{images_per_s:.0f} img/s"]
    for key in EPOCH_KEYS_FIRST:
        if key in logs:
            parts.append(f"{key} {_fmt(logs[key])}")
    return "  ".join(parts)


def _fmt(value) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3g}"


def epoch_logger(epochs: int, steps_per_epoch: int, batch_size: int, *, num_examples: int = None,
                 stream=None, interval: float = 0.5, tty: bool = None):
    """A Keras callback printing the lines described in the module doc.

    The epoch line's time is the whole epoch (training and the validation
    pass); its img/s is :func:`epoch_timer`'s ``train_images_per_s`` when
    that callback runs, else training images over the time from the epoch
    start to the last step's logs.
    """
    import keras

    out = stream or sys.stdout
    is_tty = out.isatty() if tty is None else tty

    class EpochLogger(keras.callbacks.Callback):
        async_safe = True  # see EpochTimer

        def __init__(self):
            super().__init__()
            self.last_line_len = 0
            self.lock = threading.Lock()

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()
            self.next_update = self.t0 + interval
            self.steps = 0
            self.t_last = self.t0

        def on_train_batch_end(self, batch, logs=None):
            with self.lock:
                self.steps = max(self.steps, batch + 1)
                now = self.t_last = max(self.t_last, time.perf_counter())
                if not is_tty or now < self.next_update:
                    return
                self.next_update = now + interval
                self._progress(now, logs)

        def _progress(self, now, logs):
            elapsed = now - self.t0
            rate = self.steps * batch_size / elapsed if elapsed > 0 else 0.0
            eta = (steps_per_epoch - self.steps) * elapsed / max(self.steps, 1)
            loss = f"  loss {_fmt(logs['loss'])}" if logs and "loss" in logs else ""
            line = (f"  step {self.steps}/{steps_per_epoch}  {100 * self.steps / steps_per_epoch:3.0f}%  "
                    f"{elapsed:.1f}s  {rate:.0f} img/s  ETA {eta:.0f}s{loss}")
            pad = " " * max(0, self.last_line_len - len(line))
            out.write("\r" + line + pad)
            out.flush()
            self.last_line_len = len(line)

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.t0
            if is_tty and self.last_line_len:
                out.write("\r" + " " * self.last_line_len + "\r")
                self.last_line_len = 0
            logs = dict(logs or {})
            rate = logs.get("train_images_per_s")
            if rate is None:
                images = self.steps * batch_size
                if num_examples is not None and self.steps >= steps_per_epoch:
                    images = num_examples
                train_s = self.t_last - self.t0
                rate = images / train_s if train_s > 0 else 0.0
            out.write(format_epoch_line(epoch + 1, epochs, seconds, float(rate), logs) + "\n")
            out.flush()

    return EpochLogger()
