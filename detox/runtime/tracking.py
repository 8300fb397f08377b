"""Where a run's metrics go: `metrics.jsonl` (always) and every tracker of `logger.trackers`.

A tracker is any class with the four methods of `Tracker`, built by `hydra.utils.instantiate`
from its own node (`conf/logger/<name>.yaml`: `trackers.<name>._target_` and its settings) with
the run dir and the run's config as positional arguments. `logger=wandb` (the default),
`logger=tensorboard`, `logger=mlflow`, `logger=none`, or several at once:
`logger=[wandb,tensorboard]`. Adding one is a class and a yaml (detox/runtime/trackers.py holds
the shipped ones); nothing else in detox knows which trackers exist.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from detox.core.atomic import cut_jsonl_after, read_jsonl
from detox.core.instantiate import MissingPackage, build
from detox.core.run_dir import METRICS_FILE

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """What a tracker implements. `__init__(run_dir, config, **its node)`; `config` is the
    run's whole config as a dict, to record beside the metrics."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """One step's metrics (numbers; the tracker may skip what it cannot store)."""

    def log_table(self, key: str, rows: list[dict], step: int | None) -> None:
        """A table of rows (dicts with the same keys), e.g. sample summaries."""

    def summary(self, values: dict[str, Any]) -> None:
        """End-of-run figures (the evaluation), not tied to a step."""

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        """Close the run; a non-zero exit code marks it failed, `preempted` as stopped to resume."""


def read_metrics(run_dir: str) -> list[dict]:
    return read_jsonl(os.path.join(run_dir, METRICS_FILE))


def tracker_nodes(settings: DictConfig) -> dict[str, dict]:
    """The trackers `logger` selects (`logger.backend=none`, the old key, selects none)."""
    nodes = OmegaConf.to_container(settings.trackers, resolve=True)
    if settings.backend == "none":
        return {}
    if settings.backend is not None:
        return {settings.backend: nodes[settings.backend]}
    return nodes


class Tracking:
    """One run's metrics: rows appended to metrics.jsonl, and the same to every tracker."""

    def __init__(self, settings: DictConfig, run_dir: str, config: dict, start_step: int | None = 0):
        """start_step: drop metrics.jsonl rows after it (a resumed run); None keeps them all
        (stage=eval adding its summary to a finished run)."""
        self.run_dir = run_dir
        self.path: str | None = os.path.join(run_dir, METRICS_FILE)
        if start_step is not None:  # a resumed run logs each step once
            cut_jsonl_after(self.path, start_step)
        self.trackers: dict[str, Tracker] = {}
        for name, node in tracker_nodes(settings).items():
            try:
                self.trackers[name] = build(node, f"logger.trackers.{name}", run_dir, config, start_step or 0,
                                            _convert_="all")
            except MissingPackage as e:
                raise MissingPackage(f"logger={name}: {e} Install it (pip install 'detox[{name}]' for the shipped "
                                     "trackers), or drop it from logger.") from None

    @classmethod
    def muted(cls) -> "Tracking":
        """Logs nothing anywhere: the processes of a data-parallel run that are not the main one."""
        self = cls.__new__(cls)
        self.run_dir, self.path, self.trackers = None, None, {}
        return self

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for tracker in self.trackers.values():
            tracker.log(metrics, step)

    def log_table(self, key: str, rows: list[dict], step: int | None = None) -> None:
        if rows:
            for tracker in self.trackers.values():
                tracker.log_table(key, rows, step)

    def summary(self, values: dict[str, Any]) -> None:
        for tracker in self.trackers.values():
            tracker.summary(values)

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        for tracker in self.trackers.values():
            tracker.finish(exit_code, preempted)
        self.trackers = {}
