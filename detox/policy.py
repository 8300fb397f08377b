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
import logging
import os
from typing import Iterator

import torch
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedTokenizerBase

from detox.errors import ConfigError, LoadError
from detox.hub import friendly_load_error, model_kind

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TRAIN_ADAPTER = "default"
START_ADAPTER = "start"
REFERENCE_ADAPTER = "reference"


def load_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    with friendly_load_error("policy.name_or_path", cfg.name_or_path):
        return AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision)


def check_policy(cfg: DictConfig) -> None:
    """From the model's config alone: the policy must be an encoder-decoder (seq2seq) LM."""
    with friendly_load_error("policy.name_or_path", cfg.name_or_path):
        config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision)
    if not getattr(config, "is_encoder_decoder", False):
        raise LoadError(f"policy.name_or_path={cfg.name_or_path!r} is a {model_kind(config)}, not an encoder-decoder "
                        "(seq2seq) language model; detox trains seq2seq summarizers such as T5 / FLAN-T5.")


def load_base_model(cfg: DictConfig, dtype: str | None = None) -> nn.Module:
    """The base model in `policy.dtype` (or `dtype`)."""
    with friendly_load_error("policy.name_or_path", cfg.name_or_path):
        return AutoModelForSeq2SeqLM.from_pretrained(
            cfg.name_or_path, revision=cfg.revision, dtype=DTYPES[dtype or cfg.dtype]
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
            lines = [line.strip() for line in str(e).splitlines() if "size mismatch" in line] or [str(e)]
            raise LoadError(
                f"policy.adapter={path!r} does not fit policy.name_or_path ({lines[0][:240]}); use the adapter "
                "saved by a run of the same base model."
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
        `generate` and to `decode`, one encoder pass serves both."""
        with self.autocast():
            return self.model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)

    def decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor, *,
        encoder_outputs=None, keep_hidden: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, T, V] (at the sampling temperature) for decoder inputs [B, T], and the
        decoder's last hidden state [B, T, H] (None unless keep_hidden). `encoder_outputs`
        (from `encode`, rows matching) skips the encoder.

        Only the last hidden state is kept: `output_hidden_states=True` would hold every
        encoder and decoder layer's states, so a hook on the decoder takes its output.
        """
        hidden: list[torch.Tensor] = []
        hook = self.model.get_decoder().register_forward_hook(
            lambda module, args, out: hidden.append(out[0])) if keep_hidden else None
        call = self.compiled_call if self.compiled_call is not None and torch.is_grad_enabled() else self.model
        try:
            with self.autocast():
                out = call(
                    input_ids=None if encoder_outputs is not None else input_ids, attention_mask=attention_mask,
                    encoder_outputs=encoder_outputs, decoder_input_ids=decoder_input_ids, use_cache=False,
                )
        finally:
            if hook is not None:
                hook.remove()
        return self._tempered(out.logits), hidden[-1] if keep_hidden else None

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor,
        with_values: bool = True, detach_values: bool = False, encoder_outputs=None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, T, V] and values [B, T] (None without a value head) for decoder inputs [B, T].

        Position t holds the logits that produced token t+1 of the decoder sequence, and the
        value is read at the same position. detach_values: the value loss then trains the head
        alone, not the (shared) decoder under it.
        """
        logits, hidden = self.decode(input_ids, attention_mask, decoder_input_ids, encoder_outputs=encoder_outputs,
                                     keep_hidden=with_values and self.value_head is not None)
        values = None if hidden is None else self.value_head(hidden.detach() if detach_values else hidden)
        return logits, values

    @torch.no_grad()
    def reference_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor
    ) -> torch.Tensor:
        with self.reference() as ref, self.autocast():
            return self._tempered(ref(
                input_ids=input_ids, attention_mask=attention_mask,
                decoder_input_ids=decoder_input_ids, use_cache=False,
            ).logits)

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


def build_policy(policy_cfg: DictConfig, lora_cfg: DictConfig, temperature: float = 1.0,
                 value_head: bool = True) -> Policy:
    """Load the base model, apply the adapter scheme of the module docstring, add a value head
    (value_head=False: none, for critic-free estimators). temperature: the sampling
    temperature the policy's log-probs are taken at."""
    policy = assemble_policy(policy_cfg, lora_cfg)
    if not value_head:
        policy.value_head = None
    policy.temperature = float(temperature)
    if policy_cfg.gradient_checkpointing:
        enable_gradient_checkpointing(policy.model)
        _zero_dropout(policy.model)
        policy.checkpointing = True
    if lora_cfg.enabled and lora_cfg.dropout:
        log.info("lora.dropout=%s has no effect in PPO: dropout is off in every forward pass, so that the "
                 "ratio starts at 1 and the KL at 0 (it does act in stage=sft)", lora_cfg.dropout)
    # Dropout off everywhere (rollout, reference and PPO passes): at the first mini-batch the
    # ratio is then exactly 1 and the KL to an initial reference exactly 0.
    policy.eval()
    return policy


def enable_gradient_checkpointing(model: nn.Module) -> None:
    # transformers 5 renamed it; peft models forward the attribute to the wrapped model
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    if hasattr(model, "enable_input_require_grads"):  # the frozen embeddings' output must carry grad
        model.enable_input_require_grads()


def _zero_dropout(model: nn.Module) -> None:
    """Every dropout probability of `model` set to 0, so its train mode computes what eval does."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for attr in ("dropout", "attention_dropout", "activation_dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, 0.0)


def assemble_policy(policy_cfg: DictConfig, lora_cfg: DictConfig) -> Policy:
    """The base model with the adapter scheme of the module docstring and a value head, as
    loaded (no PPO settings: dropout and train mode are the caller's). In bf16/fp16 the model
    computes under autocast in that dtype while what trains (LoRA adapters, or every weight in
    full fine-tuning) keeps fp32 weights: mixed precision."""
    policy = _assemble(policy_cfg, lora_cfg)
    policy.compute_dtype = DTYPES[policy_cfg.dtype] if policy_cfg.dtype != "float32" else None
    return policy


def _assemble(policy_cfg: DictConfig, lora_cfg: DictConfig) -> Policy:
    half = policy_cfg.dtype != "float32"
    # Full fine-tuning keeps fp32 weights and computes in the half dtype (see Policy.compute_dtype).
    model = load_base_model(policy_cfg, dtype="float32" if half and not lora_cfg.enabled else None)
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
        return Policy(model, "copy", reference)

    check_target_modules(model, list(lora_cfg.target_modules))
    fresh = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM, r=lora_cfg.r, lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout, target_modules=list(lora_cfg.target_modules),
        use_rslora=lora_cfg.use_rslora,
    )
    if adapter is None:
        return Policy(get_peft_model(model, fresh), "disable")
    if lora_cfg.train == "continue":
        peft_model = load_adapter(model, adapter, TRAIN_ADAPTER, trainable=True)
        if reference_is_base:
            return Policy(peft_model, "disable")
        load_adapter(peft_model, adapter, REFERENCE_ADAPTER, trainable=False)
        peft_model.set_adapter(TRAIN_ADAPTER)
        _freeze_adapter(peft_model, REFERENCE_ADAPTER)
        return Policy(peft_model, "adapter")
    if not reference_is_base:
        merged = load_adapter(model, adapter, START_ADAPTER, trainable=False).merge_and_unload()
        return Policy(get_peft_model(merged, fresh), "disable")
    peft_model = load_adapter(model, adapter, START_ADAPTER, trainable=False)
    peft_model.add_adapter(TRAIN_ADAPTER, fresh)
    peft_model.base_model.set_adapter([START_ADAPTER, TRAIN_ADAPTER])
    _freeze_adapter(peft_model, START_ADAPTER)
    return Policy(peft_model, "disable")


def _freeze_adapter(model: nn.Module, name: str) -> None:
    for n, p in model.named_parameters():
        if f".{name}." in n:
            p.requires_grad_(False)


def count_parameters(*modules: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of `modules` (a policy: its model and value head, not the
    frozen reference copy of full fine-tuning)."""
    params = [p for m in modules for p in m.parameters()]
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
