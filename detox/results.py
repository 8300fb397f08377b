"""`results.json`: the job summary a sweep reads (status, overrides, metrics, provenance)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib import metadata
from typing import Any

from detox.checkpoint import atomic_write_json

RESULTS_FILE = "results.json"
PACKAGES = ("detox", "torch", "transformers", "peft", "trl", "datasets", "hydra-core", "wandb",
            "alt-profanity-check", "rouge-score")


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


class Results:
    """Incrementally updated results.json (written atomically on every update)."""

    def __init__(self, run_dir: str, overrides: list[str], config: dict):
        self.path = os.path.join(run_dir, RESULTS_FILE)
        self.data: dict[str, Any] = {
            "status": "running", "overrides": overrides, "run_dir": os.path.abspath(run_dir),
            "started_at": now(), "config": config,
            "train": None, "eval": None, "provenance": None,
        }
        self.write()

    @classmethod
    def reopen(cls, run_dir: str) -> "Results":
        """The results.json of an existing run, to add to it (stage=eval)."""
        self = cls.__new__(cls)
        self.path = os.path.join(run_dir, RESULTS_FILE)
        self.data = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.data = json.load(f)
        return self

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def done(self, **fields: Any) -> None:
        self.update(**fields, status="done", finished_at=now())

    def failed(self, error: BaseException, **fields: Any) -> None:
        self.update(**fields, status="failed", error=f"{type(error).__name__}: {error}", finished_at=now())

    def write(self) -> None:
        atomic_write_json(self.path, self.data)
