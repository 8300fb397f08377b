"""The shipped trackers (detox/runtime/tracking.py says what a tracker is): Weights & Biases,
TensorBoard and MLflow. Each is built from its own node in conf/logger/<name>.yaml with the run
dir, the run's config and the step it starts at; each imports its package only when built
(they are optional extras, `pip install 'detox[tensorboard]'` / `'detox[mlflow]'`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import uuid
from typing import Any

from detox.runtime.hydra_job import sweep_context

log = logging.getLogger(__name__)


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of `values` (bools as 0/1), for trackers that store only numbers."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, str) and math.isfinite(float(v))}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def _run_id(path: str, new) -> tuple[str, bool]:
    """The id stored at `path` (a resumed run continues its tracker run), else a new one; and
    whether it is new."""
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip(), False
    run_id = new()
    with open(path, "w") as f:
        f.write(run_id)
    return run_id, True


# ------------------------------------------------------------------------------ Weights & Biases
def wandb_mode(mode: str | None) -> str:
    """logger.mode, else $WANDB_MODE, else online with an API key and offline without one, so
    nothing ever prompts for a login or hangs on a missing server."""
    if mode:
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandbTracker:
    """A W&B run in the run dir (`wandb/`), resumed under the same id (`wandb_id.txt`). A multirun
    job is named by its swept overrides, one group per sweep, unless the config names them."""

    ID_FILE = "wandb_id.txt"

    def __init__(self, run_dir: str, config: dict, start_step: int = 0, mode: str | None = None,
                 project: str = "detox", entity: str | None = None, group: str | None = None,
                 name: str | None = None, tags: list[str] = ()):
        import wandb

        run_id, _ = _run_id(os.path.join(run_dir, self.ID_FILE), lambda: uuid.uuid4().hex[:8])
        sweep = sweep_context() or {}
        if sweep:
            config = {**config, "sweep": {k: sweep[k] for k in ("keys", "dir", "job")}}
        self.run = wandb.init(
            project=project, entity=entity, group=group or sweep.get("group"), name=name or sweep.get("name"),
            tags=list(tags), config=config, dir=run_dir, mode=wandb_mode(mode), id=run_id, resume="allow",
            settings=wandb.Settings(console="off", silent=True))
        self.run.config.update({"run_dir": os.path.abspath(run_dir)}, allow_val_change=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, key: str, rows: list[dict], step: int | None) -> None:
        import wandb

        columns = list(rows[0])
        self.run.log({key: wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        if preempted:
            self.run.mark_preempting()
        offline = self.run.settings.mode == "offline" or getattr(self.run, "offline", False)
        run_path = self.run.dir
        self.run.finish(exit_code=exit_code)
        if offline:
            log.info("W&B run saved offline; upload it with: wandb sync %s", os.path.dirname(run_path))


# ------------------------------------------------------------------------------ TensorBoard
class TensorBoardTracker:
    """Event files in `<run dir>/tensorboard/` (`tensorboard --logdir outputs`): every numeric
    metric as a scalar by step; the config, tables and the end-of-run summary as text. A resumed
    run purges the steps after its checkpoint."""

    def __init__(self, run_dir: str, config: dict, start_step: int = 0, subdir: str = "tensorboard"):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=os.path.join(run_dir, subdir), purge_step=start_step or None)
        self.step = start_step
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", start_step)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.step = max(self.step, step)

    def log_table(self, key: str, rows: list[dict], step: int | None) -> None:
        columns = list(rows[0])
        lines = [" | ".join(columns), " | ".join("---" for _ in columns)]
        lines += [" | ".join(str(r[c]).replace("|", "/").replace("\n", " ") for c in columns) for r in rows]
        self.writer.add_text(key, "\n".join(lines), self.step if step is None else step)

    def summary(self, values: dict[str, Any]) -> None:
        for key, value in _numbers(values).items():
            self.writer.add_scalar(key, value, self.step)

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        self.writer.close()


# ------------------------------------------------------------------------------ MLflow
def mlflow_key(name: str) -> str:
    """A metric or param name MLflow accepts (alphanumerics, `_ - . : /` and spaces): a group
    split's `=` becomes `:` (`eval/heated:True/after/rougeL`), anything else `_`."""
    return re.sub(r"[^\w\-.: /]", "_", name.replace("=", ":"))


class MLflowTracker:
    """An MLflow run: in a local store in the run dir (`mlflow.db`, artifacts in `mlflow/`) unless
    `tracking_uri` names another (a server, `sqlite:///...`); the experiment is `project`. Params
    are the run's flattened config; a resumed run continues the same MLflow run (`mlflow_run_id.txt`)."""

    ID_FILE = "mlflow_run_id.txt"

    def __init__(self, run_dir: str, config: dict, start_step: int = 0, tracking_uri: str | None = None,
                 project: str = "detox", name: str | None = None, group: str | None = None, tags: list[str] = ()):
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # their INFO lines (database migrations) on every start
            logging.getLogger(name).setLevel(logging.WARNING)
        local = tracking_uri is None
        uri = tracking_uri or f"sqlite:///{os.path.abspath(os.path.join(run_dir, 'mlflow.db'))}"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            project, artifact_location=f"file://{os.path.abspath(run_dir)}/mlflow" if local else None)
        sweep = sweep_context() or {}
        run_tags = {**{t: "" for t in tags}, **({"group": group or sweep["group"]} if group or sweep else {}),
                    "run_dir": os.path.abspath(run_dir)}

        def new_run() -> str:
            return self.client.create_run(experiment_id, run_name=name or sweep.get("name"), tags=run_tags).info.run_id

        self.run_id, created = _run_id(os.path.join(run_dir, self.ID_FILE), new_run)
        self.step = start_step
        if created:
            self._log_params(config)
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def _log_params(self, config: dict) -> None:
        from mlflow.entities import Param

        params = [Param(mlflow_key(k)[:250], json.dumps(v) if not isinstance(v, str) else v)
                  for k, v in _flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def log(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(mlflow_key(k), v, now, step) for k, v in _numbers(metrics).items()]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])
        self.step = max(self.step, step)

    def log_table(self, key: str, rows: list[dict], step: int | None) -> None:
        suffix = "" if step is None else f"_step{step}"
        self.client.log_dict(self.run_id, rows, f"tables/{mlflow_key(key).replace('/', '_')}{suffix}.json")

    def summary(self, values: dict[str, Any]) -> None:
        self.log(values, self.step)

    def finish(self, exit_code: int = 0, preempted: bool = False) -> None:
        status = "KILLED" if preempted else ("FINISHED" if exit_code == 0 else "FAILED")
        self.client.set_terminated(self.run_id, status)
