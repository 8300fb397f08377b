"""The policy a run starts from: its family checked from the config alone, the base model
loaded, the adapter scheme applied, a value head added.

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

import logging
import os

import torch
from omegaconf import DictConfig
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase
from transformers.activations import NewGELUActivation

try:
    from transformers.activations import GELUTanh
except ImportError:  # its name before transformers 5.x renamed it
    from transformers.activations import PytorchGELUTanh as GELUTanh

from detox.config.schema import ALL_LINEAR
from detox.core.errors import ConfigError, LoadError
from detox.core.hub import friendly_load_error
from detox.models.families import Seq2SeqFamily, family_of
from detox.models.policy import REFERENCE_ADAPTER, START_ADAPTER, TRAIN_ADAPTER, Policy

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(cfg: DictConfig) -> PreTrainedTokenizerBase:
    with friendly_load_error("policy.name_or_path", cfg.name_or_path):
        return AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision)


def check_policy(cfg: DictConfig) -> Seq2SeqFamily:
    """From the model's config alone: the family adapter that runs it (LoadError naming
    policy.name_or_path when none can)."""
    with friendly_load_error("policy.name_or_path", cfg.name_or_path):
        config = AutoConfig.from_pretrained(cfg.name_or_path, revision=cfg.revision)
    return family_of(config, f"policy.name_or_path={cfg.name_or_path!r}")


def load_base_model(cfg: DictConfig, dtype: str | None = None) -> nn.Module:
    """The base model in `policy.dtype` (or `dtype`), by its family's loader, prepared by its
    family (`Seq2SeqFamily.prepare`: decoding settings from detox's config alone)."""
    family = check_policy(cfg)
    with friendly_load_error("policy.name_or_path", cfg.name_or_path):
        model = family.auto_class.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                                  dtype=DTYPES[dtype or cfg.dtype])
    family.prepare(model)
    fuse_activations(model)
    return model


def fuse_activations(model: nn.Module) -> int:
    """One-kernel versions of two layers FLAN-T5 writes as chains of elementwise ops, each op
    keeping its output for the backward: transformers' `NewGELUActivation` (`gelu_new`) becomes
    its `GELUTanh`, the same tanh approximation ("equivalent ... much faster; not an exact
    numerical match due to rounding", in transformers' words: logits move by ~1e-6), and T5's
    RMS norm (`T5LayerNorm` and its copies in mT5, UMT5, LongT5, Switch) becomes
    `torch.nn.functional.rms_norm` in fp32, as T5 computes it. A tiny T5 update micro-batch's
    forward and backward took 0.80x the time with the first, 0.90x of that with the second.
    Returns how many modules were swapped."""
    swapped, norms = 0, T5_NORMS if hasattr(nn.functional, "rms_norm") else ()  # torch >= 2.4
    for module in model.modules():
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, GELUTanh())
            elif type(child).__name__ in norms:
                setattr(module, name, FusedT5Norm(child))
            else:
                continue
            swapped += 1
    return swapped


T5_NORMS = {"T5LayerNorm", "MT5LayerNorm", "UMT5LayerNorm", "LongT5LayerNorm", "SwitchTransformersLayerNorm"}


class FusedT5Norm(nn.Module):
    """T5's RMS norm (no mean subtraction, no bias; the variance in fp32, the result in the
    weight's dtype) in one `rms_norm` call. It holds the norm's own weight: names and checkpoints
    are unchanged."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.weight, self.variance_epsilon = norm.weight, norm.variance_epsilon

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):  # fp32 under any autocast policy
            out = nn.functional.rms_norm(hidden.float(), (hidden.shape[-1],), self.weight.float(),
                                         self.variance_epsilon)
        return out.to(self.weight.dtype)


def lora_targets(lora_cfg: DictConfig) -> str | list[str]:
    """`lora.target_modules` as peft takes it: `all-linear`, or a list of names."""
    targets = lora_cfg.target_modules
    return targets if isinstance(targets, str) else list(targets)


def check_target_modules(model: nn.Module, targets: str | list[str]) -> None:
    if targets == ALL_LINEAR:
        return
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

    targets = lora_targets(lora_cfg)
    check_target_modules(model, targets)
    fresh = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM, r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
        target_modules=targets, exclude_modules=family_of(model.config).lora_exclude(targets),
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
