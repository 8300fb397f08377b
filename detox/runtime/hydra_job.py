"""What Hydra says about the running job: in a multirun, the W&B-style run name and group of
a job, the keys the sweep varies, the sweep dir and the job number (`sweep_context`), which
the trackers use to name and group a sweep's runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from detox.core.overrides import split_override


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
