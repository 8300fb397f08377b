"""What one PPO step logs about its rollout and its advantages (the metric names of the README):
the reward and each of its components' own score, the KL and its coefficient, entropy, response
lengths, the advantages before whitening, the value head's fit, and with k responses per prompt
the spread within a prompt."""

from __future__ import annotations

import torch

from detox.algo.advantages import group_moments
from detox.algo.losses import explained_variance
from detox.algo.masked import masked_mean, masked_var
from detox.rl.rollout import Rollout
from detox.rl.update import Advantages


def rollout_metrics(r: Rollout, adv: Advantages, scores: torch.Tensor, components: dict[str, torch.Tensor],
                    kl_mean: float, eos_token_id: int | list[int], samples_per_prompt: int) -> dict[str, float]:
    """`scores` [N], each reward component's own `components` [N] and `kl_mean`: the global
    batch's (every process's, data-parallel)."""
    mask = r.mask
    lengths = mask.sum(1)
    last = r.batch.response_ids.gather(1, (lengths.long() - 1).clamp(min=0)[:, None]).squeeze(1)
    ended = torch.isin(last, torch.as_tensor(eos_token_id, device=last.device))
    return {
        "env/reward_mean": float(scores.mean()),
        "env/reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
        "objective/kl": kl_mean,
        "objective/kl_coef": adv.kl_coef,
        "objective/kl_penalty": float(-adv.kl_coef * adv.kl.sum(1).mean()),
        "objective/entropy": float(masked_mean(r.entropy, mask)),
        **{f"env/reward/{name}_mean": float(values.mean()) for name, values in components.items()},
        **value_metrics(r, adv),
        **group_metrics(r, samples_per_prompt),
        "response/length_mean": float(lengths.float().mean()),
        "response/eos_rate": float(ended.float().mean()),
    }


def value_metrics(r: Rollout, adv: Advantages) -> dict[str, float]:
    """The advantages before whitening, and the value head's figures (absent, not zero, for
    critic-free estimators)."""
    out = {"ppo/advantage/mean": float(masked_mean(adv.raw, r.mask)),
           "ppo/advantage/std": float(masked_var(adv.raw, r.mask).sqrt())}
    if r.values is not None:
        out.update({"ppo/value/explained_variance": float(explained_variance(r.values, adv.returns, r.mask)),
                    "ppo/value/mean": float(masked_mean(r.values, r.mask)),
                    "ppo/returns/mean": float(masked_mean(adv.returns, r.mask))})
    return out


def group_metrics(r: Rollout, samples_per_prompt: int) -> dict[str, float]:
    """With k >= 2 responses per prompt: the mean within-prompt std of the scores, and the share
    of prompts whose k scores are all equal (no learning signal for a group baseline)."""
    if samples_per_prompt < 2:
        return {}
    _, _, std = group_moments(r.scores.double(), r.groups)
    per_prompt = std[::samples_per_prompt]
    return {"env/group_reward_std": float(per_prompt.mean()),
            "env/zero_signal_fraction": float((per_prompt == 0).double().mean())}
