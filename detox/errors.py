"""The user errors: each message names what is wrong and how to fix it.

The CLI prints a `DetoxError` as one line, without a traceback, and exits 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class DetoxError(Exception):
    """A problem the user can fix (a config value, a dataset, a path, a checkpoint)."""


class ConfigError(DetoxError, ValueError):
    """A config value is wrong; the message names the key and the fix."""


class DataError(DetoxError, ValueError):
    """The dataset cannot be used as configured; the message says what to change."""


class LoadError(DetoxError, RuntimeError):
    """A model, adapter or dataset named in the config could not be loaded."""


class CheckpointError(DetoxError, RuntimeError):
    """A checkpoint cannot be used with this run's config."""
