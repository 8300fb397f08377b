"""Reward hacking, watched during training: a judge's `val/<judge>/missed_rate` (the share of
validation responses the reward model passes that the judge flags) rising past its first value.

A policy that learns to avoid what the reward model sees, rather than toxicity, lowers the
reward model's toxic rate while the misses of an independent judge grow; so a rise of the
missed rate, read next to a rising `objective/kl`, is the early sign. The watch warns once per
judge and keeps the validation samples of that step for a look.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

from detox.core.atomic import atomic_write_jsonl

log = logging.getLogger(__name__)
SUFFIX = "/missed_rate"


def val_samples_file(step: int) -> str:
    return f"val-step-{step}.jsonl"


class MissedRateWatch:
    """Warns once per judge when `val/<judge>/missed_rate` exceeds its first value by more than
    `rise`; `history`: the run's earlier metric rows (a resumed run keeps its first values)."""

    def __init__(self, rise: float | None, out_dir: str, history: Iterable[dict] = ()):
        self.rise, self.out_dir = rise, out_dir
        self.first: dict[str, tuple[int, float]] = {}
        self.warned: set[str] = set()
        for row in history:
            self._first_values(row, row.get("step", 0))

    def _first_values(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            if key.startswith("val/") and key.endswith(SUFFIX) and value == value:  # not NaN
                self.first.setdefault(key, (step, float(value)))

    def __call__(self, metrics: dict[str, float], step: int, samples: list[dict]) -> list[str]:
        """Check one validation's metrics; returns the keys it warned about now."""
        self._first_values(metrics, step)
        if self.rise is None:
            return []
        risen = [k for k, (s0, v0) in self.first.items()
                 if k in metrics and k not in self.warned and metrics[k] - v0 > self.rise]
        if not risen:
            return []
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, val_samples_file(step))
        atomic_write_jsonl(path, samples)
        for key in risen:
            s0, v0 = self.first[key]
            judge = key[len("val/"):-len(SUFFIX)]
            log.warning("%s rose from %.3f (step %d) to %.3f at step %d, more than eval.missed_rate_rise=%s: `%s` flags "
                        "more of the responses the reward model passes, a sign of reward hacking (read it next to "
                        "objective/kl). The validation samples of step %d: %s", key, v0, s0, metrics[key], step, self.rise,
                        judge, step, path)
            self.warned.add(key)
        return risen
