"""The README.md model card of an export: what the model is, how it was trained, what its
evaluation measured (with CIs), and how to load it with plain transformers / peft."""

from __future__ import annotations

import json
import re
from typing import Any

from detox.config.schema import CLASSIFIER
from detox.evaluation.report_files import table, verdicts
from detox.models.judges import REWARD_JUDGES

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
GROUP_KEY = re.compile(r"^eval/([^/]+=[^/]+)/delta/")  # eval.group_by's figures: eval/heated=True/...


def _hub_id(name: str | None) -> str | None:
    """`name` when it reads as a hub id (front matter fields must not hold local paths)."""
    return name if name and HUB_ID.match(name) else None


def _front_matter(config: dict, adapter_only: bool) -> list[str]:
    lines = ["---", "library_name: " + ("peft" if adapter_only else "transformers"), "pipeline_tag: summarization",
             "tags: [detox, rlhf, ppo, detoxification, summarization]"]
    base = _hub_id(config["policy"]["name_or_path"])
    if base:
        lines.append(f"base_model: {base}")
    data = _hub_id(config["data"]["name_or_path"])
    if data:
        lines.append(f"datasets: [{data}]")
    return [*lines, "---", ""]


def _training(config: dict, step: int, finished: bool) -> list[str]:
    policy, lora, reward, ppo, data = (config[k] for k in ("policy", "lora", "reward", "ppo", "data"))
    kl = ppo["kl"]
    controller = (f"adaptive, from {kl['init_coef']} toward {kl['target']} nats" if kl["controller"] == "adaptive"
                  else f"fixed at {kl['init_coef']}")
    if lora["enabled"]:
        targets = lora["target_modules"]
        tuned = (f"LoRA r={lora['r']}, alpha={lora['alpha']} on "
                 f"{targets if isinstance(targets, str) else ', '.join(targets)}"
                 + (" (rsLoRA)" if lora.get("use_rslora") else ""))
    else:
        tuned = "every weight (full fine-tuning)"
    k = ppo.get("samples_per_prompt", 1)
    rows = [
        ("base model", f"`{policy['name_or_path']}`" + (f" (revision {policy['revision']})" if policy["revision"] else "")),
        ("starting adapter", f"`{policy['adapter']}` ({_start_note(config)})" if policy["adapter"] else "none"),
        ("trained", tuned),
        ("data", f"`{data['name_or_path']}` (split {data['split']}, column `{data['dialogue_column']}`)"),
        ("reward", _reward(reward)),
        ("algorithm", f"PPO, advantage estimator `{ppo.get('advantage', 'gae')}`"
                      + (f", {k} samples per prompt" if k > 1 else "")),
        ("KL penalty", f"per token to {'the base model' if str(policy['reference']) == 'base' else 'the starting policy'}"
                       f", `{kl.get('estimator', 'k1')}` estimator, {'a loss term' if kl.get('in_loss') else 'in the reward'}"
                       f", coefficient {controller}"),
        ("steps", f"{step} exported" + ("" if finished else f" (of {ppo['steps']}: the run is UNFINISHED)")
                  + f"; {ppo['batch_size']} responses per step, {ppo['ppo_epochs']} PPO epochs of mini-batches of "
                  f"{ppo['mini_batch_size']}"),
        ("optimizer", f"learning rate {ppo['learning_rate']}, clip range {ppo['cliprange']}, seed {config['seed']}"),
        ("dtype", policy["dtype"]),
    ]
    return ["## Training", "", "| | |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in rows], ""]


def _component(name: str, node: dict) -> str:
    """One reward component: what it scores, and its weight."""
    if node.get("_target_", CLASSIFIER) == CLASSIFIER:
        model = node.get("name_or_path") if node.get("backend", "hf") == "hf" else "alt-profanity-check"
        score = {"prob": "P(`{}`)", "logit": "the logit of `{}`", "logodds": "the log-odds of `{}`"}[
            node.get("kind", "logit")].format(node.get("label", "nothate"))
        reads = {"response": "the summary", "prompt_response": "dialogue + summary",
                 "pair": "(dialogue, summary) as a text pair"}[node.get("input", "response")]
        what = f"`{model}`: {score} of {reads}"
    else:
        what = f"`{node['_target_']}`"
    return (f"{name} ({what}, weight {node.get('weight', 1.0):g}"
            + (", normalised" if node.get("normalize") else "") + ")")


def _reward(reward: dict) -> str:
    """The reward: its components, how they combine, its bound (a run from before components: its classifier)."""
    components = reward.get("components") or {"toxicity": {k: v for k, v in reward.items() if k != "clip"}}
    parts = "; ".join(_component(name, node) for name, node in components.items())
    combined = f"; the {reward.get('aggregate', 'sum')} of the weighted scores" if len(components) > 1 else ""
    return parts + combined + (f"; clipped to ±{reward['clip']:g}" if reward.get("clip") is not None else "")


def _start_note(config: dict) -> str:
    policy, lora = config["policy"], config["lora"]
    if lora["train"] == "continue":
        return "trained further itself"
    if str(policy["reference"]) == "initial":
        return "merged into the base model before training"
    return "kept frozen beside the trained adapter"


def _evaluation(report: dict | None, prompts: int | None, eval_cfg: dict, finished: bool,
                optimised: tuple[str, ...] = REWARD_JUDGES) -> list[str]:
    """`optimised`: the judges that score with what PPO optimised (the reward's classifier, its components)."""
    lines = ["## Evaluation", ""]
    if not finished:
        return [*lines, "This export is of an unfinished run's checkpoint: the run's evaluation (if any) is not "
                        "of these weights. Run `detox stage=eval allow_unfinished=true run_dir=<run dir>` to measure them.", ""]
    if report is None:
        return [*lines, "The run was not evaluated (eval.enabled=false); `detox stage=eval run_dir=<run dir>` "
                        "measures it.", ""]
    judges = sorted({k.split("/")[2] for k in report if k.startswith("eval/delta/") and k.endswith("/toxic_rate")})
    groups = sorted({m.group(1) for k in report for m in [GROUP_KEY.match(k)] if m})
    lines += [f"{prompts or 'The'} held-out test prompts summarized by the starting and the trained policy "
              f"({eval_cfg['decoding']} decoding, the same seed); `null` resamples the starting policy with a "
              "second seed: the change noise alone produces. Toxicity is each judge's P(toxic) of the summary "
              "(`reward_on_prompt`: of dialogue + summary, the recipe's measure) "
              f"(toxic above {eval_cfg['toxic_threshold']}); brackets are 95% bootstrap CIs (paired for changes). "
              + (f"{' and '.join(f'`{j}`' for j in judges if j in optimised)} score with the reward model PPO "
                 "optimized against (open to reward hacking); the others are independent judges."
                 if any(j in optimised for j in judges) else "All judges are independent of the reward model."),
              "", *verdicts(report, judges)]
    for group in groups:
        lines += ["", f"Prompts with {group}:", "", *verdicts(report, judges, f"eval/{group}/")]
    lines += ["", "All prompts:", "", *table(report)]
    # the sets the report holds (`stage=eval` may have added some the run's config lacks)
    paths = {name: node.get("name_or_path") for name, node in (eval_cfg.get("sets") or {}).items()}
    for name in dict.fromkeys(k.split("/")[1] for k in report if k.startswith("eval_sets/")):
        prefix, source = f"eval_sets/{name}/", f" (`{paths[name]}`)" if paths.get(name) else ""
        lines += ["", f"Eval set `{name}`{source}:", "", *verdicts(report, judges, prefix), "", *table(report, prefix)]
    return [*lines, ""]


def _usage(config: dict, adapter_only: bool, max_new_tokens: int) -> list[str]:
    template = config["data"]["prompt_template"]
    limit = config["data"]["max_input_tokens"]
    if adapter_only:
        base = config["policy"]["name_or_path"]
        start = config["policy"]["adapter"]
        load = [f'base = AutoModelForSeq2SeqLM.from_pretrained("{base}")']
        if start and config["lora"]["train"] == "new":
            load += ["# the starting adapter first: this adapter was trained on top of it",
                     f'base = PeftModel.from_pretrained(base, "{start}").merge_and_unload()']
        load += ["model = PeftModel.from_pretrained(base, here)", "tokenizer = AutoTokenizer.from_pretrained(here)"]
        imports = "from peft import PeftModel\nfrom transformers import AutoModelForSeq2SeqLM, AutoTokenizer"
    else:
        load = ["model = AutoModelForSeq2SeqLM.from_pretrained(here)", "tokenizer = AutoTokenizer.from_pretrained(here)"]
        imports = "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer"
    code = [imports, "", 'here = "path/to/this/folder"  # or its hub id, once uploaded', *load, "",
            f"template = {json.dumps(template)}",
            'dialogue = "#Person1#: Where is the bus station?\\n#Person2#: Two blocks north, next to the bakery."',
            f"inputs = tokenizer(template.format(dialogue=dialogue), truncation=True, max_length={limit}, "
            "return_tensors=\"pt\")",
            f"summary = model.generate(**inputs, max_new_tokens={max_new_tokens}, do_sample=False)  # greedy",
            "print(tokenizer.decode(summary[0], skip_special_tokens=True))"]
    return ["## How to use", "",
            "The model expects the prompt it was trained on; `generation_config.json` holds the run's evaluation "
            "decoding (pass `do_sample=False` for greedy). With detox installed, "
            "`detox-generate path/to/this/folder dialogues.jsonl --compare` does all of this in batches, beside the "
            "starting policy's summaries.", "",
            "```python", *code, "```", ""]


def model_card(info: dict[str, Any], report: dict | None, prompts: int | None) -> str:
    """The README.md of an export. `info`: what detox_export.json holds."""
    config = info["config"]
    finished, adapter_only = info["finished"], info["adapter_only"]
    title = f"{config['policy']['name_or_path'].rstrip('/').split('/')[-1]}, detoxified with PPO (detox)"
    lines = [*_front_matter(config, adapter_only), f"# {title}", "",
             ("A LoRA adapter for a dialogue summarizer, " if adapter_only else "A dialogue summarizer ")
             + "trained with RLHF by detox: PPO against a "
             "toxicity reward model, with a per-token KL penalty to the starting policy, so that its summaries drop "
             "insults and slurs while still summarizing. Exported from step "
             f"{info['step']} of run `{info['run_dir']}`.", "",
             *_training(config, info["step"], finished),
             *_evaluation(report, prompts, config["eval"], finished,
                          (*REWARD_JUDGES, *(config["reward"].get("components") or {}))),
             *_usage(config, adapter_only, info["max_new_tokens"]),
             "## Provenance", "",
             f"detox {info['detox_version']}, git `{info.get('git_sha') or 'unknown'}`; "
             + ", ".join(f"{k} {v}" for k, v in (info.get("packages") or {}).items() if v and k != "detox")
             + ". `detox_export.json` holds the run's whole config and the checkpoint exported.", ""]
    return "\n".join(lines)
