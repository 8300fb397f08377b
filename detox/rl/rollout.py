"""One batch of rollouts: prompts -> sampled responses -> rewards -> per-token log-probs of the
policy and the reference, values and entropy (no grad, dropout off).

Conventions (response mask, alignment of log-probs and values) are in docs/design.md; which
generated tokens are the response is the model family's (`Seq2SeqBatch`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import GenerationConfig

from detox.algo.tokens import logprobs_from_logits, token_entropy
from detox.models.families import Seq2SeqBatch
from detox.models.generation import decode_responses, sample_capped
from detox.models.policy import Policy, PolicyOutput
from detox.models.rewards import Reward


@dataclass
class Rollout:
    """One batch of B prompts and their sampled responses (T = longest response)."""

    batch: Seq2SeqBatch  # the model inputs and the response tokens, with their mask [B, T]
    scores: torch.Tensor  # [B] the reward (weighted, aggregated, clipped when reward.clip is set)
    logprobs: torch.Tensor  # [B, T] policy at rollout time
    ref_logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor | None  # [B, T]; None without a value head (critic-free estimators)
    entropy: torch.Tensor  # [B, T]
    prompts: list[str]
    responses: list[str]
    ids: list
    rank: int | None = None  # the sampling process, in a data-parallel run
    groups: torch.Tensor | None = None  # [B] long: the prompt each response answers (k responses each)
    # [B, T, H] the decoder's last hidden state at rollout time (kept for value warm-up steps,
    # where the policy does not move and only the value head trains on it)
    hidden: torch.Tensor | None = None
    # each reward component's own score [B] (before its weight), by name
    component_scores: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def mask(self) -> torch.Tensor:
        return self.batch.mask

    @property
    def kl_per_seq(self) -> torch.Tensor:
        """[B] k1 summed over each response: the unit of `objective/kl`."""
        return ((self.logprobs - self.ref_logprobs) * self.mask).sum(1)

    def rows(self, step: int) -> list[dict]:
        """`rollouts.jsonl` rows: every response with its score, KL and length."""
        k1 = self.kl_per_seq.tolist()
        lengths = self.mask.sum(1).long().tolist()
        rank = {} if self.rank is None else {"rank": self.rank}
        components = {name: scores.tolist() for name, scores in self.component_scores.items()}
        return [{"step": step, "id": self.ids[i], "response": self.responses[i], "score": float(self.scores[i]),
                 "components": {name: scores[i] for name, scores in components.items()},
                 "kl": k1[i], "length": lengths[i], **rank} for i in range(len(self.responses))]


def padded_to(x: torch.Tensor, width: int) -> torch.Tensor:
    """[b, t, ...] -> [b, width, ...] with zeros after column t (a cut chunk back to the batch's width)."""
    extra = width - x.shape[1]
    return x if extra == 0 else torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, extra))


def forward_logprobs(policy: Policy, batch: Seq2SeqBatch, detach_values: bool = False,
                     aux_loss: bool = False) -> tuple[PolicyOutput, torch.Tensor]:
    """The policy's forward pass of `batch` and the per-token log-probs [b, T] of its responses."""
    out = policy(batch, detach_values=detach_values, aux_loss=aux_loss)
    return out, logprobs_from_logits(out.logits, batch.response_ids)


@torch.no_grad()
def collect_rollout(policy: Policy, tokenizer, reward: Reward, prompts: list[str], ids: list, caps: np.ndarray, *,
                    gen_config: GenerationConfig, max_input_tokens: int, generate_chunk: int | None,
                    forward_chunk: int, device: torch.device, timings: dict[str, float],
                    keep_hidden: bool = False, columns: dict[str, list] | None = None,
                    sampler: str = "detox") -> Rollout:
    """Sample one response per prompt (each cut at its own length cap), score it (`columns`: the
    prompts' dataset columns, for the reward components that read them), and take the
    per-token statistics PPO needs, `forward_chunk` rows per forward pass (with several chunks,
    rows of similar lengths together), each chunk cut to its own widest prompt and response (the
    statistics are 0 after a row's response). The policy's forward reuses the encoder states
    of the sampling; the reference runs its own encoder (the adapter acts on it too), once per
    distinct prompt. keep_hidden: keep the decoder's last hidden state (`Rollout.hidden`).
    Phase times go to `timings` (`perf/..._s`)."""
    enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_input_tokens,
                    return_tensors="pt").to(device)
    t0 = time.perf_counter()
    batch, encoder_states = sample_capped(policy, enc["input_ids"], enc["attention_mask"], gen_config, caps,
                                          generate_chunk, sampler)
    timings["perf/generate_s"] = time.perf_counter() - t0
    responses, lengths = decode_responses(tokenizer, batch)
    t0 = time.perf_counter()
    scores = reward.score(prompts, responses, **(columns or {}), response_tokens=lengths)
    timings["perf/reward_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("logprobs", "ref_logprobs", "values", "entropy", "hidden")}
    prompt_widths, response_widths = batch.row_widths()
    width = batch.response_ids.shape[1]
    # Several chunks: rows of similar lengths together (each chunk is cut to its widest row),
    # their statistics put back in the batch's order at the end.
    order = (torch.argsort(prompt_widths + response_widths, stable=True) if forward_chunk < len(prompts)
             else torch.arange(len(prompts)))
    for chunk in order.split(forward_chunk):
        part = batch.cut_rows(chunk)
        step = policy(part, encoder_states=encoder_states[chunk.to(device), :part.input_ids.shape[1]],
                      keep_hidden=keep_hidden)
        out["logprobs"].append(logprobs_from_logits(step.logits, part.response_ids))
        out["entropy"].append(token_entropy(step.logits))
        if step.values is not None:
            out["values"].append(step.values)
        if keep_hidden:
            out["hidden"].append(step.hidden)
        del step
        ref_logits = policy.reference_logits(part)
        out["ref_logprobs"].append(logprobs_from_logits(ref_logits, part.response_ids))
        del ref_logits
    stats = {k: torch.cat([padded_to(x, width) for x in v]) if v else None for k, v in out.items()}
    if len(order) > forward_chunk:  # back to the batch's order
        back = torch.argsort(order).to(device)
        stats = {k: x[back] if x is not None else None for k, x in stats.items()}
    timings["perf/forward_s"] = time.perf_counter() - t0
    return Rollout(batch=batch, scores=scores.total.to(device), prompts=prompts, responses=responses, ids=ids,
                   component_scores=scores.components, **stats)
