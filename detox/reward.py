"""Reward models: an HF sequence classifier, or alt-profanity-check, behind one interface.

The reward is the score of ONE named label (`reward.label`, e.g. `nothate`), resolved through
the classifier's `id2label`. The recipe (docs/design.md) instead took `pipeline(..., top_k=None)[0]["score"]`:
the pipeline sorts labels by score, so that was max(nothate, hate) and hateful text was
rewarded too.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from detox.errors import ConfigError, LoadError
from detox.hub import friendly_load_error, model_kind

PROFANITY_LABELS = {0: "clean", 1: "offensive"}


class RewardModel(Protocol):
    id2label: dict[int, str]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """Rewards [B] (float32, cpu) for each (prompt, response)."""

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities [B, num_labels] of each text."""


def resolve_label(id2label: dict, label: str, source: str, key: str = "reward.label") -> int:
    """Index of `label` in `id2label` (keys may be ints or strings, as configs store them)."""
    matches = [int(i) for i, name in id2label.items() if name == label]
    if not matches:
        names = [id2label[k] for k in sorted(id2label, key=int)]
        raise ConfigError(
            f"{key}={label!r} is not a label of {source}; its labels are {names}. "
            f"Set {key} to one of them."
        )
    return matches[0]


def from_probability(p: torch.Tensor, kind: str) -> torch.Tensor:
    """A probability of the rewarded label as the configured kind (logit and logodds coincide)."""
    if kind == "prob":
        return p
    p = p.clamp(1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p)


class HFReward:
    """A transformers sequence classifier, batched, no-grad, eval mode."""

    def __init__(self, cfg: DictConfig, device: torch.device, key: str = "reward.name_or_path"):
        self.cfg, self.device = cfg, device
        with friendly_load_error(key, cfg.name_or_path):
            config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision)
        check_classifier(config, cfg.name_or_path, key)
        self.id2label = {int(k): v for k, v in config.id2label.items()}
        self.label_index = resolve_label(self.id2label, cfg.label, cfg.name_or_path)
        self.multi_label = config.problem_type == "multi_label_classification"
        with friendly_load_error(key, cfg.name_or_path):
            self.tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision)
            self.model, info = AutoModelForSequenceClassification.from_pretrained(
                cfg.name_or_path, revision=cfg.revision, output_loading_info=True
            )
        if info["missing_keys"]:  # transformers would initialise them at random, with a muted warning
            raise LoadError(f"{key}={cfg.name_or_path!r} has no trained classification head (its checkpoint lacks "
                            f"{', '.join(sorted(info['missing_keys'])[:3])}): it would score with random weights. "
                            "Use a fine-tuned sequence classifier.")
        self.model.to(device).eval().requires_grad_(False)
        model_max = getattr(config, "max_position_embeddings", None)
        # RoBERTa's positions start after the padding index: 514 embeddings hold 512 tokens.
        limit = model_max - 2 if model_max and config.model_type in ("roberta", "xlm-roberta") else model_max
        self.max_length = min(cfg.max_length, limit) if limit else cfg.max_length

    @torch.no_grad()
    def _logits(self, texts: list[str], cut_left: bool = False) -> torch.Tensor:
        """Logits [B, num_labels]. cut_left: truncate from the LEFT, so for prompt + response
        the prompt's beginning goes and the response is always scored whole."""
        self.tokenizer.truncation_side = "left" if cut_left else "right"
        out = []
        for i in range(0, len(texts), self.cfg.batch_size):
            batch = self.tokenizer(
                texts[i : i + self.cfg.batch_size], padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            out.append(self.model(**batch).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.id2label))

    def _to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        if self.cfg.input == "prompt_response":
            logits = self._logits([p + r for p, r in zip(prompts, responses)], cut_left=True)
        else:
            logits = self._logits(list(responses))
        if self.cfg.kind == "logit":
            return logits[:, self.label_index]
        return from_probability(self._to_probs(logits)[:, self.label_index], self.cfg.kind)

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        return self._to_probs(self._logits(list(texts))).numpy()


class ProfanityReward:
    """alt-profanity-check's offensive-language classifier (shipped in its wheel, offline)."""

    id2label = PROFANITY_LABELS

    def __init__(self, cfg: DictConfig):
        from profanity_check import predict_prob

        self.cfg, self._predict_prob = cfg, predict_prob
        self.label_index = resolve_label(self.id2label, cfg.label, "alt-profanity-check")

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        offensive = np.asarray(self._predict_prob(list(texts)), dtype=np.float64) if texts else np.zeros(0)
        return np.stack([1 - offensive, offensive], axis=-1)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        texts = responses
        if self.cfg.input == "prompt_response":
            texts = [p + r for p, r in zip(prompts, responses)]
        p = torch.tensor(self.probs(texts)[:, self.label_index], dtype=torch.float32)
        # A logistic model: its logit of a label is the log-odds.
        return from_probability(p, "prob" if self.cfg.kind == "prob" else "logodds")


def check_reward_label(cfg: DictConfig) -> None:
    """Resolve the label from the model's config alone, before any weights load."""
    if cfg.backend == "profanity":
        resolve_label(PROFANITY_LABELS, cfg.label, "alt-profanity-check")
        return
    with friendly_load_error("reward.name_or_path", cfg.name_or_path):
        config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision)
    check_classifier(config, cfg.name_or_path)
    resolve_label(config.id2label, cfg.label, cfg.name_or_path)


def check_classifier(config, name: str, key: str = "reward.name_or_path") -> None:
    """A reward model or judge must be a sequence classifier (by its config's architecture)."""
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise LoadError(f"{key}={name!r} is a {model_kind(config)}, not a sequence classifier; the reward model "
                        "must be a trained text classifier (e.g. facebook/roberta-hate-speech-dynabench-r4-target).")


def build_reward(cfg: DictConfig, device: torch.device) -> RewardModel:
    if cfg.backend == "profanity":
        return ProfanityReward(cfg)
    return HFReward(cfg, device)

