"""Stage entry points: config in, run dir out. Hydra-free, so tests can call them directly."""

from __future__ import annotations

import json
import logging
import os
import time

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from transformers import set_seed

from detox.checkpoint import (CheckpointError, atomic_write_json, latest_checkpoint, load_checkpoint,
                              load_trainable, read_state, save_checkpoint)
from detox.data import load_splits
from detox.policy import build_policy, count_parameters, load_tokenizer
from detox.results import Results, provenance
from detox.reward import build_reward, check_reward_label
from detox.schema import ConfigError, validate
from detox.tracking import Tracker, plot_curves, read_metrics
from detox.trainer import PPOTrainer

log = logging.getLogger("detox")
ROLLOUTS_FILE = "rollouts.jsonl"


def run_stage(cfg: DictConfig):
    validate(cfg)
    stage = cfg.stage.value
    if stage == "ppo":
        return run_ppo(cfg)
    if stage == "export":
        return run_export(cfg)
    if stage == "sft":
        from detox.sft import run_sft

        return run_sft(cfg)
    raise ConfigError(f"stage={stage} is not implemented yet; available: stage=ppo, stage=sft, stage=export.")


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


def run_ppo(cfg: DictConfig) -> float:
    run_dir = cfg.output_dir
    os.makedirs(run_dir, exist_ok=True)
    resume_from = _resume_point(cfg, run_dir)
    if cfg.eval.enabled:
        log.warning("the held-out evaluation (eval.*) is not built yet: this run trains and logs "
                    "training metrics only.")
    config = config_dict(cfg)
    results = Results(run_dir, hydra_overrides(), config)
    tracker = None
    try:
        trainer = build_ppo(cfg, resume_from)
        results.update(provenance=provenance(model_provenance(cfg, trainer.policy, trainer.reward)))
        tracker = trainer.tracker = Tracker(cfg.logger, run_dir, config, start_step=trainer.step)
        metrics = train_loop(cfg, trainer, tracker, run_dir)
        plot_curves(run_dir)
        results.update(status="done", train=metrics, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        tracker.summary({f"final/{k}": v for k, v in metrics.items()})
        tracker.finish(0)
    except BaseException as e:
        results.update(status="failed", error=f"{type(e).__name__}: {e}")
        if tracker is not None:
            tracker.finish(1)
        raise
    print(f"\ndetox: run dir {os.path.abspath(run_dir)}\n"
          "  metrics.jsonl, curves.png, rollouts.jsonl, results.json, final/adapter, final/value_head.safetensors")
    return metrics.get("env/reward_mean", float("nan"))


def build_ppo(cfg: DictConfig, resume_from: str | None) -> PPOTrainer:
    set_seed(cfg.seed)
    device = resolve_device(cfg.device)
    # Everything that can fail cheaply comes before any model weights load.
    extra = tuple(c for c in [cfg.eval.group_by, *cfg.eval.reference_columns] if c)
    splits = load_splits(cfg.data, extra_columns=extra)
    check_reward_label(cfg.reward)
    log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))

    tokenizer = load_tokenizer(cfg.policy)
    policy = build_policy(cfg.policy, cfg.lora).to(device)
    trainable, total = count_parameters(policy)
    log.info("policy: %s trainable of %s parameters (%.2f%%)", f"{trainable:,}", f"{total:,}",
             100 * trainable / total)
    reward_device = resolve_device(cfg.reward.device) if cfg.reward.device else device
    reward = build_reward(cfg.reward, reward_device)
    trainer = PPOTrainer(cfg, policy, tokenizer, reward, splits["train"], None, device)
    if resume_from:
        trainer.load_state(load_checkpoint(resume_from, policy, trainer.optimizer, fingerprint(cfg)))
        log.info("resumed from %s at step %d", resume_from, trainer.step)
    return trainer


def train_loop(cfg: DictConfig, trainer: PPOTrainer, tracker: Tracker, run_dir: str) -> dict:
    ppo_cfg = cfg.ppo
    metrics: dict = {}
    bar = tqdm(total=ppo_cfg.steps, initial=trainer.step, desc="PPO", unit="step", dynamic_ncols=True)
    while trainer.step < ppo_cfg.steps:
        metrics, rollout = trainer.train_step()
        trainer.step += 1
        tracker.log(metrics, trainer.step)
        _append_rollouts(run_dir, trainer.step, rollout)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['env/reward_mean']:.3f}", kl=f"{metrics['objective/kl']:.2f}",
                        len=f"{metrics['response/length_mean']:.1f}")
        if ppo_cfg.save_every and trainer.step % ppo_cfg.save_every == 0 and trainer.step < ppo_cfg.steps:
            save_checkpoint(os.path.join(run_dir, "checkpoints", f"step-{trainer.step}"), trainer.policy,
                            trainer.optimizer, {**trainer.state(), "fingerprint": fingerprint(cfg)})
    bar.close()
    if not metrics:  # resumed a run that had already finished its steps
        metrics = {k: v for k, v in (read_metrics(run_dir) or [{}])[-1].items() if k != "step"}
    save_checkpoint(os.path.join(run_dir, "final"), trainer.policy, trainer.optimizer,
                    {**trainer.state(), "fingerprint": fingerprint(cfg)})
    return metrics


def _append_rollouts(run_dir: str, step: int, r) -> None:
    """Every sampled response with its score and KL, so a user can read what PPO rewarded."""
    k1 = r.kl_per_seq.tolist()
    lengths = r.mask.sum(1).long().tolist()
    with open(os.path.join(run_dir, ROLLOUTS_FILE), "a") as f:
        for i in range(len(r.responses)):
            f.write(json.dumps({"step": step, "id": r.ids[i], "response": r.responses[i],
                                "score": float(r.scores[i]), "kl": k1[i], "length": lengths[i]}) + "\n")


def run_export(cfg: DictConfig) -> None:
    """Merge a finished run's adapter into its base model and save a plain HF model."""
    run_dir = cfg.run_dir
    config_path = os.path.join(run_dir, ".hydra", "config.yaml")
    if not os.path.exists(config_path):
        raise ConfigError(f"run_dir={run_dir!r} is not a detox run dir (no .hydra/config.yaml).")
    saved = OmegaConf.load(config_path)
    run_cfg = OmegaConf.create({"policy": OmegaConf.merge(cfg.policy, saved.policy),
                                "lora": OmegaConf.merge(cfg.lora, saved.lora)})
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"run_dir={run_dir!r} holds no checkpoint to export.")
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
