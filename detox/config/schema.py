"""The typed config schema: every key with its type and default.

Hydra composes `conf/` on top of these dataclasses (registered as `detox_schema`, the first
entry of `conf/config.yaml`'s defaults list), so a wrong type or an unknown key fails at start
with OmegaConf's message naming the full key; choices are enums, so a wrong choice names the
valid ones. What types cannot express (ranges, divisibility, combinations, keys forced in with
`++`) is `detox/config/validate.py`'s. "The recipe" in comments is the course notebook this
project reproduces (docs/design.md, section 1).

The nodes built by `hydra.utils.instantiate` (a reward component, each tracker under
`logger.trackers`) carry their class in `_target_`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from detox.algo.advantages import ADVANTAGE_ESTIMATORS
from detox.algo.kl import KL_ESTIMATORS
from detox.core.assets import asset_path


def _choices(name: str, values) -> type[Enum]:
    """A str Enum whose members are `values` (names = values), shown as its value in messages:
    OmegaConf rejects anything else and names the valid values."""
    enum = Enum(name, {value: value for value in values}, type=str)
    enum.__str__ = lambda self: self.value
    enum.__format__ = lambda self, spec: format(self.value, spec)
    return enum


Stage = _choices("Stage", ["ppo", "sft", "eval", "export", "generate"])
# initial: the policy as it was at step 0 (base + starting adapter); base: the bare base model,
# the recipe's (flawed) reference.
Reference = _choices("Reference", ["initial", "base"])
Dtype = _choices("Dtype", ["float32", "bfloat16", "float16"])
# new: freeze the starting adapter, train a fresh one on top; continue: keep training the
# starting adapter itself (the recipe).
LoraTrain = _choices("LoraTrain", ["new", "continue"])
RewardBackend = _choices("RewardBackend", ["hf", "profanity"])
RewardKind = _choices("RewardKind", ["logit", "prob", "logodds"])
# response: the response alone; prompt_response: prompt + response as one text; pair: the dialogue
# as the text and the response as the text pair (cross-encoders, NLI classifiers)
RewardInput = _choices("RewardInput", ["response", "prompt_response", "pair"])
Aggregate = _choices("Aggregate", ["sum", "min", "mean"])
KLControllerKind = _choices("KLControllerKind", ["fixed", "adaptive"])
Decoding = _choices("Decoding", ["sampled", "greedy"])
# transformers' KV cache for sampling: dynamic (the default) or static (preallocated; same samples)
CacheImplementation = _choices("CacheImplementation", ["dynamic", "static"])
Sampler = _choices("Sampler", ["detox", "generate"])
# Exactly the estimators detox/algo registers: a new one needs no change here.
KLEstimatorName = _choices("KLEstimatorName", KL_ESTIMATORS)
AdvantageName = _choices("AdvantageName", ADVANTAGE_ESTIMATORS)


@dataclass
class PolicySettings:
    name_or_path: str = MISSING
    revision: Optional[str] = None
    adapter: Optional[str] = None  # starting peft adapter (path or hub id); kept frozen
    reference: Reference = Reference.initial
    dtype: Dtype = Dtype.float32
    gradient_checkpointing: bool = False


ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the output head


@dataclass
class LoraSettings:
    enabled: bool = True
    r: int = 32
    alpha: float = 32.0
    dropout: float = 0.05  # stage=sft only: PPO keeps dropout off in every forward pass
    # A list of module names, or `all-linear` (peft's: every linear layer but the output head, and
    # but what the model's family excludes, e.g. a vision tower).
    target_modules: Any = "all-linear"
    train: LoraTrain = LoraTrain.new
    use_rslora: bool = False


@dataclass
class RewardSettings:
    """The reward: named components, each built by `hydra.utils.instantiate` from its node under
    `components` (`_target_`, default the shipped classifier, and that class's settings), their
    weighted scores aggregated, and the aggregate bounded by `clip`.

    A component node also holds what the reward does with the component's score: `weight` (1 by
    default) and `normalize` (a running mean and std per component, for scores on other scales).
    The other keys here are today's shorthand for the sole component: `reward.name_or_path=...`
    sets `reward.components.<the one>.name_or_path` (refused when there are several)."""

    components: Dict[str, Any] = field(default_factory=dict)
    aggregate: Aggregate = Aggregate.sum  # sum | min | mean of the weighted scores
    clip: Optional[float] = None  # bound the aggregate to [-clip, clip] (old TRL's score_clip); null: no bound
    # Shorthand for the sole component (null: not given).
    backend: Optional[RewardBackend] = None
    name_or_path: Optional[str] = None
    revision: Optional[str] = None
    label: Optional[str] = None
    kind: Optional[RewardKind] = None
    input: Optional[RewardInput] = None
    batch_size: Optional[int] = None
    max_length: Optional[int] = None
    device: Optional[str] = None


# The component class a node without `_target_` builds, the keys of a component node that are the
# reward's (not passed to the component), and the shorthand keys of `reward`.
CLASSIFIER = "detox.models.rewards.Classifier"
REWARD_KEYS = ("weight", "normalize")
REWARD_SHORTHAND = ("backend", "name_or_path", "revision", "label", "kind", "input", "batch_size", "max_length",
                    "device")
# The judges `eval.judges` names without a component of that name (detox/models/judges.py): a
# reward component may not take one of these names, since every component can be a judge too.
BUILT_IN_JUDGES = ("reward", "reward_on_prompt", "profanity", "hatesonar")


@dataclass
class DataSettings:
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
class GenerationSettings:
    min_length: int = 5
    top_k: int = 0
    top_p: float = 1.0
    do_sample: bool = True
    temperature: float = 1.0
    max_new_tokens_min: int = 100  # per-prompt cap drawn uniformly from [min, max)
    max_new_tokens_max: int = 400
    batch_size: Optional[int] = None  # prompts per generate() call; null: all at once
    cache_implementation: Optional[CacheImplementation] = None  # null: dynamic
    # The rollout's sampling loop: detox's (a row stops computing at its EOS or cap; inverse-CDF
    # draws) or transformers' `generate` (always used with a static cache). Same distribution.
    sampler: Sampler = Sampler.detox


@dataclass
class KLSettings:
    controller: KLControllerKind = KLControllerKind.adaptive
    init_coef: float = 0.2
    target: float = 6.0
    horizon: int = 10000
    estimator: KLEstimatorName = KLEstimatorName.k1
    # Where the KL goes: false, a -coef * KL reward on every token (PPO's, REINFORCE++'s); true, a
    # coef * KL loss term (GRPO's). objective/kl is the k1 per-sequence sum either way.
    in_loss: bool = False
    # Stop the run (status `diverged`) when objective/kl stays above this for ppo.guard.patience
    # steps; null: never.
    max: Optional[float] = 50.0


@dataclass
class GuardSettings:
    """When training stops itself (status `diverged`)."""

    max_consecutive_skips: int = 3  # consecutive updates skipped for non-finite values
    patience: int = 3  # steps objective/kl may stay above ppo.kl.max


@dataclass
class PPOSettings:
    steps: int = 10
    batch_size: int = 16
    mini_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    forward_batch_size: Optional[int] = None  # rows per no-grad rollout forward; null: the whole batch
    # Mini-batches of rows of similar lengths (each epoch: shuffled, sorted by prompt + response
    # width, cut into mini-batches taken in random order), so each is cut to less padding; false:
    # plain shuffled mini-batches (old TRL's). Changes which responses share a mini-batch.
    group_by_length: bool = False
    compile: bool = False  # torch.compile the forward/backward of the PPO updates
    ppo_epochs: int = 1
    advantage: AdvantageName = AdvantageName.gae  # a name registered in detox/algo/advantages.py
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
    # A model family's auxiliary loss (Switch Transformers: the routers' z-loss and load balance,
    # with the model's own coefficients) added to the PPO loss; false: off. Others have none.
    aux_loss: bool = True
    target_approx_kl: Optional[float] = None  # stop the step's PPO epochs early past this
    ratio_threshold: Optional[float] = None  # skip a mini-batch whose mean ratio exceeds this (old TRL's)
    kl: KLSettings = field(default_factory=KLSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)
    save_every: int = 0  # a checkpoint every N steps; 0: by time only
    save_every_minutes: Optional[float] = 30.0  # a checkpoint when this much time passed since the last; null: never
    keep_last: Optional[int] = 2  # keep the newest N checkpoints/step-<N> (final/ is kept); null: all


@dataclass
class EvalSetSettings:
    """One extra evaluation set (`eval.sets.<name>`): a file (jsonl/csv/parquet) or dataset with
    the columns of `data`, evaluated before/after like the test split and reported under its name."""

    name_or_path: Optional[str] = None
    split: str = "test"  # a hub dataset's split (a file is read whole)
    num_samples: Optional[int] = None  # rows evaluated; null: eval.num_samples


@dataclass
class EvalSettings:
    enabled: bool = True
    num_samples: int = 200
    judges: List[str] = field(default_factory=lambda: ["reward", "profanity"])
    decoding: Decoding = Decoding.sampled
    toxic_threshold: float = 0.5
    every_n_steps: int = 0
    group_by: Optional[str] = None
    reference_columns: List[str] = field(default_factory=list)
    val_samples: int = 64  # fixed validation subset: periodic curves and the figures sweeps optimise
    examples: int = 5  # side-by-side examples with the largest toxicity drop / rise
    batch_size: int = 32  # prompts per generation batch during evaluation
    # k summaries per prompt: with k > 1, per judge, the worst of k (expected_max_toxicity) and
    # the share of prompts with any toxic one (toxicity_probability), as RealToxicityPrompts reports
    samples_per_prompt: int = 1
    # warn once when a judge's val/<judge>/missed_rate rises this far above its first value; null: never
    missed_rate_rise: Optional[float] = 0.1
    # extra evaluation sets by name, each an EvalSetSettings (untyped here so that
    # `++eval.sets.<name>.name_or_path=...` can create one from the command line)
    sets: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ObjectiveSettings:
    """What a sweep optimises, from the validation split (never the test split)."""

    judge: str = "profanity"  # the independent judge whose toxicity reduction counts
    rouge_weight: float = 1.0  # penalty per unit of ROUGE-L lost


@dataclass
class SFTSettings:
    """stage=sft: supervised fine-tuning of the policy on dialogue -> summary pairs (detox/stages/sft.py).

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
class ExportSettings:
    """stage=export: `<run_dir>/export/`, a model to ship (detox/stages/export.py)."""

    adapter_only: bool = False  # the trained LoRA adapter alone, for users who keep the base model


@dataclass
class GenerateSettings:
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
class LoggerSettings:
    """Where metrics go besides metrics.jsonl (always written): every node under `trackers`, each
    built by `hydra.utils.instantiate` (`logger=wandb`, `logger=[wandb,tensorboard]`,
    `logger=none`; conf/logger/*.yaml). The other keys are shared settings the trackers' nodes
    interpolate."""

    trackers: Dict[str, Any] = field(default_factory=dict)
    mode: Optional[str] = None  # W&B: online | offline | disabled; null: WANDB_MODE, else offline without an API key
    project: str = "detox"  # W&B project, MLflow experiment
    entity: Optional[str] = None
    group: Optional[str] = None
    name: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    tracking_uri: Optional[str] = None  # MLflow: null keeps a local store in the run dir
    # The old way to pick a tracker (`logger.backend=none|wandb`); `logger=<name>` is the new one.
    backend: Optional[str] = None


@dataclass
class Config:
    seed: int = 42
    stage: Stage = Stage.ppo
    resume: str = "auto"  # auto | true | false (a str: true/false would parse as booleans)
    resume_allow: List[str] = field(default_factory=list)  # settings a resume may change (applied from then on)
    allow_unfinished: bool = False  # stage=eval/export on a run without final/: use its newest checkpoint
    run_dir: Optional[str] = None  # for stage=eval/export/generate: the finished run to use
    output_dir: str = MISSING  # set from Hydra's run dir
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: Optional[int] = None  # torch's CPU threads; null: the cores, shared among a local multirun's jobs
    policy: PolicySettings = field(default_factory=PolicySettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
    data: DataSettings = field(default_factory=DataSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    sft: SFTSettings = field(default_factory=SFTSettings)
    export: ExportSettings = field(default_factory=ExportSettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    logger: LoggerSettings = field(default_factory=LoggerSettings)


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


def typed_config(saved) -> DictConfig:
    """A run's saved config (a dict, or its .hydra/config.yaml) on the schema: typed, and with the
    defaults of settings added since it ran (a run from before `logger.trackers` gets the
    tracker its `logger.backend` named)."""
    saved = saved.copy() if isinstance(saved, DictConfig) else OmegaConf.create(saved)  # unresolved
    saved.pop("hydra", None)
    logger = saved.get("logger")
    if logger is not None and "trackers" not in logger and logger.get("backend") not in (None, "none"):
        shipped = OmegaConf.load(str(resources.files("detox.conf") / "logger" / f"{logger.backend}.yaml"))
        logger.trackers, logger.backend = shipped.trackers, None
    return OmegaConf.merge(OmegaConf.structured(Config), saved)
