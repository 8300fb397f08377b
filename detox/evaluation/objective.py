"""The sweep objective: what Hydra sweepers maximise, from one split's evaluation figures.
(`detox-sweep-summary`, which reads a whole sweep dir, is `detox/sweeps/summary.py`; a
multirun job's name and group are `detox/runtime/hydra_job.py`'s.)

The objective is computed on the VALIDATION split (`results.json` `eval_val`); the test split
(`eval`) is only reported beside it, never optimised.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from detox.config.schema import ObjectiveSettings

DEFAULT_OBJECTIVE = dataclasses.asdict(ObjectiveSettings())


def _get(cfg: Any, key: str) -> Any:
    return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)


def objective(metrics: Mapping[str, Any] | None, cfg: Any) -> float | None:
    """-(change in the judge's mean toxicity) - rouge_weight x (ROUGE-L drop, if any).

    `metrics`: the flat evaluation figures of ONE split (`eval/delta/<judge>/toxicity_mean`,
    `eval/before/rougeL`, `eval/after/rougeL`); `cfg`: `judge` and `rouge_weight` (the config's
    `objective` section, a dict or a dataclass). Higher is better; None when a figure is missing.
    """
    if not metrics:
        return None
    judge, weight = _get(cfg, "judge"), float(_get(cfg, "rouge_weight"))
    values = [metrics.get(k) for k in (f"eval/delta/{judge}/toxicity_mean", "eval/before/rougeL",
                                       "eval/after/rougeL")]
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        return None
    delta, before, after = values
    return float(-delta - weight * max(0.0, before - after))
