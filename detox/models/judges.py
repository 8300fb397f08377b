"""Judges for evaluation: each has a `name`, and a `kind`: a `toxicity` judge maps texts to
P(toxic) in [0, 1]; a `score` judge (a rule or a function of the reward, by its component's name)
gives its own score. Every judge is called as `judge.scores(prompts, responses, **columns)`.

A judge is built by `hydra.utils.instantiate` from its node; `eval.judges` names them:
- `reward`: the reward classifier itself, P(its toxic label) by softmax (or sigmoid for a
  multi-label model), as `evaluate`'s toxicity measurement computes it. It is the model PPO
  optimised against, so it is the judge most open to reward hacking.
- `profanity`: alt-profanity-check, a classifier nothing here was optimised against.
- `hatesonar`: HateSonar (Davidson et al. 2017's hate / offensive / neither tweets; an ONNX
  model in the `hatesonar` wheel, `pip install 'detox[judges]'`), P(toxic) = 1 - P(neither).
- a reward component's name (`reward.components.<name>`): the component itself; a classifier
  component as a toxicity judge (P of its label that is not rewarded), any other as a score judge.
- any other entry: an HF sequence classifier by hub id or path, with its toxic label named
  after a colon (`path:toxic`); without one, the label that is not the reward label
  (`nothate`) of a binary model, or a label named like toxic/hate/offensive.
A built-in judge is one node in `BUILT_IN` (and its class, when it needs a new one).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from detox.config.schema import BUILT_IN_JUDGES
from detox.core.errors import ConfigError, LoadError
from detox.core.instantiate import build
from detox.models.rewards import (
    Classifier,
    Reward,
    classifier_config,
    component_nodes,
    resolve_label,
)
from detox.models.sonar import SonarClassifier

TOXIC_NAMES = ("toxic", "toxicity", "hate", "offensive", "LABEL_1")
REWARD_JUDGE, REWARD_ON_PROMPT, PROFANITY_JUDGE, SONAR_JUDGE = BUILT_IN_JUDGES
# REWARD_JUDGE: the reward's classifier itself; REWARD_ON_PROMPT: the recipe's measure, the reward
# classifier on prompt + summary
REWARD_JUDGES = (REWARD_JUDGE, REWARD_ON_PROMPT)  # scores by the model PPO optimised against
BUILT_IN: dict[str, dict[str, Any]] = {
    PROFANITY_JUDGE: {"_target_": "detox.models.judges.ClassifierJudge", "name": PROFANITY_JUDGE,
                      "backend": "profanity", "label": "offensive"},
    SONAR_JUDGE: {"_target_": "detox.models.judges.ClassifierJudge", "name": SONAR_JUDGE,
                  "backend": "hatesonar", "label": "hate_or_offensive"},
}


class Judge:
    """P(toxic) of texts: column `toxic_index` of `classifier.probs`."""

    kind = "toxicity"

    def __init__(self, name: str, classifier, toxic_index: int):
        self.name, self.classifier, self.toxic_index = name, classifier, toxic_index

    def toxicity(self, texts: Sequence[str]) -> np.ndarray:
        """P(toxic) [N] for each text."""
        if not texts:
            return np.zeros(0)
        return np.asarray(self.classifier.probs(list(texts))[:, self.toxic_index], dtype=float)

    def scores(self, prompts: Sequence[str], responses: Sequence[str], **columns) -> np.ndarray:
        return self.toxicity(responses)


class ScoreJudge:
    """A reward component that is not a classifier (a rule, a function), as a judge: its own score."""

    kind = "score"

    def __init__(self, name: str, component):
        self.name, self.component = name, component

    def scores(self, prompts: Sequence[str], responses: Sequence[str], **columns) -> np.ndarray:
        out = self.component(prompts, responses, **columns)
        return np.asarray(out.detach().cpu() if hasattr(out, "detach") else out, dtype=float)


def toxic_index(id2label: dict, safe_label: str | None, toxic_label: str | None, source: str) -> int:
    if toxic_label:
        return resolve_label(id2label, toxic_label, source, key="the eval.judges label")
    labels = {int(k): v for k, v in id2label.items()}
    if safe_label and len(labels) == 2 and safe_label in labels.values():
        return next(i for i, name in labels.items() if name != safe_label)
    for name in TOXIC_NAMES:
        if name in labels.values():
            return next(i for i, n in labels.items() if n == name)
    raise ConfigError(f"cannot tell which label of {source} is the toxic one (labels {list(labels.values())}); "
                      f"name it in eval.judges as `{source}:<label>`.")


class ClassifierJudge(Judge):
    """A classifier as a judge: `backend: profanity` or `hatesonar`, or `hf` with `name_or_path`; `label` names
    its toxic label (else found as `toxic_index` does, `safe_label` being the reward's label)."""

    def __init__(self, name: str, backend: str = "hf", name_or_path: str | None = None, label: str | None = None,
                 safe_label: str | None = None, batch_size: int = 16, max_length: int = 512,
                 device: torch.device | None = None):
        if backend == "profanity":
            classifier = Classifier("profanity", label="clean", kind="prob")
            index = resolve_label(classifier.id2label, label, "alt-profanity-check", key="the eval.judges label")
        elif backend == "hatesonar":
            classifier = SonarClassifier()
            index = resolve_label(classifier.id2label, label, "HateSonar", key="the eval.judges label")
        else:
            try:
                id2label = classifier_config(name_or_path, key="eval.judges").id2label
            except LoadError as e:
                raise LoadError(f"{e} The built-in judges: {REWARD_JUDGE}, {', '.join(BUILT_IN)}; any other entry is "
                                "an HF classifier's hub id or folder, optionally `:<toxic label>`.") from e
            index = toxic_index(id2label, safe_label, label, name_or_path)
            toxic = id2label[index] if index in id2label else id2label[str(index)]
            classifier = Classifier("hf", name_or_path, label=toxic, kind="prob", batch_size=batch_size,
                                    max_length=max_length, device=device, key="eval.judges")
        super().__init__(name, classifier, index)


def judge_node(entry: str, reward_settings: DictConfig) -> dict[str, Any]:
    """The node an `eval.judges` entry names: a built-in, or an HF classifier `path[:label]` (its
    batch size, length limit and safe label those of the reward's first classifier component)."""
    if entry in BUILT_IN:
        return dict(BUILT_IN[entry])
    path, _, label = entry.partition(":") if ":" in entry.split("/")[-1] else (entry, "", "")
    classifiers = [n for n in component_nodes(reward_settings).values() if n["_target_"].endswith("rewards.Classifier")]
    like = classifiers[0] if classifiers else {}
    return {"_target_": "detox.models.judges.ClassifierJudge", "name": path.rstrip("/").split("/")[-1],
            "backend": "hf", "name_or_path": path, "label": label or None, "safe_label": like.get("label", "nothate"),
            "batch_size": like.get("batch_size") or 16, "max_length": like.get("max_length") or 512}


def classifier_judge(name: str, classifier) -> Judge:
    """A classifier component as a toxicity judge: P of its label that is not rewarded."""
    return Judge(name, classifier, toxic_index(classifier.id2label, classifier.label, None, f"the reward's {name!r}"))


def component_judge(name: str, component) -> Judge | ScoreJudge:
    """A reward component as a judge (`optimised`: PPO optimised it, so it is open to hacking)."""
    is_classifier = all(hasattr(component, a) for a in ("probs", "id2label", "label"))
    judge = classifier_judge(name, component) if is_classifier else ScoreJudge(name, component)
    judge.optimised = True
    return judge


def reward_judge(reward: Reward) -> Judge:
    """The reward's (first) classifier component as the judge `reward`."""
    if reward.classifier is None:
        raise ConfigError(f"eval.judges has `{REWARD_JUDGE}`, but no component of the reward is a classifier (with "
                          "probs, id2label and its label); drop it from eval.judges, or name a component instead.")
    return classifier_judge(REWARD_JUDGE, reward.classifier)


def build_judges(names: Sequence[str], reward_settings: DictConfig, device: torch.device,
                 reward: Reward | None) -> list[Judge | ScoreJudge]:
    """Judges by name (`eval.judges`), `reward` being the run's own reward (None: not built, as
    when no judge is the reward's)."""
    def judge(name: str):
        if name == REWARD_JUDGE:
            return reward_judge(reward)
        if reward is not None and name in reward.components:
            return component_judge(name, reward.components[name])
        return build(judge_node(name, reward_settings), f"eval.judges={name}", device=device)

    judges = [judge(name) for name in names]
    seen = [j.name for j in judges]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"eval.judges has two judges named alike: {seen}")
    return judges


def score_responses(rows: list[dict], judges: Sequence[Judge | ScoreJudge], prompts: Sequence[str],
                    columns: dict[str, list] | None = None) -> None:
    """Add every toxicity judge's P(toxic) of each row's `response` to its `toxicity`, and every
    score judge's score to its `scores` (in place); and the reward judge's P(toxic) of prompt +
    response as `reward_on_prompt` (the recipe's measure). `columns`: the rows' dataset columns."""
    texts = [r["response"] for r in rows]
    columns = {**(columns or {}), "response_tokens": [r.get("length", 0) for r in rows]}
    for r in rows:
        r.setdefault("toxicity", {})
    for judge in judges:
        field = "toxicity" if judge.kind == "toxicity" else "scores"
        for r, p in zip(rows, judge.scores(prompts, texts, **columns)):
            r.setdefault(field, {})[judge.name] = float(p)
    reward = next((j for j in judges if j.name == REWARD_JUDGE), None)
    if reward is not None:
        joined = [p + t for p, t in zip(prompts, texts)]
        for r, p in zip(rows, reward.toxicity(joined)):
            r["toxicity"][REWARD_ON_PROMPT] = float(p)
