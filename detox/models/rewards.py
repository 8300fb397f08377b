"""The reward: a component built by `hydra.utils.instantiate` from the `reward` node, and the
reward as a whole (`Reward`: what the rollout calls, with `reward.clip`).

A component is any object called as `component(prompts, responses)` that returns one float per
response (a [B] tensor). The shipped one is `Classifier`: the score of ONE named label
(`reward.label`, e.g. `nothate`), resolved through the classifier's `id2label`, of an HF
sequence classifier (`backend: hf`) or of alt-profanity-check (`backend: profanity`). The recipe
(docs/design.md) instead took `pipeline(..., top_k=None)[0]["score"]`: the pipeline sorts labels
by score, so that was max(nothate, hate) and hateful text was rewarded too.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from detox.config.schema import REWARD_KEYS
from detox.core.errors import ConfigError, LoadError
from detox.core.hub import friendly_load_error, model_kind
from detox.core.instantiate import build

PROFANITY_LABELS = {0: "clean", 1: "offensive"}


def resolve_label(id2label: dict, label: str, source: str, key: str = "reward.label") -> int:
    """Index of `label` in `id2label` (keys may be ints or strings, as configs store them)."""
    matches = [int(i) for i, name in id2label.items() if name == label]
    if not matches:
        names = [id2label[k] for k in sorted(id2label, key=int)]
        raise ConfigError(f"{key}={label!r} is not a label of {source}; its labels are {names}. "
                          f"Set {key} to one of them.")
    return matches[0]


def from_probability(p: torch.Tensor, kind: str) -> torch.Tensor:
    """A probability of the rewarded label as the configured kind (logit and logodds coincide)."""
    if kind == "prob":
        return p
    p = p.clamp(1e-7, 1 - 1e-7)
    return torch.log(p) - torch.log1p(-p)


def check_classifier(config, name: str, key: str = "reward.name_or_path") -> None:
    """A reward model or judge must be a sequence classifier (by its config's architecture)."""
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise LoadError(f"{key}={name!r} is a {model_kind(config)}, not a sequence classifier; the reward model "
                        "must be a trained text classifier (e.g. facebook/roberta-hate-speech-dynabench-r4-target).")


def classifier_config(name_or_path: str, revision: str | None = None, key: str = "reward.name_or_path"):
    """An HF classifier's config, read (and checked to be a sequence classifier) before weights load."""
    with friendly_load_error(key, name_or_path):
        config = AutoConfig.from_pretrained(name_or_path, revision=revision)
    check_classifier(config, name_or_path, key)
    return config


class HFClassifier:
    """A transformers sequence classifier, batched, no-grad, eval mode: logits and probabilities."""

    def __init__(self, name_or_path: str, revision: str | None, batch_size: int, max_length: int,
                 device: torch.device, key: str = "reward.name_or_path"):
        config = classifier_config(name_or_path, revision, key)
        self.id2label = {int(k): v for k, v in config.id2label.items()}
        self.multi_label = config.problem_type == "multi_label_classification"
        self.batch_size, self.device = batch_size, device
        with friendly_load_error(key, name_or_path):
            self.tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
            self.model, info = AutoModelForSequenceClassification.from_pretrained(
                name_or_path, revision=revision, output_loading_info=True)
        if info["missing_keys"]:  # transformers would initialise them at random, with a muted warning
            raise LoadError(f"{key}={name_or_path!r} has no trained classification head (its checkpoint lacks "
                            f"{', '.join(sorted(info['missing_keys'])[:3])}): it would score with random weights. "
                            "Use a fine-tuned sequence classifier.")
        self.model.to(device).eval().requires_grad_(False)
        model_max = getattr(config, "max_position_embeddings", None)
        # RoBERTa's positions start after the padding index: 514 embeddings hold 512 tokens.
        limit = model_max - 2 if model_max and config.model_type in ("roberta", "xlm-roberta") else model_max
        self.max_length = min(max_length, limit) if limit else max_length

    @torch.no_grad()
    def logits(self, texts: list[str], cut_left: bool = False) -> torch.Tensor:
        """Logits [B, num_labels]. cut_left: truncate from the LEFT, so for prompt + response
        the prompt's beginning goes and the response is always scored whole."""
        self.tokenizer.truncation_side = "left" if cut_left else "right"
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            out.append(self.model(**batch).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.id2label))

    def to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)

    def probs(self, texts: Sequence[str], cut_left: bool = False) -> np.ndarray:
        return self.to_probs(self.logits(list(texts), cut_left)).numpy()


class ProfanityClassifier:
    """alt-profanity-check's offensive-language classifier (shipped in its wheel, offline): a
    logistic model, so its logit of a label is the log-odds."""

    id2label = PROFANITY_LABELS

    def __init__(self):
        from profanity_check import predict_prob

        self._predict_prob = predict_prob

    def probs(self, texts: Sequence[str], cut_left: bool = False) -> np.ndarray:
        offensive = np.asarray(self._predict_prob(list(texts)), dtype=np.float64) if texts else np.zeros(0)
        return np.stack([1 - offensive, offensive], axis=-1)


class Classifier:
    """The shipped reward component: a text classifier's score of one named label.

    backend: `hf` (`name_or_path`, a sequence classifier) or `profanity` (alt-profanity-check).
    kind: the label's `logit`, `prob` or `logodds`. input: the classifier reads the `response`,
    or `prompt_response` (prompt + response, the prompt cut from the left when too long)."""

    def __init__(self, backend: str = "hf", name_or_path: str | None = None, revision: str | None = None,
                 label: str = "nothate", kind: str = "logit", input: str = "response", batch_size: int = 16,
                 max_length: int = 512, device: torch.device | str | None = None, key: str = "reward"):
        self.backend, self.kind, self.input, self.name_or_path = str(backend), str(kind), str(input), name_or_path
        if self.backend == "profanity":
            self.model = ProfanityClassifier()
            source = "alt-profanity-check"
        else:
            self.model = HFClassifier(name_or_path, revision, batch_size, max_length, torch.device(device or "cpu"),
                                      f"{key}.name_or_path")
            source = name_or_path
        self.id2label = self.model.id2label
        self.label, self.label_index = label, resolve_label(self.id2label, label, source, f"{key}.label")

    def texts(self, prompts: Sequence[str], responses: Sequence[str]) -> list[str]:
        if self.input == "prompt_response":
            return [p + r for p, r in zip(prompts, responses)]
        return list(responses)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], **columns) -> torch.Tensor:
        """Scores [B] (float32, cpu) of each (prompt, response)."""
        texts, cut_left = self.texts(prompts, responses), self.input == "prompt_response"
        if isinstance(self.model, HFClassifier):
            logits = self.model.logits(texts, cut_left)
            if self.kind == "logit":
                return logits[:, self.label_index]
            return from_probability(self.model.to_probs(logits)[:, self.label_index], self.kind)
        p = torch.tensor(self.model.probs(texts)[:, self.label_index], dtype=torch.float32)
        return from_probability(p, "prob" if self.kind == "prob" else "logodds")

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        """Class probabilities [B, num_labels] of each text (what a judge reads)."""
        return self.model.probs(texts)

    @property
    def hf_model(self):
        """The transformers classifier (its config names the revision); None for alt-profanity-check."""
        return getattr(self.model, "model", None)


class Reward:
    """The reward PPO optimises: its component's score of each response, bounded by `clip`
    (old TRL's score_clip) when set."""

    def __init__(self, component: Callable[..., torch.Tensor], clip: float | None = None):
        self.component, self.clip = component, clip

    def score(self, prompts: Sequence[str], responses: Sequence[str], **columns) -> torch.Tensor:
        """Rewards [B] (float32, cpu) for each (prompt, response)."""
        scores = torch.as_tensor(self.component(prompts, responses, **columns)).float()
        return scores if self.clip is None else scores.clamp(-self.clip, self.clip)


def component_node(settings: DictConfig) -> dict[str, Any]:
    """The reward component's own node: `reward` without the keys of the reward as a whole."""
    node = OmegaConf.to_container(settings, resolve=True, enum_to_str=True)
    return {k: v for k, v in node.items() if k not in REWARD_KEYS}


def check_reward_label(settings: DictConfig) -> None:
    """Resolve the rewarded label from the classifier's config alone, before any weights load."""
    if settings.backend == "profanity":
        resolve_label(PROFANITY_LABELS, settings.label, "alt-profanity-check")
        return
    config = classifier_config(settings.name_or_path, settings.revision)
    resolve_label(config.id2label, settings.label, settings.name_or_path)


def build_reward(settings: DictConfig, device: torch.device) -> Reward:
    """The reward of the `reward` node: its component instantiated on `device`, and its clip."""
    return Reward(build(component_node(settings), "reward", device=device), settings.clip)
