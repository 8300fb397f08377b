"""Rule-based reward components: no model, one score per response, called as every component is,
`rule(prompts, responses, **columns)` (the columns of the batch's dataset rows, `dialogue` and
`summary` under those names whatever the dataset calls them, and `response_tokens`, each
response's length in tokens). Each is named by `_target_` in a `reward.components.<name>` node,
whose other keys are its arguments:

    reward.components.length:    {_target_: detox.models.reward_rules.LengthPenalty, target: 26, per_token: 0.01}
    reward.components.blocklist: {_target_: detox.models.reward_rules.PhraseBlocklist, phrases: [idiot], penalty: 1}
    reward.components.rouge:     {_target_: detox.models.reward_rules.RougeToReference, column: summary_clean}
    reward.components.relevance: {_target_: detox.models.reward_rules.DialogueOverlap}
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from detox.algo.metrics import rouge
from detox.core.errors import ConfigError

WORD = re.compile(r"[a-z0-9']+")
# Words that say nothing about a dialogue's content (for DialogueOverlap).
STOPWORDS = frozenset("""a an the and or but if of to in on at for with from by as is are was were be been it its
this that these those he she they we you i me my your our their his her them us not no so do does did will would can
could should have has had about into than then there here what which who whom when where why how all any some""".split())


class LengthPenalty:
    """-per_token x |length - target|: a summary's length in tokens (EOS included) held near
    `target`, so that neither emptying nor padding a summary pays."""

    def __init__(self, target: int, per_token: float = 0.01):
        if target <= 0 or per_token < 0:
            raise ConfigError(f"LengthPenalty needs target > 0 and per_token >= 0 (got {target}, {per_token}).")
        self.target, self.per_token = target, per_token

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], *, response_tokens: Sequence[int],
                 **columns) -> np.ndarray:
        return -self.per_token * np.abs(np.asarray(response_tokens, dtype=float) - self.target)


class PhraseBlocklist:
    """-penalty for each occurrence of a listed phrase (case-insensitive, whole words)."""

    def __init__(self, phrases: Sequence[str], penalty: float = 1.0):
        phrases = [p for p in phrases if p and p.strip()]
        if not phrases:
            raise ConfigError("PhraseBlocklist needs phrases: a list of words or phrases to penalise.")
        self.penalty = penalty
        self.pattern = re.compile(r"\b(" + "|".join(re.escape(p.strip()) for p in phrases) + r")\b", re.IGNORECASE)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], **columns) -> np.ndarray:
        return np.array([-self.penalty * len(self.pattern.findall(r)) for r in responses], dtype=float)


class RougeToReference:
    """ROUGE (F-measure, rouge-score, stemmed) of each response against the row's reference in
    `column` (the data's `summary`, or another column such as the bundled `summary_clean`)."""

    def __init__(self, column: str = "summary", variant: str = "rougeL"):
        if variant not in ("rouge1", "rouge2", "rougeL"):
            raise ConfigError(f"RougeToReference variant={variant!r} is unknown: use rouge1, rouge2 or rougeL.")
        self.column, self.variant = column, variant

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], **columns) -> np.ndarray:
        if self.column not in columns:
            raise ConfigError(f"RougeToReference reads the column {self.column!r}, which the data does not have "
                              f"(it has {sorted(columns)}); set its `column`.")
        references = [r or "" for r in columns[self.column]]
        return rouge(list(responses), references)[self.variant]


class DialogueOverlap:
    """Relevance to the dialogue, read from the (dialogue, summary) pair without a model: the share
    of a summary's content words that occur in its dialogue (0 for an empty summary). A summary
    that invents what the dialogue does not say scores lower."""

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], *, dialogue: Sequence[str],
                 **columns) -> np.ndarray:
        scores = []
        for text, source in zip(responses, dialogue):
            words = [w for w in WORD.findall(text.lower()) if w not in STOPWORDS]
            known = set(WORD.findall((source or "").lower()))
            scores.append(sum(w in known for w in words) / len(words) if words else 0.0)
        return np.array(scores, dtype=float)
