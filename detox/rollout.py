"""One batch of rollouts: prompts -> sampled responses -> reward-model scores -> per-token
log-probs of the policy and the reference, values and entropy (no grad, dropout off).

Conventions (response mask, alignment of log-probs and values) are in docs/design.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from transformers import GenerationConfig
from transformers.modeling_outputs import BaseModelOutput

from detox import ppo
from detox.generation import decode_responses, generate_capped
from detox.policy import Policy
from detox.reward import RewardModel


@dataclass
class Rollout:
    """One batch of B prompts and their sampled responses (T = longest response)."""

    input_ids: torch.Tensor  # [B, S] encoder input
    attention_mask: torch.Tensor  # [B, S]
    decoder_input_ids: torch.Tensor  # [B, T] decoder start token + response[:-1]
    response_ids: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] 1 up to and including the first EOS (or the per-prompt cap)
    scores: torch.Tensor  # [B] reward-model score
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

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "decoder_input_ids": self.decoder_input_ids, "response_ids": self.response_ids}

    @property
    def kl_per_seq(self) -> torch.Tensor:
        """[B] k1 summed over each response: the unit of `objective/kl`."""
        return ((self.logprobs - self.ref_logprobs) * self.mask).sum(1)

    def rows(self, step: int) -> list[dict]:
        """`rollouts.jsonl` rows: every response with its score, KL and length."""
        k1 = self.kl_per_seq.tolist()
        lengths = self.mask.sum(1).long().tolist()
        rank = {} if self.rank is None else {"rank": self.rank}
        return [{"step": step, "id": self.ids[i], "response": self.responses[i], "score": float(self.scores[i]),
                 "kl": k1[i], "length": lengths[i], **rank} for i in range(len(self.responses))]


def row_chunks(n: int, size: int, device: torch.device) -> list[torch.Tensor]:
    """Row indices 0..n-1 in chunks of `size`."""
    return [torch.arange(i, min(i + size, n), device=device) for i in range(0, n, size)]


def forward_logprobs(policy: Policy, batch: dict[str, torch.Tensor], rows: torch.Tensor,
                     detach_values: bool = False):
    """Logits [b, T, V], per-token log-probs [b, T] of the response tokens and values [b, T]
    for `rows` of `batch` (a `Rollout.model_inputs()`)."""
    logits, values = policy(batch["input_ids"][rows], batch["attention_mask"][rows],
                            batch["decoder_input_ids"][rows], detach_values=detach_values)
    return logits, ppo.logprobs_from_logits(logits, batch["response_ids"][rows]), values


@torch.no_grad()
def collect_rollout(policy: Policy, tokenizer, reward: RewardModel, prompts: list[str], ids: list,
                    caps: np.ndarray, *, gen_config: GenerationConfig, max_input_tokens: int,
                    generate_chunk: int | None, forward_chunk: int, device: torch.device,
                    timings: dict[str, float], keep_hidden: bool = False) -> Rollout:
    """Sample one response per prompt (each cut at its own length cap), score it, and take the
    per-token statistics PPO needs, `forward_chunk` rows per forward pass. The policy's forward
    reuses the encoder states of `generate`; the reference runs its own encoder (the adapter
    acts on it too). keep_hidden: keep the decoder's last hidden state (`Rollout.hidden`).
    Phase times go to `timings` (`perf/..._s`)."""
    enc = tokenizer(prompts, padding=True, truncation=True, max_length=max_input_tokens,
                    return_tensors="pt").to(device)
    t0 = time.perf_counter()
    sequences, encoder_states = generate_capped(policy, enc["input_ids"], enc["attention_mask"], gen_config, caps,
                                                generate_chunk, keep_encoder_states=True)
    timings["perf/generate_s"] = time.perf_counter() - t0
    response_ids = sequences[:, 1:]
    mask = ppo.response_mask(response_ids, policy.config.eos_token_id, torch.as_tensor(caps, device=device))
    width = int(mask.sum(1).max())
    response_ids, mask = response_ids[:, :width], mask[:, :width]
    decoder_input_ids = sequences[:, :width]
    responses, _ = decode_responses(tokenizer, response_ids, mask)
    t0 = time.perf_counter()
    scores = reward.score(prompts, responses).float()
    timings["perf/reward_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("logprobs", "ref_logprobs", "values", "entropy", "hidden")}
    for rows in row_chunks(len(prompts), forward_chunk, device):
        logits, hidden = policy.decode(enc["input_ids"][rows], enc["attention_mask"][rows], decoder_input_ids[rows],
                                       encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states[rows]),
                                       keep_hidden=policy.value_head is not None)
        out["logprobs"].append(ppo.logprobs_from_logits(logits, response_ids[rows]))
        out["entropy"].append(ppo.token_entropy(logits))
        if policy.value_head is not None:
            out["values"].append(policy.value_head(hidden))
        if keep_hidden:
            out["hidden"].append(hidden)
        del logits
        ref_logits = policy.reference_logits(enc["input_ids"][rows], enc["attention_mask"][rows], decoder_input_ids[rows])
        out["ref_logprobs"].append(ppo.logprobs_from_logits(ref_logits, response_ids[rows]))
        del ref_logits
    stats = {k: torch.cat(v) if v else None for k, v in out.items()}
    timings["perf/forward_s"] = time.perf_counter() - t0
    return Rollout(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                   decoder_input_ids=decoder_input_ids, response_ids=response_ids, mask=mask,
                   scores=scores.to(device), prompts=prompts, responses=responses, ids=ids, **stats)
