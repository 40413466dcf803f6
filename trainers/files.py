"""Files of a run folder written so that a SIGKILL at any moment leaves a
consistent run: temporary name in the same folder, fsync, rename.

* :func:`atomic_write_json` -- ``metrics.json``, ``state.json``;
* :func:`atomic_save_model` -- ``final.keras``, ``best.keras`` and the
  per-epoch resume checkpoint ``backup/epoch-NNNN.keras``;
* :func:`load_state` -- the resume state (``state.json``) of a run folder;
* :func:`find_resume_point` -- the newest *usable* resume point: the run
  keeps its last two checkpoints, each with a copy of its state
  (``backup/epoch-NNNN.keras`` + ``backup/epoch-NNNN.json``), so a damaged
  newest checkpoint or ``state.json`` (outside damage: a full disk, a copy
  cut short) falls back to the previous good one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from typing import Dict, List, Optional, Tuple

STATE_FILE = "state.json"
METRICS_FILE = "metrics.json"
BACKUP_DIR = "backup"
KEEP_CHECKPOINTS = 2
_CKPT = re.compile(r"^epoch-(\d{4,})\.keras$")
_STATE_KEYS = ("epochs_completed", "checkpoint", "history", "flags", "wall_time_s")


class ResumeError(RuntimeError):
    """No usable resume point; the one-line message names the damaged file
    and the flag that starts afresh."""


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


def read_json(path: str) -> Tuple[Optional[Dict], Optional[str]]:
    """``(object, None)``, or ``(None, why)`` for a missing, unreadable or
    non-JSON-object file."""
    try:
        with open(path) as f:
            obj = json.load(f)
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as err:
        return None, f"damaged ({type(err).__name__})"
    if not isinstance(obj, dict):
        return None, "damaged (not a JSON object)"
    return obj, None


def check_checkpoint(path: str) -> Optional[str]:
    """None when ``path`` is a complete ``.keras`` archive (every member's
    CRC checked, ``config.json`` and the weights present), else why not."""
    if not os.path.isfile(path):
        return "missing"
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            names = set(z.namelist())
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as err:
        return f"damaged ({type(err).__name__})"
    if bad is not None:
        return f"damaged (member {bad} fails its CRC)"
    if "config.json" not in names or "model.weights.h5" not in names:
        return "damaged (not a Keras model archive)"
    return None


def _state_problem(state: Dict) -> Optional[str]:
    missing = [k for k in _STATE_KEYS if k not in state]
    return f"damaged (no {', '.join(missing)})" if missing else None


def checkpoint_states(output_dir: str) -> List[str]:
    """The per-checkpoint state copies ``backup/epoch-NNNN.json``, newest first."""
    backup = os.path.join(output_dir, BACKUP_DIR)
    try:
        names = os.listdir(backup)
    except OSError:
        return []
    epochs = sorted((int(m.group(1)) for m in map(_CKPT.match, names) if m), reverse=True)
    return [os.path.join(backup, f"epoch-{e:04d}.json") for e in epochs]


def find_resume_point(output_dir: str) -> Tuple[Optional[Dict], List[str]]:
    """The newest usable resume state of the run in ``output_dir``.

    Tries ``state.json``, then the state copy of each kept checkpoint,
    newest first; a state is usable when it parses and the checkpoint it
    points at is a complete archive.

    Returns:
      ``(state, problems)``: ``state`` None for a fresh run folder (nothing
      to resume); ``problems`` one line per damaged file that was skipped.

    Raises:
      ResumeError: there is resume state but none of it is usable.
    """
    main = os.path.join(output_dir, STATE_FILE)
    candidates = [main] + checkpoint_states(output_dir)
    problems, first_bad = [], None
    if not os.path.exists(main) and len(candidates) == 1:
        return None, []
    for path in candidates:
        state, why = read_json(path)
        if state is not None:
            why = _state_problem(state)
        if why is None:
            ckpt = os.path.join(output_dir, state["checkpoint"])
            why_ckpt = check_checkpoint(ckpt)
            if why_ckpt is None:
                return state, problems
            path, why = ckpt, why_ckpt
        if why == "missing" and path == main:
            continue
        first_bad = first_bad or (path, why)
        line = f"{os.path.relpath(path, output_dir)} is {why}"
        if line not in problems:
            problems.append(line)
    path, why = first_bad or (main, "missing")
    raise ResumeError(f"cannot resume the run in {output_dir}: {os.path.relpath(path, output_dir)} is {why} and "
                      "no earlier checkpoint is usable; start afresh with --restart (or use a new --output_dir)")


def write_epoch_state(output_dir: str, model_dir: str, state: Dict, model, chief: bool) -> None:
    """Saves the epoch's checkpoint and state: ``backup/epoch-NNNN.keras``,
    its state copy ``backup/epoch-NNNN.json``, then ``state.json`` (last, so
    it never points at a file not yet written); then deletes all but the
    newest :data:`KEEP_CHECKPOINTS` checkpoints."""
    backup = os.path.join(model_dir, BACKUP_DIR)
    os.makedirs(backup, exist_ok=True)
    epoch = int(state["epochs_completed"])
    atomic_save_model(model, os.path.join(backup, f"epoch-{epoch:04d}.keras"))
    if chief:
        atomic_write_json(os.path.join(backup, f"epoch-{epoch:04d}.json"), state)
        atomic_write_json(os.path.join(output_dir, STATE_FILE), state)
    kept = sorted((int(m.group(1)) for m in map(_CKPT.match, os.listdir(backup)) if m), reverse=True)
    for old in kept[KEEP_CHECKPOINTS:]:
        for ext in (".keras", ".json"):
            path = os.path.join(backup, f"epoch-{old:04d}{ext}")
            if os.path.exists(path):
                os.remove(path)


def remove_run_state(output_dir: str) -> None:
    """``--restart``: deletes ``state.json``, ``metrics.json`` and ``backup/``."""
    import shutil

    for name in (STATE_FILE, METRICS_FILE):
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.remove(path)
    shutil.rmtree(os.path.join(output_dir, BACKUP_DIR), ignore_errors=True)
