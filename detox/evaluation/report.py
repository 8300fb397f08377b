"""The evaluation figures, computed from `eval/samples.jsonl` rows alone.

A sample row holds a prompt, its references, its group value, and one entry per variant
(`before`, `after`, `null`) with the response, every judge's P(toxic), the KL to the
reference and the length. From those rows come the flat `eval/...` metrics (names as in
the README's metric table) and the side-by-side examples; `detox/evaluation/report_files.py` writes
them out as report.json, report.md and the toxicity histogram.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from detox.algo.metrics import bootstrap_ci, distinct_n, paired_change, rouge
from detox.models.judges import REWARD_JUDGES

VARIANTS = ("before", "after", "null")
CHANGES = (("after", "eval/delta"), ("null", "eval/null"))  # each paired against `before`


def judges_of(samples: list[dict]) -> list[str]:
    """The toxicity judges of the samples (score judges have no toxicity to rank examples by)."""
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
    for judge in samples[0][variant].get("scores", {}):  # a reward component that is not a classifier
        values[f"{judge}/score_mean"] = np.array([s[variant]["scores"][judge] for s in samples], dtype=float)
    values |= rouge(resp, [s["references"][summary_column] for s in samples])
    for col in ref_columns:
        values[f"{col}/rougeL"] = rouge(resp, [s["references"][col] for s in samples])["rougeL"]
    values["kl_to_ref"] = np.array([s[variant]["kl"] for s in samples], dtype=float)
    values["length_mean"] = np.array([s[variant]["length"] for s in samples], dtype=float)
    return values


def variant_metrics(samples: list[dict], summary_column: str, ref_columns: Sequence[str], threshold: float) -> dict[str, float]:
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
    """`variant_metrics` over all samples, and per group as `eval/<group_by>=<value>/...`."""
    args = (summary_column, list(ref_columns), threshold)
    metrics = variant_metrics(samples, *args)
    if group_by:
        for value in groups(samples):
            members = [s for s in samples if str(s["group"]) == value]
            metrics |= {k.replace("eval/", f"eval/{group_by}={value}/", 1): x
                        for k, x in variant_metrics(members, *args).items()}
    return metrics


def ranking_judge(samples: list[dict], optimised: Sequence[str] = REWARD_JUDGES) -> str:
    """The judge the examples are ranked by: the first one PPO was not optimised against
    (`optimised`: the reward's judges, its components among them)."""
    judges = judges_of(samples)
    return next((j for j in judges if j not in optimised), judges[0])


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
