"""Stage entry points: config in, run dir out. Wiring only: they build the objects the lower
layers define and hand them to each other. Hydra-free, so tests can call them directly."""

from __future__ import annotations

import contextlib
import logging
import os

from omegaconf import DictConfig
from transformers import set_seed

from detox.atomic import cut_jsonl_after
from detox.checkpoint import latest_checkpoint, load_trained, saved_step
from detox.compute import apply_threads, enable_tf32
from detox.data import fit_prompts, load_splits
from detox.distributed import Distributed, resolve_device, use_main_run_dir
from detox.errors import CheckpointError, ConfigError, DetoxError
from detox.evaluation import Evaluator
from detox.export import export_info, run_evaluation, write_export
from detox.judges import build_judges
from detox.overrides import hydra_overrides, override_key
from detox.plots import plot_curves
from detox.policy import check_policy, count_parameters, load_tokenizer
from detox.preemption import StopSignals
from detox.report import example_rows, ranking_judge
from detox.results import Results, model_provenance, provenance
from detox.reward import build_reward, check_reward_label
from detox.run_dir import CURVES_FILE, EVAL_DIR, EXPORT_DIR, METRICS_FILE, ROLLOUTS_FILE
from detox.run_lock import RunLock
from detox.runs import JobRecord, config_dict, has_critic, load_run, should_resume, starting_policy
from detox.schema import Stage, validate
from detox.sft import run_sft
from detox.summarize import HYDRA_KEYS, Request, summarize
from detox.sweep import objective
from detox.tracking import Tracker, read_metrics
from detox.trainer import PPOTrainer

log = logging.getLogger("detox")


def run_stage(cfg: DictConfig):
    validate(cfg)
    apply_threads(cfg.threads)
    enable_tf32(resolve_device(cfg.device))
    stages = {Stage.ppo: run_ppo, Stage.sft: run_sft, Stage.eval: run_eval, Stage.export: run_export,
              Stage.generate: run_generate}
    return stages[cfg.stage](cfg)


# ------------------------------------------------------------------------------------ stage=ppo


def run_ppo(cfg: DictConfig) -> float | None:
    """Train, evaluate, and return the validation objective (what Hydra sweepers maximise).

    Under `accelerate launch` with several processes every process trains (data-parallel, see
    detox/distributed.py) in the main process's run dir; only the main one writes, logs and
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
        tracker = job.tracker = (Tracker(cfg.logger, run_dir, config, start_step=trainer.step)
                                 if dist.is_main else Tracker.muted())
        if evaluator and cfg.eval.every_n_steps and trainer.step == 0 and evaluator.val is not None:
            tracker.log(evaluator.periodic()[0], 0)  # the curves' starting point
        metrics = trainer.train(tracker, run_dir, evaluator, stop)
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


def build_ppo(cfg: DictConfig, dist: Distributed | None = None) -> tuple[PPOTrainer, Evaluator | None]:
    """The trainer, and the evaluator (None where eval is off, and on non-main processes)."""
    dist = dist or Distributed()
    set_seed(cfg.seed)  # the same on every process: the same starting weights
    device = dist.place(resolve_device(cfg.device))
    # Everything that can fail cheaply comes before the policy's weights load.
    splits = load_run_splits(cfg)
    check_policy(cfg.policy)
    check_reward_label(cfg.reward)
    tokenizer = load_tokenizer(cfg.policy)
    splits = fit_prompts(splits, tokenizer, cfg.data)
    reward_device = dist.place(resolve_device(cfg.reward.device)) if cfg.reward.device else device
    reward = build_reward(cfg.reward, reward_device)
    judges = (build_judges(cfg.eval.judges, cfg.reward, reward_device, reward=reward)
              if cfg.eval.enabled and dist.is_main else None)

    policy = starting_policy(cfg).to(device)
    trainable, total = count_parameters(*[m for m in (policy.model, policy.value_head) if m is not None])
    log.info("policy: %s trainable of %s parameters (%.2f%%)", f"{trainable:,}", f"{total:,}",
             100 * trainable / total)
    trainer = PPOTrainer(cfg, policy, tokenizer, reward, splits["train"], device, dist)
    evaluator = Evaluator(cfg, policy, tokenizer, judges, splits, device) if judges is not None else None
    return trainer, evaluator


def load_run_splits(cfg: DictConfig):
    """The data splits, with the columns evaluation reads (group, extra references) checked too."""
    extra = tuple(dict.fromkeys(c for c in [cfg.eval.group_by, *cfg.eval.reference_columns] if c)) if cfg.eval.enabled else ()
    splits = load_splits(cfg.data, extra_columns=extra)
    log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return splits


def finish_eval(cfg: DictConfig, evaluator: Evaluator, baseline: dict, run_dir: str, results: Results,
                tracker: Tracker) -> float | None:
    """The final report on the test split; validation figures and the objective for sweeps."""
    test, val, samples, paths = evaluator.final(baseline, os.path.join(run_dir, EVAL_DIR))
    score = objective(val, cfg.objective) if val else None
    results.update(eval=test, eval_val=val or None, objective=score)
    tracker.summary({**test, **{k.replace("eval/", "eval_val/", 1): v for k, v in val.items()}})
    tracker.log_table("eval/examples", example_rows(samples, ranking_judge(samples), cfg.eval.examples))
    log.info("evaluation report: %s", paths[2])
    return score


# ------------------------------------------------------------------------------ stage=eval/export


def _finished_run_lock(cfg: DictConfig):
    """The lock of the run that stage=eval/export works on (a missing run dir: load_run says so)."""
    return RunLock(cfg.run_dir, cfg.stage.value) if os.path.isdir(cfg.run_dir or "") else contextlib.nullcontext()


def run_eval(cfg: DictConfig) -> float | None:
    """Evaluate a finished run against its starting policy; rewrites `<run_dir>/eval/`."""
    with _finished_run_lock(cfg):
        return _run_eval(cfg)


def _run_eval(cfg: DictConfig) -> float | None:
    run_cfg, checkpoint = load_run(cfg)
    run_dir = cfg.run_dir
    device = resolve_device(run_cfg.device)
    set_seed(run_cfg.seed)
    splits = load_run_splits(run_cfg)
    reward = build_reward(run_cfg.reward, resolve_device(run_cfg.reward.device) if run_cfg.reward.device else device)
    judges = build_judges(run_cfg.eval.judges, run_cfg.reward, device, reward=reward)
    tokenizer = load_tokenizer(run_cfg.policy)
    splits = fit_prompts(splits, tokenizer, run_cfg.data)
    policy = starting_policy(run_cfg).to(device)
    evaluator = Evaluator(run_cfg, policy, tokenizer, judges, splits, device)
    baseline = evaluator.baseline(os.path.join(run_dir, EVAL_DIR))
    step = load_trained(checkpoint, policy)
    log.info("evaluating %s (step %d)", checkpoint, step)
    tracker = Tracker(run_cfg.logger, run_dir, config_dict(run_cfg), start_step=None)
    try:
        score = finish_eval(run_cfg, evaluator, baseline, run_dir, Results.reopen(run_dir), tracker)
    finally:
        tracker.finish(0)
    print(f"\ndetox: evaluated step {step} of {os.path.abspath(run_dir)}\n"
          "  eval/report.md, eval/report.json, eval/samples.jsonl, eval/toxicity_hist.png")
    return score


def run_export(cfg: DictConfig) -> None:
    """A finished run's policy as a model to ship, in `<run_dir>/export/` (detox/export.py)."""
    with _finished_run_lock(cfg):
        _run_export(cfg)


def _run_export(cfg: DictConfig) -> None:
    run_cfg, checkpoint = load_run(cfg)
    run_dir = cfg.run_dir
    if cfg.export.adapter_only and not run_cfg.lora.enabled:
        raise ConfigError(f"export.adapter_only=true, but run {run_dir} trained every weight (lora.enabled=false): "
                          "it has no adapter to export. Drop export.adapter_only to export the whole model.")
    policy = starting_policy(run_cfg)
    step = load_trained(checkpoint, policy)
    info = export_info(config_dict(run_cfg), run_dir, checkpoint, step, cfg.export.adapter_only,
                       Results.reopen(run_dir).data.get("provenance"))
    out = os.path.join(run_dir, EXPORT_DIR)
    files = write_export(out, policy, load_tokenizer(run_cfg.policy), info, *run_evaluation(run_dir))
    print(f"detox: exported step {step} of {os.path.abspath(run_dir)}"
          f"{'' if info['finished'] else ' (unfinished)'} to {os.path.abspath(out)}"
          f"{' (the LoRA adapter alone)' if info['adapter_only'] else ''}\n  {', '.join(files)}")


# ---------------------------------------------------------------------------------- stage=generate


def run_generate(cfg: DictConfig) -> None:
    """`detox-generate` from the Hydra command line: generate.* and data.dialogue_column / id_column;
    a plain model's prompt template and limits come from data.* / generation.*."""
    explicit = {override_key(o) for o in hydra_overrides()}
    generate = cfg.generate
    summarize(Request(
        model=generate.model or cfg.run_dir, input=generate.input, output=generate.output,
        column=cfg.data.dialogue_column, id_column=cfg.data.id_column, compare=generate.compare,
        judges=list(generate.judges), sample=generate.sample, seed=cfg.seed, batch_size=generate.batch_size,
        max_new_tokens=generate.max_new_tokens, device=cfg.device,
        prompt_template=cfg.data.prompt_template if "data.prompt_template" in explicit else None,
        max_input_tokens=cfg.data.max_input_tokens if "data.max_input_tokens" in explicit else None,
    ), command=cfg, keys=HYDRA_KEYS)
