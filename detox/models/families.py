"""Model families: how detox calls one encoder-decoder family, in one place.

Everything that runs a seq2seq model (the policy, decoding, evaluation, SFT's summaries,
detox-generate) reaches it through its family adapter: the hidden size and special tokens
from the model's config, the encoder pass, the decoder's forward with the value head's input
(its last hidden state), which generated tokens are the response, and the family's auxiliary
loss. Outside this module nothing touches decoder inputs or encoder states: they travel inside
a `Seq2SeqBatch`.

A family is a `Seq2SeqFamily` subclass registered with `@register_family(<model_type>, ...)`
(`config.model_type`). `family_of(config)` returns the registered adapter, else the generic one,
which fits any encoder-decoder LM whose config and model look like T5's or BART's
(`d_model` / `hidden_size`, `get_encoder()` / `get_decoder()`); anything else is refused with
one line before weights load. Adding a family is one subclass here (or none) and a test.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, GenerationConfig
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

from detox.algo.tokens import response_mask
from detox.core.errors import LoadError
from detox.core.hub import model_kind


@dataclass
class Seq2SeqBatch:
    """Prompts and sampled responses of B rows, as their family feeds them to the model.

    input_ids, attention_mask: [B, S] the encoder's prompt tokens.
    decoder_input_ids: [B, T'] what the decoder reads (T' >= T: the family's start tokens
        and the response but its last token); only the family interprets it.
    response_ids: [B, T] the sampled tokens; the model's logits at response position t score
        response_ids[:, t] (`Seq2SeqFamily.forward` aligns them).
    mask: [B, T] float, 1 on response tokens: up to and including the first EOS, within each
        row's cap (`detox.algo.tokens.response_mask`).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    decoder_input_ids: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return len(self.input_ids)

    def rows(self, index: torch.Tensor | slice) -> "Seq2SeqBatch":
        return Seq2SeqBatch(self.input_ids[index], self.attention_mask[index], self.decoder_input_ids[index],
                            self.response_ids[index], self.mask[index])

    def row_widths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, on the CPU: the prompt's used width (1 + its last attended column) and the
        response's (1 + its last masked column), each [B] long (at least 1). One host sync, the
        first time (the rollout's forwards and the update read the same batch's)."""
        return self._widths[0], self._widths[1]

    @cached_property
    def _widths(self) -> torch.Tensor:  # [2, B]
        columns = torch.arange(1, self.input_ids.shape[1] + 1, device=self.input_ids.device)
        prompt = (self.attention_mask.ne(0) * columns).amax(1)
        columns = torch.arange(1, self.mask.shape[1] + 1, device=self.mask.device)
        response = (self.mask.ne(0) * columns).amax(1)
        return torch.stack([prompt, response]).clamp(min=1).cpu()

    def cut_rows(self, index: torch.Tensor) -> "Seq2SeqBatch":
        """Rows `index` (CPU indices) cut to their own widest prompt and widest response (`cut`):
        a rollout chunk's or an update micro-batch's forward computes no column none of them uses."""
        prompt, response = self._widths[:, index].amax(1).tolist()
        return self.rows(index.to(self.input_ids.device)).cut(prompt, response)

    def cut(self, prompt: int, response: int) -> "Seq2SeqBatch":
        """These rows with only the first `prompt` prompt columns and `response` response columns.
        Cutting trailing columns no row uses changes no kept position's values (to float rounding:
        other shapes, other kernel blocking): the encoder masks padding and the decoder is causal.
        Leading columns are never cut: that would shift a left-padded prompt's absolute positions."""
        if prompt == self.input_ids.shape[1] and response == self.response_ids.shape[1]:
            return self
        prefix = self.decoder_input_ids.shape[1] - self.response_ids.shape[1]  # the family's start tokens - 1
        return Seq2SeqBatch(self.input_ids[:, :prompt], self.attention_mask[:, :prompt],
                            self.decoder_input_ids[:, :prefix + response], self.response_ids[:, :response],
                            self.mask[:, :response])


@dataclass(frozen=True)
class SpecialTokens:
    """A model's token ids for decoding. forced_bos: a token its checkpoint forces right after
    the decoder start (BART summarizers' `<s>`): part of the decoder's prefix, never a sampled
    action, so it is outside every response mask, log-prob and KL."""

    pad: int
    eos: int | list[int]
    decoder_start: int
    forced_bos: int | None = None

    @property
    def prefix_length(self) -> int:
        """Tokens `generate` puts before the first sampled one."""
        return 1 if self.forced_bos is None else 2


@dataclass
class FamilyOutput:
    """One forward pass, aligned with the batch's response tokens: logits [B, T, V], the
    decoder's last hidden state [B, T, H] (None unless asked for), and the family's
    auxiliary loss (0-dim; None for families without one)."""

    logits: torch.Tensor
    hidden: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class Seq2SeqFamily:
    """The generic encoder-decoder adapter (T5, mT5, BART, Pegasus, Marian, ...). Subclasses
    override what their family does differently."""

    name = "encoder-decoder"
    auto_class = AutoModelForSeq2SeqLM  # what loads a checkpoint of the family

    # ------------------------------------------------------------------ the config
    def check(self, config) -> None:
        """Refuse, before weights load, a model this adapter cannot run: LoadError whose message
        reads after the model's name ("<name> is a ...")."""
        if not getattr(config, "is_encoder_decoder", False):
            raise LoadError(f"is a {model_kind(config)}, not an encoder-decoder (seq2seq) language model; detox "
                            "trains seq2seq summarizers such as T5 / FLAN-T5 or BART.")
        self.hidden_size(config)
        self.special_tokens(config)

    def hidden_size(self, config) -> int:
        """The width of the decoder's last hidden state (the value head's input), from the
        decoder's own config where a family nests it (T5Gemma's `config.decoder`)."""
        for source in (config.get_text_config(decoder=True), config):
            for name in ("d_model", "hidden_size"):
                if isinstance(getattr(source, name, None), int):
                    return getattr(source, name)
        raise LoadError(f"is a {config.model_type!r} model, whose config names no d_model or hidden_size (the "
                        "value head's input width): it needs a family adapter (detox/models/families.py).")

    def special_tokens(self, config, generation_config=None) -> SpecialTokens:
        """From the config, then the checkpoint's generation config (where transformers 5 keeps
        what older configs held); the decoder starts with BOS when nothing names its start
        token, as `generate` does (T5Gemma)."""
        sources = [config, config.get_text_config(decoder=True), generation_config]

        def first(name: str):
            return next((getattr(s, name) for s in sources if s is not None and getattr(s, name, None) is not None),
                        None)

        values = {k: first(f"{k}_token_id") for k in ("pad", "eos", "decoder_start")}
        if values["decoder_start"] is None:
            values["decoder_start"] = first("bos_token_id")
        missing = [f"{k}_token_id" for k, v in values.items() if v is None]
        if missing:
            raise LoadError(f"is a {config.model_type!r} model, whose config names no {', '.join(missing)}: it "
                            "needs a family adapter (detox/models/families.py).")
        forced = getattr(generation_config, "forced_bos_token_id", None)
        return SpecialTokens(**values, forced_bos=forced)

    # ------------------------------------------------------------------ the model
    def prepare(self, model: nn.Module) -> SpecialTokens:
        """Make a loaded model decode as detox says and nothing else: its checkpoint's generation
        config (beams, n-gram blocking, length penalties, a forced final EOS, min/max lengths)
        would change the distribution PPO samples from and scores, so only its token ids stay,
        a forced first token included (it is part of the decoder's prefix). Returns those ids."""
        tokens = self.special_tokens(model.config, model.generation_config)
        model.generation_config = GenerationConfig(
            pad_token_id=tokens.pad, eos_token_id=tokens.eos, decoder_start_token_id=tokens.decoder_start,
            bos_token_id=getattr(model.generation_config, "bos_token_id", None), forced_bos_token_id=tokens.forced_bos)
        return tokens

    def tokens(self, model: nn.Module) -> SpecialTokens:
        """A (prepared) model's token ids."""
        return self.special_tokens(model.config, getattr(model, "generation_config", None))

    def encode(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The encoder's outputs, as `generate` computes them (a `BaseModelOutput`)."""
        return model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)

    def encoder_outputs(self, states: torch.Tensor):
        """Encoder states [B, S, H] (from `encode`) in the form `forward` and `generate` take."""
        return BaseModelOutput(last_hidden_state=states)

    def decode_step(self, model: nn.Module, encoder_outputs, attention_mask: torch.Tensor,
                    decoder_input_ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        """One cached decoding step, as `generate` calls the model: the next-token logits [b, V]
        after `decoder_input_ids` [b, n] (the tokens the cache has not seen), and the cache
        (None on the first step: the model makes one)."""
        out = model(attention_mask=attention_mask, encoder_outputs=encoder_outputs,
                    decoder_input_ids=decoder_input_ids, use_cache=True, **{CACHE_KEYWORD: cache})
        return out.logits[:, -1], getattr(out, CACHE_KEYWORD)

    def decoder(self, model: nn.Module) -> nn.Module:
        """The module whose output's first element is the decoder's last hidden state."""
        return model.get_decoder()

    def forward(self, model: nn.Module, batch: Seq2SeqBatch, tokens: SpecialTokens, *, encoder_outputs=None,
                keep_hidden: bool = False, call: Callable | None = None, aux_loss: bool = False) -> FamilyOutput:
        """Logits [B, T, V] of every response position (and the decoder's last hidden state,
        kept by a hook on `decoder(model)`: `output_hidden_states` would hold every layer's).
        `encoder_outputs` (from `encode`, rows matching) skips the encoder; `call`: what runs
        the model instead of `model(...)` (a compiled call); aux_loss: compute the family's
        auxiliary loss, if it has one."""
        hidden: list[torch.Tensor] = []
        hook = self.decoder(model).register_forward_hook(
            lambda module, args, out: hidden.append(out[0])) if keep_hidden else None
        try:
            out = (call or model)(input_ids=None if encoder_outputs is not None else batch.input_ids,
                                  attention_mask=batch.attention_mask, encoder_outputs=encoder_outputs,
                                  decoder_input_ids=batch.decoder_input_ids, use_cache=False,
                                  **self.forward_kwargs(aux_loss))
        finally:
            if hook is not None:
                hook.remove()
        skip = tokens.prefix_length - 1  # logits that score forced tokens are not the policy's choices
        return FamilyOutput(logits=out.logits[:, skip:], hidden=hidden[-1][:, skip:] if keep_hidden else None,
                            aux_loss=self.aux_loss(out, model.config) if aux_loss else None)

    def lora_exclude(self, targets: str | list[str]) -> list[str] | None:
        """Modules `lora.target_modules=all-linear` must leave alone (peft's `exclude_modules`)."""
        return None

    def forward_kwargs(self, aux_loss: bool) -> dict[str, Any]:
        """What the model's forward needs besides the batch (to compute its auxiliary loss)."""
        return {}

    def aux_loss(self, output: Any, config) -> torch.Tensor | None:
        """The family's auxiliary training loss, with the model's own coefficients (a mixture of
        experts' router losses); None for families without one."""
        return None

    def describe_aux_loss(self, config) -> str | None:
        """What the auxiliary loss is, for the log; None when the family has none."""
        return None

    # ------------------------------------------------------------------ generated sequences
    def to_batch(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, sequences: torch.Tensor,
                 tokens: SpecialTokens, caps: torch.Tensor | None = None, trim: bool = False) -> Seq2SeqBatch:
        """A `Seq2SeqBatch` from `generate`'s sequences [B, prefix + L]: the response is what
        follows the prefix (the decoder start, and a forced BOS), masked up to and including the
        first EOS and within `caps` [B] (counted in sampled tokens). trim: cut the columns after
        the longest response (else all L are kept)."""
        prefix = tokens.prefix_length
        response_ids = sequences[:, prefix:]
        mask = response_mask(response_ids, tokens.eos, caps)
        width = int(mask.sum(1).max()) if trim else response_ids.shape[1]
        decoder_input_ids = sequences[:, : prefix - 1 + width]
        return Seq2SeqBatch(input_ids, attention_mask, decoder_input_ids, response_ids[:, :width], mask[:, :width])


# transformers 5.x renamed `past_key_values` (in and out of a model's forward) to `cache`.
CACHE_KEYWORD = "cache" if "cache" in Seq2SeqLMOutput.__dataclass_fields__ else "past_key_values"
FAMILIES: dict[str, Seq2SeqFamily] = {}
GENERIC = Seq2SeqFamily()
log = logging.getLogger(__name__)


def register_family(*model_types: str):
    """Class decorator: the adapter for models whose `config.model_type` is one of `model_types`."""

    def register(cls: type[Seq2SeqFamily]) -> type[Seq2SeqFamily]:
        for model_type in model_types:
            if model_type in FAMILIES:
                raise ValueError(f"model type {model_type!r} already has a family adapter")
            FAMILIES[model_type] = cls()
        return cls

    return register


# Seq2seq LMs transformers ships that detox cannot train, and why: refused before weights load.
_NO_HIDDEN_STATE = "returns vocabulary logits from its decoder module, not a hidden state the value head could read"
UNSUPPORTED = {
    "prophetnet": "predicts several future tokens at once (n-gram streams), not one next-token distribution to sample "
                  "from and score",
    "xlm-prophetnet": "predicts several future tokens at once (n-gram streams), not one next-token distribution to "
                      "sample from and score",
    "nllb-moe": "shares its routers' expert capacity among all the tokens of a batch, so a token's log-prob depends on "
                "the other responses of its mini-batch (the PPO ratio would not start at 1)",
    "fsmt": _NO_HIDDEN_STATE,
    "encoder-decoder": _NO_HIDDEN_STATE + " (its decoder is a whole language model)",
    **{t: "reads audio (a speech model): detox summarizes text" for t in (
        "seamless_m4t", "seamless_m4t_v2", "audioflamingo3", "musicflamingo", "glmasr", "granite_speech",
        "granite_speech_plus", "moss_transcribe_diarize", "nemo_speechlm", "omniasr", "qwen2_audio", "qwen3_asr",
        "vibevoice_asr", "voxtral", "voxtral_realtime")},
}


def family_of(config, subject: str = "the model") -> Seq2SeqFamily:
    """The adapter for a model of this config: its registered family, else the generic one;
    LoadError (one line, about `subject`) when neither can run it."""
    model_type = getattr(config, "model_type", None)
    if model_type in UNSUPPORTED:
        raise LoadError(f"{subject} is a {model_type!r} model, which detox cannot train: it {UNSUPPORTED[model_type]}.")
    family = FAMILIES.get(model_type, GENERIC)
    try:
        family.check(config)
    except LoadError as e:
        raise LoadError(f"{subject} {e}") from None
    return family


def family_of_model(model: nn.Module) -> Seq2SeqFamily:
    """The adapter of a loaded model: a `Policy`'s own, else by its config."""
    return getattr(model, "family", None) or family_of(model.config)


# ------------------------------------------------------------------------------ families that differ
@register_family("switch_transformers")
class SwitchTransformers(Seq2SeqFamily):
    """Switch Transformers, a mixture of experts (T5's layout otherwise). Its forward reads router
    logits off the encoder's output, so reused encoder states travel in its own output class. Its
    routers drop a token once an expert has served `expert_capacity` tokens of a sequence: a
    teacher-forced pass would then route the later tokens of a long response differently from
    cached generation (one token at a time), and its log-probs would not be those of the sampled
    distribution; detox lifts the capacity so no token is dropped. The routers' z-loss and
    load-balancing loss (the model's own coefficients) join the PPO loss (`ppo.aux_loss`)."""

    name = "switch_transformers"
    UNLIMITED = 1 << 30

    def prepare(self, model: nn.Module) -> SpecialTokens:
        from transformers.models.switch_transformers.modeling_switch_transformers import (
            SwitchTransformersTop1Router,
        )

        routers = [m for m in model.modules() if isinstance(m, SwitchTransformersTop1Router)]
        if routers and routers[0].expert_capacity < self.UNLIMITED:
            log.info("switch_transformers: expert capacity lifted from %d to unlimited, so a teacher-forced pass "
                     "routes every token as generation does", routers[0].expert_capacity)
        for router in routers:
            router.expert_capacity = self.UNLIMITED
        return super().prepare(model)

    def encoder_outputs(self, states: torch.Tensor):
        from transformers.modeling_outputs import MoEModelOutput

        return MoEModelOutput(last_hidden_state=states)

    def forward_kwargs(self, aux_loss: bool) -> dict[str, Any]:
        return {"output_router_logits": aux_loss}

    def aux_loss(self, output: Any, config) -> torch.Tensor:
        z = output.encoder_z_loss + output.decoder_z_loss
        balance = output.encoder_aux_loss + output.decoder_aux_loss
        return torch.as_tensor(config.router_z_loss_coef * z + config.router_aux_loss_coef * balance)

    def describe_aux_loss(self, config) -> str:
        return (f"the routers' z-loss x {config.router_z_loss_coef:g} and load-balancing loss x "
                f"{config.router_aux_loss_coef:g}")


@register_family("t5gemma2")
class T5Gemma2(Seq2SeqFamily):
    """T5Gemma 2 is multimodal: its encoder holds a vision tower beside the text model. detox uses
    the text path (prompts are text), so `all-linear` LoRA leaves the vision modules alone."""

    name = "t5gemma2"

    def lora_exclude(self, targets: str | list[str]) -> list[str] | str | None:
        return r".*(vision_tower|multi_modal_projector).*" if targets == "all-linear" else None
