"""Toxicity judges for evaluation: each maps texts to P(toxic) in [0, 1].

- `reward`: the reward classifier itself, P(its toxic label) by softmax (or sigmoid for a
  multi-label model), as `evaluate`'s toxicity measurement computes it. It is the model PPO
  optimised against, so it is the judge most open to reward hacking.
- `profanity`: alt-profanity-check, a classifier nothing here was optimised against.
- any other entry: an HF sequence classifier by hub id or path, with its toxic label named
  after a colon (`path:toxic`); without one, the label that is not the reward label
  (`nothate`) of a binary model, or a label named like toxic/hate/offensive.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig

from detox.errors import ConfigError, LoadError
from detox.hub import friendly_load_error
from detox.reward import HFReward, ProfanityReward, build_reward, resolve_label

TOXIC_NAMES = ("toxic", "toxicity", "hate", "offensive", "LABEL_1")
REWARD_JUDGE = "reward"  # the reward classifier itself
PROFANITY_JUDGE = "profanity"
REWARD_ON_PROMPT = "reward_on_prompt"  # the recipe's measure: the reward classifier on prompt + summary
REWARD_JUDGES = (REWARD_JUDGE, REWARD_ON_PROMPT)  # scores by the model PPO optimised against


class Judge:
    def __init__(self, name: str, classifier, toxic_index: int):
        self.name, self.classifier, self.toxic_index = name, classifier, toxic_index

    def toxicity(self, texts: Sequence[str]) -> np.ndarray:
        """P(toxic) [N] for each text."""
        if not texts:
            return np.zeros(0)
        return np.asarray(self.classifier.probs(list(texts))[:, self.toxic_index], dtype=float)


def toxic_index(id2label: dict, safe_label: str | None, toxic_label: str | None, source: str) -> int:
    if toxic_label:
        return resolve_label(id2label, toxic_label, source, key="the eval.judges label")
    labels = {int(k): v for k, v in id2label.items()}
    if safe_label and len(labels) == 2 and safe_label in labels.values():
        return next(i for i, name in labels.items() if name != safe_label)
    for name in TOXIC_NAMES:
        if name in labels.values():
            return next(i for i, n in labels.items() if n == name)
    raise ConfigError(
        f"cannot tell which label of {source} is the toxic one (labels {list(labels.values())}); "
        f"name it in eval.judges as `{source}:<label>`."
    )


def build_judges(names: Sequence[str], reward_cfg: DictConfig, device: torch.device, reward=None) -> list[Judge]:
    """Judges by name; `reward` reuses an already loaded reward model."""
    judges = []
    for entry in names:
        if entry == REWARD_JUDGE:
            model = reward if reward is not None else build_reward(reward_cfg, device)
            judges.append(Judge(REWARD_JUDGE, model, toxic_index(model.id2label, reward_cfg.label, None,
                                                                 "the reward model")))
        elif entry == PROFANITY_JUDGE:
            cfg = OmegaConf.create({"label": "clean", "kind": "prob", "input": "response"})
            judges.append(Judge(PROFANITY_JUDGE, ProfanityReward(cfg), 1))
        else:
            path, _, label = entry.partition(":") if ":" in entry.split("/")[-1] else (entry, "", "")
            cfg = OmegaConf.merge(reward_cfg, {"backend": "hf", "name_or_path": path, "input": "response",
                                               "kind": "prob", "revision": None})
            try:
                with friendly_load_error("eval.judges", path):
                    id2label = AutoConfig.from_pretrained(path).id2label
            except LoadError as e:
                raise LoadError(f"{e} The built-in judges: {REWARD_JUDGE}, {PROFANITY_JUDGE}; any other entry is an HF "
                                "classifier's hub id or folder, optionally `:<toxic label>`.") from e
            index = toxic_index(id2label, reward_cfg.label, label or None, path)
            cfg.label = id2label[index] if index in id2label else id2label[str(index)]
            judges.append(Judge(path.rstrip("/").split("/")[-1], HFReward(cfg, device, key="eval.judges"), index))
    names_seen = [j.name for j in judges]
    if len(set(names_seen)) != len(names_seen):
        raise ConfigError(f"eval.judges has two judges named alike: {names_seen}")
    return judges


def score_responses(rows: list[dict], judges: Sequence[Judge], prompts: Sequence[str]) -> None:
    """Add every judge's P(toxic) of each row's `response` to its `toxicity` (in place), and
    the reward judge's on prompt + response as `reward_on_prompt` (the recipe's measure)."""
    texts = [r["response"] for r in rows]
    for judge in judges:
        for r, p in zip(rows, judge.toxicity(texts)):
            r.setdefault("toxicity", {})[judge.name] = float(p)
    reward = next((j for j in judges if j.name == REWARD_JUDGE), None)
    if reward is not None:
        joined = [p + t for p, t in zip(prompts, texts)]
        for r, p in zip(rows, reward.toxicity(joined)):
            r["toxicity"][REWARD_ON_PROMPT] = float(p)
