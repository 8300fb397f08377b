"""The PPO losses (clipped surrogate, clipped value loss) and the value head's diagnostic
(explained variance). Shapes as in `detox.algo.masked`."""

from __future__ import annotations

import torch

from detox.algo.masked import _bool_mask, _zero_pad, masked_mean, masked_var


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate loss (to minimise).

    ratio = exp(logp - old); loss_t = max(-A_t * ratio_t, -A_t * clip(ratio_t, 1-c, 1+c)):
    the pessimistic bound, so the objective stops rewarding moves of the ratio beyond the
    clip range in the direction the advantage favours (and only those).

    Args:
        logprobs: [B, T] current policy log-probs (with grad).
        old_logprobs: [B, T] log-probs at rollout time.
        advantages: [B, T] (typically whitened).
        mask: [B, T].
        cliprange: c.

    Returns:
        loss: 0-dim, token-level mean over all masked tokens of the batch.
        stats (detached 0-dim tensors):
            "clipfrac": fraction of masked tokens on which the clipped branch is active
                (strictly larger), i.e. whose gradient is zeroed by the clip.
            "approxkl": 0.5 * mean((logp - old)^2), old TRL's "approxkl" (the k2
                estimator, second-order in the log-ratio; used for early stopping). CleanRL's
                "approx_kl" is a different estimator, k3: mean((ratio - 1) - log ratio).
    """
    m = _bool_mask(mask)
    log_ratio = _zero_pad(logprobs - old_logprobs, m)
    adv = _zero_pad(advantages, m)
    ratio = torch.exp(log_ratio)
    pg_losses1 = -adv * ratio
    pg_losses2 = -adv * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(pg_losses1, pg_losses2), m)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((pg_losses2 > pg_losses1).to(log_ratio.dtype), m).detach(),
            "approxkl": (0.5 * masked_mean(log_ratio.square(), m)).detach(),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: 0.5 * mean(max((V - R)^2, (V_clip - R)^2)),
    V_clip = old + clamp(V - old, -c, c).

    Taking the max keeps the value update pessimistic in the same way as the policy clip:
    moving the prediction beyond +-c of the rollout value earns no further loss reduction.

    Args:
        values: [B, T] current value predictions (with grad).
        old_values: [B, T] predictions at rollout time.
        returns: [B, T] targets (see `compute_gae`).
        mask: [B, T].
        cliprange_value: c.

    Returns:
        loss: 0-dim, token-level mean over masked tokens.
        stats: {"clipfrac": detached 0-dim fraction of masked tokens where the clipped term
            is strictly larger}.
    """
    m = _bool_mask(mask)
    v = _zero_pad(values, m)
    old = _zero_pad(old_values, m)
    ret = _zero_pad(returns, m)
    v_clipped = old + torch.clamp(v - old, -cliprange_value, cliprange_value)
    vf_losses1 = (v - ret).square()
    vf_losses2 = (v_clipped - ret).square()
    loss = 0.5 * masked_mean(torch.maximum(vf_losses1, vf_losses2), m)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((vf_losses2 > vf_losses1).to(v.dtype), m).detach()}
    return loss, stats


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over masked entries (0-dim, detached).

    1: perfect prediction; 0: no better than a constant (any constant: the residual variance
    is centred); < 0: worse than a constant. NaN when Var(returns) == 0 (undefined; e.g. a
    single masked token) -- returned rather than raised because it is only a diagnostic.
    """
    m = _bool_mask(mask)
    if not bool(m.any()):
        return torch.tensor(float("nan"), dtype=values.dtype, device=values.device)
    var_y = masked_var(returns, m, unbiased=False)
    var_res = masked_var(returns - values, m, unbiased=False)
    return torch.where(var_y == 0, torch.full_like(var_y, float("nan")), 1.0 - var_res / var_y)
