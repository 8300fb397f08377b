"""The policy: a seq2seq LM (+ LoRA) with a value head, and its frozen reference.

Adapters (docs/design.md, "Conventions"). A PPO run starts from `policy.adapter` (if any) and trains a
FRESH adapter of rank `lora.r` on top, so the reference (the policy at step 0) costs no second
copy of the weights:

| adapter | lora.train | policy.reference | how                                                     |
|---------|------------|------------------|---------------------------------------------------------|
| none    | -          | either           | fresh adapter; reference = adapter disabled              |
| given   | new        | initial          | merge start into base, fresh adapter; ref = disabled     |
| given   | new        | base             | start frozen + fresh, both active; ref = all disabled    |
| given   | continue   | base (recipe)    | train the start itself; ref = adapter disabled           |
| given   | continue   | initial          | train the start; ref = a frozen copy of it ("reference") |

`lora.enabled=false` trains every weight; the reference is then a frozen full copy.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase

from detox.errors import ConfigError, LoadError
from detox.hub import friendly_load_error

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TRAIN_ADAPTER = "default"
START_ADAPTER = "start"
REFERENCE_ADAPTER = "reference"


def load_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    with friendly_load_error("policy.name_or_path", cfg.name_or_path):
        return AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision)


def load_base_model(cfg: DictConfig) -> nn.Module:
    with friendly_load_error("policy.name_or_path", cfg.name_or_path):
        return AutoModelForSeq2SeqLM.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, dtype=DTYPES[cfg.dtype]
        )


def check_target_modules(model: nn.Module, targets: list[str]) -> None:
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    linear_names = sorted(
        {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    )
    missing = [t for t in targets if t not in leaf_names]
    if missing:
        raise ConfigError(
            f"lora.target_modules {missing} are not modules of {type(model).__name__}; its linear "
            f"layers are named {linear_names}. Set e.g. lora.target_modules=[q,v]."
        )


def load_adapter(model: nn.Module, path: str, name: str, trainable: bool) -> PeftModel:
    if not (os.path.isdir(path) or "/" in path):
        raise LoadError(f"policy.adapter={path!r} is neither an existing folder nor a hub id.")
    with friendly_load_error("policy.adapter", path):
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(path, adapter_name=name, is_trainable=trainable)
                return model
            return PeftModel.from_pretrained(model, path, adapter_name=name, is_trainable=trainable)
        except RuntimeError as e:  # size mismatch: an adapter made for another base model
            raise LoadError(
                f"policy.adapter={path!r} does not fit policy.name_or_path: {str(e)[:400]}\n"
                "Use the adapter saved by a run of the same base model."
            ) from e


class ValueHead(nn.Module):
    """A linear head on the decoder's last hidden state, kept in fp32."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.summary.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.float()).squeeze(-1)


class Policy(nn.Module):
    """A seq2seq LM with a value head, and a `reference()` context for the frozen reference."""

    def __init__(self, model: nn.Module, reference_mode: str, reference_model: nn.Module | None = None):
        super().__init__()
        self.model = model
        hidden = model.config.d_model if hasattr(model.config, "d_model") else model.config.hidden_size
        self.value_head = ValueHead(hidden)
        self.reference_mode = reference_mode  # "disable" | "adapter" | "copy"
        self.reference_model = reference_model

    @property
    def config(self):
        return self.model.config

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor,
        with_values: bool = True, detach_values: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, T, V] and values [B, T] for decoder inputs [B, T].

        Position t holds the logits that produced token t+1 of the decoder sequence, and the
        value is read at the same position. detach_values: the value loss then trains the head
        alone, not the (shared) decoder under it.
        """
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            output_hidden_states=with_values, use_cache=False,
        )
        values = None
        if with_values:
            hidden = out.decoder_hidden_states[-1]
            values = self.value_head(hidden.detach() if detach_values else hidden)
        return out.logits, values

    @torch.no_grad()
    def reference_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor
    ) -> torch.Tensor:
        with self.reference() as ref:
            return ref(
                input_ids=input_ids, attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids, use_cache=False,
            ).logits

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


def build_policy(policy_cfg: DictConfig, lora_cfg: DictConfig) -> Policy:
    """Load the base model, apply the adapter scheme of the module docstring, add a value head."""
    model = load_base_model(policy_cfg)
    adapter = policy_cfg.adapter
    reference_is_base = policy_cfg.reference == "base"

    if not lora_cfg.enabled:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # we pin the one helper we use
        from trl.experimental.utils import create_reference_model

        if adapter:
            model = load_adapter(model, adapter, TRAIN_ADAPTER, trainable=False).merge_and_unload()
        reference = create_reference_model(model)
        if reference_is_base and adapter:
            raise ConfigError("policy.reference=base with a merged adapter and lora.enabled=false is "
                              "not supported; use lora.enabled=true.")
        return _finish(Policy(model, "copy", reference), policy_cfg)

    check_target_modules(model, list(lora_cfg.target_modules))
    fresh = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM, r=lora_cfg.r, lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout, target_modules=list(lora_cfg.target_modules),
        use_rslora=lora_cfg.use_rslora,
    )
    if adapter is None:
        return _finish(Policy(get_peft_model(model, fresh), "disable"), policy_cfg)
    if lora_cfg.train == "continue":
        peft_model = load_adapter(model, adapter, TRAIN_ADAPTER, trainable=True)
        if reference_is_base:
            return _finish(Policy(peft_model, "disable"), policy_cfg)
        load_adapter(peft_model, adapter, REFERENCE_ADAPTER, trainable=False)
        peft_model.set_adapter(TRAIN_ADAPTER)
        _freeze_adapter(peft_model, REFERENCE_ADAPTER)
        return _finish(Policy(peft_model, "adapter"), policy_cfg)
    if not reference_is_base:
        merged = load_adapter(model, adapter, START_ADAPTER, trainable=False).merge_and_unload()
        return _finish(Policy(get_peft_model(merged, fresh), "disable"), policy_cfg)
    peft_model = load_adapter(model, adapter, START_ADAPTER, trainable=False)
    peft_model.add_adapter(TRAIN_ADAPTER, fresh)
    peft_model.base_model.set_adapter([START_ADAPTER, TRAIN_ADAPTER])
    _freeze_adapter(peft_model, START_ADAPTER)
    return _finish(Policy(peft_model, "disable"), policy_cfg)


def _freeze_adapter(model: nn.Module, name: str) -> None:
    for n, p in model.named_parameters():
        if f".{name}." in n:
            p.requires_grad_(False)


def _finish(policy: Policy, policy_cfg: DictConfig) -> Policy:
    if policy_cfg.gradient_checkpointing:
        policy.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(policy.model, "enable_input_require_grads"):
            policy.model.enable_input_require_grads()
    # Dropout off everywhere (rollout, reference and PPO passes): at the first mini-batch the
    # ratio is then exactly 1 and the KL to an initial reference exactly 0.
    policy.eval()
    return policy


def count_parameters(*modules: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of `modules` (a policy: its model and value head, not the
    frozen reference copy of full fine-tuning)."""
    params = [p for m in modules for p in m.parameters()]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
