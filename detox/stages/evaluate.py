"""stage=eval: evaluate a finished run against its starting policy (rewrites `<run_dir>/eval/`),
and the final report every evaluating stage ends with (`finish_eval`)."""

from __future__ import annotations

import logging
import os

from omegaconf import DictConfig

from detox.core.run_dir import EVAL_DIR
from detox.evaluation.evaluator import Evaluator
from detox.evaluation.objective import objective
from detox.evaluation.report import example_rows, ranking_judge
from detox.runtime.checkpoint import load_trained
from detox.runtime.results import Results
from detox.runtime.tracking import Tracking
from detox.stages.assemble import assemble, build_evaluator
from detox.stages.common import config_dict, finished_run_lock, load_run

log = logging.getLogger("detox")


def finish_eval(cfg: DictConfig, evaluator: Evaluator, baseline: dict, run_dir: str, results: Results,
                tracker: Tracking) -> float | None:
    """The final report on the test split; validation figures and the objective for sweeps."""
    test, val, samples, paths = evaluator.final(baseline, os.path.join(run_dir, EVAL_DIR))
    score = objective(val, cfg.objective) if val else None
    results.update(eval=test, eval_val=val or None, objective=score)
    tracker.summary({**test, **{k.replace("eval/", "eval_val/", 1): v for k, v in val.items()}})
    judge = ranking_judge(samples, evaluator.optimised_judges)
    tracker.log_table("eval/examples", example_rows(samples, judge, cfg.eval.examples))
    log.info("evaluation report: %s", paths[2])
    return score


def run_eval(cfg: DictConfig) -> float | None:
    """Evaluate a finished run against its starting policy; rewrites `<run_dir>/eval/`."""
    with finished_run_lock(cfg):
        return _run_eval(cfg)


def _run_eval(cfg: DictConfig) -> float | None:
    run_cfg, checkpoint = load_run(cfg)
    run_dir = cfg.run_dir
    parts = assemble(run_cfg)
    evaluator = build_evaluator(run_cfg, parts)
    baseline = evaluator.baseline(os.path.join(run_dir, EVAL_DIR))
    step = load_trained(checkpoint, parts.policy)
    log.info("evaluating %s (step %d)", checkpoint, step)
    tracker = Tracking(run_cfg.logger, run_dir, config_dict(run_cfg), start_step=None)
    try:
        score = finish_eval(run_cfg, evaluator, baseline, run_dir, Results.reopen(run_dir), tracker)
    finally:
        tracker.finish(0)
    print(f"\ndetox: evaluated step {step} of {os.path.abspath(run_dir)}\n"
          "  eval/report.md, eval/report.json, eval/samples.jsonl, eval/toxicity_hist.png")
    return score
