"""Typed config schema.

Hydra composes `conf/` on top of these dataclasses (registered as `detox_schema`, the first
entry of `conf/config.yaml`'s defaults list), so a wrong type or an unknown key fails at
start with OmegaConf's message naming the full key. Checks that types cannot express
(ranges, divisibility, template placeholders) live in `validate`. "The recipe" in comments is
the course notebook this project reproduces (docs/design.md, section 1).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from detox import ppo
from detox.errors import ConfigError
from detox.overrides import hydra_overrides, override_key, under

__all__ = ["Config", "ConfigError", "register", "validate", "asset_path"]


def _choices(name: str, values) -> type[Enum]:
    """A str Enum whose members are `values` (names = values): OmegaConf rejects anything else
    and names the valid values."""
    return Enum(name, {value: value for value in values}, type=str)


Stage = _choices("Stage", ["ppo", "sft", "eval", "export", "generate"])
# initial: the policy as it was at step 0 (base + starting adapter); base: the bare base model,
# the recipe's (flawed) reference.
Reference = _choices("Reference", ["initial", "base"])
RewardBackend = _choices("RewardBackend", ["hf", "profanity"])
RewardKind = _choices("RewardKind", ["logit", "prob", "logodds"])
RewardInput = _choices("RewardInput", ["response", "prompt_response"])
KLControllerKind = _choices("KLControllerKind", ["fixed", "adaptive"])
LoggerBackend = _choices("LoggerBackend", ["wandb", "none"])
# Exactly the estimators detox/ppo.py registers: a new one needs no change here.
KLEstimator = _choices("KLEstimator", ppo.KL_ESTIMATORS)
AdvantageEstimator = _choices("AdvantageEstimator", ppo.ADVANTAGE_ESTIMATORS)


@dataclass
class PolicyConfig:
    name_or_path: str = MISSING
    revision: Optional[str] = None
    adapter: Optional[str] = None  # starting peft adapter (path or hub id); kept frozen
    reference: Reference = Reference.initial
    dtype: str = "float32"  # float32 | bfloat16 | float16
    gradient_checkpointing: bool = False


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.05  # stage=sft only: PPO keeps dropout off in every forward pass
    target_modules: List[str] = field(default_factory=lambda: ["q", "v"])
    # new: freeze the starting adapter, train a fresh one on top; continue: keep training the
    # starting adapter itself (the recipe). A str, since `continue` cannot name an Enum member.
    train: str = "new"
    use_rslora: bool = False


@dataclass
class RewardConfig:
    backend: RewardBackend = RewardBackend.hf
    name_or_path: Optional[str] = None
    revision: Optional[str] = None
    label: str = "nothate"  # the class whose score is the reward, resolved via id2label
    kind: RewardKind = RewardKind.logit
    input: RewardInput = RewardInput.response
    batch_size: int = 16
    max_length: int = 512
    device: Optional[str] = None  # null: the policy's device
    clip: Optional[float] = None  # bound the score to [-clip, clip] (old TRL's score_clip); null: no bound


@dataclass
class DataConfig:
    name_or_path: str = MISSING
    split: str = "train"
    id_column: Optional[str] = None
    dialogue_column: str = "dialogue"
    summary_column: str = "summary"
    min_chars: int = 200  # keep 200 < len(dialogue) <= 1000, as the recipe did
    max_chars: int = 1000
    test_size: float = 0.2  # a fraction of the filtered set
    val_size: float = 0.0  # a fraction of the filtered set, taken from what test leaves
    shuffle: bool = True
    split_seed: int = 42
    prompt_template: str = "\nSummarize the following conversation.\n\n{dialogue}\n\nSummary:\n"
    max_input_tokens: int = 512


@dataclass
class GenerationConfig:
    min_length: int = 5
    top_k: int = 0
    top_p: float = 1.0
    do_sample: bool = True
    temperature: float = 1.0
    max_new_tokens_min: int = 100  # per-prompt cap drawn uniformly from [min, max)
    max_new_tokens_max: int = 400
    batch_size: Optional[int] = None  # prompts per generate() call; null: all at once
    # transformers' KV cache for sampling: null (dynamic) or static (preallocated; same samples)
    cache_implementation: Optional[str] = None


@dataclass
class KLConfig:
    controller: KLControllerKind = KLControllerKind.adaptive
    init_coef: float = 0.2
    target: float = 6.0
    horizon: int = 10000
    estimator: KLEstimator = KLEstimator.k1
    # Where the KL goes: false, a -coef * KL reward on every token (PPO's, REINFORCE++'s); true, a
    # coef * KL loss term (GRPO's). objective/kl is the k1 per-sequence sum either way.
    in_loss: bool = False
    # Stop the run (status `diverged`) when objective/kl stays above this for ppo.guard.patience
    # steps; null: never.
    max: Optional[float] = 50.0


@dataclass
class GuardConfig:
    """When training stops itself (status `diverged`)."""

    max_consecutive_skips: int = 3  # consecutive updates skipped for non-finite values
    patience: int = 3  # steps objective/kl may stay above ppo.kl.max


@dataclass
class PPOConfig:
    steps: int = 10
    batch_size: int = 16
    mini_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    forward_batch_size: Optional[int] = None  # rows per no-grad rollout forward; null: the whole batch
    compile: bool = False  # torch.compile the forward/backward of the PPO updates
    ppo_epochs: int = 1
    advantage: AdvantageEstimator = AdvantageEstimator.gae  # a name registered in detox/ppo.py
    samples_per_prompt: int = 1  # k responses per prompt; each step samples batch_size / k prompts
    grpo_scale_std: bool = True  # grpo: divide by the group's std (false: Dr. GRPO)
    learning_rate: float = 1.41e-5
    value_learning_rate: Optional[float] = None  # the value head's; null: learning_rate
    value_warmup_steps: int = 0  # first steps train only the value head (veRL's critic warmup)
    adam_eps: float = 1e-8
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    max_grad_norm: Optional[float] = None
    whiten_rewards: bool = False
    target_approx_kl: Optional[float] = None  # stop the step's PPO epochs early past this
    ratio_threshold: Optional[float] = None  # skip a mini-batch whose mean ratio exceeds this (old TRL's)
    kl: KLConfig = field(default_factory=KLConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    save_every: int = 0  # a checkpoint every N steps; 0: by time only
    save_every_minutes: Optional[float] = 30.0  # a checkpoint when this much time passed since the last; null: never
    keep_last: Optional[int] = 2  # keep the newest N checkpoints/step-<N> (final/ is kept); null: all


@dataclass
class EvalConfig:
    enabled: bool = True
    num_samples: int = 200
    judges: List[str] = field(default_factory=lambda: ["reward", "profanity"])
    decoding: str = "sampled"  # sampled | greedy
    toxic_threshold: float = 0.5
    every_n_steps: int = 0
    group_by: Optional[str] = None
    reference_columns: List[str] = field(default_factory=list)
    val_samples: int = 64  # fixed validation subset: periodic curves and the figures sweeps optimise
    examples: int = 5  # side-by-side examples with the largest toxicity drop / rise
    batch_size: int = 32  # prompts per generation batch during evaluation


@dataclass
class ObjectiveConfig:
    """What a sweep optimises, from the validation split (never the test split)."""

    judge: str = "profanity"  # the independent judge whose toxicity reduction counts
    rouge_weight: float = 1.0  # penalty per unit of ROUGE-L lost


@dataclass
class SFTConfig:
    """stage=sft: supervised fine-tuning of the policy on dialogue -> summary pairs (detox/sft.py).

    LoRA (the `lora` group's shape) unless lora.enabled=false; the defaults are the recipe's
    earlier LoRA step (lr 1e-3, one epoch). Training arguments map onto Seq2SeqTrainingArguments.
    """

    epochs: float = 1.0
    max_steps: Optional[int] = None  # stop after this many optimizer steps (overrides epochs)
    learning_rate: float = 1e-3
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    lr_scheduler: str = "linear"  # any transformers SchedulerType: linear, cosine, constant, ...
    warmup_steps: float = 0.0  # steps, or a fraction of all steps when in [0, 1)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    group_by_length: bool = False  # batch similar lengths together (less padding)
    max_target_tokens: int = 128  # summaries are truncated to this many tokens (EOS included)
    logging_steps: int = 10
    save_steps: int = 0  # >0: a trainer checkpoint every N steps that a rerun resumes from
    eval_samples: Optional[int] = None  # test dialogues for ROUGE before/after; null: all
    eval_batch_size: int = 32
    eval_max_new_tokens: int = 128
    ppo_experiment: Optional[str] = None  # the preset the printed follow-up PPO command uses


@dataclass
class ExportConfig:
    """stage=export: `<run_dir>/export/`, a model to ship (detox/export.py)."""

    adapter_only: bool = False  # the trained LoRA adapter alone, for users who keep the base model


@dataclass
class GenerateConfig:
    """stage=generate (= `detox-generate`): summarize new dialogues with a trained policy.

    The dialogues' column is `data.dialogue_column` (ids from `data.id_column` when present);
    a run or export brings its own prompt template and input truncation, a plain model takes
    `data.prompt_template` / `data.max_input_tokens`."""

    model: Optional[str] = None  # a run dir, an export folder, or a seq2seq path / hub id; null: run_dir
    input: Optional[str] = None  # .jsonl / .csv / .parquet / a text file (blank-line-separated); null or -: stdin
    output: Optional[str] = None  # a .jsonl to write; null or -: stdout
    compare: bool = False  # also the starting policy's summary (`start_summary`)
    judges: List[str] = field(default_factory=list)  # eval.judges' names: each summary's P(toxic) by each
    sample: bool = False  # sample with the run's generation settings (seed: `seed`); default greedy
    batch_size: int = 16
    max_new_tokens: Optional[int] = None  # null: generation.max_new_tokens_max (what evaluation uses)


@dataclass
class LoggerConfig:
    backend: LoggerBackend = LoggerBackend.wandb
    mode: Optional[str] = None  # online | offline | disabled; null: WANDB_MODE, else offline without an API key
    project: str = "detox"
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class Config:
    seed: int = 42
    stage: Stage = Stage.ppo
    resume: str = "auto"  # auto | true | false
    resume_allow: List[str] = field(default_factory=list)  # settings a resume may change (applied from then on)
    allow_unfinished: bool = False  # stage=eval/export on a run without final/: use its newest checkpoint
    run_dir: Optional[str] = None  # for stage=eval/export/generate: the finished run to use
    output_dir: str = MISSING  # set from Hydra's run dir
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch's CPU threads; null: the cores, shared among a local multirun's jobs
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def asset_path(name: str = "") -> str:
    """Absolute path of a file shipped in `detox/assets` (works for editable and wheel installs)."""
    return str(resources.files("detox") / "assets" / name)


def hydra_subdir(stage: str) -> str:
    """Where Hydra keeps a job's config in its run dir: `.hydra`, and `.hydra-<stage>` for the
    stages that read another run's `.hydra/` (and may be pointed at that run's dir)."""
    stage = getattr(stage, "value", stage)  # the schema's enum, or the raw string
    return ".hydra" if stage in ("ppo", "sft") else f".hydra-{stage}"


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name="detox_schema", node=Config)
    if not OmegaConf.has_resolver("detox_asset"):
        OmegaConf.register_new_resolver("detox_asset", asset_path)
    if not OmegaConf.has_resolver("detox_hydra_subdir"):
        OmegaConf.register_new_resolver("detox_hydra_subdir", hydra_subdir)


def _positive(cfg: Any, key: str, *, allow_zero: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    if value is None or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} is invalid: it must be {bound}. Override it, e.g. `{key}=...`.")


def check_template(template: str, key: str = "data.prompt_template") -> None:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # an unmatched brace
        raise ConfigError(f"{key} is not a valid template ({e}); write literal braces as {{{{ and }}}}.") from e
    if fields != ["dialogue"]:
        raise ConfigError(f"{key} must contain the placeholder {{dialogue}} once and no other "
                          f"(it has {['{' + f + '}' for f in fields] or 'none'}); write literal braces as {{{{ and }}}}.")


def _check_device(key: str, name: str | None) -> None:
    if name is None or name == "auto":
        return
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"{key}={name!r} is not a device: use auto, cpu, cuda or cuda:N.") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}={name} but this machine has no usable CUDA GPU (torch "
                              f"{torch.__version__}); use {key}=cpu, or auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}={name} but there are {torch.cuda.device_count()} GPUs (cuda:0 ..).")


# Settings only a value head (a critic) uses: refused with a critic-free estimator when given.
VALUE_ONLY_KEYS = ("ppo.vf_coef", "ppo.cliprange_value", "ppo.value_learning_rate", "ppo.value_warmup_steps",
                   "ppo.lam")


def _check_estimator(cfg: DictConfig) -> None:
    name, k = cfg.ppo.advantage.value, cfg.ppo.samples_per_prompt
    if cfg.ppo.batch_size % k:
        raise ConfigError(f"ppo.batch_size={cfg.ppo.batch_size} is not divisible by ppo.samples_per_prompt={k}: "
                          "each step samples batch_size / samples_per_prompt prompts.")
    if name in ("rloo", "grpo") and k < 2:
        raise ConfigError(f"ppo.advantage={name} compares the responses to one prompt: set ppo.samples_per_prompt "
                          ">= 2 (e.g. `ppo=rloo`, which sets 4).")
    if not ppo.ADVANTAGE_ESTIMATORS[name].uses_values:
        given = [key for key in map(override_key, hydra_overrides()) if under(key, VALUE_ONLY_KEYS)]
        if given:
            raise ConfigError(f"{', '.join(given)} only act on a value head, and ppo.advantage={name} has none "
                              "(it is critic-free): drop them, or use ppo.advantage=gae.")


def validate(cfg: DictConfig) -> None:
    """Checks the schema's types cannot express. Raises ConfigError naming the key and the fix."""
    for key in ("ppo.steps", "ppo.batch_size", "ppo.mini_batch_size", "ppo.ppo_epochs",
                "ppo.learning_rate", "ppo.gradient_accumulation_steps", "ppo.kl.target",
                "ppo.kl.horizon", "reward.batch_size", "reward.max_length",
                "data.max_input_tokens", "data.max_chars", "generation.max_new_tokens_min",
                "generation.max_new_tokens_max", "lora.r", "generation.temperature", "eval.num_samples", "eval.val_samples",
                "eval.batch_size"):
        _positive(cfg, key)
    for key in ("ppo.guard.max_consecutive_skips", "ppo.guard.patience", "ppo.samples_per_prompt"):
        _positive(cfg, key)
    for key in ("ppo.kl.max", "ppo.save_every_minutes", "ppo.keep_last", "ppo.ratio_threshold", "reward.clip"):
        if OmegaConf.select(cfg, key) is not None:
            _positive(cfg, key)
    for key in ("ppo.kl.init_coef", "ppo.save_every", "data.min_chars", "generation.min_length",
                "ppo.cliprange", "ppo.cliprange_value", "ppo.vf_coef", "ppo.value_warmup_steps", "data.test_size",
                "data.val_size", "eval.every_n_steps", "eval.examples"):
        _positive(cfg, key, allow_zero=True)
    if cfg.ppo.value_learning_rate is not None:
        _positive(cfg, "ppo.value_learning_rate")
    for key in ("generation.batch_size", "ppo.forward_batch_size", "threads"):
        if OmegaConf.select(cfg, key) is not None:
            _positive(cfg, key)
    if cfg.generation.cache_implementation not in (None, "dynamic", "static"):
        raise ConfigError(f"generation.cache_implementation={cfg.generation.cache_implementation!r} is not a KV "
                          "cache detox supports: use null (dynamic) or static.")
    if cfg.ppo.batch_size % cfg.ppo.mini_batch_size:
        raise ConfigError(
            f"ppo.batch_size={cfg.ppo.batch_size} is not divisible by ppo.mini_batch_size="
            f"{cfg.ppo.mini_batch_size}: pick sizes such that batch_size % mini_batch_size == 0."
        )
    _check_estimator(cfg)
    micro = cfg.ppo.mini_batch_size // cfg.ppo.gradient_accumulation_steps
    if micro * cfg.ppo.gradient_accumulation_steps != cfg.ppo.mini_batch_size:
        raise ConfigError(
            f"ppo.mini_batch_size={cfg.ppo.mini_batch_size} is not divisible by "
            f"ppo.gradient_accumulation_steps={cfg.ppo.gradient_accumulation_steps}."
        )
    if cfg.generation.max_new_tokens_min >= cfg.generation.max_new_tokens_max:
        raise ConfigError(
            "generation.max_new_tokens_min must be < generation.max_new_tokens_max (the cap is "
            f"drawn from [min, max)); got {cfg.generation.max_new_tokens_min} and "
            f"{cfg.generation.max_new_tokens_max}."
        )
    if cfg.data.min_chars >= cfg.data.max_chars:
        raise ConfigError(
            f"data.min_chars={cfg.data.min_chars} must be < data.max_chars={cfg.data.max_chars}."
        )
    if not 0 < cfg.data.test_size + cfg.data.val_size < 1:
        raise ConfigError(
            "data.test_size + data.val_size must be in (0, 1) (fractions of the filtered set); "
            f"got {cfg.data.test_size} + {cfg.data.val_size}."
        )
    check_template(cfg.data.prompt_template)
    for key, low, high, what in (
        ("generation.top_p", 0.0, 1.0, "a probability mass in (0, 1]"),
        ("eval.toxic_threshold", 0.0, 1.0, "a probability in [0, 1]"),
        ("ppo.gamma", 0.0, 1.0, "a discount in [0, 1]"),
        ("ppo.lam", 0.0, 1.0, "the GAE lambda, in [0, 1]"),
        ("lora.dropout", 0.0, 1.0, "a probability in [0, 1)"),
    ):
        value = OmegaConf.select(cfg, key)
        bad = value > high or value < low or (key == "generation.top_p" and value == 0) or (
            key == "lora.dropout" and value == 1)
        if bad:
            raise ConfigError(f"{key}={value} is invalid: it is {what}.")
    if cfg.generation.top_k < 0:
        raise ConfigError(f"generation.top_k={cfg.generation.top_k} is invalid: use 0 (off) or a positive count.")
    for key in ("device", "reward.device"):
        _check_device(key, OmegaConf.select(cfg, key))
    if cfg.policy.dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(
            f"policy.dtype={cfg.policy.dtype!r} is unknown: use float32, bfloat16 or float16."
        )
    if str(cfg.resume).lower() not in ("auto", "true", "false"):
        raise ConfigError(f"resume={cfg.resume!r} is unknown: use auto, true or false.")
    if cfg.lora.train not in ("new", "continue"):
        raise ConfigError(f"lora.train={cfg.lora.train!r} is unknown: use new or continue.")
    if cfg.eval.decoding not in ("sampled", "greedy"):
        raise ConfigError(f"eval.decoding={cfg.eval.decoding!r} is unknown: use sampled or greedy.")
    if cfg.reward.backend == RewardBackend.hf and not cfg.reward.name_or_path:
        raise ConfigError("reward.name_or_path is required with reward.backend=hf.")
    if not cfg.lora.enabled and cfg.policy.adapter and cfg.lora.train == "new":
        raise ConfigError(
            "lora.enabled=false (full fine-tuning) with a starting policy.adapter: the adapter "
            "would be merged and then nothing trains it as an adapter. Use lora.enabled=true."
        )
    for key in ("sft.epochs", "sft.learning_rate", "sft.batch_size", "sft.gradient_accumulation_steps",
                "sft.max_target_tokens", "sft.logging_steps", "sft.eval_batch_size", "sft.eval_max_new_tokens"):
        _positive(cfg, key)
    for key in ("sft.warmup_steps", "sft.weight_decay", "sft.max_grad_norm", "sft.save_steps"):
        _positive(cfg, key, allow_zero=True)
    for key in ("sft.max_steps", "sft.eval_samples"):
        if OmegaConf.select(cfg, key) is not None:
            _positive(cfg, key)
    if cfg.stage == Stage.sft and cfg.policy.adapter:
        raise ConfigError(
            f"stage=sft trains policy.name_or_path itself; a starting policy.adapter={cfg.policy.adapter!r} "
            "is not supported. Merge it into its base model (peft merge_and_unload, save_pretrained) and "
            "pass that folder as policy.name_or_path, or set policy.adapter=null."
        )
    if cfg.stage in (Stage.eval, Stage.export) and not cfg.run_dir:
        raise ConfigError(f"stage={cfg.stage.value} needs run_dir=<the run dir to {cfg.stage.value}>.")
    if cfg.stage == Stage.generate and not (cfg.generate.model or cfg.run_dir):
        raise ConfigError("stage=generate needs the model to summarize with: run_dir=<a run dir>, or "
                          "generate.model=<a run dir, an export folder, or a seq2seq model path / hub id>.")
    _positive(cfg, "generate.batch_size")
    if cfg.generate.max_new_tokens is not None:
        _positive(cfg, "generate.max_new_tokens")
