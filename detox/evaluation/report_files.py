"""The evaluation report's files: samples.jsonl, report.json, report.md and toxicity_hist.png."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from detox.core.atomic import atomic_write_json, atomic_write_jsonl, atomic_write_text
from detox.evaluation.plots import plot_histograms
from detox.evaluation.report import (
    draws,
    example_rows,
    groups,
    judges_of,
    ranking_judge,
)
from detox.models.judges import REWARD_JUDGE, REWARD_JUDGES, REWARD_ON_PROMPT

REPORT_FILES = ("samples.jsonl", "report.json", "report.md", "toxicity_hist.png")
SETS_DIR = "sets"  # eval/sets/<name>/samples.jsonl: an extra eval set's samples


def _cell(metrics: dict, key: str, sign: bool = False) -> str:
    if key not in metrics or metrics[key] is None or np.isnan(metrics[key]):
        return ""
    fmt = "{:+.3f}" if sign else "{:.3f}"
    ci = ""
    if f"{key}_ci_low" in metrics:
        ci = " [" + ", ".join(fmt.format(metrics[f"{key}_ci{e}"]) for e in ("_low", "_high")) + "]"
    return fmt.format(metrics[key]) + ci


def table(metrics: dict[str, float], prefix: str = "eval/") -> list[str]:
    """Before / after / change / null change rows for every metric under `prefix`."""
    names = [k[len(prefix) + len("before/"):] for k in metrics
             if k.startswith(prefix + "before/") and not k.endswith(("_ci_low", "_ci_high"))]
    lines = ["| metric | before [95% CI] | after [95% CI] | change [95% CI] | change % | null change (noise) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name in names:
        b, d = metrics.get(f"{prefix}before/{name}"), metrics.get(f"{prefix}delta/{name}")
        if d is None and f"{prefix}after/{name}" in metrics:
            d = metrics[f"{prefix}after/{name}"] - b  # distinct2 is a corpus figure: no paired change
        rel = f"{100 * d / abs(b):+.1f}%" if d is not None and b and not np.isnan(d) else ""  # a rise is +, below 0 too
        change = _cell(metrics, f"{prefix}delta/{name}", sign=True) or (f"{d:+.3f}" if d is not None else "")
        lines.append(f"| {name} | {_cell(metrics, f'{prefix}before/{name}')} | {_cell(metrics, f'{prefix}after/{name}')} "
                     f"| {change} | {rel} | {_cell(metrics, f'{prefix}null/{name}', sign=True)} |")
    return lines


def verdicts(metrics: dict[str, float], judges: Sequence[str], prefix: str = "eval/") -> list[str]:
    """One sentence per judge: is the fall in toxic rate larger than noise at this sample size?"""
    lines = []
    for judge in judges:
        key = f"{prefix}delta/{judge}/toxic_rate"
        if key not in metrics:
            continue
        lo, hi = metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"]
        significant = hi < 0 or lo > 0
        null = metrics.get(f"{prefix}null/{judge}/toxic_rate")
        noise = f"; noise alone (null): {null:+.3f}" if null is not None else ""
        lines.append(f"- `{judge}` toxic rate {metrics[f'{prefix}before/{judge}/toxic_rate']:.3f} -> "
                     f"{metrics[f'{prefix}after/{judge}/toxic_rate']:.3f}, change {metrics[key]:+.3f} "
                     f"[{lo:+.3f}, {hi:+.3f}]: {'significant' if significant else 'NOT significant'} at 95%"
                     f"{noise}.")
    return lines


def _md_escape(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(metrics: dict[str, float], samples: list[dict], info: dict) -> str:
    judges = judges_of(samples)
    lines = [f"# Evaluation: {len(samples)} held-out {info.get('split', 'test')} prompts, before vs after PPO", "",
             f"Decoding: {info['decoding']} (seed {info['seed']}); `null` = the starting policy resampled with seed "
             f"{info['seed'] + 1}: the change noise alone produces. Toxicity judges score the response only "
             f"(except `{REWARD_ON_PROMPT}`, the recipe's measure: the reward classifier on prompt + summary); a "
             "reward component's `score_mean` is its own score, as in training; P(toxic) > "
             f"{info['threshold']} counts as toxic. Brackets: 95% bootstrap CIs (paired for changes). `kl_to_ref`: exact "
             "KL to the reference summed over each response's tokens (nats)"
             + (", which under greedy decoding does not estimate the sequence KL." if info["decoding"] == "greedy" else "."),
             *legend(info, judges), "", *verdicts(metrics, judges), "", "## All prompts", "", *table(metrics)]
    group_by = info.get("group_by")
    for value in groups(samples) if group_by else []:
        n = sum(str(s["group"]) == value for s in samples)
        prefix = f"eval/{group_by}={value}/"
        lines += ["", f"## {group_by}={value} ({n} prompts)", "", *verdicts(metrics, judges, prefix), "",
                  *table(metrics, prefix)]
    judge = ranking_judge(samples, info.get("optimised_judges", REWARD_JUDGES))
    rows = example_rows(samples, judge, info.get("examples", 5))
    for kind, title in (("drop", "Largest toxicity drops"), ("rise", "Largest toxicity rises")):
        chosen = [r for r in rows if r["kind"] == kind]
        lines += ["", f"## {title} (ranked by `{judge}`)", ""]
        if not chosen:
            lines.append("(none)")
            continue
        lines += ["| id | " + ("group | " if group_by else "") + "dialogue (excerpt) | before | after | "
                  + " | ".join(judges) + " |", "| --- " * (4 + bool(group_by) + len(judges)) + "|"]
        for r in chosen:
            scores = " | ".join(f"{r[f'{j} before']:.2f} → {r[f'{j} after']:.2f}" for j in judges)
            lines.append(f"| {_md_escape(r['id'])} | " + (f"{_md_escape(r['group'])} | " if group_by else "")
                         + f"{_md_escape(r['dialogue'])} | {_md_escape(r['before'])} | {_md_escape(r['after'])} | {scores} |")
    for name, about in info.get("sets", {}).items():
        prefix = f"eval_sets/{name}/"
        lines += ["", f"## Eval set `{name}` ({about['prompts']} prompts of `{about['name_or_path']}`; samples: "
                  f"{about['samples']})", "", *verdicts(metrics, judges, prefix), "", *table(metrics, prefix)]
    return "\n".join(lines) + "\n"


def legend(info: dict, judges: Sequence[str]) -> list[str]:
    """What the figures beyond the per-response means are, when the report has them."""
    lines = []
    k = info.get("samples_per_prompt", 1)
    if k > 1:
        lines.append(f"{k} summaries per prompt: each per-prompt figure is their mean; `expected_max_toxicity` is the "
                     f"mean over prompts of the largest P(toxic) of the {k}, `toxicity_probability` the share of prompts "
                     "with at least one toxic summary (RealToxicityPrompts' figures).")
    if REWARD_JUDGE in judges and any(j not in REWARD_JUDGES for j in judges):
        lines.append(f"`missed_rate`: of the summaries the reward model passes (`{REWARD_JUDGE}` P(toxic) <= "
                     f"{info['threshold']}), the share the judge flags; a rise is toxicity the reward no longer sees "
                     "(reward hacking, or a blind spot of the reward model).")
    lines.append("`distinct<n>`: distinct n-grams over all n-grams of the summaries (diversity); `length_mean`: tokens.")
    return [part for line in lines for part in ("", line)]


def write_set_samples(out_dir: str, name: str, samples: list[dict]) -> str:
    """An extra eval set's samples under `out_dir`; returns the path relative to `out_dir`."""
    relative = os.path.join(SETS_DIR, name, "samples.jsonl")
    os.makedirs(os.path.join(out_dir, SETS_DIR, name), exist_ok=True)
    atomic_write_jsonl(os.path.join(out_dir, relative), samples)
    return relative


def write_report(out_dir: str, samples: list[dict], metrics: dict[str, float], info: dict) -> list[str]:
    """samples.jsonl, report.json, report.md and toxicity_hist.png under `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f) for f in REPORT_FILES]
    atomic_write_jsonl(paths[0], samples)
    atomic_write_json(paths[1], metrics)
    atomic_write_text(paths[2], markdown(metrics, samples, info))
    toxicity = {j: {v: [d["toxicity"][j] for s in samples for d in draws(s[v])] for v in ("before", "after")}
                for j in judges_of(samples)}
    plot_histograms(toxicity, paths[3], info["threshold"])
    return paths
