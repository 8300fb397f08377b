"""Summarize new dialogues with what a run trained (`detox-generate`, `detox stage=generate`).

The model is a run dir (its `final/`, or its newest checkpoint with a warning), an export
folder (`detox stage=export`), or any seq2seq model path / hub id. A run or an export brings
its own prompt template, input truncation and decoding settings; a plain model takes the
command's. Greedy by default; `sample` draws with the run's sampling settings under `seed`.
`compare` adds the starting policy's summary (the same prompts, the same seed); `judges` add
each judge's P(toxic) of every summary.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Iterator

import torch
from omegaconf import DictConfig, OmegaConf
from peft import set_peft_model_state_dict
from safetensors.torch import load_file
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer

from detox.config.schema import Config, Stage, typed_config
from detox.config.validate import check_template, fold_reward_shorthand
from detox.core.errors import ConfigError, LoadError
from detox.core.hub import friendly_load_error
from detox.core.overrides import hydra_overrides, override_key
from detox.core.run_dir import EXPORT_INFO_FILE, HYDRA_CONFIG
from detox.data.dialogue_io import read_dialogues, write_rows
from detox.data.prompts import check_prompt_room, fit_prompt, warn_cut
from detox.evaluation.evaluator import forked_rng
from detox.models.assembly import load_tokenizer
from detox.models.families import family_of
from detox.models.generation import (
    decode_responses,
    generate_batches,
    model_generation_config,
)
from detox.models.judges import REWARD_JUDGE, build_judges
from detox.models.policy import TRAIN_ADAPTER
from detox.models.rewards import build_reward
from detox.runtime.checkpoint import load_trained, read_state
from detox.runtime.distributed import resolve_device
from detox.stages.common import load_run, starting_policy

log = logging.getLogger(__name__)

# The names of a request's settings in messages: on the Hydra command line, and for detox-generate.
HYDRA_KEYS = {"model": "generate.model", "column": "data.dialogue_column", "id_column": "data.id_column",
              "compare": "generate.compare", "prompt_template": "data.prompt_template",
              "max_input_tokens": "data.max_input_tokens", "batch_size": "generate.batch_size",
              "max_new_tokens": "generate.max_new_tokens"}
CLI_KEYS = {"model": "MODEL", "column": "--column", "id_column": "--id-column", "compare": "--compare",
            "prompt_template": "--prompt-template", "max_input_tokens": "--max-input-tokens",
            "batch_size": "--batch-size", "max_new_tokens": "--max-new-tokens"}


@dataclass
class Request:
    model: str
    input: str | None = None  # None or "-": stdin
    output: str | None = None  # None or "-": stdout
    column: str = "dialogue"
    id_column: str | None = "id"
    compare: bool = False
    judges: list[str] = field(default_factory=list)
    sample: bool = False
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int | None = None  # None: the settings' generation.max_new_tokens_max
    prompt_template: str | None = None  # None: the run's (a plain model: the defaults')
    max_input_tokens: int | None = None
    device: str = "auto"


class Source:
    """What `Request.model` names, opened without loading weights. `settings`: the config
    whose data.* / generation.* / reward.* apply (the run's; a plain model's: the command's)."""

    def __init__(self, kind: str, path: str, settings: DictConfig, key: str, checkpoint: str | None = None):
        self.kind, self.path, self.settings, self.key, self.checkpoint = kind, path, settings, key, checkpoint

    def describe(self) -> str:
        if self.kind == "run":
            step = read_state(self.checkpoint)["step"]
            return f"run {self.path} at step {step} ({os.path.relpath(self.checkpoint, self.path)})"
        return f"{'model' if self.kind == 'model' else 'export'} {self.path}"

    def tokenizer(self):
        if self.kind == "run":
            return load_tokenizer(self.settings.policy)
        with friendly_load_error(self.key, self.path):
            return AutoTokenizer.from_pretrained(self.path)

    def _plain_model(self, device: torch.device) -> torch.nn.Module:
        with friendly_load_error(self.key, self.path):
            config = AutoConfig.from_pretrained(self.path)
        family = family_of(config, f"{self.key}={self.path!r}")
        with friendly_load_error(self.key, self.path):
            model = family.auto_class.from_pretrained(self.path)
        family.prepare(model)
        return model.to(device).eval()

    def models(self, compare: bool, device: torch.device) -> Iterator[tuple[str, torch.nn.Module]]:
        """("start", the starting policy) when `compare`, then ("trained", the trained one)."""
        cfg = self.settings
        if self.kind == "model":
            yield "trained", self._plain_model(device)
            return
        # The policy as it started: the run's own assembly, before its checkpoint loads.
        needs_start = compare or self.kind in ("run", "adapter")
        policy = starting_policy(cfg).to(device) if needs_start else None
        if compare:
            yield "start", policy
        if self.kind == "run":
            load_trained(self.checkpoint, policy)
        elif self.kind == "adapter":
            _load_adapter_weights(policy, self.path)
        else:  # a merged export: a plain transformers model
            del policy
            policy = self._plain_model(device)
        yield "trained", policy


def _load_adapter_weights(policy, path: str) -> None:
    """An adapter-only export's weights into the policy's trained adapter."""
    result = set_peft_model_state_dict(policy.model, load_file(os.path.join(path, "adapter_model.safetensors")),
                                       adapter_name=TRAIN_ADAPTER)
    if result.unexpected_keys:
        raise LoadError(f"{path}: the adapter does not fit the run's policy ({len(result.unexpected_keys)} unexpected "
                        f"tensors, e.g. {result.unexpected_keys[0]}); re-export it from its run.")


def open_source(path: str, command: DictConfig, keys: dict) -> Source:
    """A run dir, an export folder, or a seq2seq model (checked from its config alone).
    `command`: this command's config (a run takes its device/eval overrides, a plain model all)."""
    if not path:
        raise ConfigError(f"no model: pass {keys['model']} (a run dir, an export folder, or a seq2seq model).")
    if os.path.isdir(path) and os.path.exists(os.path.join(path, HYDRA_CONFIG)):
        reading = command.copy()
        reading.run_dir, reading.allow_unfinished, reading.stage = path, True, Stage.generate
        run_cfg, checkpoint = load_run(reading)
        return Source("run", path, run_cfg, keys["model"], checkpoint)
    info_path = os.path.join(path, EXPORT_INFO_FILE)
    if os.path.isdir(path) and os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        return Source("adapter" if info.get("adapter_only") else "export", path, typed_config(info["config"]), keys["model"])
    with friendly_load_error(keys["model"], path):
        config = AutoConfig.from_pretrained(path)
    try:
        family_of(config, f"{keys['model']}={path!r}")
    except LoadError as e:
        raise LoadError(f"{e} Pass a run dir, an export folder, or a seq2seq model such as T5 / FLAN-T5.") from None
    return Source("model", path, command, keys["model"])


def summarize_dialogues(request: Request, command: DictConfig | None = None, keys: dict = CLI_KEYS) -> list[dict]:
    """Summaries of `request.input`'s dialogues, written as JSON lines to `request.output`.
    `command`: the Hydra command's config, which a plain model's settings come from (None: the
    schema's defaults). Everything that can fail cheaply comes before a model loads."""
    for key in ("batch_size", "max_new_tokens", "max_input_tokens"):
        value = getattr(request, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{keys[key]}={value} is invalid: it must be > 0.")
    dialogues = read_dialogues(request.input, request.column, request.id_column, column_key=keys["column"],
                               id_key=keys["id_column"])
    source = open_source(request.model, command if command is not None else OmegaConf.structured(Config), keys)
    if request.compare and source.kind == "model":
        raise ConfigError(f"{keys['compare']} needs a run dir or a detox export: {request.model!r} is a plain model, "
                          "with no starting policy to compare with.")
    settings = source.settings
    template = request.prompt_template or settings.data.prompt_template
    limit = request.max_input_tokens or settings.data.max_input_tokens
    check_template(template, keys["prompt_template"])
    device = resolve_device(request.device)
    fold_reward_shorthand(settings.reward)
    uses_reward = any(j == REWARD_JUDGE or j in settings.reward.components for j in request.judges)
    reward = build_reward(settings.reward, device) if uses_reward else None
    judges = build_judges(request.judges, settings.reward, device, reward) if request.judges else []
    tokenizer = source.tokenizer()
    check_prompt_room(tokenizer, template, limit, keys["max_input_tokens"])
    prompts = _fit_prompts(tokenizer, template, [d["dialogue"] for d in dialogues], limit)
    max_new_tokens = request.max_new_tokens or settings.generation.max_new_tokens_max
    log.info("summarizing %d dialogues with %s (%s, up to %d new tokens)", len(prompts), source.describe(),
             f"sampled, seed {request.seed}" if request.sample else "greedy", max_new_tokens)

    texts = {}
    for name, model in source.models(request.compare, device):
        gen = model_generation_config(settings.generation, model, greedy=not request.sample)
        texts[name] = _generate(model, tokenizer, prompts, gen, request, limit, max_new_tokens, device, name)
        del model  # the starting policy is freed before a merged export loads
    rows = _rows(dialogues, texts, judges, prompts, tokenizer)
    write_rows(rows, request.output)
    if request.output not in (None, "-"):
        log.info("wrote %d summaries to %s", len(rows), os.path.abspath(request.output))
    return rows


def _fit_prompts(tokenizer, template: str, dialogues: list[str], limit: int) -> list[str]:
    """The prompts, each within `limit` tokens (data.fit_prompt: as training fitted them)."""
    fitted = [fit_prompt(tokenizer, template, dialogue, limit) for dialogue in dialogues]
    warn_cut(sum(cut for _, cut in fitted), len(fitted), limit)
    return [prompt for prompt, _ in fitted]


def _rows(dialogues: list[dict], texts: dict[str, list[str]], judges, prompts: list[str], tokenizer) -> list[dict]:
    """One output row per dialogue: the trained policy's summary, the starting one's (when
    compared) and each judge's P(toxic) of them (`toxicity`; a score judge's under `scores`)."""
    rows = [{"id": d["id"], "dialogue": d["dialogue"], "summary": texts["trained"][i],
             **({"start_summary": texts["start"][i]} if "start" in texts else {})} for i, d in enumerate(dialogues)]
    columns = {"dialogue": [d["dialogue"] for d in dialogues], "prompt": prompts}
    for judge in judges:
        field = "toxicity" if judge.kind == "toxicity" else "scores"
        for variant, key in (("trained", field), ("start", f"start_{field}")):
            if variant in texts:
                tokens = [len(ids) for ids in tokenizer(texts[variant])["input_ids"]]  # EOS included
                for row, p in zip(rows, judge.scores(prompts, texts[variant], **columns, response_tokens=tokens)):
                    row.setdefault(key, {})[judge.name] = round(float(p), 4)
    return rows


@torch.no_grad()
def _generate(model, tokenizer, prompts: list[str], gen, request: Request, limit: int, max_new_tokens: int,
              device: torch.device, name: str) -> list[str]:
    texts = []
    batches = generate_batches(model, tokenizer, prompts, gen, request.batch_size, limit, max_new_tokens, device)
    with forked_rng(device):
        torch.manual_seed(request.seed)  # the same seed for the starting and the trained policy: paired samples
        for batch in tqdm(batches, total=math.ceil(len(prompts) / request.batch_size), desc=f"{name} policy",
                          unit="batch", file=sys.stderr, disable=None):
            texts += decode_responses(tokenizer, batch)[0]
    return texts


def run_generate(cfg: DictConfig) -> None:
    """stage=generate: `detox-generate` from the Hydra command line (generate.* and
    data.dialogue_column / id_column; a plain model's prompt template and limits come from
    data.* / generation.*)."""
    explicit = {override_key(o) for o in hydra_overrides()}
    generate = cfg.generate
    summarize_dialogues(Request(
        model=generate.model or cfg.run_dir, input=generate.input, output=generate.output,
        column=cfg.data.dialogue_column, id_column=cfg.data.id_column, compare=generate.compare,
        judges=list(generate.judges), sample=generate.sample, seed=cfg.seed, batch_size=generate.batch_size,
        max_new_tokens=generate.max_new_tokens, device=cfg.device,
        prompt_template=cfg.data.prompt_template if "data.prompt_template" in explicit else None,
        max_input_tokens=cfg.data.max_input_tokens if "data.max_input_tokens" in explicit else None,
    ), command=cfg, keys=HYDRA_KEYS)
