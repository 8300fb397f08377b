"""Masked statistics over response tokens: the building blocks of every estimator and loss.

Conventions (shapes), shared by every module of `detox.algo`:
    B  number of responses in the batch
    T  number of response positions (right-padded)
    V  vocabulary size
    mask  [B, T] bool or float, 1 on response tokens -- a prefix of each row, up to and
          including the first EOS (see `tokens.response_mask`) -- and 0 on padding after it.

Padding never influences a result: every function first replaces masked-out entries with
a neutral value (``torch.where``), so NaN/inf left at padded positions neither leaks into
the outputs nor into the gradients (a plain ``x * mask`` would turn a NaN into NaN, and a
``where`` applied only at the end still back-propagates NaN through ``exp`` and friends).
Everything here is checked against hand-computed cases in ``tests/test_algo.py``.
"""

from __future__ import annotations

import torch


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
