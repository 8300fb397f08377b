"""The policy: a seq2seq LM (+ LoRA) with a value head, its family adapter, and its frozen
reference. How the policy a run starts from is assembled (base model, adapter scheme) is
`detox/models/assembly.py`'s; how its family is called is `detox/models/families.py`'s.

Everything the RL loop and the evaluation ask of a model goes through `Policy`: `generate`,
`encode`, the forward pass of a `Seq2SeqBatch` (logits aligned with its response tokens, values,
the decoder's last hidden state) and the reference's logits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from peft import PeftModel
from torch import nn

from detox.models.families import Seq2SeqBatch, Seq2SeqFamily, SpecialTokens, family_of

TRAIN_ADAPTER = "default"
START_ADAPTER = "start"
REFERENCE_ADAPTER = "reference"


class ValueHead(nn.Module):
    """A linear head on the decoder's last hidden state, kept in fp32."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.float()).squeeze(-1)


@dataclass
class PolicyOutput:
    """A forward pass of a `Seq2SeqBatch`: logits [B, T, V] at the sampling temperature, where
    position t scores response token t; values [B, T] read at the same position (None without a
    value head or when not asked for); the decoder's last hidden state [B, T, H] (only when
    kept); the family's auxiliary loss (None for most families)."""

    logits: torch.Tensor
    values: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None


class Policy(nn.Module):
    """A seq2seq LM with a value head, and a `reference()` context for the frozen reference.

    reference_mode: "disable" (the model with its trained adapter disabled), "adapter" (a
    frozen copy of the starting adapter, set active) or "copy" (`reference_model`, a frozen
    full copy); see the table at the top of detox/models/assembly.py."""

    def __init__(self, model: nn.Module, reference_mode: str, reference_model: nn.Module | None = None,
                 family: Seq2SeqFamily | None = None):
        super().__init__()
        self.model = model
        self.family = family or family_of(model.config)
        self.special_tokens: SpecialTokens = self.family.tokens(model)
        self.value_head = ValueHead(self.family.hidden_size(model.config))
        self.reference_mode = reference_mode
        self.reference_model = reference_model
        # The sampling temperature: log-probs (and so the ratio and the KL) are those of the
        # distribution responses are sampled from.
        self.temperature = 1.0
        # Half-precision full fine-tuning: fp32 weights (AdamW's updates of ~1e-5 would round away
        # in bf16) and this dtype for the compute, by autocast. None: the weights' own dtype.
        self.compute_dtype: torch.dtype | None = None
        # Gradient checkpointing: transformers recomputes activations only in training mode, so
        # the model stays in train mode, every dropout probability set to 0 (see `train`).
        self.checkpointing = False
        # `ppo.compile`: the grad-enabled forwards (the PPO updates) through torch.compile; a
        # plain function, not a registered module, so parameter names and checkpoints do not change.
        self.compiled_call = None

    @property
    def config(self):
        return self.model.config

    @property
    def eos_token_id(self) -> int | list[int]:
        return self.special_tokens.eos

    def compile(self) -> None:
        """Compile the forward of the PPO updates (dynamic shapes: prompt and response widths
        change every step). Generation and the no-grad rollout forwards stay eager."""
        model = self.model
        self.compiled_call = torch.compile(lambda **inputs: model(**inputs), dynamic=True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> "Policy":
        """As nn.Module's; but with gradient checkpointing the LM stays in train mode, where alone
        transformers checkpoints (and only when grad is on: generation keeps its cache). Every
        dropout probability is 0 then, so train mode computes exactly what eval mode does."""
        super().train(mode)
        if self.checkpointing:
            self.model.train()
        return self

    def autocast(self):
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=next(self.model.parameters()).device.type, dtype=self.compute_dtype)

    def _tempered(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.temperature == 1.0 else logits / self.temperature

    def generate(self, **kwargs) -> torch.Tensor:
        """`model.generate` in the policy's compute dtype."""
        with self.autocast():
            return self.model.generate(**kwargs)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The encoder's outputs (as `generate` computes them), in the compute dtype: passed to
        `generate` and to `forward`, one encoder pass serves both. A prompt that comes k times
        (ppo.samples_per_prompt) is encoded once."""
        unique, inverse, first = distinct_rows(input_ids)
        with self.autocast():
            out = self.family.encode(self.model, unique, attention_mask[first])
        out.last_hidden_state = out.last_hidden_state[inverse]
        return out

    def forward(self, batch: Seq2SeqBatch, *, with_values: bool = True, detach_values: bool = False,
                encoder_states: torch.Tensor | None = None, keep_hidden: bool = False,
                aux_loss: bool = False) -> PolicyOutput:
        """Logits, values and (with keep_hidden) the decoder's last hidden state of `batch`.

        encoder_states [B, S, H] (from `encode`, rows matching) skip the encoder.
        detach_values: the value loss then trains the head alone, not the (shared) decoder
        under it. aux_loss: also the family's auxiliary loss (None for most families)."""
        head = self.value_head if with_values else None
        call = self.compiled_call if self.compiled_call is not None and torch.is_grad_enabled() else None
        encoder_outputs = None if encoder_states is None else self.family.encoder_outputs(encoder_states)
        with self.autocast():
            out = self.family.forward(self.model, batch, self.special_tokens, encoder_outputs=encoder_outputs,
                                      call=call, keep_hidden=keep_hidden or head is not None, aux_loss=aux_loss)
        values = None if head is None else head(out.hidden.detach() if detach_values else out.hidden)
        return PolicyOutput(self._tempered(out.logits), values, out.hidden if keep_hidden else None, out.aux_loss)

    @torch.no_grad()
    def reference_logits(self, batch: Seq2SeqBatch) -> torch.Tensor:
        """The frozen reference's logits [B, T, V] for `batch`, at the sampling temperature. A
        prompt that comes k times is encoded once, as `encode` does for sampling."""
        unique, inverse, first = distinct_rows(batch.input_ids)
        with self.reference() as ref, self.autocast():
            outputs = None
            if len(unique) < len(batch):
                states = self.family.encode(ref, unique, batch.attention_mask[first]).last_hidden_state
                outputs = self.family.encoder_outputs(states[inverse])
            return self._tempered(self.family.forward(ref, batch, self.special_tokens, encoder_outputs=outputs).logits)

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """The frozen reference model (shares weights with the policy where it can)."""
        if self.reference_mode == "copy":
            yield self.reference_model
            return
        # peft re-marks adapters trainable when it re-enables or activates them (a frozen
        # starting adapter included): snapshot the flags and restore them afterwards.
        flags = {n: p.requires_grad for n, p in self.model.named_parameters()}
        try:
            if self.reference_mode == "disable":
                with self.model.disable_adapter():
                    yield self.model
            else:
                self.model.set_adapter(REFERENCE_ADAPTER)
                try:
                    yield self.model
                finally:
                    self.model.set_adapter(TRAIN_ADAPTER)
        finally:
            for n, p in self.model.named_parameters():
                p.requires_grad_(flags[n])

    def save_adapter(self, path: str) -> None:
        if isinstance(self.model, PeftModel):
            self.model.save_pretrained(path, selected_adapters=[TRAIN_ADAPTER])
        else:
            self.model.save_pretrained(path)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t.detach().cpu().clone() for n, t in self.state_dict().items() if n in names}


def distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The distinct rows of x [B, S] (a prompt sampled k times is one): (unique [U, S], inverse
    [B]: each row's index in unique, first [U]: a row of x for each unique one)."""
    unique, inverse = torch.unique(x, dim=0, return_inverse=True)
    first = torch.zeros(len(unique), dtype=torch.long, device=inverse.device).scatter_(
        0, inverse, torch.arange(len(inverse), device=inverse.device))
    return unique, inverse, first


def count_parameters(*modules: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of `modules` (a policy: its model and value head, not the
    frozen reference copy of full fine-tuning)."""
    params = [p for m in modules for p in m.parameters()]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
