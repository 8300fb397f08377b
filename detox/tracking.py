"""Where metrics go: `metrics.jsonl` (always) and Weights & Biases (unless logger.backend=none)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any

from omegaconf import DictConfig

from detox.atomic import cut_jsonl_after, read_jsonl
from detox.run_dir import METRICS_FILE, WANDB_ID_FILE
from detox.sweep import sweep_context

log = logging.getLogger(__name__)


def wandb_mode(cfg: DictConfig) -> str:
    """logger.mode, else $WANDB_MODE, else online with an API key and offline without one, so
    nothing ever prompts for a login or hangs on a missing server."""
    if cfg.mode:
        return cfg.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def read_metrics(run_dir: str) -> list[dict]:
    return read_jsonl(os.path.join(run_dir, METRICS_FILE))


class Tracker:
    """One run's metrics: rows appended to metrics.jsonl, and the W&B run."""

    def __init__(self, cfg: DictConfig, run_dir: str, config: dict, start_step: int | None = 0):
        """start_step: drop metrics.jsonl rows after it (a resumed run); None keeps them all
        (stage=eval adding its summary to a finished run)."""
        self.run_dir = run_dir
        self.path: str | None = os.path.join(run_dir, METRICS_FILE)
        if start_step is not None:  # a resumed run logs each step once
            cut_jsonl_after(self.path, start_step)
        self.run = None
        if cfg.backend == "wandb":
            self.run = self._init_wandb(cfg, config)

    @classmethod
    def muted(cls) -> "Tracker":
        """Logs nothing anywhere: the processes of a data-parallel run that are not the main one."""
        self = cls.__new__(cls)
        self.run_dir, self.path, self.run = None, None, None
        return self

    def _init_wandb(self, cfg: DictConfig, config: dict):
        import wandb

        id_file = os.path.join(self.run_dir, WANDB_ID_FILE)
        run_id = open(id_file).read().strip() if os.path.exists(id_file) else uuid.uuid4().hex[:8]
        with open(id_file, "w") as f:
            f.write(run_id)
        mode = wandb_mode(cfg)
        # A multirun job: named by its swept overrides, one group per sweep (unless the config
        # names them), and the swept keys in its config (`sweep.keys`) for the dashboard.
        sweep = sweep_context() or {}
        if sweep:
            config = {**config, "sweep": {k: sweep[k] for k in ("keys", "dir", "job")}}
        run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group or sweep.get("group"),
            name=cfg.name or sweep.get("name"), tags=list(cfg.tags), config=config,
            dir=self.run_dir, mode=mode, id=run_id, resume="allow",
            settings=wandb.Settings(console="off", silent=True),
        )
        run.config.update({"run_dir": os.path.abspath(self.run_dir)}, allow_val_change=True)
        return run

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.path is None:
            return
        row = {"step": step, **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_table(self, key: str, rows: list[dict], step: int | None = None) -> None:
        if self.run is None or not rows:
            return
        import wandb

        columns = list(rows[0])
        self.run.log({key: wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        """Close the W&B run; `preempted`: marked so (it resumes under the same id)."""
        if self.run is None:
            return
        if preempted:
            self.run.mark_preempting()
        offline = self.run.settings.mode == "offline" or getattr(self.run, "offline", False)
        run_path = self.run.dir
        self.run.finish(exit_code=exit_code)
        self.run = None
        if offline:
            log.info("W&B run saved offline; upload it with: wandb sync %s", os.path.dirname(run_path))
