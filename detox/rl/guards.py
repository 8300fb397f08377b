"""Divergence guards: when a PPO run skips an update, warns, or stops itself (`Diverged`).

- An update (a mini-batch's optimizer step) whose losses or gradient norm are not finite, or
  whose mean probability ratio exceeds `ppo.ratio_threshold`, is skipped; so are all of a
  step's updates when its rollout holds a non-finite reward, log-prob or value (counted as
  one skip). `ppo.guard.max_consecutive_skips` skips in a row stop the run.
- `objective/kl` above `ppo.kl.max` for `ppo.guard.patience` steps in a row stops the run.
- An entropy that falls below a fifth of the run's first step's, or rises above three times
  it, is warned once.
"""

from __future__ import annotations

import logging
import math

from omegaconf import DictConfig

from detox.core.errors import Diverged

log = logging.getLogger(__name__)

ENTROPY_COLLAPSE, ENTROPY_EXPLOSION = 0.2, 3.0


class DivergenceGuard:
    def __init__(self, ppo_cfg: DictConfig):
        self.max_skips = ppo_cfg.guard.max_consecutive_skips
        self.patience = ppo_cfg.guard.patience
        self.kl_max = ppo_cfg.kl.max
        self.consecutive_skips = 0
        self.kl_over = 0
        self.entropy_start: float | None = None
        self.entropy_warned = False
        self.last_good_checkpoint: str | None = None

    # ------------------------------------------------------------------ state for checkpoints
    def state_dict(self) -> dict:
        return {"consecutive_skips": self.consecutive_skips, "kl_over": self.kl_over,
                "entropy_start": self.entropy_start, "entropy_warned": self.entropy_warned}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    # ------------------------------------------------------------------ checks
    def updates(self, skipped: list[str | None], step: int) -> None:
        """One entry per update of a step, in order: None when it was applied, else why it was
        skipped. Warns once for the step; Diverged after too many skips in a row."""
        reasons = [r for r in skipped if r]
        if reasons:
            log.warning("step %d: skipped %d of %d updates: %s", step, len(reasons), len(skipped),
                        "; ".join(dict.fromkeys(reasons)))
        for reason in skipped:
            self.consecutive_skips = self.consecutive_skips + 1 if reason else 0
            if self.consecutive_skips >= self.max_skips:
                raise Diverged(f"{self.consecutive_skips} updates in a row were skipped (ppo.guard."
                               f"max_consecutive_skips={self.max_skips}); the last: {reason}", step,
                               self.last_good_checkpoint)

    def weights(self, finite: bool, step: int) -> None:
        if not finite:
            raise Diverged("the trainable weights are no longer finite", step, self.last_good_checkpoint)

    def metrics(self, metrics: dict[str, float], step: int) -> None:
        """After a step: the KL bound and the entropy's drift."""
        kl = metrics.get("objective/kl", math.nan)
        if self.kl_max is not None and (kl > self.kl_max or math.isnan(kl)):
            self.kl_over += 1
            if self.kl_over >= self.patience:
                raise Diverged(f"objective/kl = {kl:.4g} nats has been above ppo.kl.max={self.kl_max:g} for "
                               f"{self.kl_over} steps (ppo.guard.patience={self.patience}): the policy has "
                               "left the reference; lower ppo.learning_rate or raise ppo.kl.init_coef",
                               step, self.last_good_checkpoint)
        else:
            self.kl_over = 0
        entropy = metrics.get("objective/entropy")
        if entropy is None or not math.isfinite(entropy):
            return
        if self.entropy_start is None:
            self.entropy_start = entropy
        elif not self.entropy_warned and self.entropy_start > 0:
            ratio = entropy / self.entropy_start
            if ratio < ENTROPY_COLLAPSE or ratio > ENTROPY_EXPLOSION:
                self.entropy_warned = True
                log.warning("step %d: objective/entropy %.3f is %.2fx its value at the start (%.3f): the "
                            "policy is %s", step, entropy, ratio, self.entropy_start,
                            "collapsing onto few tokens" if ratio < 1 else "spreading towards noise")


def warn_if_kl_significantly_negative(k1_per_seq, step: int) -> None:
    """Sampling settings such as min_length bias the k1 estimate negative; only a mean beyond
    two standard errors below zero says the estimate (or the setup) is off. k1_per_seq: [B]."""
    n = len(k1_per_seq)
    if n < 2:
        return
    mean, se = float(k1_per_seq.mean()), float(k1_per_seq.std()) / math.sqrt(n)
    if mean < -2 * se and mean < -1e-3:
        log.warning(
            "step %d: mean KL %.3f is significantly negative (standard error %.3f). Logits "
            "processors such as generation.min_length / top_k / top_p sample from a different "
            "distribution than the policy's log-probs describe, which biases k1 below zero.",
            step, mean, se,
        )
