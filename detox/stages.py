"""Stage entry points: config in, run dir out. Hydra-free, so tests can call them directly."""

from __future__ import annotations

import json
import logging
import os

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import set_seed

from detox.checkpoint import (CheckpointError, atomic_write_json, latest_checkpoint, load_checkpoint,
                              load_trainable, read_state, save_checkpoint)
from detox.data import load_splits
from detox.distributed import Distributed, use_main_run_dir
from detox.evaluation import Evaluator
from detox.hub import looks_local
from detox.judges import build_judges
from detox.policy import build_policy, count_parameters, load_tokenizer
from detox.results import Results, provenance
from detox.reward import build_reward, check_reward_label
from detox.report import example_rows, ranking_judge
from detox.schema import Config, ConfigError, validate
from detox.tracking import Tracker, plot_curves, read_metrics
from detox.trainer import PPOTrainer

log = logging.getLogger("detox")
ROLLOUTS_FILE = "rollouts.jsonl"
DISTRIBUTED_FILE = "distributed.json"


def run_stage(cfg: DictConfig):
    validate(cfg)
    stage = cfg.stage.value
    if stage == "ppo":
        return run_ppo(cfg)
    if stage == "export":
        return run_export(cfg)
    if stage == "eval":
        return run_eval(cfg)
    if stage == "sft":
        from detox.sft import run_sft

        return run_sft(cfg)
    raise ConfigError(f"stage={stage} is unknown; use stage=ppo, sft, eval or export.")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def config_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def hydra_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not running under Hydra (tests call the stages directly)
        return []


def fingerprint(cfg: DictConfig) -> dict:
    """What a checkpoint must agree on with the config that resumes it."""
    return {"policy": cfg.policy.name_or_path, "adapter": cfg.policy.adapter,
            "reference": cfg.policy.reference.value, "lora": json.dumps(config_dict(cfg.lora), sort_keys=True)}


def _resume_point(cfg: DictConfig, run_dir: str) -> str | None:
    resume = str(cfg.resume).lower()
    checkpoint = latest_checkpoint(run_dir)
    if resume == "false" and (checkpoint or os.path.exists(os.path.join(run_dir, "metrics.jsonl"))):
        raise CheckpointError(
            f"run dir {run_dir} already holds a run and resume=false; use a new hydra.run.dir, or "
            "resume=auto to continue it."
        )
    if resume == "true" and checkpoint is None:
        raise CheckpointError(f"resume=true but run dir {run_dir} holds no checkpoint.")
    return checkpoint if resume != "false" else None


def model_provenance(cfg: DictConfig, policy, reward) -> dict:
    def revision(model_config):
        return getattr(model_config, "_commit_hash", None)

    reward_model = getattr(reward, "model", None)
    return {
        "policy": {"name_or_path": cfg.policy.name_or_path, "revision": cfg.policy.revision,
                   "commit": revision(policy.config), "adapter": cfg.policy.adapter},
        "reward": {"backend": cfg.reward.backend.value, "name_or_path": cfg.reward.name_or_path,
                   "label": cfg.reward.label,
                   "commit": revision(reward_model.config) if reward_model is not None else None},
    }


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


class _Muted:
    """Results / Tracker stand-in on the processes that do not write."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _run_ppo(cfg: DictConfig, dist: Distributed) -> float | None:
    run_dir = dist.broadcast_object(cfg.output_dir)
    if run_dir != cfg.output_dir:  # this process's Hydra dir resolved ${now:...} a second apart
        use_main_run_dir(cfg.output_dir, run_dir)
        cfg.output_dir = run_dir
    os.makedirs(run_dir, exist_ok=True)
    resume_from = dist.broadcast_object(_resume_point(cfg, run_dir) if dist.is_main else None)
    config = config_dict(cfg)
    results = Results(run_dir, hydra_overrides(), config) if dist.is_main else _Muted()
    tracker = None
    try:
        trainer, evaluator = build_ppo(cfg, dist)
        results.update(provenance=provenance(model_provenance(cfg, trainer.policy, trainer.reward)))
        # The starting policy is evaluated before any checkpoint loads (cached for resumes).
        baseline = evaluator.baseline(os.path.join(run_dir, "eval")) if evaluator else None
        if resume_from:
            trainer.load_state(load_checkpoint(resume_from, trainer.policy, trainer.optimizer, fingerprint(cfg)))
            log.info("resumed from %s at step %d", resume_from, trainer.step)
        tracker = trainer.tracker = (Tracker(cfg.logger, run_dir, config, start_step=trainer.step)
                                     if dist.is_main else _Muted())
        if evaluator and cfg.eval.every_n_steps and trainer.step == 0 and evaluator.val is not None:
            tracker.log(evaluator.periodic()[0], 0)  # the curves' starting point
        metrics = train_loop(cfg, trainer, tracker, run_dir, evaluator)
        if not dist.is_main:
            return None
        plot_curves(run_dir)
        results.update(train=metrics)
        objective = None
        if evaluator:
            objective = finish_eval(cfg, evaluator, baseline, run_dir, results, tracker)
        results.done()
        tracker.summary({f"final/{k}": v for k, v in metrics.items()})
        tracker.finish(0)
    except BaseException as e:
        results.failed(e)
        if tracker is not None:
            tracker.finish(1)
        raise
    print(f"\ndetox: run dir {os.path.abspath(run_dir)}\n"
          "  metrics.jsonl, curves.png, rollouts.jsonl, results.json, final/adapter, final/value_head.safetensors"
          + ("\n  eval/report.md, eval/report.json, eval/samples.jsonl, eval/toxicity_hist.png" if cfg.eval.enabled else ""))
    return objective


def finish_eval(cfg: DictConfig, evaluator: Evaluator, baseline: dict, run_dir: str, results: Results,
                tracker: Tracker) -> float | None:
    """The final report on the test split; validation figures and the objective for sweeps."""
    test, val, samples, paths = evaluator.final(baseline, os.path.join(run_dir, "eval"))
    score = validation_objective(val, cfg.objective)
    results.update(eval=test, eval_val=val or None, objective=score)
    tracker.summary({**test, **{k.replace("eval/", "eval_val/", 1): v for k, v in val.items()}})
    tracker.log_table("eval/examples", example_rows(samples, ranking_judge(samples), cfg.eval.examples))
    log.info("evaluation report: %s", paths[2])
    return score


def validation_objective(val: dict, objective_cfg: DictConfig) -> float | None:
    if not val:
        return None
    from detox.sweep import objective

    return objective(val, objective_cfg)


def build_ppo(cfg: DictConfig, dist: Distributed | None = None) -> tuple[PPOTrainer, Evaluator | None]:
    """The trainer, and the evaluator (None where eval is off, and on non-main processes)."""
    dist = dist or Distributed()
    set_seed(cfg.seed)  # the same on every process: the same starting weights
    device = dist.place(resolve_device(cfg.device))
    # Everything that can fail cheaply comes before the policy's weights load.
    splits = load_run_splits(cfg)
    check_reward_label(cfg.reward)
    reward_device = dist.place(resolve_device(cfg.reward.device)) if cfg.reward.device else device
    reward = build_reward(cfg.reward, reward_device)
    judges = (build_judges(cfg.eval.judges, cfg.reward, reward_device, reward=reward)
              if cfg.eval.enabled and dist.is_main else None)

    tokenizer = load_tokenizer(cfg.policy)
    policy = build_policy(cfg.policy, cfg.lora).to(device)
    trainable, total = count_parameters(policy.model, policy.value_head)
    log.info("policy: %s trainable of %s parameters (%.2f%%)", f"{trainable:,}", f"{total:,}",
             100 * trainable / total)
    trainer = PPOTrainer(cfg, policy, tokenizer, reward, splits["train"], None, device, dist)
    evaluator = Evaluator(cfg, policy, tokenizer, judges, splits, device) if judges is not None else None
    return trainer, evaluator


def load_run_splits(cfg: DictConfig):
    extra = tuple(dict.fromkeys(c for c in [cfg.eval.group_by, *cfg.eval.reference_columns] if c))
    splits = load_splits(cfg.data, extra_columns=extra)
    log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return splits


def train_loop(cfg: DictConfig, trainer: PPOTrainer, tracker: Tracker, run_dir: str,
               evaluator: Evaluator | None = None) -> dict:
    ppo_cfg, dist = cfg.ppo, trainer.dist
    every = cfg.eval.every_n_steps if evaluator is not None and evaluator.val is not None else 0
    metrics: dict = {}
    bar = tqdm(total=ppo_cfg.steps, initial=trainer.step, desc="PPO", unit="step", dynamic_ncols=True,
               disable=not dist.is_main)
    while trainer.step < ppo_cfg.steps:
        metrics, rollout = trainer.train_step()
        trainer.step += 1
        if every and trainer.step % every == 0:
            val_metrics, table = evaluator.periodic()
            metrics = {**metrics, **val_metrics}
            tracker.log_table("val/samples", table, trainer.step)
        tracker.log(metrics, trainer.step)
        _append_rollouts(run_dir, trainer.step, rollout, dist)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['env/reward_mean']:.3f}", kl=f"{metrics['objective/kl']:.2f}",
                        len=f"{metrics['response/length_mean']:.1f}")
        if ppo_cfg.save_every and trainer.step % ppo_cfg.save_every == 0 and trainer.step < ppo_cfg.steps:
            _save(cfg, trainer, os.path.join(run_dir, "checkpoints", f"step-{trainer.step}"))
    bar.close()
    if not metrics:  # resumed a run that had already finished its steps
        metrics = {k: v for k, v in (read_metrics(run_dir) or [{}])[-1].items() if k != "step"}
    dist.record(os.path.join(run_dir, DISTRIBUTED_FILE), trainer.rank_report, steps=trainer.step,
                batch_size_per_process=ppo_cfg.batch_size, global_batch_size=ppo_cfg.batch_size * dist.world_size)
    _save(cfg, trainer, os.path.join(run_dir, "final"))
    return metrics


def _save(cfg: DictConfig, trainer: PPOTrainer, path: str) -> None:
    state = {**trainer.state(), "fingerprint": fingerprint(cfg)}  # data-parallel: every process's
    if trainer.dist.is_main:
        save_checkpoint(path, trainer.policy, trainer.optimizer, state)


def _append_rollouts(run_dir: str, step: int, r, dist: Distributed) -> None:
    """Every sampled response with its score and KL, so a user can read what PPO rewarded
    (data-parallel: every process's, written by the main one, with the sampling `rank`)."""
    k1 = r.kl_per_seq.tolist()
    lengths = r.mask.sum(1).long().tolist()
    rows = [{"step": step, "id": r.ids[i], "response": r.responses[i], "score": float(r.scores[i]),
             "kl": k1[i], "length": lengths[i], **({} if r.rank is None else {"rank": r.rank})}
            for i in range(len(r.responses))]
    if dist.enabled:
        rows = [row for part in dist.gather_object(rows) for row in part]
        if not dist.is_main:
            return
    with open(os.path.join(run_dir, ROLLOUTS_FILE), "a") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def load_run(cfg: DictConfig) -> tuple[DictConfig, str]:
    """A finished run's own config (with this command's `eval.*`, `device` and `logger.*`
    overrides on top) and its newest checkpoint. Errors before any model loads."""
    run_dir = cfg.run_dir
    if not os.path.isdir(run_dir):
        raise ConfigError(f"run_dir={run_dir!r} does not exist; pass the run dir of a finished run "
                          "(it holds .hydra/, metrics.jsonl, final/).")
    config_path = os.path.join(run_dir, ".hydra", "config.yaml")
    if not os.path.exists(config_path):
        raise ConfigError(f"run_dir={run_dir!r} is not a detox run dir (no .hydra/config.yaml).")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"run_dir={run_dir!r} holds no checkpoint (final/ or checkpoints/step-N/).")
    saved = OmegaConf.load(config_path)
    saved.output_dir = run_dir
    run_cfg = OmegaConf.merge(OmegaConf.structured(Config), {k: v for k, v in saved.items() if k != "hydra"})
    for override in hydra_overrides():  # this command's own eval/device/logger choices win
        key = override.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0] in ("eval", "device", "logger", "objective"):
            OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), merge=False)
    run_cfg.stage, run_cfg.run_dir = cfg.stage, run_dir
    validate(run_cfg)
    adapter = run_cfg.policy.adapter
    if adapter and looks_local(adapter) and not os.path.exists(adapter):
        raise ConfigError(f"the run's starting adapter policy.adapter={adapter!r} does not exist any more; "
                          "restore it to evaluate against the starting policy.")
    saved_fp = read_state(checkpoint).get("fingerprint")
    diffs = [k for k, v in fingerprint(run_cfg).items() if saved_fp and saved_fp.get(k) != v]
    if diffs:
        raise CheckpointError(f"checkpoint {checkpoint} was not made with {config_path} (they differ in "
                              f"{', '.join(diffs)}); restore the config the run was trained with.")
    return run_cfg, checkpoint


def run_eval(cfg: DictConfig) -> float | None:
    """Evaluate a finished run against its starting policy; rewrites `<run_dir>/eval/`."""
    run_cfg, checkpoint = load_run(cfg)
    run_dir = cfg.run_dir
    device = resolve_device(run_cfg.device)
    set_seed(run_cfg.seed)
    splits = load_run_splits(run_cfg)
    reward = build_reward(run_cfg.reward, resolve_device(run_cfg.reward.device) if run_cfg.reward.device else device)
    judges = build_judges(run_cfg.eval.judges, run_cfg.reward, device, reward=reward)
    tokenizer = load_tokenizer(run_cfg.policy)
    policy = build_policy(run_cfg.policy, run_cfg.lora).to(device)  # the starting policy
    evaluator = Evaluator(run_cfg, policy, tokenizer, judges, splits, device)
    baseline = evaluator.baseline(os.path.join(run_dir, "eval"))
    state = read_state(checkpoint)
    load_trainable(checkpoint, state, policy)
    log.info("evaluating %s (step %d)", checkpoint, state["step"])
    results = Results.reopen(run_dir)
    tracker = Tracker(run_cfg.logger, run_dir, config_dict(run_cfg), start_step=None)
    try:
        score = finish_eval(run_cfg, evaluator, baseline, run_dir, results, tracker)
    finally:
        tracker.finish(0)
    print(f"\ndetox: evaluated step {state['step']} of {os.path.abspath(run_dir)}\n"
          "  eval/report.md, eval/report.json, eval/samples.jsonl, eval/toxicity_hist.png")
    return score


def run_export(cfg: DictConfig) -> None:
    """Merge a finished run's adapter into its base model and save a plain HF model."""
    run_cfg, checkpoint = load_run(cfg)
    run_dir = cfg.run_dir
    policy = build_policy(run_cfg.policy, run_cfg.lora)
    state = read_state(checkpoint)
    load_trainable(checkpoint, state, policy)
    model = policy.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload(adapter_names=list(model.active_adapters))
    out = os.path.join(run_dir, "export")
    model.save_pretrained(out)
    load_tokenizer(run_cfg.policy).save_pretrained(out)
    atomic_write_json(os.path.join(out, "detox_export.json"), {"checkpoint": checkpoint, "step": state["step"]})
    print(f"detox: exported step {state['step']} of {run_dir} to {out}")
