"""Quiet libraries: one progress bar (PPO's own) instead of every library's per-file bars and
per-scorer log lines. Imports the libraries only when called, so `detox --help` stays light."""

from __future__ import annotations

import logging


def quiet_libraries() -> None:
    """One progress bar (PPO's own): silence the per-file bars of datasets and transformers,
    and rouge-score's absl line for every scorer it builds."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    logging.getLogger("absl").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
