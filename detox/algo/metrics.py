"""Pure functions the evaluation report is computed from.

Everything takes plain arrays/strings so that a report can be recomputed from
`eval/samples.jsonl` alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from rouge_score import rouge_scorer

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-example ROUGE F-measures (rouge-score, stemmed), {key: [N]}."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions vs {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {k: np.array([s[k].fmeasure for s in scores]) for k in ROUGE_KEYS}


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct n-grams / all n-grams over the whole set (a degeneration check); nan if none."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def resample_indices(n: int, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """[resamples, n] indices of n items drawn with replacement: one bootstrap resample a row."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_ci(values: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` [N] (paired differences for a change)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    means = values[resample_indices(len(values), resamples, seed)].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_change(before: np.ndarray, after: np.ndarray, **ci_kwargs) -> dict[str, float]:
    """Mean change after - before over the same prompts, its CI, and the relative change."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if before.shape != after.shape:
        raise ValueError(f"paired arrays differ in shape: {before.shape} vs {after.shape}")
    delta = after - before
    low, high = bootstrap_ci(delta, **ci_kwargs)
    base = before.mean() if len(before) else float("nan")
    return {"delta": float(delta.mean()) if len(delta) else float("nan"), "ci_low": low, "ci_high": high,
            "relative": float(delta.mean() / base) if base else float("nan")}


def _ratios(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """sum(num) / sum(den) over each resample (a row of `idx`); nan where a resample's den is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return num[idx].sum(1) / den[idx].sum(1)


def _nan_interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    alpha = (1 - level) / 2
    return float(np.nanquantile(stats, alpha)), float(np.nanquantile(stats, 1 - alpha))


def ratio_ci(num: np.ndarray, den: np.ndarray, level: float = 0.95, resamples: int = 2000,
             seed: int = 0) -> tuple[float, float, float]:
    """sum(num) / sum(den) of per-prompt counts [N] (a rate over a subset of responses, such as
    the share of the responses one judge passes that another flags), and its percentile bootstrap
    CI with prompts resampled. nan when den sums to 0."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if den.sum() == 0:
        return float("nan"), float("nan"), float("nan")
    ratios = _ratios(num, den, resample_indices(len(num), resamples, seed))
    return (float(num.sum() / den.sum()), *_nan_interval(ratios, level))


def paired_ratio_change(before: tuple[np.ndarray, np.ndarray], after: tuple[np.ndarray, np.ndarray],
                        level: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """The change after - before of a `ratio_ci` rate, each a (num [N], den [N]) over the same
    prompts, with a paired bootstrap CI (the same prompts resampled for both)."""
    (n0, d0), (n1, d1) = [(np.asarray(n, dtype=float), np.asarray(d, dtype=float)) for n, d in (before, after)]
    if d0.sum() == 0 or d1.sum() == 0:
        return {"delta": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    idx = resample_indices(len(n0), resamples, seed)
    low, high = _nan_interval(_ratios(n1, d1, idx) - _ratios(n0, d0, idx), level)
    return {"delta": float(n1.sum() / d1.sum() - n0.sum() / d0.sum()), "ci_low": low, "ci_high": high}


def exact_sequence_kl(logits: torch.Tensor, ref_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum over response positions of the exact KL(policy || ref) over the whole
    vocabulary: logits, ref_logits [B, T, V], mask [B, T] -> [B] (fp32).

    Unlike the sampled k1 estimate this is >= 0 per token, and 0 exactly when the two
    next-token distributions agree along the evaluated responses.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref = torch.log_softmax(ref_logits.float(), dim=-1)
    per_token = (logp.exp() * (logp - ref)).sum(-1)
    return (per_token * mask.to(per_token.dtype)).sum(-1)
