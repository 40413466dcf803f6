"""What a person sees: one line per epoch in logs, in-place progress on a
terminal, and TensorBoard scalars written without TensorFlow."""

import io

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainers import progress, scalars  # noqa: E402


def _fit(callback, epochs=2):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    x, y = np.zeros((20, 3), np.float32), np.zeros((20, 2), np.float32)
    model.fit(x, y, batch_size=4, epochs=epochs, verbose=0, callbacks=[callback])


def test_log_file_gets_exactly_one_line_per_epoch():
    out = io.StringIO()
    _fit(progress.epoch_logger(2, 5, 4, num_examples=20, stream=out, interval=0.0, tty=False))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert lines[0].startswith("Epoch 1/2  ") and "img/s" in lines[0] and "  loss " in lines[0]
    assert lines[1].startswith("Epoch 2/2  ")


def test_terminal_gets_a_progress_line_rewritten_in_place():
    out = io.StringIO()
    _fit(progress.epoch_logger(2, 5, 4, num_examples=20, stream=out, interval=0.0, tty=True))
    text = out.getvalue()
    # Step hooks may run in a worker thread (JAX): under load a later step's
    # hook can come first, so only the last step's line is certain.
    assert "\r  step " in text and "\r  step 5/5" in text and "ETA" in text
    # The progress line is erased before each epoch line.
    epoch_lines = [line.split("\r")[-1] for line in text.split("\n") if "Epoch" in line]
    assert [line[:9] for line in epoch_lines] == ["Epoch 1/2", "Epoch 2/2"]


def test_scalar_logger_writes_tensorboard_readable_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    logger = scalars.scalar_logger(str(tmp_path))
    logger.on_epoch_end(0, {"loss": 1.5, "accuracy": 0.25, "learning_rate": 0.1, "firing_rate/mean": 0.2,
                            "val_loss": 1.75, "val_accuracy": 0.5})
    logger.on_epoch_end(1, {"loss": 1.0, "val_loss": 1.25})
    logger.on_train_end()
    acc = event_accumulator.EventAccumulator(str(tmp_path / "train"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"epoch_loss", "epoch_accuracy", "epoch_learning_rate",
                                          "epoch_firing_rate/mean"}
    assert [(e.step, e.value) for e in acc.Scalars("epoch_loss")] == [(0, 1.5), (1, 1.0)]
    val = event_accumulator.EventAccumulator(str(tmp_path / "validation"))
    val.Reload()
    assert [(e.step, e.value) for e in val.Scalars("epoch_loss")] == [(0, 1.75), (1, 1.25)]
    assert [e.value for e in val.Scalars("epoch_accuracy")] == [0.5]
