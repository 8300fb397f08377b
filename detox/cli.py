"""The `detox` command (= `python -m detox`): one Hydra app, stages ppo | sft | eval | export | generate."""

from __future__ import annotations

import errno
import logging
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from detox.config.schema import register
from detox.config.validate import validate
from detox.core.errors import DetoxError, Interrupted, RunStopped
from detox.core.logs import quiet_libraries
from detox.runtime.distributed import launched_world_size
from detox.runtime.results import Results

register()
log = logging.getLogger("detox")
# The disk refusing a write, and what to do about it.
DISK_ERRORS = {errno.ENOSPC: "free some space, or point hydra.run.dir at another disk",
               errno.EDQUOT: "free some quota, or point hydra.run.dir at another disk",
               errno.EROFS: "point hydra.run.dir at a writable folder",
               errno.EACCES: "point hydra.run.dir at a folder you can write to",
               errno.EPERM: "point hydra.run.dir at a folder you can write to"}


def main() -> None:
    """The `detox` command. Hydra exits 1 on any error it catches itself; one raised before the
    run or sweep started (`RunDirCheck` marks that) is a config it could not compose
    (`ppo.steps=abc`, an unknown group member): a user error, so exit 2 as every other config
    error does."""
    try:
        app()
    except SystemExit as e:
        if e.code == 1 and not _COMPOSED:
            sys.exit(2)
        raise


_COMPOSED = False  # set once Hydra composed the config and starts the run or the sweep


@hydra.main(version_base="1.3", config_path="pkg://detox.conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    if launched_world_size() > 1 and _in_multirun():
        # Every process would run the whole sweep, and their jobs would not line up.
        log.error("ConfigError: `-m` (multirun) under a data-parallel launcher (WORLD_SIZE=%d) is not "
                  "supported: launch each sweep point on its own with `accelerate launch ... -m detox "
                  "<overrides>`, or sweep without `accelerate launch`.", launched_world_size())
        sys.exit(2)
    try:
        validate(cfg)  # a config error answers before the model libraries load (seconds)
        quiet_libraries()
        # Imported here, not above: `detox --help`, `--cfg job` and a config error then answer
        # without loading the model libraries the stages need (transformers, peft, datasets).
        from detox.stages.dispatch import run_stage

        return run_stage(cfg, validated=True)
    except RunStopped as e:
        _report_stop(cfg, e)
        if isinstance(e, Interrupted) and e.chain is not None:
            e.chain()  # the launcher's own handler (submitit requeues the job), once the checkpoint is safe
        if _in_multirun() and not isinstance(e, Interrupted):
            # A diverged point of a sweep is a result (results.json says so): the sweep goes on.
            raise RuntimeError(f"{e.status}: {e}") from None
        sys.exit(e.exit_code)
    except (DetoxError, OSError) as e:
        # A user error (exit 2), or the disk refusing a write (exit 1): one line that says what is
        # wrong and how to fix it; the traceback goes to detox.log only. Other OSErrors are bugs.
        if not isinstance(e, DetoxError) and e.errno not in DISK_ERRORS:
            raise
        code = 2 if isinstance(e, DetoxError) else 1
        _one_line(e)
        if _in_multirun():
            _record_failure(cfg, e)
            raise
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(code)
    except Exception as e:
        if _in_multirun():
            log.exception("%s: %s", type(e).__name__, e)
            _record_failure(cfg, e)
        raise


def _one_line(error: BaseException) -> None:
    """The error on stderr as one line, and with its traceback in the run's log file."""
    if isinstance(error, OSError) and not isinstance(error, DetoxError):
        text = f"{error.strerror or error} writing {error.filename or 'a file'}" if error.filename else str(error)
        message = f"OSError: {text}; {DISK_ERRORS[error.errno]}. Checkpoints are written atomically: the newest one on disk is whole."
    else:
        message = f"{type(error).__name__}: {error}".replace("\n", " ")
    print(f"detox: {message}", file=sys.stderr)
    record = logging.LogRecord("detox", logging.ERROR, __file__, 0, message, None,
                               (type(error), error, error.__traceback__))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


class RunDirCheck(Callback):
    """A Hydra callback (conf/config.yaml `hydra.callbacks`), called once the config composed: the
    run or sweep dir must be a folder this process can write, checked before Hydra creates it and
    opens its log there (Hydra's own failures there are tracebacks)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _composed()
        _check_writable_dir(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _composed()
        _check_writable_dir(config.hydra.sweep.dir, "hydra.sweep.dir")


def _composed() -> None:
    global _COMPOSED
    _COMPOSED = True


def _check_writable_dir(path: str, key: str) -> None:
    path = os.path.abspath(str(path))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    problem = None
    if not os.path.isdir(existing):
        problem = f"{existing} is a file, not a folder" if existing == path else f"{existing} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        probe = os.path.join(existing, f".detox-write-test-{os.getpid()}")
        try:
            with open(probe, "w"):
                pass
            os.remove(probe)
        except OSError as e:
            problem = f"{existing} cannot be written ({e.strerror})"
    if problem:
        print(f"detox: {key}={path}: {problem}; point {key} at a folder you can write to.", file=sys.stderr)
        sys.exit(2)


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
