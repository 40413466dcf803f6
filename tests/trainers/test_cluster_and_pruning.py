"""Fast checks of two trainer pieces the end-to-end tests leave out: the JAX
multi-process cluster read from the environment (``TF_CONFIG`` and Keras'
``KERAS_DISTRIBUTION_*`` variables), and the pruning of old checkpoints to
the newest :data:`trainers.files.KEEP_CHECKPOINTS` with a fallback that still
finds the previous good one."""

import json
import os

import keras
import pytest

from trainers import files
from trainers.distribute import jax_cluster_from_env
from trainers.errors import UsageError


def test_cluster_from_tf_config_chief_first():
    config = {"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "task": {"type": "worker", "index": 1}}
    assert jax_cluster_from_env({"TF_CONFIG": json.dumps(config)}) == ("a:1", 3, 2)
    config["task"] = {"type": "chief", "index": 0}
    assert jax_cluster_from_env({"TF_CONFIG": json.dumps(config)}) == ("a:1", 3, 0)
    workers = {"cluster": {"worker": ["h0:9", "h1:9"]}, "task": {"type": "worker", "index": 0}}
    assert jax_cluster_from_env({"TF_CONFIG": json.dumps(workers)}) == ("h0:9", 2, 0)


def test_cluster_from_keras_distribution_variables():
    env = {"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234, 10.0.0.2:1234", "KERAS_DISTRIBUTION_PROCESS_ID": "1"}
    assert jax_cluster_from_env(env) == ("10.0.0.1:1234", 2, 1)
    env["KERAS_DISTRIBUTION_NUM_PROCESSES"] = "4"
    assert jax_cluster_from_env(env) == ("10.0.0.1:1234", 4, 1)


@pytest.mark.parametrize("env, message", [
    ({}, "needs the TF_CONFIG"),
    ({"TF_CONFIG": "{not json"}, "TF_CONFIG must look like"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}})},
     "TF_CONFIG must look like"),
    ({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "a:1,b:2"}, "needs KERAS_DISTRIBUTION_PROCESS_ID"),
    ({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "a:1,b:2", "KERAS_DISTRIBUTION_PROCESS_ID": "2"}, r"not in \[0, 2\)"),
    ({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "a:1", "KERAS_DISTRIBUTION_PROCESS_ID": "x"}, "an integer"),
])
def test_bad_cluster_descriptions_are_one_usage_error(env, message):
    with pytest.raises(UsageError, match=message) as err:
        jax_cluster_from_env(env)
    assert "\n" not in str(err.value)


def _tiny():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def test_only_the_newest_checkpoints_are_kept_and_a_damaged_newest_falls_back(tmp_path):
    out = str(tmp_path)
    model = _tiny()
    for epoch in range(1, 5):   # as trainers.callbacks writes them (the chief's model_dir is output_dir)
        files.write_epoch_state(out, out, {
            "epochs_completed": epoch, "checkpoint": os.path.join(files.BACKUP_DIR, f"epoch-{epoch:04d}.keras"),
            "history": [], "flags": {}, "wall_time_s": float(epoch)}, model, chief=True)
    backup = os.path.join(out, files.BACKUP_DIR)
    kept = sorted(os.listdir(backup))
    assert files.KEEP_CHECKPOINTS == 2
    assert kept == ["epoch-0003.json", "epoch-0003.keras", "epoch-0004.json", "epoch-0004.keras"]
    state, problems = files.find_resume_point(out)
    assert state["epochs_completed"] == 4 and problems == []
    # The newest checkpoint cut short: resume from the one before, with one line saying so.
    path = os.path.join(backup, "epoch-0004.keras")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    state, problems = files.find_resume_point(out)
    assert state["epochs_completed"] == 3
    assert len(problems) == 1 and "epoch-0004.keras" in problems[0]
