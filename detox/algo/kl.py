"""The KL to the reference: per-token estimators (a registry: one decorated function each) and
the controllers of its coefficient beta (fixed, or adaptive after Ziegler et al. 2019).
Shapes as in `detox.algo.masked`."""

from __future__ import annotations

from collections.abc import Callable

import torch

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
