"""From a sampled sequence to per-token quantities: the response mask (by position, up to and
including the first EOS), log-probs of the sampled tokens without an fp32 copy of the logits,
and per-position entropy. Shapes as in `detox.algo.masked`."""

from __future__ import annotations

from collections.abc import Iterable

import torch


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
