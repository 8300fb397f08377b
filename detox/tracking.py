"""Where metrics go: `metrics.jsonl` (always), Weights & Biases (unless logger.backend=none),
and `curves.png` at the end."""

from __future__ import annotations

import json
import logging
import os
import uuid
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def wandb_mode(cfg: DictConfig) -> str:
    """logger.mode, else $WANDB_MODE, else online with an API key and offline without one, so
    nothing ever prompts for a login or hangs on a missing server."""
    if cfg.mode:
        return cfg.mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Tracker:
    def __init__(self, cfg: DictConfig, run_dir: str, config: dict, start_step: int | None = 0):
        """start_step: drop metrics.jsonl rows after it (a resumed run); None keeps them all
        (stage=eval adding its summary to a finished run)."""
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, METRICS_FILE)
        if start_step is not None:
            self._truncate_after(start_step)
        self.run = None
        if cfg.backend == "wandb":
            self.run = self._init_wandb(cfg, config)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop rows logged after the checkpoint so steps are not duplicated."""
        rows = [r for r in read_metrics(self.run_dir) if r["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def _init_wandb(self, cfg: DictConfig, config: dict):
        import wandb

        from detox.sweep import sweep_context

        id_file = os.path.join(self.run_dir, "wandb_id.txt")
        run_id = open(id_file).read().strip() if os.path.exists(id_file) else uuid.uuid4().hex[:8]
        with open(id_file, "w") as f:
            f.write(run_id)
        mode = wandb_mode(cfg)
        # A multirun job: named by its swept overrides, one group per sweep (unless the config
        # names them), and the swept keys in its config (`sweep.keys`) for the dashboard.
        sweep = sweep_context() or {}
        if sweep:
            config = {**config, "sweep": {k: sweep[k] for k in ("keys", "dir", "job")}}
        run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group or sweep.get("group"),
            name=cfg.name or sweep.get("name"), tags=list(cfg.tags), config=config,
            dir=self.run_dir, mode=mode, id=run_id, resume="allow",
            settings=wandb.Settings(console="off", silent=True),
        )
        run.config.update({"run_dir": os.path.abspath(self.run_dir)}, allow_val_change=True)
        return run

    def log(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step, **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_table(self, key: str, rows: list[dict], step: int | None = None) -> None:
        if self.run is None or not rows:
            return
        import wandb

        columns = list(rows[0])
        self.run.log({key: wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        offline = self.run.settings.mode == "offline" or getattr(self.run, "offline", False)
        run_path = self.run.dir
        self.run.finish(exit_code=exit_code)
        self.run = None
        if offline:
            log.info("W&B run saved offline; upload it with: wandb sync %s", os.path.dirname(run_path))


def plot_curves(run_dir: str) -> str | None:
    """curves.png: reward (mean ± std), KL (per-sequence k1 sum) and KL coefficient by step."""
    rows = read_metrics(run_dir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([r["step"] for r in rows])

    def series(key):
        return np.array([r.get(key, np.nan) for r in rows], dtype=float)

    val_keys = sorted({k for r in rows for k in r if k.startswith("val/") and k.endswith("/toxicity_mean")})
    fig, axes = plt.subplots(1, 3 + bool(val_keys), figsize=(13 + 4.3 * bool(val_keys), 3.6))
    mean, std = series("env/reward_mean"), series("env/reward_std")
    axes[0].plot(steps, mean, color="tab:green")
    axes[0].fill_between(steps, mean - std, mean + std, color="tab:green", alpha=0.2)
    axes[0].set_title("reward (env/reward_mean ± std)")
    axes[1].plot(steps, series("objective/kl"), color="tab:red", label="train (objective/kl)")
    if val_keys:
        ok = ~np.isnan(series("val/kl_to_ref"))
        axes[1].plot(steps[ok], series("val/kl_to_ref")[ok], "o-", color="tab:purple", ms=3,
                     label="validation (val/kl_to_ref)")
        axes[1].legend(fontsize=8)
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[1].set_title("KL to reference (nats/seq)")
    axes[2].plot(steps, series("objective/kl_coef"), color="tab:blue")
    axes[2].set_ylim(bottom=0, top=max(1e-3, float(np.nanmax(series("objective/kl_coef")))) * 1.5)
    axes[2].set_title("KL coefficient (objective/kl_coef)")
    for key in val_keys:
        ok = ~np.isnan(series(key))
        axes[3].plot(steps[ok], series(key)[ok], "o-", ms=3, label=key.split("/")[1])
    if val_keys:
        axes[3].set_ylim(0, 1)
        axes[3].set_title("validation toxicity (val/<judge>/toxicity_mean)")
        axes[3].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(run_dir, "curves.png")
    tmp = os.path.join(run_dir, ".curves.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def quiet_libraries() -> None:
    """One progress bar (PPO's own): silence the per-file bars of datasets and transformers,
    and rouge-score's absl line for every scorer it builds."""
    import logging
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    logging.getLogger("absl").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
