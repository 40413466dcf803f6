"""``python -m trainers.cifar --flagfile trainers/configs/quickstart.cfg``

Trains a PreActResNet with single-step spiking neurons (or the ReLU
baseline) with the recipe of paper §5.1 / Appendix A, on any Keras backend
(``KERAS_BACKEND=jax python -m trainers.cifar ...`` takes the same flags):

* loss: softmax cross-entropy with label smoothing (Eq. A.1)
  ``L = -sum_c (t_c (1 - eps) + eps / C) log softmax(y)_c``, eps = 0.1;
* dropout 0.1 before the classifier, RandAugment, and for CIFAR the
  standard random crop + horizontal flip, per image (tf.data on the host,
  or keras.ops on the accelerator: ``--input_pipeline``);
* SGD (momentum, optionally Nesterov) or Adam; cosine annealing over the
  whole run, ``lr(t) = lr0 * (1 + cos(pi * t / T)) / 2`` with ``t`` the
  optimizer step and ``T = epochs * steps_per_epoch`` -- the schedule's
  state *is* the optimizer's iteration counter and is restored with it;
* weight decay as in PyTorch's SGD/Adam (coupled): an L2 kernel regulariser
  ``(wd / 2) ||w||^2`` on conv/dense kernels; BatchNorm is not decayed;
* model selection on a validation split held out of the training set
  (``--validation_examples``, seeded); the test set is evaluated once, at
  the end, on ``final.keras`` and on ``best.keras``; flip-averaged
  test-time augmentation ``p = (softmax(f(x)) + softmax(f(flip(x)))) / 2``
  only for a model trained with flips.

Outputs in ``--output_dir``: ``final.keras``, ``best.keras``,
``tensorboard/``, ``metrics.json``, ``energy/`` and ``backup/`` (the last
two per-epoch resume checkpoints). Re-running the same command after a crash
or SIGKILL resumes after the last completed epoch (from the previous
checkpoint if the newest is damaged); re-running a finished run changes
nothing; ``--restart`` starts afresh.

Modules: :mod:`trainers.flags` (flags, validation), :mod:`trainers.run`
(the run), :mod:`trainers.recipe` (model, optimizer, loss, TTA),
:mod:`trainers.inputs` / :mod:`trainers.pipeline` / :mod:`trainers.augment`
(input pipelines), :mod:`trainers.distribute` (data parallelism),
:mod:`trainers.callbacks`, :mod:`trainers.progress`, :mod:`trainers.scalars`
(TensorBoard without TensorFlow), :mod:`trainers.files` (atomic files,
resume state), :mod:`trainers.reports` (export and energy at the end).
"""

from __future__ import annotations

import logging
import os
import sys

from absl import app
from absl import flags as absl_flags

from trainers import flags as trainer_flags
from trainers.run import ExportChecksFailed, train  # noqa: F401  (public: trainers.cifar.train(config))

FLAGS = absl_flags.FLAGS


def _main(config):
    from trainers.data import DatasetNotFoundError

    try:
        train(config)
    except (DatasetNotFoundError, trainer_flags.UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(2)
    except ExportChecksFailed as err:
        print(f"error: {err}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(3)


def main(argv=None) -> None:
    """Console entry point: parse and validate flags, then train."""
    # TF's C++ start-up INFO lines are noise for a CLI (and would precede a
    # flag error); set TF_CPP_MIN_LOG_LEVEL=0 to see them.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainers.backend import import_keras_quietly

    # absl's handler would print JAX's INFO line about the missing TPU library.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    import_keras_quietly()
    trainer_flags.define_flags(FLAGS)
    # --help lists the flags of the main module only; the trainer's live in
    # trainers.flags, so make them this module's key flags.
    absl_flags.adopt_module_key_flags(trainer_flags)
    app.run(_main, argv=argv, flags_parser=lambda a: trainer_flags.parse_or_exit(a, FLAGS))


if __name__ == "__main__":
    main()
