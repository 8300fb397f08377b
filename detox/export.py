"""`<run_dir>/export/`: a trained policy as a model to ship.

Written to a temporary folder beside it and renamed into place (a crash leaves the old export
or none, never half of one):
  model.safetensors, config.json   the merged model in the run's dtype (plain transformers)
    or adapter_model.safetensors,  `export.adapter_only=true`: the trained LoRA adapter alone
       adapter_config.json
  generation_config.json           the run's evaluation decoding
  tokenizer files
  README.md                        the model card (detox/model_card.py)
  detox_export.json                provenance: the run, the checkpoint and step, the run's config
"""

from __future__ import annotations

import json
import os
from typing import Any

from omegaconf import OmegaConf

from detox.atomic import atomic_dir, atomic_write_json, atomic_write_text
from detox.generation import generation_config
from detox.model_card import model_card
from detox.policy import DTYPES, TRAIN_ADAPTER
from detox.results import now, package_versions
from detox.run_dir import EVAL_DIR, EXPORT_INFO_FILE, FINAL_DIR

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


def run_evaluation(run_dir: str) -> tuple[dict | None, int | None]:
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
        model = model.merge_and_unload(adapter_names=list(model.active_adapters))
    return model.to(DTYPES[dtype])


def write_export(out: str, policy, tokenizer, info: dict, report: dict | None, prompts: int | None) -> list[str]:
    """Write the export folder `out` (replacing an old one atomically); returns its file names.
    `policy`: the run's policy with the exported checkpoint loaded (merging changes it)."""
    config = info["config"]
    gen = generation_config(OmegaConf.create(config["generation"]), policy.config, greedy=config["eval"]["decoding"] == "greedy")
    gen.max_new_tokens = info["max_new_tokens"]
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
