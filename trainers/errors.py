"""The trainer's one error type: a bad command line.

Raised by flag validation (:mod:`trainers.flags`), the cluster description
(:mod:`trainers.distribute`) and the run set-up (:mod:`trainers.run`); the
entry point (:mod:`trainers.cifar`) prints its message as one ``error:``
line and exits 2.

Example::

    raise UsageError("unknown --model 'vgg'; valid: preact_resnet18, ...")
"""

__all__ = ["UsageError"]


class UsageError(ValueError):
    """A bad command line; the message is the one line shown to the user."""
