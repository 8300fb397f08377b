"""`results.json`: the job summary a sweep reads (status, overrides, metrics, provenance)."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import time
from importlib import metadata
from typing import Any

from omegaconf import DictConfig

from detox.core.atomic import atomic_write_json
from detox.core.errors import RunStopped
from detox.core.run_dir import RESULTS_FILE

log = logging.getLogger(__name__)
PACKAGES = ("detox", "torch", "transformers", "peft", "trl", "datasets", "hydra-core", "wandb", "tensorboard",
            "mlflow-skinny", "alt-profanity-check", "rouge-score")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def git_sha() -> str | None:
    for where in (os.getcwd(), os.path.dirname(os.path.abspath(__file__))):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                 text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    return None


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(models: dict[str, Any]) -> dict[str, Any]:
    return {"git_sha": git_sha(), "packages": package_versions(), "python": platform.python_version(),
            "host": platform.node(), "models": models}


def model_provenance(cfg: DictConfig, policy_model_config, reward=None) -> dict:
    """Names and hub revisions of the policy (and, given the run's reward, its components, their
    weights and the aggregate) a run used."""
    def revision(model_config):
        return getattr(model_config, "_commit_hash", None)

    models = {"policy": {"name_or_path": cfg.policy.name_or_path, "revision": cfg.policy.revision,
                         "commit": revision(policy_model_config), "adapter": cfg.policy.adapter}}
    if reward is not None:
        described = reward.describe()
        for name, component in reward.components.items():
            hf_model = getattr(component, "hf_model", None)  # alt-profanity-check, rules and functions have none
            described["components"][name].update(
                target=cfg.reward.components[name].get("_target_"), backend=getattr(component, "backend", None),
                name_or_path=getattr(component, "name_or_path", None), label=getattr(component, "label", None),
                commit=revision(hf_model.config) if hf_model is not None else None)
        models["reward"] = described
    return models


class Results:
    """Incrementally updated results.json (written atomically on every update). `path=None`
    (`Results.muted()`): keeps the fields and writes nothing, for the processes of a
    data-parallel run that are not the main one."""

    def __init__(self, run_dir: str, overrides: list[str], config: dict, resumed_from_step: int | None = None):
        """resumed_from_step: this job continues the run from a checkpoint of that step: the
        first start time is kept and the resume is recorded under `resumes`."""
        self.path: str | None = os.path.join(run_dir, RESULTS_FILE)
        previous = Results.reopen(run_dir).data if resumed_from_step is not None else {}
        self.data: dict[str, Any] = {
            "status": "running", "overrides": overrides, "run_dir": os.path.abspath(run_dir),
            "started_at": previous.get("started_at") or now(), "config": config,
            "train": None, "eval": None, "provenance": None,
        }
        if resumed_from_step is not None:
            self.data["resumes"] = [*previous.get("resumes", []), {"at": now(), "from_step": resumed_from_step}]
        self.write()

    @classmethod
    def reopen(cls, run_dir: str) -> "Results":
        """The results.json of an existing run, to add to it (stage=eval)."""
        self = cls.__new__(cls)
        self.path = os.path.join(run_dir, RESULTS_FILE)
        self.data = {}
        if os.path.exists(self.path):
            try:
                with open(self.path) as f:
                    self.data = json.load(f)
            except ValueError:
                pass  # damaged: start it afresh
        return self

    @classmethod
    def muted(cls) -> "Results":
        self = cls.__new__(cls)
        self.path, self.data = None, {}
        return self

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def done(self, **fields: Any) -> None:
        self.update(**fields, status="done", finished_at=now())

    def failed(self, error: BaseException, **fields: Any) -> None:
        self.update(**fields, status="failed", error=f"{type(error).__name__}: {error}", finished_at=now())

    def stopped(self, stop: RunStopped) -> None:
        """An early end on purpose: `interrupted` (a signal) or `diverged`, with its facts."""
        self.update(**stop.record(), status=stop.status, finished_at=now())

    def write(self) -> None:
        if self.path is None:
            return
        try:
            atomic_write_json(self.path, self.data)
        except OSError as e:  # a full or read-only disk must not hide the error that is being recorded
            log.warning("could not write %s: %s", self.path, e)
