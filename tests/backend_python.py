"""The interpreter each Keras backend's subprocess runs under
(``tests/test_backends.py``, ``tests/test_cross_backend.py``)."""

import importlib.util
import os
import subprocess
import sys


def python_for(backend):
    """The interpreter that runs ``backend`` -- ``S2NN_<BACKEND>_PYTHON``
    when set (e.g. a venv with CPU torch), else this one -- or None when it
    cannot import it."""
    python = os.environ.get(f"S2NN_{backend.upper()}_PYTHON", sys.executable)
    if python == sys.executable:
        return python if importlib.util.find_spec(backend) is not None else None
    probe = subprocess.run([python, "-c", f"import {backend}"], capture_output=True, timeout=300)
    return python if probe.returncode == 0 else None
