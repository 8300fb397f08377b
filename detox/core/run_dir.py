"""The names of everything a run dir holds, in one place (the contract in docs/design.md).

A run dir is Hydra's output dir of one job. PPO writes:

    .hydra/config.yaml          the composed config (Hydra's)
    results.json                status, overrides, training and evaluation figures, provenance
    metrics.jsonl               one row per PPO step (`step` + the metric names in the README)
    rollouts.jsonl              every sampled response with its score, KL and length
    curves.png                  reward, KL and KL coefficient by step
    distributed.json            data-parallel runs: every process's facts
    wandb/, tensorboard/, mlflow.db, ...   the trackers' own files (detox/runtime/trackers.py)
    detox.lock                  while a process works in the run dir: its pid, host, stage
    checkpoints/step-<N>/       periodic checkpoints (format: detox/runtime/checkpoint.py)
    final/                      the last checkpoint
    eval/                       samples.jsonl, report.json, report.md, toxicity_hist.png, baseline.json
    export/                     stage=export: a model to ship (README.md model card, detox_export.json)

SFT (stage=sft) writes results.json, metrics.jsonl, sft_samples.jsonl, sft_trainer/ and
final/adapter or final/model.
"""

from __future__ import annotations

import os

HYDRA_CONFIG = os.path.join(".hydra", "config.yaml")
HYDRA_OVERRIDES = os.path.join(".hydra", "overrides.yaml")
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
CURVES_FILE = "curves.png"
DISTRIBUTED_FILE = "distributed.json"
LOCK_FILE = "detox.lock"
CHECKPOINTS_DIR = "checkpoints"
FINAL_DIR = "final"
EVAL_DIR = "eval"
EXPORT_DIR = "export"
EXPORT_INFO_FILE = "detox_export.json"  # in export/: the run's provenance and config
SFT_TRAINER_DIR = "sft_trainer"
SFT_SAMPLES_FILE = "sft_samples.jsonl"


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, CHECKPOINTS_DIR, f"step-{step}")
