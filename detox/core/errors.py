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


class RunDirBusy(DetoxError):
    """Another process holds the run dir's lock."""


class RunStopped(BaseException):
    """A run that ended early on purpose: not a bug, and not caught by `except Exception`.
    `exit_code` is what the command exits with."""

    status = "stopped"
    exit_code = 1

    def record(self) -> dict:
        """The fields results.json records (besides `status`)."""
        return {}


class Interrupted(RunStopped):
    """A stop signal (SIGTERM, SIGINT, the cluster's pre-timeout signal) ended the run.

    step: the last finished step; checkpoint: where it was saved (None: a second signal
    stopped the run at once); chain: the handler the signal had before ours (a cluster
    launcher's requeue), to call once the checkpoint is safe."""

    status = "interrupted"

    def __init__(self, signal_name: str, signum: int, step: int, checkpoint: str | None, chain=None):
        where = f"checkpoint {checkpoint}" if checkpoint else "no new checkpoint (stopped at once)"
        super().__init__(f"{signal_name} after step {step}: {where}")
        self.signal_name, self.signum, self.step, self.checkpoint, self.chain = (
            signal_name, signum, step, checkpoint, chain)
        self.exit_code = 128 + signum  # the shell's convention for a death by signal

    def record(self) -> dict:
        return {"signal": self.signal_name, "step": self.step, "checkpoint": self.checkpoint}


class Diverged(RunStopped):
    """Training stopped because it diverged (non-finite values, KL past ppo.kl.max)."""

    status = "diverged"
    exit_code = 3

    def __init__(self, reason: str, step: int, last_good_checkpoint: str | None):
        super().__init__(reason)
        self.reason, self.step, self.last_good_checkpoint = reason, step, last_good_checkpoint

    def record(self) -> dict:
        return {"reason": self.reason, "step": self.step, "last_good_checkpoint": self.last_good_checkpoint}
