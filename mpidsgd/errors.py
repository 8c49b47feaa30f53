"""The errors a user acts on, with the exit code each ends a run with.

`python -m mpidsgd.train` (and the other commands) print such an error as one
line, `mpidsgd: error: ...`, from rank 0 and exit with `exit_code`. Every rank
must raise the same error at the same point (comm/agree.py makes sure of it),
so no rank is left waiting for the others.
"""
from __future__ import annotations


class MpidsgdError(Exception):
    """An error that ends a run with one line and `exit_code`."""

    exit_code = 1


class InputError(MpidsgdError, ValueError):
    """Bad input (config, data, checkpoint, world size): exit code 2."""

    exit_code = 2


class ConfigError(InputError):
    """Invalid configuration; the message names the offending key."""


class CheckpointError(InputError):
    """A checkpoint that cannot be used: damaged, incompatible or missing."""


class AgreedError(MpidsgdError, RuntimeError):
    """A run that cannot go on (diverged parameters, an output that could not
    be written), raised identically on every rank: exit code 1."""
