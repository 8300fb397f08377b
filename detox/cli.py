"""The `detox` command (= `python -m detox`): one Hydra app, stages ppo | sft | eval | export."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from detox.distributed import launched_world_size
from detox.errors import DetoxError, Interrupted, RunStopped
from detox.results import Results
from detox.runs import quiet_libraries
from detox.schema import register

register()
quiet_libraries()
log = logging.getLogger("detox")


@hydra.main(version_base="1.3", config_path="pkg://detox.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # Imported here, not above: `detox --help` and `--cfg job` then answer without loading the
    # model libraries the stages need.
    from detox.stages import run_stage

    if launched_world_size() > 1 and _in_multirun():
        # Every process would run the whole sweep, and their jobs would not line up.
        log.error("ConfigError: `-m` (multirun) under a data-parallel launcher (WORLD_SIZE=%d) is not "
                  "supported: launch each sweep point on its own with `accelerate launch ... -m detox "
                  "<overrides>`, or sweep without `accelerate launch`.", launched_world_size())
        sys.exit(2)
    try:
        return run_stage(cfg)
    except RunStopped as e:
        _report_stop(cfg, e)
        if isinstance(e, Interrupted) and e.chain is not None:
            e.chain()  # the launcher's own handler (submitit requeues the job), once the checkpoint is safe
        sys.exit(e.exit_code)
    except DetoxError as e:
        # A user error: say what is wrong and how to fix it, without a traceback.
        log.error("%s: %s", type(e).__name__, e)
        if not _in_multirun():
            sys.exit(2)
        _record_failure(cfg, e)
        raise
    except Exception as e:
        if _in_multirun():
            log.exception("%s: %s", type(e).__name__, e)
            _record_failure(cfg, e)
        raise


def _report_stop(cfg: DictConfig, stop: RunStopped) -> None:
    """One line: why the run stopped, and how to go on."""
    run_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else cfg.get("output_dir")
    if isinstance(stop, Interrupted):
        log.error("interrupted by %s after step %d%s. To resume, run the same command with hydra.run.dir=%s",
                  stop.signal_name, stop.step, f" (checkpoint {stop.checkpoint})" if stop.checkpoint else "",
                  run_dir)
    else:
        log.error("diverged at step %d: %s. Last good checkpoint: %s (results.json says `diverged`)",
                  stop.step, stop.reason, stop.last_good_checkpoint or "none")


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failure(cfg: DictConfig, error: Exception) -> None:
    """A failing multirun job raises (never sys.exit, which would end the whole sweep): Hydra's
    launchers then record it as failed and run the other jobs, the basic sweeper exits non-zero
    once they are done, and the optuna preset counts a failed trial. Its results.json says
    `failed` and why, even when it failed before the run wrote one (a config error)."""
    run_dir = HydraConfig.get().runtime.output_dir
    results = Results.reopen(run_dir)
    if results.data.get("status") != "failed":  # the stages record their own failures
        fields = {"run_dir": run_dir, "overrides": list(HydraConfig.get().overrides.task)}
        if "config" not in results.data:
            fields["config"] = _config_or_none(cfg)
        results.failed(error, **fields)
    log.error("job failed (recorded in %s); the sweep goes on", results.path)


def _config_or_none(cfg: DictConfig) -> dict | None:
    try:
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except Exception:  # the config itself may be what failed
        return None


if __name__ == "__main__":
    main()
