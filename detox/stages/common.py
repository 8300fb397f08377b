"""What every stage shares: the config as a dict, the resume decision, recording a job's end
(`JobRecord`), reading a finished run back (`load_run`), and the policy a run starts from."""

from __future__ import annotations

import contextlib
import logging
import os

from omegaconf import DictConfig, OmegaConf

from detox.algo import advantages
from detox.config.schema import typed_config
from detox.config.validate import validate
from detox.core.errors import CheckpointError, ConfigError, Interrupted, RunStopped
from detox.core.hub import looks_local
from detox.core.overrides import hydra_overrides, override_key, under
from detox.core.run_dir import FINAL_DIR, HYDRA_CONFIG
from detox.models.assembly import build_policy
from detox.models.policy import Policy
from detox.runtime.checkpoint import (
    fingerprint,
    fingerprint_diffs,
    latest_checkpoint,
    read_state,
    saved_step,
)
from detox.runtime.results import Results
from detox.runtime.run_lock import RunLock
from detox.runtime.tracking import Tracking

log = logging.getLogger(__name__)

# A re-evaluation (stage=eval/export) of a finished run takes these from its own command line;
# everything else comes from the run's saved config.
OWN_KEYS = ("eval", "device", "logger", "objective")


def config_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def should_resume(resume: str, run_dir: str, has_checkpoint: bool, holds_run: bool,
                  what: str = "checkpoint") -> bool:
    """Whether to continue the run in `run_dir`. resume=auto: when it has a checkpoint;
    resume=false: never, and a run dir that already holds a run is refused; resume=true: a
    checkpoint is required."""
    resume = str(resume).lower()
    if resume == "false" and holds_run:
        raise CheckpointError(f"run dir {run_dir} already holds a run and resume=false; use a new "
                              "hydra.run.dir, or resume=auto to continue it.")
    if resume == "true" and not has_checkpoint:
        raise CheckpointError(f"resume=true but run dir {run_dir} holds no {what}.")
    return resume != "false" and has_checkpoint


class JobRecord:
    """results.json and the tracker of one job, in the manner of lightning-hydra-template's
    `task_wrapper`: an exception inside `with JobRecord(results) as job:` marks results.json
    `failed` with the error (or `interrupted` / `diverged` for a run stopped on purpose), closes
    the tracker (`job.tracker`, once set) with a non-zero exit code, and propagates."""

    def __init__(self, results: Results):
        self.results = results
        self.tracker: Tracking | None = None

    def __enter__(self) -> "JobRecord":
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if isinstance(error, RunStopped):
            self.results.stopped(error)
        elif error is not None:
            self.results.failed(error)
        if error is not None and self.tracker is not None:
            self.tracker.finish(1, preempted=isinstance(error, Interrupted))
        return False


def finished_run_lock(cfg: DictConfig):
    """The lock of the run that stage=eval/export works on (a missing run dir: load_run says so)."""
    return RunLock(cfg.run_dir, str(cfg.stage)) if os.path.isdir(cfg.run_dir or "") else contextlib.nullcontext()


def load_run(cfg: DictConfig) -> tuple[DictConfig, str]:
    """A finished run's own config (with this command's `eval.*`, `device`, `logger.*` and
    `objective.*` overrides on top) and its checkpoint: `final/`, or with `allow_unfinished`
    the newest one. Errors before any model loads."""
    run_dir = cfg.run_dir
    if not os.path.isdir(run_dir):
        raise ConfigError(f"run_dir={run_dir!r} does not exist; pass the run dir of a finished run "
                          "(it holds .hydra/, metrics.jsonl, final/).")
    config_path = os.path.join(run_dir, HYDRA_CONFIG)
    if not os.path.exists(config_path):
        raise ConfigError(f"run_dir={run_dir!r} is not a detox run dir (no {HYDRA_CONFIG}).")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"run_dir={run_dir!r} holds no checkpoint (final/ or checkpoints/step-N/).")
    step = saved_step(checkpoint)
    if os.path.basename(checkpoint) != FINAL_DIR:
        if not cfg.allow_unfinished:
            raise CheckpointError(
                f"run_dir={run_dir!r} is unfinished: it has no final/, its newest checkpoint is step {step} "
                f"({checkpoint}). Finish the run (rerun its command with hydra.run.dir={run_dir}), or pass "
                "allow_unfinished=true to use that checkpoint.")
        log.warning("the run is unfinished: using its newest checkpoint, step %d (%s)", step, checkpoint)
    saved = OmegaConf.load(config_path)
    saved.output_dir = run_dir
    run_cfg = typed_config(saved)
    for key in map(override_key, hydra_overrides()):
        if under(key, OWN_KEYS):
            OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), merge=False)
    run_cfg.stage, run_cfg.run_dir = cfg.stage, run_dir
    validate(run_cfg)
    adapter = run_cfg.policy.adapter
    if adapter and looks_local(adapter) and not os.path.exists(adapter):
        raise ConfigError(f"the run's starting adapter policy.adapter={adapter!r} does not exist any more; "
                          "restore it to evaluate against the starting policy.")
    saved_fp = read_state(checkpoint).get("fingerprint")
    diffs = fingerprint_diffs(saved_fp, fingerprint(run_cfg)) if saved_fp else {}
    if diffs:
        raise CheckpointError(f"checkpoint {checkpoint} was not made with {config_path} (they differ in "
                              f"{', '.join(diffs)}); restore the config the run was trained with.")
    return run_cfg, checkpoint


def starting_policy(cfg: DictConfig) -> Policy:
    """The policy a run of `cfg` starts from (before any checkpoint loads), with a value head
    where its estimator uses one."""
    return build_policy(cfg.policy, cfg.lora, cfg.generation.temperature, value_head=has_critic(cfg))


def has_critic(cfg: DictConfig) -> bool:
    """Whether the run's advantage estimator uses a value head (a run from before the setting: GAE's)."""
    name = OmegaConf.select(cfg, "ppo.advantage")
    return advantages.ADVANTAGE_ESTIMATORS[getattr(name, "value", name) or "gae"].uses_values
