"""Quiet libraries: one progress bar (PPO's own) instead of every library's per-file bars and
per-scorer log lines, and nothing of theirs on stdout (which holds only what a command prints
as its result: the run dir, detox-generate's JSON lines). Imports the libraries only when
called, so `detox --help` stays light."""

from __future__ import annotations

import contextlib
import logging
import sys


def quiet_libraries() -> None:
    """One progress bar (PPO's own): silence the per-file bars of datasets and transformers,
    and rouge-score's absl line for every scorer it builds."""
    import warnings

    import datasets
    import transformers

    with contextlib.redirect_stdout(sys.stderr):
        # Its import prints "[INFO] Running in WANDB offline mode" to stdout when WANDB_MODE=offline;
        # imported here once, the later imports (the trainer's) are silent.
        import transformers.integrations.integration_utils  # noqa: F401
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    logging.getLogger("absl").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
