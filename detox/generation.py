"""Generation shared by the PPO rollout, evaluation and SFT: sampling settings from config,
batched `generate`, response masks and decoding.

Responses are the decoder tokens after the decoder start token, up to and including the
first EOS (`ppo.response_mask`); see docs/design.md, "Conventions".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import GenerationConfig

from detox import ppo


def generation_config(gen: DictConfig, model_config, greedy: bool = False) -> GenerationConfig:
    """Decoding settings from config alone: a checkpoint's own generation_config (beams,
    repetition penalties, ...) must not change the sampling distribution PPO assumes.
    greedy: the same settings with sampling off (evaluation's `greedy`, SFT's ROUGE)."""
    config = GenerationConfig(
        do_sample=gen.do_sample, top_k=gen.top_k, top_p=gen.top_p, temperature=gen.temperature,
        min_length=gen.min_length, num_beams=1,
        pad_token_id=model_config.pad_token_id, eos_token_id=model_config.eos_token_id,
        decoder_start_token_id=model_config.decoder_start_token_id,
    )
    if gen.get("cache_implementation") not in (None, "dynamic"):
        config.cache_implementation = gen.cache_implementation
    if greedy:
        config.do_sample, config.top_k, config.top_p, config.temperature = False, None, None, None
    return config


def decode_responses(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[str], list[int]]:
    """Texts of the masked response tokens, and their lengths in tokens (EOS included)."""
    lengths = mask.sum(1).long().tolist()
    texts = tokenizer.batch_decode([r[:n] for r, n in zip(response_ids.tolist(), lengths)],
                                   skip_special_tokens=True)
    return texts, lengths


def generate_batches(model, tokenizer, prompts: Sequence[str], gen: GenerationConfig, batch_size: int,
                     max_input_tokens: int, max_new_tokens: int, device: torch.device):
    """`model.generate` over `prompts` in batches of `batch_size` (evaluation, SFT's ROUGE);
    `model` is a transformers model or a `Policy` (which generates in its compute dtype).

    Yields per batch: enc (the tokenized prompts), seqs [B, 1 + T] (the decoder start token
    first), response_ids = seqs[:, 1:] [B, T], and their mask [B, T] (1 up to and including
    the first EOS)."""
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), padding=True, truncation=True,
                        max_length=max_input_tokens, return_tensors="pt").to(device)
        seqs = model.generate(**enc, generation_config=gen, max_new_tokens=max_new_tokens)
        response_ids = seqs[:, 1:]
        yield enc, seqs, response_ids, ppo.response_mask(response_ids, model.config.eos_token_id)


@torch.no_grad()
def generate_capped(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, gen: GenerationConfig,
                    caps: np.ndarray, chunk: int | None, *, keep_encoder_states: bool = False):
    """Decoder sequences [B, 1 + L] (decoder start token first), sampled in chunks of `chunk`
    rows (None: all at once), each chunk up to its largest per-prompt cap; shorter chunks are
    right-padded. Cutting each response at its own cap is the caller's (`ppo.response_mask`).

    keep_encoder_states (`model` a `Policy`): also return the encoder's last hidden states
    [B, S, H], computed once per distinct prompt of a chunk by `Policy.encode` and handed to
    `generate` (which then skips its own, identical, encoder pass), so the rollout's policy
    forward can reuse them."""
    chunk = chunk or len(input_ids)
    pieces, states = [], []
    for i in range(0, len(input_ids), chunk):
        rows = slice(i, i + chunk)
        extra = {}
        if keep_encoder_states:
            # A prompt sampled k times (ppo.samples_per_prompt) is encoded once.
            unique, inverse = torch.unique(input_ids[rows], dim=0, return_inverse=True)
            first = torch.zeros(len(unique), dtype=torch.long, device=inverse.device).scatter_(
                0, inverse, torch.arange(len(inverse), device=inverse.device))
            encoded = model.encode(unique, attention_mask[rows][first])
            encoded.last_hidden_state = encoded.last_hidden_state[inverse]
            extra["encoder_outputs"] = encoded
            states.append(encoded.last_hidden_state)
        pieces.append(model.generate(input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                                     generation_config=gen, max_new_tokens=int(caps[rows].max()), **extra))
    width = max(p.shape[1] for p in pieces)
    pad = model.config.pad_token_id
    sequences = torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=pad) for p in pieces])
    return (sequences, torch.cat(states)) if keep_encoder_states else sequences
