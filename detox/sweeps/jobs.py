"""A sweep dir read back: its jobs (finished, running, failed or not started), each job's
figures, and the points (one per setting of the swept keys, seeds aggregated) that
`detox-sweep-summary` ranks by the validation objective.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detox.core.overrides import split_override
from detox.core.run_dir import HYDRA_OVERRIDES, RESULTS_FILE
from detox.evaluation.objective import DEFAULT_OBJECTIVE, objective

SEED_KEYS = ("seed", "+seed", "++seed")


class SweepError(ValueError):
    """Nothing to summarise; the message says what to pass instead."""


# ---------------------------------------------------------------------------------------------
# Reading a sweep dir


@dataclass
class Job:
    dir: str
    status: str  # done | running | failed | diverged | interrupted | missing (no results.json, or no dir yet)
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
            if not isinstance(results, dict):
                raise ValueError(f"a JSON {type(results).__name__}, not an object")
            status = str(results.get("status") or "missing")
        except (OSError, ValueError) as e:
            status, results = "failed", {"error": f"unreadable {RESULTS_FILE}: {e}"}
        problems = shape_problems(results)
        if problems:  # not what detox writes: a broken job, not a summary's traceback
            status = "failed"
            results = {"error": f"broken {RESULTS_FILE}: {'; '.join(problems)}",
                       **({"overrides": results["overrides"]} if isinstance(results.get("overrides"), list) else {})}
    overrides = results.get("overrides")
    if not isinstance(overrides, list):  # missing, or not what detox writes: Hydra's own record
        overrides = None
        hydra_overrides = os.path.join(job_dir, HYDRA_OVERRIDES)
        if os.path.exists(hydra_overrides):
            with open(hydra_overrides) as f:
                loaded = yaml.safe_load(f)  # as written: `${...}` in an override stays unresolved
            overrides = loaded if isinstance(loaded, list) else None
    return Job(job_dir, status, [str(o) for o in overrides or []], results)


# The fields of results.json the summary reads, and the JSON types detox writes them as (an
# `overrides` that is not a list falls back on Hydra's own record instead).
SHAPES = {"status": (str,), "config": (dict,), "train": (dict,), "eval": (dict,), "eval_val": (dict,),
          "objective": (int, float), "error": (str,)}


def shape_problems(results: dict) -> list[str]:
    """What in a results.json does not have the shape detox writes (a null field is fine)."""
    names = {dict: "an object", str: "a string", int: "a number", float: "a number"}
    problems = [f"`{key}` is {json.dumps(results[key])[:40]}, not {' or '.join(dict.fromkeys(names[t] for t in types))}"
                for key, types in SHAPES.items()
                if results.get(key) is not None and not isinstance(results[key], types)]
    objective_cfg = (results.get("config") or {}).get("objective") if isinstance(results.get("config"), dict) else None
    if objective_cfg is not None and not isinstance(objective_cfg, dict):
        problems.append("`config.objective` is not an object")
    return problems


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


def shown_value(value: str) -> str:
    """A long float as 4 significant digits (optuna's `0.06317799068690831` -> `0.06318`)."""
    try:
        return f"{float(value):.4g}" if len(value) > 8 and not value.isdigit() else value
    except ValueError:
        return value


def setting(job: Job, keys: list[str]) -> str:
    return " ".join(f"{k}={shown_value(job.pairs[k])}" for k in keys if k in job.pairs)


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
