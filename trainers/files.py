"""Files of a run folder written so that a SIGKILL at any moment leaves a
consistent run: temporary name in the same folder, fsync, rename.

* :func:`atomic_write_json` -- ``metrics.json``, ``state.json``;
* :func:`atomic_save_model` -- ``final.keras``, ``best.keras`` and the
  per-epoch resume checkpoint ``backup/epoch-NNNN.keras``;
* :func:`load_state` -- the resume state (``state.json``) of a run folder.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, Optional

STATE_FILE = "state.json"
BACKUP_DIR = "backup"


def json_default(value):
    """JSON encoder fallback: NumPy scalars as Python numbers, else ``str``."""
    import numpy as np

    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def atomic_write_json(path: str, obj) -> None:
    """Writes ``obj`` as JSON to a temporary file in the same folder, fsyncs
    it, then renames it to ``path`` (readers see the old or the new file)."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save_model(model, path: str) -> None:
    """``model.save(path)`` (weights, and optimizer state when compiled) via a
    temporary name in the same folder."""
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    model.save(tmp)
    os.replace(tmp, path)


def load_state(output_dir: str) -> Optional[Dict]:
    """The resume state of the run in ``output_dir``: None when it never
    completed an epoch, else the dict written by the epoch checkpoint
    (``epochs_completed``, ``checkpoint``, ``history``, ``best``, ``flags``,
    ``wall_time_s``)."""
    path = os.path.join(output_dir, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
