"""Sweeps: the objective that sweepers maximise, W&B names and groups for multirun jobs, and
`detox-sweep-summary <sweep dir>`, which turns the `results.json` of every job of a (possibly
unfinished) sweep into a table (markdown + CSV) and a Pareto plot.

The objective is computed on the VALIDATION split (`results.json` `eval_val`); the test split
(`eval`) is only reported beside it, never optimised.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

RESULTS_FILE = "results.json"  # = detox.results.RESULTS_FILE (not imported: keep this module light)
SEED_KEYS = ("seed", "+seed", "++seed")
DEFAULT_OBJECTIVE = {"judge": "profanity", "rouge_weight": 1.0}  # = detox.schema.ObjectiveConfig


class SweepError(ValueError):
    """Nothing to summarise; the message says what to pass instead."""


# ---------------------------------------------------------------------------------------------
# The objective


def _get(cfg: Any, key: str) -> Any:
    return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)


def objective(metrics: Mapping[str, Any] | None, cfg: Any) -> float | None:
    """-(change in the judge's mean toxicity) - rouge_weight x (ROUGE-L drop, if any).

    `metrics`: the flat evaluation figures of ONE split (`eval/delta/<judge>/toxicity_mean`,
    `eval/before/rougeL`, `eval/after/rougeL`); `cfg`: `judge` and `rouge_weight` (the config's
    `objective` section, a dict or a dataclass). Higher is better; None when a figure is missing.
    """
    if not metrics:
        return None
    judge, weight = _get(cfg, "judge"), float(_get(cfg, "rouge_weight"))
    values = [metrics.get(k) for k in (f"eval/delta/{judge}/toxicity_mean", "eval/before/rougeL",
                                       "eval/after/rougeL")]
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
        return None
    delta, before, after = values
    return float(-delta - weight * max(0.0, before - after))


# ---------------------------------------------------------------------------------------------
# Inside a multirun job: what W&B calls the run and the group


def split_override(override: str) -> tuple[str, str]:
    key, _, value = str(override).partition("=")
    return key, value


def group_name(sweep_dir: str) -> str:
    """One W&B group per multirun: the sweep dir's last three parts (`multirun/<date>/<time>`)."""
    parts = [p for p in Path(os.path.normpath(str(sweep_dir))).parts if p != os.sep]
    return "/".join(parts[-3:])[-128:]


def swept_keys(hydra_cfg: Any) -> list[str]:
    """Keys the sweep varies: the sweeper's `params` / `search_space` (presets) and the command
    line's sweep overrides (`key=a,b`), which the basic sweeper saves in `multirun.yaml`."""
    keys = [*(hydra_cfg.sweeper.get("params") or {}), *(hydra_cfg.sweeper.get("search_space") or {})]
    path = os.path.join(str(hydra_cfg.sweep.dir), "multirun.yaml")
    if os.path.exists(path):
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        try:
            task = OmegaConf.to_container(OmegaConf.load(path).hydra.overrides.task, resolve=False)
            keys += [o.get_key_element() for o in OverridesParser.create().parse_overrides(task)
                     if o.is_sweep_override()]
        except Exception:  # an unreadable multirun.yaml only costs the run its short name
            pass
    return list(dict.fromkeys(keys))


def sweep_context() -> dict | None:
    """In a multirun job: {"group", "name", "keys", "dir", "job"} for W&B; None otherwise.

    The name is the job's values of the swept keys (`lora.r=8 ppo.kl.init_coef=0.05`), or all its
    overrides when none is known to be swept."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # not under Hydra
        return None
    if hc.mode != RunMode.MULTIRUN:
        return None
    overrides = [split_override(o) for o in hc.overrides.task]
    keys = swept_keys(hc)
    shown = [(k, v) for k, v in overrides if k in keys] or overrides
    return {"group": group_name(hc.sweep.dir), "name": " ".join(f"{k}={v}" for k, v in shown) or None,
            "keys": [k for k, _ in shown], "dir": os.path.abspath(str(hc.sweep.dir)),
            "job": hc.job.get("num")}


# ---------------------------------------------------------------------------------------------
# Reading a sweep dir


@dataclass
class Job:
    dir: str
    status: str  # done | running | failed | missing (job dir without results.json, or no dir yet)
    overrides: list[str]
    results: dict = field(default_factory=dict)

    @property
    def pairs(self) -> dict[str, str]:
        return dict(split_override(o) for o in self.overrides)


def _natural(path: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in Path(path).parts)


def read_job(job_dir: str) -> Job:
    path = os.path.join(job_dir, RESULTS_FILE)
    results: dict = {}
    status = "missing"
    if os.path.exists(path):
        try:
            with open(path) as f:
                results = json.load(f)
            status = results.get("status") or "missing"
        except (OSError, ValueError) as e:
            status, results = "failed", {"error": f"unreadable {RESULTS_FILE}: {e}"}
    overrides = results.get("overrides")
    hydra_overrides = os.path.join(job_dir, ".hydra", "overrides.yaml")
    if overrides is None and os.path.exists(hydra_overrides):
        import yaml

        with open(hydra_overrides) as f:
            overrides = yaml.safe_load(f)  # as written: `${...}` in an override stays unresolved
    return Job(job_dir, status, [str(o) for o in overrides or []], results)


def planned_overrides(sweep_dir: str) -> list[list[str]]:
    """Every job a basic-sweeper multirun will launch (from its `multirun.yaml`), so that jobs
    still queued (no job dir yet) are listed too. [] when unknown (other sweepers)."""
    path = os.path.join(sweep_dir, "multirun.yaml")
    if not os.path.exists(path):
        return []
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        hydra_cfg = OmegaConf.to_container(OmegaConf.load(path).hydra, resolve=False)
        if not str(hydra_cfg["sweeper"].get("_target_", "")).endswith("BasicSweeper"):
            return []
        params = [f"{k}={v}" for k, v in (hydra_cfg["sweeper"].get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides(params + hydra_cfg["overrides"]["task"])
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except Exception:  # best effort: the job dirs themselves are what counts
        return []


def find_jobs(sweep_dir: str) -> list[Job]:
    """The jobs of a sweep dir: every folder holding `.hydra/` or `results.json` (Hydra writes
    `.hydra/` when a job starts), plus planned jobs that have no folder yet."""
    if not os.path.isdir(sweep_dir):
        raise SweepError(f"{sweep_dir} is not a directory: pass the sweep dir a multirun printed "
                         "(hydra.sweep.dir, e.g. outputs/multirun/<date>/<time>).")
    jobs = []
    for root, dirs, files in os.walk(sweep_dir):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # .submitit/, .hydra/
        if RESULTS_FILE in files or os.path.isdir(os.path.join(root, ".hydra")):
            jobs.append(read_job(root))
            dirs[:] = []  # a job dir's subfolders (eval/, final/, ...) hold no jobs
    jobs.sort(key=lambda j: _natural(os.path.relpath(j.dir, sweep_dir)))
    seen = {tuple(j.overrides) for j in jobs}
    jobs += [Job("", "missing", o) for o in planned_overrides(sweep_dir) if tuple(o) not in seen]
    if not jobs:
        raise SweepError(f"no job dirs under {sweep_dir} (a job dir holds .hydra/ or {RESULTS_FILE}). "
                         "Pass the sweep dir of a multirun (`detox -m ...` prints it; by default "
                         "outputs/multirun/<date>/<time>), not an empty or unrelated folder.")
    return jobs


# ---------------------------------------------------------------------------------------------
# Figures per job and per point (one point = one setting of the swept keys, all its seeds)


@dataclass
class Figure:
    key: str
    title: str
    fmt: str


FIGURES = [
    Figure("objective_val", "objective (val)", "{:+.4f}"),
    Figure("objective_test", "objective (test)", "{:+.4f}"),
    Figure("tox_val", "toxicity reduction (val)", "{:+.4f}"),
    Figure("tox_test", "toxicity reduction (test)", "{:+.4f}"),
    Figure("rouge_val", "ROUGE-L change (val)", "{:+.4f}"),
    Figure("rouge_test", "ROUGE-L change (test)", "{:+.4f}"),
    Figure("kl_val", "KL to ref (val)", "{:.3f}"),
    Figure("kl_test", "KL to ref (test)", "{:.3f}"),
    Figure("reward", "final reward (train)", "{:.3f}"),
]


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def objective_config(job: Job, judge: str | None = None, rouge_weight: float | None = None) -> dict:
    cfg = {**DEFAULT_OBJECTIVE, **((job.results.get("config") or {}).get("objective") or {})}
    if judge is not None:
        cfg["judge"] = judge
    if rouge_weight is not None:
        cfg["rouge_weight"] = rouge_weight
    return cfg


def job_figures(job: Job, judge: str | None = None, rouge_weight: float | None = None) -> dict:
    """The figures of one finished job; None for each one it lacks."""
    if job.status != "done":
        return {f.key: None for f in FIGURES}
    cfg = objective_config(job, judge, rouge_weight)
    out: dict[str, float | None] = {}
    for split, metrics in (("val", job.results.get("eval_val")), ("test", job.results.get("eval"))):
        m = metrics or {}
        before, after = _num(m.get("eval/before/rougeL")), _num(m.get("eval/after/rougeL"))
        delta = _num(m.get(f"eval/delta/{cfg['judge']}/toxicity_mean"))
        out[f"objective_{split}"] = objective(m, cfg)
        out[f"tox_{split}"] = -delta if delta is not None else None
        out[f"rouge_{split}"] = after - before if None not in (before, after) else None
        out[f"kl_{split}"] = _num(m.get("eval/after/kl_to_ref"))
    if out["objective_val"] is None and judge is None and rouge_weight is None:
        out["objective_val"] = _num(job.results.get("objective"))  # as the run computed it
    out["reward"] = _num((job.results.get("train") or {}).get("env/reward_mean"))
    return out


@dataclass
class Point:
    label: str
    jobs: list[Job]
    stats: dict[str, tuple[float | None, float | None, int]]  # key -> (mean, std, n)
    pareto: bool = False

    @property
    def done(self) -> int:
        return sum(j.status == "done" for j in self.jobs)

    def mean(self, key: str) -> float | None:
        return self.stats[key][0]


def varying_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs, seeds excepted, in command-line order."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.pairs))
    return [k for k in keys if k not in SEED_KEYS and len({j.pairs.get(k) for j in jobs}) > 1]


def _shown(value: str) -> str:
    """A long float as 4 significant digits (optuna's `0.06317799068690831` -> `0.06318`)."""
    try:
        return f"{float(value):.4g}" if len(value) > 8 and not value.isdigit() else value
    except ValueError:
        return value


def setting(job: Job, keys: list[str]) -> str:
    return " ".join(f"{k}={_shown(job.pairs[k])}" for k in keys if k in job.pairs)


def _stat(values: list[float | None]) -> tuple[float | None, float | None, int]:
    xs = [v for v in values if v is not None]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs)


def aggregate(jobs: list[Job], keys: list[str], judge: str | None = None,
              rouge_weight: float | None = None) -> list[Point]:
    """Points (one per setting of `keys`, the swept keys) sorted by the validation objective
    (best first; points without one last)."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(tuple(job.pairs.get(k) for k in keys), []).append(job)
    points = []
    for members in groups.values():
        label = setting(members[0], keys) or "(one setting)"
        figures = [job_figures(j, judge, rouge_weight) for j in members]
        points.append(Point(label, members, {f.key: _stat([fig[f.key] for fig in figures]) for f in FIGURES}))
    points.sort(key=lambda p: (p.mean("objective_val") is None, -(p.mean("objective_val") or 0.0)))
    return points


def pareto_front(xs: list[float | None], ys: list[float | None]) -> list[bool]:
    """True where no other point is at least as good on both x and y and better on one
    (both maximised). Points with a missing coordinate are never on the front."""
    def dominated(i: int) -> bool:
        return any(j != i and xs[j] is not None and ys[j] is not None and xs[j] >= xs[i] and ys[j] >= ys[i]
                   and (xs[j] > xs[i] or ys[j] > ys[i]) for j in range(len(xs)))

    return [xs[i] is not None and ys[i] is not None and not dominated(i) for i in range(len(xs))]


# ---------------------------------------------------------------------------------------------
# Writing the summary


def _cell(stat: tuple[float | None, float | None, int], fmt: str) -> str:
    mean, std, _ = stat
    if mean is None:
        return ""
    return fmt.format(mean) + (f" ± {fmt.format(std).lstrip('+')}" if std is not None else "")


def _judges(jobs: list[Job], judge: str | None) -> str:
    names = {objective_config(j, judge)["judge"] for j in jobs if j.status == "done"}
    return ", ".join(sorted(names)) or objective_config(Job("", "missing", []), judge)["judge"]


def markdown(sweep_dir: str, jobs: list[Job], points: list[Point], keys: list[str], split: str,
             judge: str | None, rouge_weight: float | None, plot: str | None) -> str:
    counts = {s: sum(j.status == s for j in jobs) for s in ("done", "running", "failed", "missing")}
    weights = {objective_config(j, judge, rouge_weight)["rouge_weight"] for j in jobs if j.status == "done"}
    lines = [
        f"# Sweep {sweep_dir}",
        "",
        f"{len(jobs)} jobs: {counts['done']} done, {counts['running']} running, {counts['failed']} failed, "
        f"{counts['missing']} not started / missing.",
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
    return [" ".join(f"{names[k]}={_shown(p.jobs[0].pairs[k])}" for k in keys if k in p.jobs[0].pairs)
            or p.label for p in points]


def _place_labels(fig, ax, items: list[tuple[str, float, float]]) -> None:
    """Label each point, trying offsets around it until the label overlaps no earlier label."""
    renderer = fig.canvas.get_renderer()
    offsets = [(6, 5, "left"), (6, -13, "left"), (-6, 5, "right"), (-6, -13, "right"),
               (6, 17, "left"), (6, -25, "left"), (-6, 17, "right"), (-6, -25, "right")]
    placed = []
    for label, x, y in items:
        for dx, dy, ha in offsets:
            text = ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8, ha=ha)
            box = text.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            text.remove()
        else:  # crowded everywhere: the first place
            text = ax.annotate(label, (x, y), xytext=offsets[0][:2], textcoords="offset points", fontsize=8)
            box = text.get_window_extent(renderer)
        placed.append(box)


def plot_pareto(path: str, points: list[Point], keys: list[str], split: str, judge: str, title: str) -> str | None:
    """Toxicity reduction (y) vs ROUGE-L change (x) per setting, ± std over seeds as error bars,
    KL to the reference as colour, the Pareto front marked and every point labelled."""
    shown = [(p, lab) for p, lab in zip(points, _short_labels(points, keys))
             if p.mean(f"tox_{split}") is not None and p.mean(f"rouge_{split}") is not None]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.mean(f"rouge_{split}") for p, _ in shown]
    ys = [p.mean(f"tox_{split}") for p, _ in shown]
    kls = [p.mean(f"kl_{split}") for p, _ in shown]
    fig, ax = plt.subplots(figsize=(8.5, 6))
    ax.axhline(0, color="grey", lw=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    xerr = [p.stats[f"rouge_{split}"][1] or 0 for p, _ in shown]
    yerr = [p.stats[f"tox_{split}"][1] or 0 for p, _ in shown]
    if any(xerr) or any(yerr):
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor="0.6", elinewidth=1, capsize=2, zorder=1,
                    label="± std over seeds")
    if all(k is not None for k in kls):
        sc = ax.scatter(xs, ys, c=kls, cmap="viridis", s=70, edgecolors="k", linewidths=0.5, zorder=2)
        fig.colorbar(sc, ax=ax).set_label(f"KL to the reference (nats per summary, {split})")
    else:
        ax.scatter(xs, ys, color="tab:blue", s=70, edgecolors="k", linewidths=0.5, zorder=2)
    front = sorted((x, y) for (p, _), x, y in zip(shown, xs, ys) if p.pareto)
    if front:
        ax.plot(*zip(*front), "--", color="tab:red", lw=1.2, zorder=1, label="Pareto front")
        ax.scatter(*zip(*front), s=190, facecolors="none", edgecolors="tab:red", linewidths=1.5, zorder=3)
    ax.legend(loc="best", fontsize=9)
    ax.set_xlabel(f"ROUGE-L change, after - before ({split} split)   → keeps the summaries")
    ax.set_ylabel(f"toxicity reduction, judge {judge} ({split} split)   → less toxic")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(0.2)
    fig.tight_layout()
    _place_labels(fig, ax, [(label, x, y) for (_, label), x, y in zip(shown, xs, ys)])
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summarize(sweep_dir: str, out_dir: str | None = None, split: str = "val", judge: str | None = None,
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
    paths["png"] = plot_pareto(os.path.join(out_dir, "pareto.png"), points, keys, split,
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
        out = summarize(args.sweep_dir, args.out, args.split, args.judge, args.rouge_weight)
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
