"""From per-token KL and a sequence score to advantages: the KL-penalised rewards, then an
advantage estimator from a registry (PPO's GAE, which needs a value head, and the critic-free
RLOO, GRPO / Dr. GRPO and REINFORCE++). A new estimator is one function decorated with
`@register_advantage(name, uses_values=..., min_group=...)`: the config's choices and checks
are derived from the registry. Shapes as in `detox.algo.masked`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from detox.algo.masked import _bool_mask, _zero_pad


def _last_masked_index(mask: torch.Tensor) -> torch.Tensor:
    """[B] long: index of the last masked position of each row; ValueError if a row is empty."""
    m = _bool_mask(mask)
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    last = torch.where(m, positions, torch.full_like(positions, -1)).max(dim=1).values
    if bool((last < 0).any()):
        rows = torch.nonzero(last < 0).flatten().tolist()
        raise ValueError(f"rows {rows} have an empty response mask (no tokens to reward)")
    return last


def kl_penalized_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float | torch.Tensor
) -> torch.Tensor:
    """Per-token rewards: -kl_coef * kl on every response token, plus the sequence score on
    the last one.

    The score goes on the last masked position -- the EOS, or the last generated token of a
    truncated response -- because that is the action that completes the sequence the reward
    model judged; EOS is an action like any other (masking it out would make stopping free).

    Args:
        scores: [B] reward-model score per sequence.
        kl: [B, T] per-token KL estimate (see `kl_penalty`); should be detached.
        mask: [B, T].
        kl_coef: beta (float or 0-dim tensor).

    Returns:
        [B, T] rewards, zero on padding.

    Raises:
        ValueError: if a row has an empty mask.
    """
    m = _bool_mask(mask)
    last = _last_masked_index(m)
    rewards = -kl_coef * _zero_pad(kl, m)
    bonus = scores.to(rewards.dtype).reshape(-1, 1)
    return rewards.scatter_add(1, last.unsqueeze(1), bonus)


@torch.no_grad()
def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over the response tokens of each row.

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1},
    with V and A after the last masked token taken as 0: the episode ends with the response
    (the reward model scores it once; nothing follows), so there is nothing to bootstrap.

    Runs under ``no_grad``: advantages and returns are regression/loss targets, never
    differentiated through.

    Args:
        rewards: [B, T] per-token rewards (see `kl_penalized_rewards`).
        values: [B, T] value estimates at rollout time.
        mask: [B, T], a prefix of each row (a hole would be treated as an episode end).
        gamma: discount; lam: GAE lambda.

    Returns:
        (advantages, returns), each [B, T], zero on padding; returns = advantages + values.
    """
    m = _bool_mask(mask)
    mf = m.to(values.dtype)
    rewards = _zero_pad(rewards, m)
    values = _zero_pad(values, m)
    B, T = values.shape
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in reversed(range(T)):
        if t + 1 < T:
            next_mask = mf[:, t + 1]
            next_value = values[:, t + 1] * next_mask
        else:
            next_mask = torch.zeros_like(last_gae)
            next_value = next_mask
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * next_mask * last_gae
        advantages[:, t] = last_gae
    advantages = _zero_pad(advantages, m)
    returns = _zero_pad(advantages + values, m)
    return advantages, returns


@dataclass(frozen=True)
class RegisteredEstimator:
    """An advantage estimator as registered: fn(rewards [B, T], mask [B, T], *, values [B, T] |
    None, groups [B] | None, gamma, lam, scale_std) -> (advantages [B, T], returns [B, T]).
    uses_values: it needs a value head (a critic); min_group: the fewest responses per prompt
    it can compare (`ppo.samples_per_prompt` must be at least this)."""

    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    uses_values: bool
    min_group: int = 1


ADVANTAGE_ESTIMATORS: dict[str, RegisteredEstimator] = {}


def register_advantage(name: str, *, uses_values: bool, min_group: int = 1):
    """Register an advantage estimator under `name` (see `RegisteredEstimator`)."""

    def register(fn):
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is registered twice")
        ADVANTAGE_ESTIMATORS[name] = RegisteredEstimator(fn, uses_values, min_group)
        return fn

    return register


@register_advantage("gae", uses_values=True)
def gae_advantages(rewards: torch.Tensor, mask: torch.Tensor, *, values: torch.Tensor, gamma: float,
                   lam: float, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's: GAE over the per-token rewards with the value head's baseline (`compute_gae`)."""
    return compute_gae(rewards, values, mask, gamma, lam)


def sequence_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] each response's total reward: its per-token rewards summed over the mask."""
    return _zero_pad(rewards, _bool_mask(mask)).sum(1)


def group_moments(x: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (group sum, group size, group unbiased std) for [B] values `x` in groups given by
    [B] long `groups` (the prompt each response was sampled for); a group of one has std 0."""
    n_groups = int(groups.max()) + 1
    size = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, torch.ones_like(x))
    total = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, x)
    mean = total / size
    sq = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add_(0, groups, (x - mean[groups]) ** 2)
    std = (sq / (size - 1).clamp(min=1)).sqrt()
    return total[groups], size[groups], std[groups]


def _grouped_rewards(rewards: torch.Tensor, mask: torch.Tensor, groups: torch.Tensor, estimator: str):
    """[B] sequence rewards and their (group sum, size, std) per row, for a group baseline."""
    seq = sequence_rewards(rewards, mask)
    total, size, std = group_moments(seq, groups)
    if bool((size < 2).any()):
        raise ValueError(f"{estimator} needs at least 2 responses per prompt (ppo.samples_per_prompt >= 2)")
    return seq, total, size, std


def _per_token(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = _bool_mask(mask)
    return torch.where(m, seq.unsqueeze(1).expand(m.shape), torch.zeros((), dtype=seq.dtype, device=seq.device))


@register_advantage("rloo", uses_values=False, min_group=2)
@torch.no_grad()
def rloo_advantages(rewards: torch.Tensor, mask: torch.Tensor, *, groups: torch.Tensor, **_) -> tuple[
        torch.Tensor, torch.Tensor]:
    """RLOO (Ahmadian et al. 2024): a response's total reward minus the mean total reward of the
    other k - 1 responses to its prompt, on every one of its tokens. groups: [B] prompt index."""
    seq, total, size, _ = _grouped_rewards(rewards, mask, groups, "rloo")
    advantages = _per_token(seq - (total - seq) / (size - 1), mask)
    return advantages, advantages


@register_advantage("grpo", uses_values=False, min_group=2)
@torch.no_grad()
def grpo_advantages(rewards: torch.Tensor, mask: torch.Tensor, *, groups: torch.Tensor, scale_std: bool = True,
                    eps: float = 1e-6, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO (Shao et al. 2024): (r - group mean) / (group std + eps) of each response's total
    reward, on every one of its tokens; scale_std=False is Dr. GRPO's (r - group mean)."""
    seq, total, size, std = _grouped_rewards(rewards, mask, groups, "grpo")
    centred = seq - total / size
    advantages = _per_token(centred / (std + eps) if scale_std else centred, mask)
    return advantages, advantages


@register_advantage("reinforce_pp", uses_values=False)
@torch.no_grad()
def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, **_) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025): per-token returns of the (KL-penalised) rewards, gamma 1 (the reward
    to go); the caller whitens them over the global batch."""
    m = _bool_mask(mask)
    r = _zero_pad(rewards, m)
    returns = _zero_pad(r.flip(1).cumsum(1).flip(1), m)
    return returns, returns


def compute_advantages(estimator: str, rewards: torch.Tensor, mask: torch.Tensor, **inputs) -> tuple[
        torch.Tensor, torch.Tensor]:
    """(advantages, returns) [B, T] by the registered `estimator` (not yet whitened)."""
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; valid: {', '.join(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[estimator].fn(rewards, mask, **inputs)
