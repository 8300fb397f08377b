"""The checks the schema's types cannot express, run once on a composed config before anything
loads: keys forced in with `++` that the schema does not know, ranges, divisibility, a
template's placeholders, devices, and combinations of settings. Each raises `ConfigError`
naming the key and the fix.

The ranges are tables: a key is added to a check by adding it to a tuple.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import string
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from detox.algo.advantages import ADVANTAGE_ESTIMATORS
from detox.config import schema
from detox.config.schema import (
    ALL_LINEAR,
    BUILT_IN_JUDGES,
    CLASSIFIER,
    REWARD_KEYS,
    REWARD_SHORTHAND,
    Config,
    RewardBackend,
    RewardInput,
    RewardKind,
    Stage,
)
from detox.core.errors import ConfigError
from detox.core.overrides import hydra_overrides, override_key, under

# > 0
POSITIVE = ("ppo.steps", "ppo.batch_size", "ppo.mini_batch_size", "ppo.ppo_epochs", "ppo.learning_rate",
            "ppo.gradient_accumulation_steps", "ppo.kl.target", "ppo.kl.horizon", "ppo.guard.max_consecutive_skips",
            "ppo.guard.patience", "ppo.samples_per_prompt", "data.max_input_tokens", "data.max_chars", "generation.max_new_tokens_min",
            "generation.max_new_tokens_max", "generation.temperature", "lora.r", "eval.num_samples",
            "eval.val_samples", "eval.batch_size", "eval.samples_per_prompt", "sft.epochs", "sft.learning_rate", "sft.batch_size",
            "sft.gradient_accumulation_steps", "sft.max_target_tokens", "sft.logging_steps", "sft.eval_batch_size",
            "sft.eval_max_new_tokens", "generate.batch_size")
# > 0 or null
POSITIVE_OR_NULL = ("ppo.kl.max", "ppo.save_every_minutes", "ppo.keep_last", "ppo.ratio_threshold", "reward.clip",
                    "ppo.value_learning_rate", "generation.batch_size", "ppo.forward_batch_size", "threads",
                    "sft.max_steps", "sft.eval_samples", "generate.max_new_tokens")
# >= 0
NON_NEGATIVE = ("ppo.kl.init_coef", "ppo.save_every", "data.min_chars", "generation.min_length", "ppo.cliprange",
                "ppo.cliprange_value", "ppo.vf_coef", "ppo.value_warmup_steps", "data.test_size", "data.val_size",
                "eval.every_n_steps", "eval.examples", "generation.top_k", "sft.warmup_steps", "sft.weight_decay",
                "sft.max_grad_norm", "sft.save_steps")
# key: (low, high, low included, high included, what it is)
INTERVALS = {
    "generation.top_p": (0.0, 1.0, False, True, "a probability mass in (0, 1]"),
    "eval.toxic_threshold": (0.0, 1.0, True, True, "a probability in [0, 1]"),
    "eval.missed_rate_rise": (0.0, 1.0, False, True, "a rise of a rate, in (0, 1], or null"),
    "ppo.gamma": (0.0, 1.0, True, True, "a discount in [0, 1]"),
    "ppo.lam": (0.0, 1.0, True, True, "the GAE lambda, in [0, 1]"),
    "lora.dropout": (0.0, 1.0, True, False, "a probability in [0, 1)"),
}
# (smaller, larger): smaller must be < larger
ORDERED = (("generation.max_new_tokens_min", "generation.max_new_tokens_max",
            "the cap is drawn from [min, max)"),
           ("data.min_chars", "data.max_chars", "dialogues are kept when min < len <= max"))
# (batch, part): batch must be a multiple of part
DIVISIBLE = (("ppo.batch_size", "ppo.mini_batch_size", "each PPO epoch splits the batch into mini-batches"),
             ("ppo.mini_batch_size", "ppo.gradient_accumulation_steps", "each mini-batch is split into micro-batches"),
             ("ppo.batch_size", "ppo.samples_per_prompt", "each step samples batch_size / samples_per_prompt prompts"))
# Settings only a value head (a critic) uses: refused with a critic-free estimator when given.
VALUE_ONLY_KEYS = ("ppo.vf_coef", "ppo.cliprange_value", "ppo.value_learning_rate", "ppo.value_warmup_steps",
                   "ppo.lam")
# Nodes whose keys are free (each tracker's and reward component's settings are its class's).
OPEN_NODES = ("logger.trackers", "reward.components")
# What a shipped classifier component's node may hold, and its choices.
CLASSIFIER_KEYS = ("_target_", *REWARD_KEYS, *REWARD_SHORTHAND)
CLASSIFIER_CHOICES = {"backend": RewardBackend, "kind": RewardKind, "input": RewardInput}


def validate(cfg: DictConfig) -> None:
    """Every check of this module; ConfigError naming the key and the fix. It also folds the
    reward's shorthand keys into its sole component (`fold_reward_shorthand`)."""
    fold_reward_shorthand(cfg.reward)
    check_known_keys(cfg)
    check_reward(cfg.reward)
    check_ranges(cfg)
    check_sizes(cfg)
    check_estimator(cfg)
    check_template(cfg.data.prompt_template)
    for key in ("device", "reward.device"):
        check_device(key, OmegaConf.select(cfg, key))
    check_combinations(cfg)
    check_eval_sets(cfg.eval.sets)
    check_stage(cfg)


def check_known_keys(cfg: DictConfig, schema: type = Config, prefix: str = "") -> None:
    """Keys the schema does not know, however they arrived (`++ppo.stepz=5` forces one past the
    typed merge, which would otherwise drop it without a word)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in cfg.keys():
        full = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; the keys of {prefix[:-1] or 'the config'} are {sorted(fields)}"
            raise ConfigError(f"{full} is not a setting detox knows (forced in with ++?){hint}")
        field_type = _dataclass_of(fields[key].type)
        node = cfg._get_node(key)
        if field_type is not None and isinstance(node, DictConfig) and not under(full, OPEN_NODES):
            check_known_keys(node, field_type, f"{full}.")


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass a schema field holds (annotations are strings under `from __future__`)."""
    candidate = getattr(schema, annotation, None) if isinstance(annotation, str) else annotation
    return candidate if dataclasses.is_dataclass(candidate) else None


def _fail(key: str, value: Any, what: str) -> None:
    raise ConfigError(f"{key}={value} is invalid: {what}.")


def check_ranges(cfg: DictConfig) -> None:
    for key in POSITIVE + POSITIVE_OR_NULL:
        value = OmegaConf.select(cfg, key)
        if (value is not None or key in POSITIVE) and (value is None or value <= 0):
            _fail(key, value, "it must be > 0")
    for key in NON_NEGATIVE:
        value = OmegaConf.select(cfg, key)
        if value is None or value < 0:
            _fail(key, value, "it must be >= 0")
    for key, (low, high, low_in, high_in, what) in INTERVALS.items():
        value = OmegaConf.select(cfg, key)
        if value is None:  # only an Optional key can hold null
            continue
        if value < low or value > high or (value == low and not low_in) or (value == high and not high_in):
            _fail(key, value, f"it is {what}")
    for small, large, why in ORDERED:
        a, b = OmegaConf.select(cfg, small), OmegaConf.select(cfg, large)
        if a >= b:
            raise ConfigError(f"{small}={a} must be < {large}={b} ({why}).")
    if not 0 < cfg.data.test_size + cfg.data.val_size < 1:
        raise ConfigError("data.test_size + data.val_size must be in (0, 1) (fractions of the filtered set); "
                          f"got {cfg.data.test_size} + {cfg.data.val_size}.")


def check_sizes(cfg: DictConfig) -> None:
    for batch, part, why in DIVISIBLE:
        a, b = OmegaConf.select(cfg, batch), OmegaConf.select(cfg, part)
        if a % b:
            raise ConfigError(f"{batch}={a} is not divisible by {part}={b}: {why}; pick sizes such that "
                              f"{batch} % {part.rsplit('.', 1)[-1]} == 0.")


def check_estimator(cfg: DictConfig) -> None:
    """The estimator's own needs, read off its registration (detox/algo/advantages.py)."""
    name, k = cfg.ppo.advantage.value, cfg.ppo.samples_per_prompt
    estimator = ADVANTAGE_ESTIMATORS[name]
    if k < estimator.min_group:
        raise ConfigError(f"ppo.advantage={name} compares the responses to one prompt: set ppo.samples_per_prompt "
                          f">= {estimator.min_group} (e.g. `ppo={name}` presets set 4).")
    if not estimator.uses_values:
        given = [key for key in map(override_key, hydra_overrides()) if under(key, VALUE_ONLY_KEYS)]
        if given:
            raise ConfigError(f"{', '.join(given)} only act on a value head, and ppo.advantage={name} has none "
                              "(it is critic-free): drop them, or use ppo.advantage=gae.")


def check_template(template: str, key: str = "data.prompt_template") -> None:
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:  # an unmatched brace
        raise ConfigError(f"{key} is not a valid template ({e}); write literal braces as {{{{ and }}}}.") from e
    if fields != ["dialogue"]:
        raise ConfigError(f"{key} must contain the placeholder {{dialogue}} once and no other "
                          f"(it has {['{' + f + '}' for f in fields] or 'none'}); write literal braces as {{{{ and }}}}.")


def check_device(key: str, name: str | None) -> None:
    if name is None or name == "auto":
        return
    import torch  # here: the CLI validates before the model libraries load

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


def check_combinations(cfg: DictConfig) -> None:
    targets = cfg.lora.target_modules
    if not (targets == ALL_LINEAR or (isinstance(targets, ListConfig) and len(targets)
                                       and all(isinstance(t, str) for t in targets))):
        raise ConfigError(f"lora.target_modules={targets!r} is neither {ALL_LINEAR} nor a list of module names: use "
                          f"lora.target_modules={ALL_LINEAR} (every linear layer but the head) or e.g. [q,v].")
    if str(cfg.resume).lower() not in ("auto", "true", "false"):
        raise ConfigError(f"resume={cfg.resume!r} is unknown: use auto, true or false.")
    if not cfg.lora.enabled and cfg.policy.adapter and cfg.lora.train == "new":
        raise ConfigError("lora.enabled=false (full fine-tuning) with a starting policy.adapter: the adapter "
                          "would be merged and then nothing trains it as an adapter. Use lora.enabled=true.")
    for name, node in cfg.logger.trackers.items():
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"logger.trackers.{name} names no _target_ (its tracker class); give it one, or select a "
                              "shipped tracker with logger=<name> (conf/logger/).")
    backend = cfg.logger.backend
    if backend is not None and backend != "none" and backend not in cfg.logger.trackers:
        raise ConfigError(f"logger.backend={backend} (the old way to pick a tracker) names no tracker of this config "
                          f"({sorted(cfg.logger.trackers) or 'none'}); select it with logger={backend}.")


# names an eval set cannot take: the report's variants, and what its metric keys split on
RESERVED_SET_NAMES = ("before", "after", "null", "delta", "val")


def check_eval_sets(sets: DictConfig) -> None:
    for name, node in sets.items():
        key = f"eval.sets.{name}"
        if name in RESERVED_SET_NAMES or any(c in str(name) for c in "/= "):
            raise ConfigError(f"{key}: the name {name!r} cannot name an eval set (its metrics are "
                              f"eval_sets/<name>/...): use letters, digits, - or _, and none of {list(RESERVED_SET_NAMES)}.")
        known = [f.name for f in dataclasses.fields(schema.EvalSetSettings)]
        if not isinstance(node, DictConfig) or set(node) - set(known):
            raise ConfigError(f"{key} must be a node with {known} (got {OmegaConf.to_container(node) if isinstance(node, DictConfig) else node!r}), "
                              f"e.g. ++{key}.name_or_path=my_dialogues.jsonl.")
        node = OmegaConf.merge(OmegaConf.structured(schema.EvalSetSettings), node)
        if not node.name_or_path:
            raise ConfigError(f"{key}.name_or_path is not set: give the set's file (jsonl, csv, parquet) or dataset, "
                              f"e.g. ++{key}.name_or_path=my_dialogues.jsonl.")
        if node.num_samples is not None and node.num_samples <= 0:
            _fail(f"{key}.num_samples", node.num_samples, "it must be > 0, or null for eval.num_samples")


def check_stage(cfg: DictConfig) -> None:
    stage = cfg.stage
    if stage == Stage.sft and cfg.policy.adapter:
        raise ConfigError(
            f"stage=sft trains policy.name_or_path itself; a starting policy.adapter={cfg.policy.adapter!r} "
            "is not supported. Merge it into its base model (peft merge_and_unload, save_pretrained) and "
            "pass that folder as policy.name_or_path, or set policy.adapter=null.")
    if stage in (Stage.eval, Stage.export) and not cfg.run_dir:
        raise ConfigError(f"stage={stage} needs run_dir=<the run dir to {stage}>.")
    if stage == Stage.generate and not (cfg.generate.model or cfg.run_dir):
        raise ConfigError("stage=generate needs the model to summarize with: run_dir=<a run dir>, or "
                          "generate.model=<a run dir, an export folder, or a seq2seq model path / hub id>.")


# ------------------------------------------------------------------------------------ the reward
def fold_reward_shorthand(reward: DictConfig) -> None:
    """`reward.name_or_path=...` and the other shorthand keys set the sole component's (a config
    from before components: a component `toxicity` made of them); with several components they are
    refused. Folded keys are reset to null, so folding twice changes nothing."""
    given = {k: reward[k] for k in REWARD_SHORTHAND if reward[k] is not None}
    if not given:
        return
    components = reward.components
    if not components:
        components["toxicity"] = {"_target_": CLASSIFIER}
    if len(components) > 1:
        keys = ", ".join(f"reward.{k}" for k in given)
        raise ConfigError(f"{keys} set the reward's sole component, and it has {len(components)} "
                          f"({', '.join(components)}): set reward.components.<name>.{next(iter(given))} instead.")
    (name,) = components
    for key, value in given.items():
        OmegaConf.update(components[name], key, value, force_add=True)
        reward[key] = None


def check_reward(reward: DictConfig) -> None:
    if not reward.components:
        raise ConfigError("reward.components is empty: the reward needs a component (e.g. reward=tiny, or "
                          "++reward.components.<name>._target_=<module.function>).")
    for name, node in reward.components.items():
        key = f"reward.components.{name}"
        if name in BUILT_IN_JUDGES:
            raise ConfigError(f"{key}: `{name}` is a built-in judge's name (every component can be a judge by its "
                              f"name, so it must differ from {', '.join(BUILT_IN_JUDGES)}); rename the component.")
        if not isinstance(node, DictConfig):
            raise ConfigError(f"{key} must be a node of settings (with `_target_`), not {node!r}.")
        weight = node.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != weight:
            raise ConfigError(f"{key}.weight={weight!r} is not a number: give the component's weight, e.g. {key}.weight=0.5.")
        if not isinstance(node.get("normalize", False), bool):
            raise ConfigError(f"{key}.normalize={node.normalize!r} is not true or false.")
        if node.get("_target_", CLASSIFIER) == CLASSIFIER:
            check_classifier_node(node, key)
        else:
            check_component_target(node, key)


def check_classifier_node(node: DictConfig, key: str) -> None:
    unknown = [k for k in node if k not in CLASSIFIER_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], CLASSIFIER_KEYS, n=1)
        raise ConfigError(f"{key}.{unknown[0]} is not a setting of a classifier component"
                          + (f"; did you mean {key}.{close[0]}?" if close else f" ({', '.join(CLASSIFIER_KEYS)})."))
    for name, choices in CLASSIFIER_CHOICES.items():
        value = node.get(name)
        if value is not None and str(value) not in {c.value for c in choices}:
            raise ConfigError(f"{key}.{name}={value!r} is unknown: use one of {[c.value for c in choices]}.")
    if str(node.get("backend", "hf")) == "profanity" and str(node.get("input", "response")) == "pair":
        raise ConfigError(f"{key}.input=pair needs a classifier that reads two texts (backend hf); "
                          "alt-profanity-check reads one.")
    if str(node.get("backend", "hf")) == "hf" and not node.get("name_or_path"):
        raise ConfigError(f"{key}.name_or_path is required for a classifier with backend hf (a hub id or a folder).")
    for name in ("batch_size", "max_length"):
        if node.get(name) is not None and node[name] <= 0:
            _fail(f"{key}.{name}", node[name], "it must be > 0")
    check_device(f"{key}.device", node.get("device"))


def check_component_target(node: DictConfig, key: str) -> None:
    """A `_target_` must import, and take the node's settings (unless it takes **kwargs)."""
    try:
        target = get_object(str(node._target_))
    except Exception as e:  # ImportError, AttributeError, ValueError: Hydra's _locate raises all of them
        raise ConfigError(f"{key}._target_={node._target_!r} cannot be imported ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:160]}); name an importable class or function (module.path.Name).")
    settings = [k for k in node if k != "_target_" and k not in REWARD_KEYS]
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [k for k in settings if k not in parameters]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]} is not a parameter of {node._target_} (it takes "
                          f"{', '.join(parameters) or 'none'}); drop it or fix its name.")
