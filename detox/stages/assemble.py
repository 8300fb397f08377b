"""The one place a stage's objects are built from a config, in one order, cheapest checks
first: the data splits, the policy's family (from its config alone), the reward's labels, the
tokenizer and fitted prompts, the reward (each component on its device), the judges, then the
starting policy's weights. stage=ppo adds the trainer and the evaluator; stage=eval the
evaluator; every builder hands each object only its own config nodes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from datasets import DatasetDict
from omegaconf import DictConfig
from transformers import PreTrainedTokenizerBase, set_seed

from detox.data.prompts import fit_prompts
from detox.data.splits import load_eval_set, load_splits
from detox.evaluation.evaluator import Evaluator
from detox.models.assembly import check_policy, load_tokenizer
from detox.models.judges import Judge, build_judges
from detox.models.policy import Policy, count_parameters
from detox.models.rewards import Reward, build_reward, check_reward_label
from detox.rl.trainer import PPOTrainer
from detox.runtime.checkpoint import fingerprint
from detox.runtime.distributed import Distributed, resolve_device
from detox.stages.common import starting_policy

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """What a stage runs on. judges: None where evaluation is off (and on the processes of a
    data-parallel run that are not the main one)."""

    splits: DatasetDict
    tokenizer: PreTrainedTokenizerBase
    reward: Reward
    judges: list[Judge] | None
    policy: Policy
    device: torch.device
    sets: DatasetDict = field(default_factory=DatasetDict)  # the extra eval sets (eval.sets) by name


def eval_columns(cfg: DictConfig) -> tuple[str, ...]:
    """The columns evaluation reads beside the data's (group, extra references)."""
    return tuple(dict.fromkeys(c for c in [cfg.eval.group_by, *cfg.eval.reference_columns] if c)) if cfg.eval.enabled else ()


def load_run_splits(cfg: DictConfig) -> DatasetDict:
    """The data splits, with the columns evaluation reads checked too."""
    splits = load_splits(cfg.data, extra_columns=eval_columns(cfg))
    log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return splits


def load_run_sets(cfg: DictConfig) -> DatasetDict:
    """The extra eval sets (none where evaluation is off)."""
    if not cfg.eval.enabled or not cfg.eval.sets:
        return DatasetDict()
    sets = DatasetDict({name: load_eval_set(name, node, cfg.data, eval_columns(cfg)) for name, node in cfg.eval.sets.items()})
    log.info("eval sets: %s", ", ".join(f"{k} {len(v)}" for k, v in sets.items()))
    return sets


def assemble(cfg: DictConfig, dist: Distributed | None = None, judges: bool = True) -> Parts:
    """Every object of a run of `cfg` (see the module docstring); `judges`: build the judges
    (when evaluation is on, on the main process)."""
    dist = dist or Distributed()
    set_seed(cfg.seed)  # the same on every process: the same starting weights
    device = dist.place(resolve_device(cfg.device))
    splits, sets = load_run_splits(cfg), load_run_sets(cfg)
    check_policy(cfg.policy)
    check_reward_label(cfg.reward)
    tokenizer = load_tokenizer(cfg.policy)
    splits = fit_prompts(splits, tokenizer, cfg.data)
    sets = fit_prompts(sets, tokenizer, cfg.data) if sets else sets
    def place(name: str | None) -> torch.device:  # a reward component's device setting (null: the policy's)
        return dist.place(resolve_device(name)) if name else device

    reward = build_reward(cfg.reward, place)
    # the judges beside the reward's (first) component
    judge_device = place(next(iter(cfg.reward.components.values())).get("device"))
    built_judges = build_judges(cfg.eval.judges, cfg.reward, judge_device, reward) if judges else None
    policy = starting_policy(cfg).to(device)
    trainable, total = count_parameters(*[m for m in (policy.model, policy.value_head) if m is not None])
    log.info("policy: %s trainable of %s parameters (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return Parts(splits, tokenizer, reward, built_judges, policy, device, sets)


def build_evaluator(cfg: DictConfig, parts: Parts) -> Evaluator:
    return Evaluator(parts.policy, parts.tokenizer, parts.judges, parts.splits, eval_cfg=cfg.eval,
                     generation=cfg.generation, data=cfg.data, seed=cfg.seed, device=parts.device,
                     starting_point=[cfg.policy.name_or_path, cfg.policy.adapter, str(cfg.policy.reference)],
                     sets=dict(parts.sets))


def build_trainer(cfg: DictConfig, parts: Parts, dist: Distributed | None = None) -> PPOTrainer:
    return PPOTrainer(parts.policy, parts.tokenizer, parts.reward, parts.splits["train"], ppo=cfg.ppo,
                      generation=cfg.generation, data=cfg.data, seed=cfg.seed, fingerprint=fingerprint(cfg),
                      device=parts.device, dist=dist)


def build_ppo(cfg: DictConfig, dist: Distributed | None = None) -> tuple[PPOTrainer, Evaluator | None]:
    """The trainer, and the evaluator (None where eval is off, and on non-main processes)."""
    dist = dist or Distributed()
    parts = assemble(cfg, dist, judges=cfg.eval.enabled and dist.is_main)
    trainer = build_trainer(cfg, parts, dist)
    return trainer, build_evaluator(cfg, parts) if parts.judges is not None else None
