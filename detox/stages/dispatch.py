"""Which stage runs: `run_stage` validates the config once, sets up the machine (CPU threads,
TF32) and hands the config to the stage function."""

from __future__ import annotations

from omegaconf import DictConfig

from detox.config.schema import Stage
from detox.config.validate import validate
from detox.runtime.compute import apply_threads, enable_tf32
from detox.runtime.distributed import resolve_device
from detox.stages.evaluate import run_eval
from detox.stages.export import run_export
from detox.stages.ppo import run_ppo
from detox.stages.sft import run_sft
from detox.stages.summarize import run_generate

STAGES = {Stage.ppo: run_ppo, Stage.sft: run_sft, Stage.eval: run_eval, Stage.export: run_export,
          Stage.generate: run_generate}


def run_stage(cfg: DictConfig, validated: bool = False):
    """Run `cfg.stage`; `validated`: the caller (the CLI) already ran `validate(cfg)`."""
    if not validated:
        validate(cfg)
    apply_threads(cfg.threads)
    enable_tf32(resolve_device(cfg.device))
    return STAGES[cfg.stage](cfg)
