"""PPO core for encoder-decoder policies, as small pure tensor functions.

Nothing here knows about models or configs; everything is checked against hand-computed
cases in ``tests/test_ppo.py``. The algorithm and its conventions (response mask, log-prob
alignment, KL units, the reference) are written down in ``docs/design.md``.

Estimators are registries: a KL estimator is one function decorated with
``@register_kl_estimator(name)``, an advantage estimator one decorated with
``@register_advantage(name, uses_values=...)``. The config's choices (``ppo.kl.estimator``,
``ppo.advantage``) are derived from them, so a new estimator is one function and one test.

This module is longer than the others on purpose: it is the whole algorithm in one place,
in the order one PPO step uses it, as veRL's ``core_algos.py`` is.

Conventions (shapes):
    B  number of responses in the batch
    T  number of response positions (right-padded)
    V  vocabulary size
    mask  [B, T] bool or float, 1 on response tokens -- a prefix of each row, up to and
          including the first EOS (see `response_mask`) -- and 0 on padding after it.

Padding never influences a result: every function first replaces masked-out entries with
a neutral value (``torch.where``), so NaN/inf left at padded positions neither leaks into
the outputs nor into the gradients (a plain ``x * mask`` would turn a NaN into NaN, and a
``where`` applied only at the end still back-propagates NaN through ``exp`` and friends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

__all__ = [
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "KL_ESTIMATORS",
    "register_kl_estimator",
    "kl_penalty",
    "FixedKLController",
    "AdaptiveKLController",
    "make_kl_controller",
    "kl_penalized_rewards",
    "compute_gae",
    "ADVANTAGE_ESTIMATORS",
    "register_advantage",
    "compute_advantages",
    "policy_loss",
    "value_loss",
    "explained_variance",
    "response_mask",
    "logprobs_from_logits",
    "token_entropy",
]


# ---------------------------------------------------------------------------------------
# Masked statistics
# ---------------------------------------------------------------------------------------


def _bool_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask if mask.dtype == torch.bool else mask != 0


def _zero_pad(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with masked-out entries replaced by 0 (NaN/inf there included)."""
    return torch.where(_bool_mask(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is set.

    Args:
        x: [B, T] (any shape).
        mask: same shape as ``x``.
        dim: reduce over this dimension only (e.g. ``dim=1`` -> per-row mean, [B]);
            ``None`` reduces over all masked entries of the batch (0-dim), i.e. a token-level
            mean in which long responses weigh more than short ones.

    Returns:
        0-dim tensor (``dim=None``) or ``x`` reduced over ``dim``. A slice with an empty mask
        gives NaN (0/0), deliberately: there is no meaningful mean of nothing.
    """
    m = _bool_mask(mask)
    total = _zero_pad(x, m).sum() if dim is None else _zero_pad(x, m).sum(dim)
    count = m.sum() if dim is None else m.sum(dim)
    return total / count.to(total.dtype)


def masked_var(
    x: torch.Tensor,
    mask: torch.Tensor,
    unbiased: bool = True,
    mean: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Variance of ``x`` over all masked entries (0-dim tensor).

    Args:
        x: [B, T]; mask: [B, T].
        unbiased: apply Bessel's correction n / (n - 1), n = number of masked entries.
        mean: precomputed mean (e.g. all-reduced across processes); default: ``masked_mean``.

    Raises:
        ValueError: if the mask is empty, or has a single entry with ``unbiased=True``
            (division by zero; old TRL raised here too). This reads n on the host.
    """
    m = _bool_mask(mask)
    n = int(m.sum().item())
    if n == 0:
        raise ValueError("masked_var: the mask is empty (no masked entries)")
    if unbiased and n == 1:
        raise ValueError("masked_var: unbiased variance of a single masked entry is undefined")
    if mean is None:
        mean = masked_mean(x, m)
    var = masked_mean((_zero_pad(x, m) - mean) ** 2, m)
    if unbiased:
        var = var * (n / (n - 1))
    return var


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    eps: float = 1e-8,
    mean: torch.Tensor | float | None = None,
    var: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Normalise ``x`` to unit variance (and zero mean) over all masked entries of the batch.

    Args:
        x: [B, T]; mask: [B, T].
        shift_mean: if False, the mean is added back after scaling -- old TRL did this for
            reward whitening, where the sign of the reward carries meaning; advantages use
            the default (True).
        eps: added to the variance before the square root.
        mean, var: precomputed statistics (e.g. all-reduced across processes). Default: the
            masked mean and the unbiased masked variance of ``x``.

    Returns:
        [B, T], zero where ``mask`` is 0.
    """
    m = _bool_mask(mask)
    if mean is None:
        mean = masked_mean(x, m)
    if var is None:
        var = masked_var(x, m, unbiased=True, mean=mean)
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    whitened = (_zero_pad(x, m) - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return _zero_pad(whitened, m)


# ---------------------------------------------------------------------------------------
# KL estimate and controllers
# ---------------------------------------------------------------------------------------

KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}


def register_kl_estimator(name: str):
    """Register ``fn(log_ratio [B, T]) -> [B, T]``, a per-token estimate of KL(policy || ref)
    from d = logp - ref of tokens sampled from the policy, under ``name``."""

    def register(fn):
        if name in KL_ESTIMATORS:
            raise ValueError(f"KL estimator {name!r} is registered twice")
        KL_ESTIMATORS[name] = fn
        return fn

    return register


@register_kl_estimator("k1")
def kl_k1(log_ratio: torch.Tensor) -> torch.Tensor:
    """d. Unbiased for the KL (E_pi[d] = KL) and, used as a detached per-token reward
    (r_t = -beta * d_t), its policy gradient is the gradient of the reverse KL. Can be
    negative per token (and per batch, by noise or sampling settings such as min_length).
    The default."""
    return log_ratio


@register_kl_estimator("k3")
def kl_k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """(exp(-d) - 1) + d. Also unbiased in VALUE, lower variance, and nonnegative per token;
    but used as a detached reward its policy gradient is grad KL(pi||ref) - grad KL(ref||pi),
    not the reverse-KL gradient (biased)."""
    neg = -log_ratio  # (e^r - 1) - r with r = ref - logp; expm1 keeps precision when r is tiny
    return torch.expm1(neg) - neg


@register_kl_estimator("abs")
def kl_abs(log_ratio: torch.Tensor) -> torch.Tensor:
    """|d|. Biased (overestimates), nonnegative."""
    return log_ratio.abs()


@register_kl_estimator("mse")
def kl_mse(log_ratio: torch.Tensor) -> torch.Tensor:
    """0.5 * d^2. Biased (second-order approximation), nonnegative."""
    return 0.5 * log_ratio.square()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || ref) from tokens sampled from the policy.

    Args:
        logprobs: [B, T] log pi(y_t | ...) of the sampled tokens under the policy.
        ref_logprobs: [B, T] the same tokens under the reference model.
        estimator: a name in ``KL_ESTIMATORS`` (k1, the default; k3, abs, mse: see each).

    Returns:
        [B, T] per-token estimates. Padded positions are NOT masked here (callers mask).

    Raises:
        ValueError: unknown estimator.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")
    return KL_ESTIMATORS[estimator](logprobs - ref_logprobs)


class FixedKLController:
    """Constant KL coefficient beta (``.value``)."""

    def __init__(self, init_coef: float):
        if init_coef < 0:
            raise ValueError(f"init_coef must be >= 0, got {init_coef}")
        self.value = float(init_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op; kept for interface parity with `AdaptiveKLController`."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences").

    A proportional controller that drives the measured KL towards ``target``:
    ``err = clip(current_kl / target - 1, -0.2, 0.2)``; ``value *= 1 + err * n_steps / horizon``.
    The clip bounds the change per update; ``horizon`` (in samples) sets its speed -- with
    horizon 10000 and 16 samples per update beta moves at most 0.032% per update.
    ``current_kl`` must be in the same unit as ``target`` (here: per-sequence k1 sum).
    """

    def __init__(self, init_coef: float, target: float, horizon: float):
        if init_coef < 0:
            raise ValueError(f"init_coef must be >= 0, got {init_coef}")
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        mult = 1.0 + proportional_error * n_steps / self.horizon
        self.value *= mult

    def state_dict(self) -> dict:
        # Only the coefficient is state; target/horizon come from the (possibly new) config.
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def make_kl_controller(
    kind: str, init_coef: float, target: float | None = None, horizon: float | None = None
) -> FixedKLController | AdaptiveKLController:
    """Build a KL controller; ``kind`` in {"fixed", "adaptive"} (the latter needs target, horizon)."""
    if kind == "fixed":
        return FixedKLController(init_coef)
    if kind == "adaptive":
        if target is None or horizon is None:
            raise ValueError("adaptive KL controller needs `target` and `horizon`")
        return AdaptiveKLController(init_coef, target, horizon)
    raise ValueError(f"unknown KL controller kind {kind!r}; valid: fixed, adaptive")


# ---------------------------------------------------------------------------------------
# Rewards and advantages
# ---------------------------------------------------------------------------------------


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
class AdvantageEstimator:
    """fn(rewards [B, T], mask [B, T], *, values [B, T] | None, gamma, lam) ->
    (advantages [B, T], returns [B, T]); uses_values: it needs a value head (a critic)."""

    fn: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    uses_values: bool


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage(name: str, *, uses_values: bool):
    """Register an advantage estimator (see `AdvantageEstimator` for its signature)."""

    def register(fn):
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is registered twice")
        ADVANTAGE_ESTIMATORS[name] = AdvantageEstimator(fn, uses_values)
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


@register_advantage("rloo", uses_values=False)
@torch.no_grad()
def rloo_advantages(rewards: torch.Tensor, mask: torch.Tensor, *, groups: torch.Tensor, **_) -> tuple[
        torch.Tensor, torch.Tensor]:
    """RLOO (Ahmadian et al. 2024): a response's total reward minus the mean total reward of the
    other k - 1 responses to its prompt, on every one of its tokens. groups: [B] prompt index."""
    seq, total, size, _ = _grouped_rewards(rewards, mask, groups, "rloo")
    advantages = _per_token(seq - (total - seq) / (size - 1), mask)
    return advantages, advantages


@register_advantage("grpo", uses_values=False)
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


# ---------------------------------------------------------------------------------------
# Losses and diagnostics
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Masks, log-probs, entropy
# ---------------------------------------------------------------------------------------


def response_mask(
    response_ids: torch.Tensor,
    eos_token_id: int | Iterable[int],
    max_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float mask [B, T] over generated tokens: 1 up to and including the first EOS, 0 after.

    Built by POSITION, never by ``!= pad``: a (tiny, random) model can sample the pad token
    mid-response, and that token is still an action the policy took. EOS is included because
    stopping is an action too. Rows without EOS (truncated at the length limit) are all 1.

    Args:
        response_ids: [B, T] long, generated tokens (decoder start token already stripped).
        eos_token_id: an id or several ids that end a response.
        max_lengths: optional [B] long per-row caps; positions >= cap are 0 as well.

    Returns:
        [B, T] float32 mask.
    """
    if isinstance(eos_token_id, int):
        is_eos = response_ids == eos_token_id
    else:
        eos = torch.as_tensor(list(eos_token_id), dtype=response_ids.dtype, device=response_ids.device)
        is_eos = torch.isin(response_ids, eos)
    is_eos = is_eos.long()
    # Number of EOS strictly before each position: 0 up to and including the first EOS.
    eos_before = is_eos.cumsum(dim=1) - is_eos
    keep = eos_before == 0
    if max_lengths is not None:
        positions = torch.arange(response_ids.shape[1], device=response_ids.device)
        keep = keep & (positions.unsqueeze(0) < max_lengths.to(response_ids.device).unsqueeze(1))
    return keep.to(torch.float32)


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    # bf16/fp16 log-softmax loses ~3 significant digits, enough to make ratio != 1 at the
    # first mini-batch; fp64 inputs are left alone.
    return logits if logits.dtype == torch.float64 else logits.float()


class _SelectiveLogSoftmax(torch.autograd.Function):
    """log_softmax(logits)[labels] one batch row at a time, each row upcast to fp32 on the fly.

    What it saves for backward is the logits in their own dtype and the [B, T] log-normalisers,
    not an fp32 copy of the [B, T, V] logits (twice the size of bf16 logits, and kept until the
    backward by a plain `logits.float().log_softmax(-1)`). The backward recomputes each row's
    softmax. In fp32 the forward and the gradient are bit-identical to TRL's
    `selective_log_softmax` (gather - logsumexp, row by row) on upcast logits.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        out_dtype = _at_least_fp32(logits[:0]).dtype
        logprobs = logits.new_empty(labels.shape, dtype=out_dtype)
        lse = logits.new_empty(labels.shape, dtype=out_dtype)
        for b in range(logits.shape[0]):
            row = _at_least_fp32(logits[b])
            lse[b] = torch.logsumexp(row, dim=-1)
            logprobs[b] = row.gather(-1, labels[b].unsqueeze(-1)).squeeze(-1) - lse[b]
        ctx.save_for_backward(logits, labels, lse)
        return logprobs

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for b in range(logits.shape[0]):
            # d/dx (x[y] - logsumexp(x)) = onehot(y) - softmax(x), as autograd composes it
            row_grad = (-grad[b]).unsqueeze(-1) * (_at_least_fp32(logits[b]) - lse[b].unsqueeze(-1)).exp()
            grad_logits[b] = row_grad.scatter_add_(-1, labels[b].unsqueeze(-1), grad[b].unsqueeze(-1))
        return grad_logits, None


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs log softmax(logits)[labels], computed in (at least) fp32.

    Alignment is the caller's job: the logits at decoder position t score token t+1 of the
    decoder input (the same as ``generate``'s scores without logits processors).

    Args:
        logits: [B, T, V] any float dtype; each row is upcast to fp32 on the fly, and no fp32
            copy of the whole tensor is kept for the backward (see `_SelectiveLogSoftmax`).
        labels: [B, T] long token ids.

    Returns:
        [B, T] log-probs, fp32 (fp64 for fp64 logits). Padded positions are not masked.
    """
    return _SelectiveLogSoftmax.apply(logits, labels)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy (nats) of softmax(logits): [B, T, V] -> [B, T], in fp32.

    Row by row (as TRL's chunked `entropy_from_logits`), each row upcast on the fly; call it
    under ``no_grad`` when it is only logged. Padded positions are not masked (use `masked_mean`).
    """
    out = []
    for row in logits.reshape(-1, logits.shape[-1]).split(128):
        logp = torch.log_softmax(_at_least_fp32(row), dim=-1)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out).reshape(logits.shape[:-1])
