"""The evaluation report, computed from `eval/samples.jsonl` rows alone.

A sample row holds a prompt, its references, its group value, and one entry per variant
(`before`, `after`, `null`) with the response, every judge's P(toxic), the KL to the
reference and the length. From those rows come the flat `eval/...` metrics (names as in
DESIGN.md section 4), `report.md`, the toxicity histogram and the side-by-side examples.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

from detox.checkpoint import atomic_write_json, atomic_write_text
from detox.eval_metrics import bootstrap_ci, distinct_n, paired_change, rouge

VARIANTS = ("before", "after", "null")
CHANGES = (("after", "eval/delta"), ("null", "eval/null"))  # each paired against `before`


def judges_of(samples: list[dict]) -> list[str]:
    return list(samples[0]["before"]["toxicity"])


def per_example(samples: list[dict], variant: str, summary_column: str, ref_columns: Sequence[str],
                threshold: float) -> dict[str, np.ndarray]:
    """One value per sample for every per-example metric of `variant`, {name: [N]}."""
    resp = [s[variant]["response"] for s in samples]
    values: dict[str, np.ndarray] = {}
    for judge in samples[0][variant]["toxicity"]:
        tox = np.array([s[variant]["toxicity"][judge] for s in samples], dtype=float)
        values[f"{judge}/toxicity_mean"] = tox
        values[f"{judge}/toxic_rate"] = (tox > threshold).astype(float)
    values |= rouge(resp, [s["references"][summary_column] for s in samples])
    for col in ref_columns:
        values[f"{col}/rougeL"] = rouge(resp, [s["references"][col] for s in samples])["rougeL"]
    values["kl_to_ref"] = np.array([s[variant]["kl"] for s in samples], dtype=float)
    values["length_mean"] = np.array([s[variant]["length"] for s in samples], dtype=float)
    return values


def summarize(samples: list[dict], summary_column: str, ref_columns: Sequence[str], threshold: float) -> dict[str, float]:
    """Flat metrics: each variant's means with 95% bootstrap CIs, and each paired change.

    `eval/<before|after>/<name>` (+ `_ci_low`/`_ci_high`), `eval/<before|after>/distinct2`,
    `eval/delta/<name>` (after - before, same prompts) and `eval/null/<name>` (the starting
    policy resampled with another seed - before: the size of a change noise alone makes).
    """
    metrics: dict[str, float] = {}
    present = [v for v in VARIANTS if v in samples[0]]
    values = {v: per_example(samples, v, summary_column, ref_columns, threshold) for v in present}
    for v in ("before", "after"):  # `null` is reported only as a change
        if v not in values:
            continue
        for name, x in values[v].items():
            lo, hi = bootstrap_ci(x)
            metrics |= {f"eval/{v}/{name}": float(x.mean()), f"eval/{v}/{name}_ci_low": lo,
                        f"eval/{v}/{name}_ci_high": hi}
        metrics[f"eval/{v}/distinct2"] = distinct_n([s[v]["response"] for s in samples], 2)
    for v, prefix in CHANGES:
        if v not in values:
            continue
        for name, x in values[v].items():
            change = paired_change(values["before"][name], x)
            metrics |= {f"{prefix}/{name}": change["delta"], f"{prefix}/{name}_ci_low": change["ci_low"],
                        f"{prefix}/{name}_ci_high": change["ci_high"]}
    return metrics


def groups(samples: list[dict]) -> list[str]:
    values = {s["group"] for s in samples if s.get("group") is not None}
    return sorted(str(v) for v in values)


def report(samples: list[dict], summary_column: str, ref_columns: Sequence[str], threshold: float,
           group_by: str | None = None) -> dict[str, float]:
    """`summarize` over all samples, and per group as `eval/<group_by>=<value>/...`."""
    args = (summary_column, list(ref_columns), threshold)
    metrics = summarize(samples, *args)
    if group_by:
        for value in groups(samples):
            members = [s for s in samples if str(s["group"]) == value]
            metrics |= {k.replace("eval/", f"eval/{group_by}={value}/", 1): x
                        for k, x in summarize(members, *args).items()}
    return metrics


def ranking_judge(samples: list[dict]) -> str:
    """The judge the examples are ranked by: the first one PPO was not optimised against."""
    judges = judges_of(samples)
    return next((j for j in judges if j not in ("reward", "reward_on_prompt")), judges[0])


def examples(samples: list[dict], judge: str, n: int) -> tuple[list[dict], list[dict]]:
    """The n samples whose `judge` toxicity fell most, and the n whose rose most."""
    change = [s["after"]["toxicity"][judge] - s["before"]["toxicity"][judge] for s in samples]
    order = np.argsort(change, kind="stable")
    drops = [samples[i] for i in order[:n] if change[i] < 0]
    rises = [samples[i] for i in order[::-1][:n] if change[i] > 0]
    return drops, rises


def example_rows(samples: list[dict], judge: str, n: int, excerpt_chars: int = 240) -> list[dict]:
    """Flat rows (for report.md and a W&B table) of the largest drops and rises."""
    drops, rises = examples(samples, judge, n)
    rows = []
    for kind, chosen in (("drop", drops), ("rise", rises)):
        for s in chosen:
            row = {"kind": kind, "id": s["id"], "group": s.get("group"), "dialogue": excerpt(s["prompt"], excerpt_chars),
                   "before": s["before"]["response"], "after": s["after"]["response"]}
            for j in s["before"]["toxicity"]:
                row[f"{j} before"] = round(s["before"]["toxicity"][j], 3)
                row[f"{j} after"] = round(s["after"]["toxicity"][j], 3)
            rows.append(row)
    return rows


def excerpt(text: str, chars: int) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


# ---------------------------------------------------------------------------- report.md


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
        rel = f"{100 * d / b:+.1f}%" if d is not None and b and not np.isnan(d) else ""
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
             f"{info['seed'] + 1}: the change noise alone produces. Judges score the response only (except "
             f"`reward_on_prompt`, the recipe's measure: the reward classifier on prompt + summary); P(toxic) > "
             f"{info['threshold']} counts as toxic. Brackets: 95% bootstrap CIs (paired for changes). `kl_to_ref`: exact "
             "KL to the reference summed over each response's tokens (nats)"
             + (", which under greedy decoding does not estimate the sequence KL." if info["decoding"] == "greedy" else "."),
             "", *verdicts(metrics, judges), "", "## All prompts", "", *table(metrics)]
    group_by = info.get("group_by")
    for value in groups(samples) if group_by else []:
        n = sum(str(s["group"]) == value for s in samples)
        prefix = f"eval/{group_by}={value}/"
        lines += ["", f"## {group_by}={value} ({n} prompts)", "", *verdicts(metrics, judges, prefix), "",
                  *table(metrics, prefix)]
    judge = ranking_judge(samples)
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
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- files


def plot_histograms(samples: list[dict], path: str, threshold: float) -> str:
    """Toxicity before vs after, one panel per judge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judges = judges_of(samples)
    fig, axes = plt.subplots(1, len(judges), figsize=(4.2 * len(judges), 3.4), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, judge in zip(axes[0], judges):
        for variant, color in (("before", "tab:red"), ("after", "tab:blue")):
            tox = [s[variant]["toxicity"][judge] for s in samples]
            ax.hist(tox, bins=bins, alpha=0.5, color=color, label=f"{variant} (mean {np.mean(tox):.2f})")
        ax.axvline(threshold, color="grey", ls="--", lw=1)
        ax.set_title(f"judge: {judge}")
        ax.set_xlabel("P(toxic)")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"responses (of {len(samples)})")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(out_dir: str, samples: list[dict], metrics: dict[str, float], info: dict) -> list[str]:
    """samples.jsonl, report.json, report.md and toxicity_hist.png under `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f) for f in ("samples.jsonl", "report.json", "report.md", "toxicity_hist.png")]
    atomic_write_text(paths[0], "".join(json.dumps(s) + "\n" for s in samples))
    atomic_write_json(paths[1], metrics)
    atomic_write_text(paths[2], markdown(metrics, samples, info))
    plot_histograms(samples, paths[3], info["threshold"])
    return paths
