"""The data the export's command lines verify on: a built-in data set or a
user's ``.npz`` file, checked against the model's input.

``--data PATH.npz`` (``numpy.savez(PATH, test_images=..., ...)``) takes
models of any input shape and task. Its keys (:data:`NPZ_KEYS`):

* ``test_images`` (required): the verification inputs ``[N, ...]``, uint8
  (divided by 255; taken as they are, raw, for a model that starts with
  ``Rescaling``/``Normalization``: :func:`export.transform.inputs.model_inputs`)
  or float (taken as they are, in the model's input convention);
* ``test_labels``: integer class labels ``[N]`` for the accuracy figures
  (leave it out for a regression model, e.g. an autoencoder);
* ``train_images``: inputs ``[M, ...]`` for integer calibration (the last
  ``--num_calibration``) and ``--qat_epochs``; without it the export
  calibrates on the verification inputs (the report says so).

Anything else -- an unknown key, an object array, a wrong rank, dtype or
length, inputs that do not fit the model -- raises :class:`DataFileError`
with one line naming the key and what is valid.

Example::

    import numpy as np
    np.savez("kws.npz", test_images=x_test, test_labels=y_test, train_images=x_train)
    # python -m export --model ds_cnn.keras --data kws.npz --output_dir out
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Optional, Tuple

import numpy as np

from export.errors import InputError

__all__ = ["NPZ_KEYS", "DataFileError", "CLIData", "load_npz", "load_dataset", "check_input_shape"]

NPZ_KEYS = ("test_images", "test_labels", "train_images")


class DataFileError(InputError, ValueError):
    """The data file or data set does not fit (one-line message)."""


@dataclasses.dataclass
class CLIData:
    """Verification (and calibration) data: ``test_labels`` and
    ``train_images`` may be ``None``; ``source`` names where it came from
    (a path or a data-set name) for messages and the report."""

    test_images: np.ndarray
    test_labels: Optional[np.ndarray]
    train_images: Optional[np.ndarray]
    source: str


def _inputs(path, key, arr):
    if arr.dtype.kind not in "uif":
        raise DataFileError(f"{key} in {path!r} must hold numbers (uint8 or float inputs), got dtype {arr.dtype}")
    if arr.ndim < 2 or len(arr) == 0:
        raise DataFileError(f"{key} in {path!r} must be a non-empty array [N, ...inputs], got shape {arr.shape}")
    return arr


def load_npz(path: str, max_test_examples: Optional[int] = None, need_train: bool = False) -> CLIData:
    """Reads and checks ``path`` (module docstring); the first
    ``max_test_examples`` verification inputs. ``need_train``: the caller
    needs ``train_images`` (fine-tuning)."""
    if not os.path.isfile(path):
        raise DataFileError(f"--data {path!r} does not exist" if not os.path.exists(path)
                            else f"--data {path!r} is not a file")
    if not zipfile.is_zipfile(path):
        raise DataFileError(f"--data {path!r} is not an .npz file (write one with numpy.savez(path, "
                            f"{'=..., '.join(NPZ_KEYS)}=...))")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            unknown = sorted(set(keys) - set(NPZ_KEYS))
            if unknown:
                raise DataFileError(f"--data {path!r} has unknown keys {', '.join(unknown)}; valid: "
                                    f"{', '.join(NPZ_KEYS)}")
            if "test_images" not in keys:
                raise DataFileError(f"--data {path!r} has no test_images (keys: {', '.join(keys) or 'none'}; "
                                    f"valid: {', '.join(NPZ_KEYS)})")
            arrays = {k: npz[k] for k in keys}
    except DataFileError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        from export.loader import first_line

        raise DataFileError(f"--data {path!r} cannot be read as an .npz of numeric arrays: {first_line(err)}") \
            from None
    test = _inputs(path, "test_images", arrays["test_images"])
    labels = arrays.get("test_labels")
    if labels is not None:
        if labels.dtype.kind not in "iu" or labels.ndim != 1:
            raise DataFileError(f"test_labels in {path!r} must be integer class indices [N], got dtype "
                                f"{labels.dtype} shape {labels.shape}")
        if len(labels) != len(test):
            raise DataFileError(f"test_labels in {path!r} has {len(labels)} entries for {len(test)} test_images")
    train = arrays.get("train_images")
    if train is not None:
        _inputs(path, "train_images", train)
        if train.shape[1:] != test.shape[1:]:
            raise DataFileError(f"train_images in {path!r} have shape {train.shape[1:]} per input, test_images "
                                f"{test.shape[1:]}")
    elif need_train:
        raise DataFileError(f"--qat_epochs fine-tunes on train_images, which {path!r} does not have")
    if max_test_examples:
        test = test[:max_test_examples]
        labels = None if labels is None else labels[:max_test_examples]
    return CLIData(test, None if labels is None else labels.astype(np.int64), train, path)


def load_dataset(name: str, data_dir: Optional[str], max_test_examples: Optional[int],
                 need_train: bool = True) -> CLIData:
    """A built-in data set (:func:`s2nn_keras.datasets.load_arrays`): its
    test split (the first ``max_test_examples``) and, with ``need_train``,
    its training split."""
    from s2nn_keras.datasets import DatasetNotFoundError, load_arrays

    try:
        images, labels = load_arrays(name, "test", data_dir, max_test_examples)
        train = load_arrays(name, "train", data_dir)[0] if need_train else None
    except DatasetNotFoundError:
        raise
    except (ValueError, OSError) as err:
        from export.loader import first_line

        raise DataFileError(f"data set {name!r}: {first_line(err)}") from None
    return CLIData(images, labels, train, name)


def check_input_shape(data: CLIData, input_shape: Tuple, model_name: str) -> None:
    """``data``'s inputs have the model's input shape (``None`` dims match
    anything), else one line saying how to give data that fits."""
    shape = tuple(data.test_images.shape[1:])
    want = tuple(input_shape)
    if len(shape) != len(want) or any(w is not None and int(w) != s for w, s in zip(want, shape)):
        raise DataFileError(
            f"{model_name} takes inputs of shape {want}, {data.source} has {shape}; give data of that shape with "
            f"--data PATH.npz (keys {', '.join(NPZ_KEYS)})")
