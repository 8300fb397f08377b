"""stage=export: a finished run's policy as a model to ship, in `<run_dir>/export/`.

Written to a temporary folder beside it and renamed into place (a crash leaves the old export
or none, never half of one):
  model.safetensors, config.json   the merged model in the run's dtype (plain transformers)
    or adapter_model.safetensors,  `export.adapter_only=true`: the trained LoRA adapter alone
       adapter_config.json
  generation_config.json           the run's evaluation decoding
  tokenizer files
  README.md                        the model card (detox/stages/model_card.py)
  detox_export.json                provenance: the run, the checkpoint and step, the run's config
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

from omegaconf import DictConfig, OmegaConf

from detox.core.atomic import atomic_dir, atomic_write_json, atomic_write_text
from detox.core.errors import ConfigError
from detox.core.run_dir import EVAL_DIR, EXPORT_DIR, EXPORT_INFO_FILE, FINAL_DIR
from detox.models.assembly import DTYPES, load_tokenizer
from detox.models.generation import generation_config
from detox.models.policy import TRAIN_ADAPTER, Policy
from detox.runtime.checkpoint import load_trained
from detox.runtime.results import Results, now, package_versions
from detox.stages.common import (
    config_dict,
    finished_run_lock,
    load_run,
    starting_policy,
)
from detox.stages.model_card import model_card

REPORT = os.path.join(EVAL_DIR, "report.json")
SAMPLES = os.path.join(EVAL_DIR, "samples.jsonl")


def export_info(config: dict, run_dir: str, checkpoint: str, step: int, adapter_only: bool,
                provenance: dict | None) -> dict[str, Any]:
    """What detox_export.json records. `config`: the run's config as a plain dict."""
    finished = os.path.basename(os.path.normpath(checkpoint)) == FINAL_DIR
    packages = (provenance or {}).get("packages") or package_versions()
    return {
        "format": "adapter" if adapter_only else "merged", "adapter_only": adapter_only,
        "detox_version": packages.get("detox"), "exported_at": now(),
        "run_dir": os.path.abspath(run_dir), "checkpoint": os.path.relpath(checkpoint, run_dir), "step": step,
        "finished": finished, "dtype": config["policy"]["dtype"],
        "base_model": config["policy"]["name_or_path"], "starting_adapter": config["policy"]["adapter"],
        "prompt_template": config["data"]["prompt_template"], "max_input_tokens": config["data"]["max_input_tokens"],
        "max_new_tokens": config["generation"]["max_new_tokens_max"], "eval_decoding": config["eval"]["decoding"],
        "git_sha": (provenance or {}).get("git_sha"), "packages": packages,
        "models": (provenance or {}).get("models"), "config": config,
    }


def read_run_report(run_dir: str) -> tuple[dict | None, int | None]:
    """The run's eval/report.json and how many test prompts it measured (None, None: not evaluated)."""
    path = os.path.join(run_dir, REPORT)
    if not os.path.exists(path):
        return None, None
    with open(path) as f:
        report = json.load(f)
    samples = os.path.join(run_dir, SAMPLES)
    prompts = sum(1 for line in open(samples) if line.strip()) if os.path.exists(samples) else None
    return report, prompts


def merged_model(policy, dtype: str):
    """The policy's model with its adapters merged into the weights, in `dtype`."""
    model = policy.model
    if hasattr(model, "merge_and_unload"):  # every active adapter: a frozen starting one too
        tied = model.config.tie_word_embeddings
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Input and output embeddings are no longer tied")
            model = model.merge_and_unload(adapter_names=list(model.active_adapters))
        # peft unties when the output embedding is not the INPUT one, which in T5Gemma it never is
        # (it is the decoder's; the input one the encoder's): the export would then lose its head.
        if tied and still_tied(model):
            model.config.tie_word_embeddings = True
    return model.to(DTYPES[dtype])


def still_tied(model) -> bool:
    """Whether every weight the model ties (`_tied_weights_keys`: target -> source) still shares its
    source's storage."""
    pairs = getattr(model, "_tied_weights_keys", None)
    if not isinstance(pairs, dict) or not pairs:
        return False
    params = dict(model.named_parameters(remove_duplicate=False))
    return all(t in params and s in params and params[t].data_ptr() == params[s].data_ptr() for t, s in pairs.items())


def write_export(out: str, policy: Policy, tokenizer, info: dict, report: dict | None, prompts: int | None) -> list[str]:
    """Write the export folder `out` (replacing an old one atomically); returns its file names.
    `policy`: the run's policy with the exported checkpoint loaded (merging changes it)."""
    config = info["config"]
    gen = generation_config(OmegaConf.create(config["generation"]), policy.special_tokens,
                            greedy=config["eval"]["decoding"] == "greedy")
    gen.max_new_tokens = info["max_new_tokens"] + policy.special_tokens.prefix_length - 1  # a forced first token
    with atomic_dir(out) as tmp:
        if info["adapter_only"]:
            policy.model.save_pretrained(tmp, selected_adapters=[TRAIN_ADAPTER])
            gen.save_pretrained(tmp)
        else:
            model = merged_model(policy, info["dtype"])
            model.generation_config = gen
            model.save_pretrained(tmp)  # safetensors
        tokenizer.save_pretrained(tmp)
        atomic_write_text(os.path.join(tmp, "README.md"), model_card(info, report, prompts))
        atomic_write_json(os.path.join(tmp, EXPORT_INFO_FILE), info)
    return sorted(os.listdir(out))


def run_export(cfg: DictConfig) -> None:
    """Export run `run_dir` (see the module docstring)."""
    with finished_run_lock(cfg):
        _run_export(cfg)


def _run_export(cfg: DictConfig) -> None:
    run_cfg, checkpoint = load_run(cfg)
    run_dir = cfg.run_dir
    if cfg.export.adapter_only and not run_cfg.lora.enabled:
        raise ConfigError(f"export.adapter_only=true, but run {run_dir} trained every weight (lora.enabled=false): "
                          "it has no adapter to export. Drop export.adapter_only to export the whole model.")
    policy = starting_policy(run_cfg)
    step = load_trained(checkpoint, policy)
    info = export_info(config_dict(run_cfg), run_dir, checkpoint, step, cfg.export.adapter_only,
                       Results.reopen(run_dir).data.get("provenance"))
    out = os.path.join(run_dir, EXPORT_DIR)
    files = write_export(out, policy, load_tokenizer(run_cfg.policy), info, *read_run_report(run_dir))
    print(f"detox: exported step {step} of {os.path.abspath(run_dir)}"
          f"{'' if info['finished'] else ' (unfinished)'} to {os.path.abspath(out)}"
          f"{' (the LoRA adapter alone)' if info['adapter_only'] else ''}\n  {', '.join(files)}")
