"""The rollout's sampler: responses drawn from the policy one token at a time with a key/value
cache, each row stopping at its own EOS or cap (`generation.sampler=detox`, the default).

Why not `generate`: a PPO batch's rows end at different lengths (EOS, or the recipe's per-prompt
caps of 100-400 tokens), and `generate` keeps decoding a finished row, as padding, until the
batch's last row ends; here a finished row leaves the batch (its cache rows with it), so the
decoder only computes rows still sampling. And `torch.multinomial` draws one exponential per
vocabulary entry per row (about 1.3 ms per token at batch 16 and 4,000 pieces on one CPU
thread); inverse-CDF sampling draws one uniform per row.

The distribution is `generate`'s: the same logits, min_length (EOS barred while the decoder's
sequence, its start token included, is shorter), transformers' own temperature, top-k and top-p
warpers, then softmax. Only the random draws differ, so a seed samples other responses than
`generate` does (`generation.sampler=generate` keeps transformers' loop, and static caches).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessorList
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from detox.models.families import Seq2SeqFamily, SpecialTokens


def warpers(gen: GenerationConfig) -> LogitsProcessorList:
    """transformers' sampling warpers for these settings, in `generate`'s order."""
    out = LogitsProcessorList()
    if gen.temperature is not None and gen.temperature != 1.0:
        out.append(TemperatureLogitsWarper(gen.temperature))
    if gen.top_k:
        out.append(TopKLogitsWarper(gen.top_k))
    if gen.top_p is not None and gen.top_p < 1.0:
        out.append(TopPLogitsWarper(gen.top_p))
    return out


def draw(scores: torch.Tensor) -> torch.Tensor:
    """One token per row [b] from softmax(scores [b, V]) (-inf: never drawn), by inverse CDF: a
    uniform per row located in the running sum of the probabilities. The sum is in float64 (float32
    on MPS, which has no float64), so a token of tiny probability keeps its share at 32k-256k
    pieces. Uses the device's default generator, as `torch.multinomial` does."""
    dtype = torch.float32 if scores.device.type == "mps" else torch.float64
    cdf = scores.float().softmax(-1).to(dtype).cumsum(-1)
    u = torch.rand(len(cdf), 1, dtype=dtype, device=cdf.device) * cdf[:, -1:]
    # right=True: the first entry above u, so a zero-probability token (a flat step) is never drawn
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)


@torch.no_grad()
def sample(model: torch.nn.Module, family: Seq2SeqFamily, tokens: SpecialTokens, encoder_states: torch.Tensor,
           attention_mask: torch.Tensor, gen: GenerationConfig, caps: torch.Tensor) -> torch.Tensor:
    """Responses to B encoded prompts (encoder_states [B, S, H], attention_mask [B, S]), row i at
    most caps[i] sampled tokens. Returns `generate`'s sequences [B, prefix + max(caps)]: the
    decoder start (and a forced BOS), the sampled tokens, pad after a row's EOS or cap."""
    B, device = len(caps), encoder_states.device
    eos = torch.as_tensor(tokens.eos, device=device).reshape(-1)
    forced = tokens.forced_bos is not None
    steps = int(caps.max()) + forced  # decoder positions after the start token
    sequences = torch.full((B, 1 + steps), tokens.pad, dtype=torch.long, device=device)
    sequences[:, 0] = tokens.decoder_start
    stop_after = caps.to(device) + forced  # a row's last position (counting after the start)
    warp = warpers(gen)
    rows = torch.arange(B, device=device)  # the rows still sampling, in the cache's order
    states, mask, cache = encoder_states, attention_mask, None
    encoded = family.encoder_outputs(states)
    for t in range(1, steps + 1):
        logits, cache = family.decode_step(model, encoded, mask, sequences[rows, t - 1 : t], cache)
        if forced and t == 1:
            token = torch.full_like(rows, tokens.forced_bos)
        else:
            scores = logits.float()
            if t < (gen.min_length or 0):  # generate's MinLengthLogitsProcessor: the start token counts
                scores[:, eos] = -float("inf")
            if warp:
                scores = warp(sequences[rows, :t], scores)
            token = draw(scores) if gen.do_sample else scores.argmax(-1)
        sequences[rows, t] = token
        going = ~(torch.isin(token, eos) | (stop_after[rows] <= t))
        left = int(going.sum())  # the step's one host sync (generate has one too)
        if left == len(rows):
            continue
        if left == 0:
            break
        keep = going.nonzero().squeeze(1)  # finished rows leave the batch and its cache
        rows, states, mask = rows[keep], states[keep], mask[keep]
        encoded = family.encoder_outputs(states)
        cache.batch_select_indices(keep)
    return sequences
