"""Decoding shared by the PPO rollout, evaluation, SFT and detox-generate: sampling settings
from config, batched `generate`, and the responses as `Seq2SeqBatch`es (their family says which
generated tokens are the response; see docs/design.md, "Conventions").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import GenerationConfig

from detox.models.families import Seq2SeqBatch, SpecialTokens, family_of_model
from detox.models.sampling import sample


def generation_config(settings: DictConfig, tokens: SpecialTokens, greedy: bool = False) -> GenerationConfig:
    """Decoding settings from config alone (`generation.*`): a checkpoint's own
    generation_config (beams, repetition penalties, ...) must not change the sampling
    distribution PPO assumes. greedy: the same settings with sampling off (evaluation's
    `greedy`, SFT's ROUGE, detox-generate's default)."""
    config = GenerationConfig(
        do_sample=settings.do_sample, top_k=settings.top_k, top_p=settings.top_p, temperature=settings.temperature,
        min_length=settings.min_length, num_beams=1, pad_token_id=tokens.pad, eos_token_id=tokens.eos,
        decoder_start_token_id=tokens.decoder_start, forced_bos_token_id=tokens.forced_bos,
    )
    if settings.get("cache_implementation") not in (None, "dynamic"):
        config.cache_implementation = str(settings.cache_implementation)
    if greedy:
        config.do_sample, config.top_k, config.top_p, config.temperature = False, None, None, None
    return config


def model_tokens(model) -> SpecialTokens:
    """The token ids of a loaded model (a `Policy`, or a transformers model its family prepared)."""
    return model.special_tokens if hasattr(model, "family") else family_of_model(model).tokens(model)


def model_generation_config(settings: DictConfig, model, greedy: bool = False) -> GenerationConfig:
    """`generation_config` for a loaded model (a `Policy` or a transformers model)."""
    return generation_config(settings, model_tokens(model), greedy)


def decode_responses(tokenizer, batch: Seq2SeqBatch) -> tuple[list[str], list[int]]:
    """Texts of the masked response tokens, and their lengths in tokens (EOS included)."""
    lengths = batch.mask.sum(1).long().tolist()
    texts = tokenizer.batch_decode([r[:n] for r, n in zip(batch.response_ids.tolist(), lengths)],
                                   skip_special_tokens=True)
    return texts, lengths


def generate_batches(model, tokenizer, prompts: Sequence[str], gen: GenerationConfig, batch_size: int,
                     max_input_tokens: int, max_new_tokens: int, device: torch.device) -> Iterator[Seq2SeqBatch]:
    """`model.generate` over `prompts` in batches of `batch_size` (evaluation, SFT's ROUGE,
    detox-generate); `model` is a transformers model or a `Policy` (which generates in its
    compute dtype). Yields each batch's `Seq2SeqBatch` (every generated column kept);
    max_new_tokens counts sampled tokens (a forced first token comes on top)."""
    family, tokens = family_of_model(model), model_tokens(model)
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), padding=True, truncation=True,
                        max_length=max_input_tokens, return_tensors="pt").to(device)
        sequences = model.generate(**enc, generation_config=gen,
                                   max_new_tokens=max_new_tokens + tokens.prefix_length - 1)
        yield family.to_batch(enc["input_ids"], enc["attention_mask"], sequences, tokens)


@torch.no_grad()
def sample_capped(policy, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen: GenerationConfig,
                  caps: np.ndarray, chunk: int | None, sampler: str = "detox") -> tuple[Seq2SeqBatch, torch.Tensor]:
    """The rollout's sampling: responses to B prompts, each cut at its own cap (`caps` [B]), in
    chunks of `chunk` rows (None: all at once); the batch is trimmed after its longest response.
    sampler: "detox" (`detox.models.sampling`: a row stops computing at its EOS or cap) or
    "generate" (transformers', each chunk to its largest cap; also whenever
    `cache_implementation` asks for a static cache). Also returns the encoder's last hidden states
    [B, S, H], computed once per distinct prompt of a chunk by `Policy.encode`, for the rollout's
    policy forward (`generate` is handed them and skips its own, identical, encoder pass)."""
    chunk = chunk or len(input_ids)
    own = sampler == "detox" and gen.cache_implementation in (None, "dynamic")
    caps_t = torch.as_tensor(caps, device=input_ids.device)
    pieces, states = [], []
    for i in range(0, len(input_ids), chunk):
        rows = slice(i, i + chunk)
        encoded = policy.encode(input_ids[rows], attention_mask[rows])  # a prompt sampled k times: once
        states.append(encoded.last_hidden_state)
        if own:
            with policy.autocast():
                pieces.append(sample(policy.model, policy.family, policy.special_tokens, encoded.last_hidden_state,
                                     attention_mask[rows], gen, caps_t[rows]))
        else:
            pieces.append(policy.generate(input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                                          generation_config=gen, encoder_outputs=encoded,
                                          max_new_tokens=int(caps[rows].max()) + policy.special_tokens.prefix_length - 1))
    width = max(p.shape[1] for p in pieces)
    sequences = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=gen.pad_token_id)
                           for p in pieces])
    batch = policy.family.to_batch(input_ids, attention_mask, sequences, policy.special_tokens, caps_t, trim=True)
    return batch, torch.cat(states)
