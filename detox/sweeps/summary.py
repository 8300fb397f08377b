"""`detox-sweep-summary <sweep dir>`: the jobs of a (possibly unfinished) sweep as a table
(summary.md, summary.csv) and a Pareto plot (pareto.png).

Settings are ranked by the VALIDATION objective (`detox/evaluation/objective.py`); test-split figures are
shown beside it, never used to choose.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

from detox.evaluation.objective import DEFAULT_OBJECTIVE
from detox.evaluation.plots import plot_pareto
from detox.runtime.hydra_job import group_name
from detox.sweeps.jobs import (
    FIGURES,
    SEED_KEYS,
    Job,
    Point,
    SweepError,
    aggregate,
    find_jobs,
    objective_config,
    pareto_front,
    setting,
    shown_value,
    varying_keys,
)

# ---------------------------------------------------------------------------------------------
# Writing the summary


def _cell(stat: tuple[float | None, float | None, int], fmt: str) -> str:
    mean, std, _ = stat
    if mean is None:
        return ""
    return fmt.format(mean) + (f" ± {fmt.format(std).lstrip('+')}" if std is not None else "")


def _judges(jobs: list[Job], judge: str | None) -> str:
    names = {objective_config(j, judge)["judge"] for j in jobs if j.status == "done"}
    return ", ".join(sorted(names)) or judge or DEFAULT_OBJECTIVE["judge"]


def markdown(sweep_dir: str, jobs: list[Job], points: list[Point], keys: list[str], split: str,
             judge: str | None, rouge_weight: float | None, plot: str | None) -> str:
    counts = {s: sum(j.status == s for j in jobs) for s in ("done", "running", "failed", "missing")}
    stopped = {s: sum(j.status == s for j in jobs) for s in ("diverged", "interrupted")}
    weights = {objective_config(j, judge, rouge_weight)["rouge_weight"] for j in jobs if j.status == "done"}
    lines = [
        f"# Sweep {sweep_dir}",
        "",
        f"{len(jobs)} jobs: {counts['done']} done, {counts['running']} running, {counts['failed']} failed, "
        f"{counts['missing']} not started / missing"
        + "".join(f", {n} {s}" for s, n in stopped.items() if n) + ".",
        "",
        f"Objective (higher is better), on the validation split: the toxicity reduction by the judge "
        f"`{_judges(jobs, judge)}` (before - after mean P(toxic)) minus "
        f"{'/'.join(f'{w:g}' for w in sorted(weights)) or '`rouge_weight`'} x the ROUGE-L drop. "
        "Test-split figures beside it are for reporting, not for choosing. Values: mean ± std over the "
        "seeds of each setting; `pareto`: on the front of toxicity reduction vs ROUGE-L change "
        f"({split} split).",
        "",
        "| rank | setting | done | pareto | " + " | ".join(f.title for f in FIGURES) + " |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in FIGURES) + " |",
    ]
    for rank, p in enumerate(points, 1):
        cells = [_cell(p.stats[f.key], f.fmt) for f in FIGURES]
        lines.append(f"| {rank} | `{p.label}` | {p.done}/{len(p.jobs)} | {'*' if p.pareto else ''} | "
                     + " | ".join(cells) + " |")
    unfinished = [j for j in jobs if j.status != "done"]
    if unfinished:
        shown = [*keys, *SEED_KEYS]
        lines += ["", "## Jobs not done", "", "| job dir | status | setting | error |", "| --- | --- | --- | --- |"]
        for j in unfinished:
            status = "not started / missing" if j.status == "missing" else j.status
            where = os.path.relpath(j.dir, sweep_dir) if j.dir else "(no job dir yet)"
            error = str(j.results.get("error") or "").replace("|", "\\|").replace("\n", " ")[:300]
            lines.append(f"| {where} | {status} | `{setting(j, shown) or ' '.join(j.overrides)}` | {error} |")
    if plot:
        lines += ["", f"![toxicity reduction vs ROUGE-L change]({os.path.basename(plot)})"]
    return "\n".join(lines) + "\n"


def write_csv(path: str, points: list[Point], keys: list[str]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "setting", *keys, "done", "jobs", "pareto"]
                        + [f"{f.key}_{s}" for f in FIGURES for s in ("mean", "std", "n")])
        for rank, p in enumerate(points, 1):
            pairs = p.jobs[0].pairs
            row = [rank, p.label, *[pairs.get(k, "") for k in keys], p.done, len(p.jobs), int(p.pareto)]
            for f in FIGURES:
                row += ["" if v is None else v for v in p.stats[f.key]]
            writer.writerow(row)


def _short_labels(points: list[Point], keys: list[str]) -> list[str]:
    """Labels with each key's last part (`r=8 init_coef=0.05`) unless two keys share it."""
    tails = [k.split(".")[-1].lstrip("+~") for k in keys]
    names = {k: t if tails.count(t) == 1 else k for k, t in zip(keys, tails)}
    return [" ".join(f"{names[k]}={shown_value(p.jobs[0].pairs[k])}" for k in keys if k in p.jobs[0].pairs)
            or p.label for p in points]


def pareto_plot(path: str, points: list[Point], keys: list[str], split: str, judge: str, title: str) -> str | None:
    """Toxicity reduction (y) vs ROUGE-L change (x) per setting, ± std over seeds as error bars,
    KL to the reference as colour, the Pareto front marked and every point labelled."""
    shown = [(p, lab) for p, lab in zip(points, _short_labels(points, keys))
             if p.mean(f"tox_{split}") is not None and p.mean(f"rouge_{split}") is not None]
    if not shown:
        return None
    return plot_pareto(
        path, [lab for _, lab in shown], [p.mean(f"rouge_{split}") for p, _ in shown],
        [p.mean(f"tox_{split}") for p, _ in shown], [p.stats[f"rouge_{split}"][1] or 0 for p, _ in shown],
        [p.stats[f"tox_{split}"][1] or 0 for p, _ in shown], [p.mean(f"kl_{split}") for p, _ in shown],
        [p.pareto for p, _ in shown],
        xlabel=f"ROUGE-L change, after - before ({split} split)   → keeps the summaries",
        ylabel=f"toxicity reduction, judge {judge} ({split} split)   → less toxic",
        colour_label=f"KL to the reference (nats per summary, {split})", title=title)


def write_sweep_summary(sweep_dir: str, out_dir: str | None = None, split: str = "val", judge: str | None = None,
              rouge_weight: float | None = None) -> dict:
    """Write `summary.md`, `summary.csv` and `pareto.png` (when any job has the figures) for a
    sweep dir; returns their paths, the jobs and the points."""
    if split not in ("val", "test"):
        raise SweepError(f"split={split!r}: use val (what sweeps optimise) or test.")
    jobs = find_jobs(sweep_dir)
    keys = varying_keys(jobs)
    points = aggregate(jobs, keys, judge, rouge_weight)
    for p, on in zip(points, pareto_front([p.mean(f"rouge_{split}") for p in points],
                                          [p.mean(f"tox_{split}") for p in points])):
        p.pareto = on
    out_dir = out_dir or sweep_dir
    os.makedirs(out_dir, exist_ok=True)
    paths = {"md": os.path.join(out_dir, "summary.md"), "csv": os.path.join(out_dir, "summary.csv")}
    title = f"{group_name(os.path.abspath(sweep_dir))}: {len(points)} settings, {len(jobs)} jobs"
    paths["png"] = pareto_plot(os.path.join(out_dir, "pareto.png"), points, keys, split,
                               _judges(jobs, judge), title)
    text = markdown(sweep_dir, jobs, points, keys, split, judge, rouge_weight, paths["png"])
    with open(paths["md"], "w") as f:
        f.write(text)
    write_csv(paths["csv"], points, keys)
    return {**paths, "markdown": text, "jobs": jobs, "points": points}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="detox-sweep-summary",
        description="Summarise a detox sweep (finished or not): a table of every setting sorted by the "
                    "validation objective (mean ± std over seeds, test figures beside it), the jobs that "
                    "failed, are running or have not started, and a plot of toxicity reduction vs ROUGE-L "
                    "change with the Pareto front. Writes summary.md, summary.csv, pareto.png.")
    parser.add_argument("sweep_dir", help="the multirun's sweep dir (e.g. outputs/multirun/<date>/<time>)")
    parser.add_argument("--out", help="where to write the files (default: the sweep dir)")
    parser.add_argument("--split", default="val", choices=["val", "test"],
                        help="split of the plot and the Pareto front (default: val)")
    parser.add_argument("--judge", help="recompute the objective with this judge (default: each job's "
                                        "objective.judge)")
    parser.add_argument("--rouge-weight", type=float, help="recompute the objective with this ROUGE-L weight")
    args = parser.parse_args(argv)
    try:
        out = write_sweep_summary(args.sweep_dir, args.out, args.split, args.judge, args.rouge_weight)
    except SweepError as e:
        print(f"detox-sweep-summary: {e}", file=sys.stderr)
        return 2
    print(out["markdown"])
    written = [out["md"], out["csv"]] + ([out["png"]] if out["png"] else [])
    print("wrote " + ", ".join(written))
    if not out["png"]:
        print(f"no plot: no finished job has {args.split}-split figures yet (evaluation disabled, or no "
              f"validation split: try --split test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
