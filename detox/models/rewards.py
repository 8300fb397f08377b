"""The reward PPO optimises (`Reward`: its components' scores weighted, aggregated, clipped) and
its shipped classifier component (`Classifier`).

A component is any callable `component(prompts, responses, **columns)` returning one number per
response, built by `hydra.utils.instantiate` from its `reward.components.<name>` node (`weight`
and `normalize` are the reward's, not the component's). `Classifier` scores ONE named label
(`label`, e.g. `nothate`), resolved through the classifier's `id2label`, of an HF sequence
classifier (`backend: hf`) or of alt-profanity-check (`backend: profanity`). The recipe
(docs/design.md) instead took `pipeline(..., top_k=None)[0]["score"]`: the pipeline sorts labels
by score, so that was max(nothate, hate) and hateful text was rewarded too. Rule components are
in `detox/models/reward_rules.py`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from detox.config.schema import CLASSIFIER, REWARD_KEYS
from detox.config.validate import fold_reward_shorthand
from detox.core.errors import ConfigError, DetoxError, LoadError
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
    def logits(self, texts: list[str], cut_left: bool = False, pairs: list[str] | None = None) -> torch.Tensor:
        """Logits [B, num_labels]. cut_left: truncate from the LEFT, so for prompt + response
        the prompt's beginning goes and the response is always scored whole. pairs: each text's
        second text (a cross-encoder's), kept whole: only the first text is cut."""
        self.tokenizer.truncation_side = "left" if cut_left else "right"
        out = []
        for i in range(0, len(texts), self.batch_size):
            second = {"text_pair": pairs[i : i + self.batch_size]} if pairs is not None else {}
            batch = self.tokenizer(texts[i : i + self.batch_size], **second, padding=True,
                                   truncation="only_first" if pairs is not None else True,
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
    kind: the label's `logit`, `prob` or `logodds`. input: the classifier reads the `response`;
    `prompt_response` (prompt + response, the prompt cut from the left when too long); or `pair`:
    the dialogue as the text and the response as the text pair, as a cross-encoder or an NLI
    classifier reads two texts (the dialogue cut when too long, the response kept whole)."""

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
        """Scores [B] (float32, cpu) of each (prompt, response); `dialogue` (a column) for input=pair."""
        if self.input == "pair" and isinstance(self.model, HFClassifier):
            logits = self.model.logits([d or "" for d in columns["dialogue"]], pairs=list(responses))
            if self.kind == "logit":
                return logits[:, self.label_index]
            return from_probability(self.model.to_probs(logits)[:, self.label_index], self.kind)
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


class ComponentError(DetoxError, RuntimeError):
    """A reward component returned what a reward cannot be (the wrong number of scores, non-numbers,
    NaN at the first batch)."""


class RunningMoments:
    """Mean and variance of every score a component gave so far (Welford, float64): its scores,
    normalised, are on unit scale whatever its own."""

    def __init__(self):
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        n, mean, var = len(x), float(x.mean()), float(x.var(unbiased=False)) if len(x) else 0.0
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += var * n + delta**2 * self.count * n / total
        self.count = total

    def normalize(self, x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        std = (self.m2 / self.count) ** 0.5 if self.count > 1 else 1.0
        return ((x.double() - self.mean) / (std + eps)).to(x.dtype)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


@dataclass
class RewardScores:
    """total [B]: the reward (weighted, aggregated, clipped); components: each component's own
    score [B], before its weight and normalisation."""

    total: torch.Tensor
    components: dict[str, torch.Tensor]


class Reward:
    """The reward PPO optimises: each component's score of each response, normalised where asked,
    weighted, aggregated (`sum`, `min` or `mean`) and bounded by `clip` (old TRL's score_clip).

    components: name -> a callable `(prompts, responses, **columns)` returning one score per
    response; weights, normalize: per name."""

    def __init__(self, components: dict[str, Callable], weights: dict[str, float] | None = None,
                 normalize: dict[str, bool] | None = None, aggregate: str = "sum", clip: float | None = None):
        self.components, self.aggregate, self.clip = components, str(aggregate), clip
        self.weights = {name: float((weights or {}).get(name, 1.0)) for name in components}
        self.moments = {name: RunningMoments() for name, on in (normalize or {}).items() if on}
        self.calls = 0

    @property
    def classifier(self):
        """The first component that is a classifier (`probs`, `id2label`, `label`): the `reward` judge's."""
        return next((c for c in self.components.values() if all(hasattr(c, a) for a in ("probs", "id2label", "label"))),
                    None)

    def score(self, prompts: Sequence[str], responses: Sequence[str], **columns) -> RewardScores:
        """The reward [B] (float32, cpu) of each (prompt, response), and each component's score.
        `columns`: the batch's dataset columns (lists), for components that read them."""
        self.calls += 1
        raw = {name: self._call(name, component, prompts, responses, columns)
               for name, component in self.components.items()}
        weighted = []
        for name, scores in raw.items():
            if name in self.moments:
                self.moments[name].update(scores)
                scores = self.moments[name].normalize(scores)
            weighted.append(self.weights[name] * scores)
        stacked = torch.stack(weighted)
        total = {"sum": stacked.sum(0), "min": stacked.min(0).values, "mean": stacked.mean(0)}[self.aggregate]
        return RewardScores(total if self.clip is None else total.clamp(-self.clip, self.clip), raw)

    def _call(self, name: str, component: Callable, prompts, responses, columns: dict) -> torch.Tensor:
        out = component(prompts, responses, **columns)
        try:
            scores = (out.detach().cpu() if isinstance(out, torch.Tensor) else
                      torch.as_tensor(np.asarray(out, dtype=np.float64)))
        except (TypeError, ValueError) as e:
            raise ComponentError(f"reward component {name!r} returned something that is not numbers ({type(out).__name__}"
                                 f": {str(out)[:80]}); it must return one float per response.") from e
        if not scores.is_floating_point():
            scores = scores.double()
        if scores.shape != (len(responses),):
            raise ComponentError(f"reward component {name!r} returned {tuple(scores.shape)} scores for {len(responses)} "
                                 "responses; it must return one float per response.")
        if self.calls == 1 and not bool(torch.isfinite(scores).all()):
            raise ComponentError(f"reward component {name!r} returned NaN or inf at the first batch "
                                 f"({int((~torch.isfinite(scores)).sum())} of {len(scores)} scores); fix it, or drop it.")
        return scores.float()

    def state_dict(self) -> dict:
        """What a resumed run must continue from: the running normalisations, the batches scored."""
        return {"calls": self.calls, "moments": {name: m.state_dict() for name, m in self.moments.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.calls = (state or {}).get("calls", 0)
        for name, moments in (state or {}).get("moments", {}).items():
            if name in self.moments:
                self.moments[name].load_state_dict(moments)

    def describe(self) -> dict[str, Any]:
        """For results.json and the model card: every component's weight, and the aggregate."""
        return {"components": {n: {"weight": self.weights[n], "normalize": n in self.moments} for n in self.components},
                "aggregate": self.aggregate, "clip": self.clip}


def component_nodes(settings: DictConfig) -> dict[str, dict[str, Any]]:
    """Each component's node (the shipped classifier's where `_target_` is absent), resolved; the
    shorthand keys folded into the sole component first (what `validate` does; folding twice is a no-op)."""
    fold_reward_shorthand(settings)
    nodes = OmegaConf.to_container(settings.components, resolve=True, enum_to_str=True)
    return {name: {"_target_": CLASSIFIER, **node} for name, node in nodes.items()}


def build_component(name: str, node: dict[str, Any], place: Callable[[str | None], torch.device]) -> Callable:
    """A component from its node: a class is instantiated (on its device, when it takes one); a
    function is bound to the node's settings and called per batch."""
    node = {k: v for k, v in node.items() if k not in REWARD_KEYS}
    target = get_object(node["_target_"])
    key = f"reward.components.{name}"
    if not inspect.isclass(target):
        return build({**node, "_partial_": True}, key)
    parameters = inspect.signature(target).parameters
    extra = {"device": place(node.get("device"))} if "device" in parameters else {}
    if "key" in parameters:
        extra["key"] = key
    return build(node, key, **extra)


def build_reward(settings: DictConfig, place: Callable[[str | None], torch.device] | torch.device) -> Reward:
    """The reward of the `reward` node. place: a component's device setting (null: the policy's)
    to the device it runs on (or one device for all)."""
    if isinstance(place, torch.device):
        device = place
        place = lambda name: torch.device(name) if name else device  # noqa: E731
    nodes = component_nodes(settings)
    components = {name: build_component(name, node, place) for name, node in nodes.items()}
    return Reward(components, weights={n: node.get("weight", 1.0) for n, node in nodes.items()},
                  normalize={n: bool(node.get("normalize", False)) for n, node in nodes.items()},
                  aggregate=settings.aggregate, clip=settings.clip)


def check_reward_label(settings: DictConfig) -> None:
    """Resolve every classifier component's rewarded label from its config alone, before any weights load."""
    for name, node in component_nodes(settings).items():
        if node["_target_"] != CLASSIFIER:
            continue
        key = f"reward.components.{name}"
        label = node.get("label", "nothate")
        if node.get("backend", "hf") == "profanity":
            resolve_label(PROFANITY_LABELS, label, "alt-profanity-check", f"{key}.label")
            continue
        config = classifier_config(node["name_or_path"], node.get("revision"), f"{key}.name_or_path")
        resolve_label(config.id2label, label, node["name_or_path"], f"{key}.label")
