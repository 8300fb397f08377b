"""stage=ppo: train a policy with PPO (or a critic-free estimator), evaluate it against its
starting policy, and return the validation objective that Hydra sweepers maximise. Wiring only:
the objects come from `detox.stages.assemble`, the loop is `detox.rl.trainer`'s."""

from __future__ import annotations

import contextlib
import logging
import os

from omegaconf import DictConfig

from detox.core.atomic import cut_jsonl_after
from detox.core.errors import CheckpointError, DetoxError
from detox.core.overrides import hydra_overrides
from detox.core.run_dir import CURVES_FILE, EVAL_DIR, METRICS_FILE, ROLLOUTS_FILE
from detox.evaluation.plots import plot_curves
from detox.runtime.checkpoint import latest_checkpoint, saved_step
from detox.runtime.distributed import Distributed, resolve_device, use_main_run_dir
from detox.runtime.preemption import StopSignals
from detox.runtime.results import Results, model_provenance, provenance
from detox.runtime.run_lock import RunLock
from detox.runtime.tracking import Tracking, read_metrics
from detox.stages.assemble import build_ppo
from detox.stages.common import JobRecord, config_dict, has_critic, should_resume
from detox.stages.evaluate import finish_eval

log = logging.getLogger("detox")


def run_ppo(cfg: DictConfig) -> float | None:
    """Train, evaluate, and return the validation objective (what Hydra sweepers maximise).

    Under `accelerate launch` with several processes every process trains (data-parallel, see
    detox/runtime/distributed.py) in the main process's run dir; only the main one writes, logs and
    evaluates."""
    dist = Distributed.start(resolve_device(cfg.device))
    try:
        return _run_ppo(cfg, dist)
    finally:
        dist.close()


def _resume_point(cfg: DictConfig, run_dir: str) -> str | None:
    checkpoint = latest_checkpoint(run_dir)
    holds_run = checkpoint is not None or os.path.exists(os.path.join(run_dir, METRICS_FILE))
    return checkpoint if should_resume(cfg.resume, run_dir, checkpoint is not None, holds_run) else None


def _run_ppo(cfg: DictConfig, dist: Distributed) -> float | None:
    run_dir = dist.broadcast_object(cfg.output_dir)
    if run_dir != cfg.output_dir:  # this process's Hydra dir resolved ${now:...} a second apart
        use_main_run_dir(cfg.output_dir, run_dir)
        cfg.output_dir = run_dir
    os.makedirs(run_dir, exist_ok=True)
    # One process per run dir: the main one holds the lock for the whole group.
    lock = RunLock(run_dir, "ppo") if dist.is_main else contextlib.nullcontext()
    with lock, StopSignals() as stop:
        resume_from, error = None, None
        if dist.is_main:
            try:
                resume_from = _resume_point(cfg, run_dir)
            except DetoxError as e:
                error = e
        resume_from, message = dist.broadcast_object((resume_from, str(error) if error else None))
        if error is not None:
            raise error
        if message is not None:
            raise CheckpointError(f"on the main process: {message}")
        return _train_and_evaluate(cfg, dist, run_dir, resume_from, stop)


def _train_and_evaluate(cfg: DictConfig, dist: Distributed, run_dir: str, resume_from: str | None,
                        stop: StopSignals) -> float | None:
    config = config_dict(cfg)
    results = (Results(run_dir, hydra_overrides(), config, saved_step(resume_from) if resume_from else None)
               if dist.is_main else Results.muted())
    with JobRecord(results) as job:
        trainer, evaluator = build_ppo(cfg, dist)
        results.update(provenance=provenance(model_provenance(cfg, trainer.policy.config, trainer.reward)))
        # The starting policy is evaluated before any checkpoint loads (cached for resumes).
        baseline = evaluator.baseline(os.path.join(run_dir, EVAL_DIR)) if evaluator else None
        if resume_from:
            changed = trainer.resume(resume_from, list(cfg.resume_allow))
            stop.step = trainer.step
            log.info("resumed from %s at step %d", resume_from, trainer.step)
            if dist.is_main:
                cut_jsonl_after(os.path.join(run_dir, ROLLOUTS_FILE), trainer.step)
            if changed and dist.is_main:
                log.warning("resume_allow: from step %d on, %s", trainer.step,
                            "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
                results.data["resumes"][-1]["changed"] = {k: list(v) for k, v in changed.items()}
                results.write()
        tracker = job.tracker = (Tracking(cfg.logger, run_dir, config, start_step=trainer.step)
                                 if dist.is_main else Tracking.muted())
        validate = None
        if evaluator is not None and evaluator.val is not None:
            evaluator.watch_missed_rate(os.path.join(run_dir, EVAL_DIR), read_metrics(run_dir) or [])
            validate = lambda: evaluator.periodic(trainer.step)  # noqa: E731
        if validate and cfg.eval.every_n_steps and trainer.step == 0:
            tracker.log(validate()[0], 0)  # the curves' starting point
        metrics = trainer.train(tracker, run_dir, validate, cfg.eval.every_n_steps, stop)
        if not dist.is_main:
            return None
        plot_curves(read_metrics(run_dir), os.path.join(run_dir, CURVES_FILE))
        results.update(train=metrics)
        score = finish_eval(cfg, evaluator, baseline, run_dir, results, tracker) if evaluator else None
        results.done()
        tracker.summary({f"final/{k}": v for k, v in metrics.items()})
        tracker.finish(0)
    print(f"\ndetox: run dir {os.path.abspath(run_dir)}\n"
          "  metrics.jsonl, curves.png, rollouts.jsonl, results.json, final/adapter"
          + (", final/value_head.safetensors" if has_critic(cfg) else "")
          + ("\n  eval/report.md, eval/report.json, eval/samples.jsonl, eval/toxicity_hist.png" if cfg.eval.enabled else ""))
    return score
