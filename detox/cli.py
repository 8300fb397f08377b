"""The `detox` command (= `python -m detox`): one Hydra app, stages ppo | sft | eval | export."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from detox.schema import ConfigError, register
from detox.tracking import quiet_libraries

register()
quiet_libraries()
log = logging.getLogger("detox")


@hydra.main(version_base="1.3", config_path="pkg://detox.conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from detox.checkpoint import CheckpointError
    from detox.data import DataError
    from detox.hub import LoadError
    from detox.stages import run_stage

    try:
        return run_stage(cfg)
    except (ConfigError, DataError, LoadError, CheckpointError) as e:
        # A user error: say what is wrong and how to fix it, without a traceback.
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(2)


if __name__ == "__main__":
    main()
