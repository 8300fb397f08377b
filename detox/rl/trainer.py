"""The PPO trainer: it owns the loop, readable top to bottom. It knows no model family (the
policy's does) and receives its own config nodes and built objects, never the root config.

One step (`train_step`): sample prompts -> rollout (`detox/rl/rollout.py`: generate, score,
per-token log-probs of policy and reference, values; dropout off) -> per-token rewards
(-beta * KL, plus the score on the last response token) -> advantages (`ppo.advantage`,
GAE by default) -> `ppo_epochs` passes of clipped policy + value loss over mini-batches ->
KL controller update. The loop (`train`): steps until `ppo.steps`, each step's metrics to
the tracker and its responses to rollouts.jsonl, periodic validation, checkpoints, and
`final/`. The data flow through the modules is drawn in docs/design.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Callable

import numpy as np
import torch
from datasets import Dataset
from omegaconf import DictConfig
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, set_seed

from detox.algo.kl import make_kl_controller
from detox.core.errors import CheckpointError
from detox.core.run_dir import (
    DISTRIBUTED_FILE,
    FINAL_DIR,
    ROLLOUTS_FILE,
    checkpoint_dir,
)
from detox.data.sampling import PromptSampler, sample_max_new_tokens
from detox.data.splits import row_columns
from detox.models.generation import generation_config
from detox.models.policy import Policy
from detox.models.rewards import Reward
from detox.rl.guards import DivergenceGuard, warn_if_kl_significantly_negative
from detox.rl.rollout import Rollout, collect_rollout
from detox.rl.step_metrics import rollout_metrics
from detox.rl.update import PPOUpdate
from detox.runtime.checkpoint import (
    decode_rng,
    encode_rng,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from detox.runtime.compute import peak_memory_gb, reset_peak_memory
from detox.runtime.distributed import Distributed, weights_checksum
from detox.runtime.preemption import StopSignals
from detox.runtime.tracking import Tracking, read_metrics

log = logging.getLogger(__name__)
# Periodic validation: () -> (metrics, sample rows for a table)
Validate = Callable[[], tuple[dict[str, float], list[dict]]]


class PPOTrainer:
    """dist: the data-parallel group (see detox/runtime/distributed.py); default: one process. With
    several, each samples `ppo.batch_size` prompts from its own shard of `train_set` per step,
    and the statistics, KL and gradients of the step are shared (the global batch is
    batch_size x processes)."""

    def __init__(self, policy: Policy, tokenizer: PreTrainedTokenizerBase, reward: Reward, train_set: Dataset, *,
                 ppo: DictConfig, generation: DictConfig, data: DictConfig, seed: int, fingerprint: dict,
                 device: torch.device, dist: Distributed | None = None):
        """ppo, generation, data: the config's nodes; fingerprint: the settings a checkpoint
        records and a resume must agree with (`detox.runtime.checkpoint.fingerprint`)."""
        self.policy, self.tokenizer, self.reward, self.device = policy, tokenizer, reward, device
        self.ppo_cfg, self.generation, self.data_cfg, self.seed, self.fingerprint = ppo, generation, data, seed, fingerprint
        self.dist = dist = dist or Distributed()
        self.train_set = self._shard(train_set)
        self.gen_config = generation_config(generation, policy.special_tokens)
        self.trainable = policy.trainable_parameters()
        self.optimizer = self._optimizer()
        self.kl_ctl = make_kl_controller(ppo.kl.controller.value, ppo.kl.init_coef, ppo.kl.target, ppo.kl.horizon)
        # k responses per prompt: batch_size / k prompts per step, each repeated k times in a row
        self.samples_per_prompt = k = ppo.samples_per_prompt
        self.sampler = PromptSampler(len(self.train_set), ppo.batch_size // k, seed=seed)
        self.length_rng = np.random.default_rng([seed, 1, *([dist.rank] if dist.enabled else [])])
        if dist.enabled:
            # Same start everywhere (every process built the policy under the seed; the
            # broadcast makes it certain), then each process samples under its own seed.
            dist.broadcast_parameters(self.trainable)
            set_seed(seed + 1_000_003 * dist.rank)
        if ppo.compile:
            policy.compile()
        self.update = PPOUpdate(ppo, seed, policy, self.optimizer, self.trainable, dist, device)
        aux = policy.family.describe_aux_loss(policy.config)
        if aux:
            log.info("%s: %s %s", policy.family.name, aux,
                     "join the PPO loss (ppo/loss/aux; ppo.aux_loss=false turns it off)" if ppo.aux_loss
                     else "are off (ppo.aux_loss=false)")
        self.guard = DivergenceGuard(ppo)
        reset_peak_memory(device)
        self.step = 0
        self.timings: dict[str, float] = {}

    def _shard(self, train_set: Dataset) -> Dataset:
        """This process's rows of the train split: all of them, or data-parallel a strided shard
        (row i goes to process i % n, so an unshuffled split still mixes)."""
        dist = self.dist
        if not dist.enabled:
            return train_set
        if len(train_set) < dist.world_size:
            raise ValueError(f"the train split has {len(train_set)} rows, fewer than the "
                             f"{dist.world_size} processes: nothing to shard.")
        shard = train_set.shard(num_shards=dist.world_size, index=dist.rank, contiguous=False)
        log.info("data-parallel: %d processes x ppo.batch_size %d = %d prompts per step, each process "
                 "from its own shard of the train split (%d of %d rows here)", dist.world_size,
                 self.ppo_cfg.batch_size, dist.world_size * self.ppo_cfg.batch_size, len(shard), len(train_set))
        return shard

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW over the trainable weights. A fresh value head predicts noise, and the advantages
        it yields push the policy at random: it may learn faster (value_learning_rate) or alone
        first (value_warmup_steps)."""
        ppo, head = self.ppo_cfg, self.policy.value_head
        value_params = list(head.parameters()) if head is not None else []
        policy_params = [p for p in self.trainable if all(p is not v for v in value_params)]
        groups = [{"params": policy_params, "lr": ppo.learning_rate}]
        if value_params:
            groups.append({"params": value_params, "lr": ppo.value_learning_rate or ppo.learning_rate})
        # fused: one kernel for every tensor (PyTorch's default loops over LoRA's many small ones,
        # 0.6 ms a step against 0.14 on the quickstart's); the same update to float rounding.
        fused = all(p.device.type in ("cpu", "cuda") for p in self.trainable) or None
        return torch.optim.AdamW(groups, eps=ppo.adam_eps, weight_decay=0.0, fused=fused)

    # ---------------------------------------------------------------- state for checkpoints
    def state(self) -> dict:
        """The trainer's checkpoint state. Data-parallel: a collective (call it on every
        process); it adds every process's sampler and RNG states under `ranks`."""
        state = {
            "step": self.step, "kl_coef": self.kl_ctl.value, "kl_controller": self.kl_ctl.state_dict(),
            "sampler": self.sampler.state_dict(), "length_rng": self.length_rng.bit_generator.state,
            "guard": self.guard.state_dict(), "reward": self.reward.state_dict(),
        }
        if self.dist.enabled:
            own = {"sampler": state["sampler"], "length_rng": state["length_rng"], "reward": state["reward"],
                   "torch_rng": encode_rng(torch.get_rng_state())}
            if self.device.type == "cuda":
                own["cuda_rng"] = encode_rng(torch.cuda.get_rng_state(self.device))
            state.update(world_size=self.dist.world_size, ranks=self.dist.gather_object(own))
        return state

    def load_state(self, state: dict) -> None:
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise CheckpointError(
                f"this checkpoint was written by a run of {saved_world} process(es) and this run has "
                f"{self.dist.world_size}: each process samples its own shard with its own seeds, so resume "
                f"with {saved_world} (accelerate launch --num_processes {saved_world}), or start a new run dir."
            )
        self.step = state["step"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.guard.load_state_dict(state.get("guard", {}))
        own = state["ranks"][self.dist.rank] if self.dist.enabled else state
        self.sampler.load_state_dict(own["sampler"])
        self.length_rng.bit_generator.state = own["length_rng"]
        self.reward.load_state_dict(own.get("reward"))
        if "torch_rng" in own:
            torch.set_rng_state(decode_rng(own["torch_rng"]))
        if "cuda_rng" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(decode_rng(own["cuda_rng"]), self.device)

    def resume(self, path: str, allow=()) -> dict[str, tuple]:
        """Continue from checkpoint `path`: weights, optimizer, RNG and trainer state. Returns the
        setting changes `allow` let through (see `checkpoint.check_resumable`), applied for real."""
        state, allowed = load_checkpoint(path, self.policy, self.optimizer, self.fingerprint, allow)
        self.load_state(state)
        self.apply_settings()
        self.guard.last_good_checkpoint = path
        return allowed

    def apply_settings(self) -> None:
        """The config's learning rates, Adam epsilon and fixed KL coefficient, over what a loaded
        checkpoint restored (equal unless a resume was allowed to change them)."""
        cfg = self.ppo_cfg
        for group, lr in zip(self.optimizer.param_groups, (cfg.learning_rate, cfg.value_learning_rate or cfg.learning_rate)):
            group["lr"], group["eps"] = lr, cfg.adam_eps
        if cfg.kl.controller.value == "fixed":
            self.kl_ctl.value = float(cfg.kl.init_coef)

    def rank_report(self) -> dict:
        """This process's facts for `distributed.json`: optimizer steps taken, a checksum of its
        trainable weights (equal on every process when gradients are in sync), its shard."""
        steps = [int(s["step"]) for s in self.optimizer.state.values() if "step" in s]
        return {"rank": self.dist.rank, "optimizer_steps": max(steps, default=0),
                "weights_sha256": weights_checksum(self.policy.trainable_state_dict()),
                "kl_coef": self.kl_ctl.value, "shard_rows": len(self.train_set), "device": str(self.device)}

    # ---------------------------------------------------------------- rollout
    def rollout(self, indices: list[int]) -> Rollout:
        """Rollouts for rows `indices` of this process's train split, `ppo.samples_per_prompt`
        responses to each (adjacent rows, one length cap per prompt)."""
        k = self.samples_per_prompt
        gen = self.generation
        caps = np.repeat(sample_max_new_tokens(self.length_rng, len(indices), gen.max_new_tokens_min,
                                               gen.max_new_tokens_max), k)
        indices = [i for i in indices for _ in range(k)]
        rows = self.train_set.select(indices)
        columns = row_columns(rows, self.data_cfg)
        if self.data_cfg.id_column:
            ids = list(rows[self.data_cfg.id_column])
        else:  # row numbers of the whole train split (a shard holds rows rank, rank + n, ...)
            ids = [self.dist.rank + self.dist.world_size * i for i in indices]
        r = collect_rollout(
            self.policy, self.tokenizer, self.reward, list(rows["prompt"]), ids, caps, gen_config=self.gen_config,
            max_input_tokens=self.data_cfg.max_input_tokens, generate_chunk=gen.batch_size,
            forward_chunk=self.ppo_cfg.forward_batch_size or len(indices), device=self.device, timings=self.timings,
            keep_hidden=self.update.uses_values and self.step < self.ppo_cfg.value_warmup_steps, columns=columns,
            sampler=gen.sampler.value)
        r.rank = self.dist.rank if self.dist.enabled else None
        r.groups = torch.arange(len(indices) // k, device=self.device).repeat_interleave(k)
        return r

    def train_step(self) -> tuple[dict[str, float], Rollout]:
        """One PPO iteration (rollout, advantages, optimisation, KL controller); `self.step` + 1."""
        t0 = time.perf_counter()
        r = self.rollout(self.sampler.next_indices())
        adv = self.update.advantages(r, self.kl_ctl.value)
        t1 = time.perf_counter()
        problem = self.update.rollout_problem(r)
        if problem is None:
            stats, skipped = self.update.optimise(r, adv, self.step)
        else:  # whitening spreads one NaN over the batch: none of the step's updates can be trusted
            stats, skipped = {"ppo/epochs": 0, "ppo/skipped_minibatches": self.update.updates_per_step}, [problem]
        self.timings["perf/optimise_s"] = time.perf_counter() - t1
        self.guard.updates(skipped, self.step + 1)
        self.guard.weights(self.weights_finite(), self.step + 1)
        scores, kl_per_seq, components = r.scores, r.kl_per_seq, r.component_scores
        if self.dist.enabled:  # the global batch's (every process's); the KL controller steps on them
            columns = [scores, kl_per_seq, *components.values()]
            scores, kl_per_seq, *parts = self.dist.gather(torch.stack([c.float() for c in columns], 1)).unbind(1)
            components = dict(zip(components, parts))
        kl_mean = float(kl_per_seq.mean())
        if math.isfinite(kl_mean):
            self.kl_ctl.update(kl_mean, self.ppo_cfg.batch_size * self.dist.world_size)
        if self.dist.is_main:
            warn_if_kl_significantly_negative(kl_per_seq, self.step)
        step_time = time.perf_counter() - t0
        metrics = {
            **rollout_metrics(r, adv, scores, components, kl_mean, self.policy.eos_token_id, self.samples_per_prompt),
            **stats,
            "perf/step_time_s": step_time,
            "perf/samples_per_s": len(r.prompts) / step_time,
            "perf/peak_memory_gb": peak_memory_gb(self.device),
            **self.timings,
        }
        if self.dist.enabled:
            metrics = self._global_metrics(metrics, exact=("env/reward_mean", "env/reward_std", "objective/kl",
                                                           "objective/kl_coef", "ppo/epochs", "ppo/skipped_minibatches"))
        self.step += 1
        return metrics, r

    # ---------------------------------------------------------------- the loop
    def train(self, tracker: Tracking, run_dir: str, validate: Validate | None = None, every: int = 0,
              stop: StopSignals | None = None) -> dict[str, float]:
        """PPO steps from `self.step` to `ppo.steps`: each step's metrics to `tracker`, its
        responses to rollouts.jsonl; `validate()` every `every` steps (its metrics join the
        step's, its sample rows go to the table `val/samples`); a checkpoint every `ppo.save_every` steps or
        `ppo.save_every_minutes`, the newest `ppo.keep_last` kept; `final/` at the end.
        A stop signal (`stop`, see detox/runtime/preemption.py) ends the step, writes a checkpoint and
        raises `Interrupted`; the guards raise `Diverged`. Returns the last step's metrics.
        Data-parallel: every process calls it, and they stop at the same step."""
        ppo_cfg = self.ppo_cfg
        stop = stop or StopSignals()  # not entered: no handlers, never set
        every = every if validate is not None else 0
        metrics: dict = {}
        last_save = time.monotonic()
        bar = tqdm(total=ppo_cfg.steps, initial=self.step, desc="PPO", unit="step", dynamic_ncols=True,
                   disable=not self.dist.is_main)
        stop.deferring, stop.step = True, self.step
        try:
            while self.step < ppo_cfg.steps:
                metrics, rollout = self.train_step()
                stop.step = self.step
                if every and self.step % every == 0:
                    val_metrics, table = validate()
                    metrics = {**metrics, **val_metrics}
                    tracker.log_table("val/samples", table, self.step)
                tracker.log(metrics, self.step)
                self.append_rollouts(run_dir, rollout)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['env/reward_mean']:.3f}", kl=f"{metrics['objective/kl']:.2f}",
                                len=f"{metrics['response/length_mean']:.1f}")
                self.guard.metrics(metrics, self.step)
                if self.dist.any(stop.received is not None):
                    path = self.save(checkpoint_dir(run_dir, self.step), run_dir)
                    raise stop.interrupted(path)
                if self._save_due(last_save):
                    self.save(checkpoint_dir(run_dir, self.step), run_dir)
                    last_save = time.monotonic()
        finally:
            stop.deferring = False
            bar.close()
        if not metrics:  # resumed a run that had already finished its steps
            metrics = {k: v for k, v in (read_metrics(run_dir) or [{}])[-1].items() if k != "step"}
        self.dist.record(os.path.join(run_dir, DISTRIBUTED_FILE), self.rank_report, steps=self.step,
                         batch_size_per_process=ppo_cfg.batch_size,
                         global_batch_size=ppo_cfg.batch_size * self.dist.world_size)
        self.save(os.path.join(run_dir, FINAL_DIR))
        return metrics

    def weights_finite(self) -> bool:
        return bool(torch.stack([torch.isfinite(p).all() for p in self.trainable]).all())

    def _save_due(self, last_save: float) -> bool:
        cfg = self.ppo_cfg
        if self.step >= cfg.steps:  # final/ follows
            return False
        due = bool(cfg.save_every and self.step % cfg.save_every == 0)
        due |= bool(cfg.save_every_minutes and time.monotonic() - last_save >= 60 * cfg.save_every_minutes)
        return self.dist.any(due)

    def save(self, path: str, run_dir: str | None = None) -> str:
        """A checkpoint of this step (data-parallel: a collective; the main process writes).
        Never of non-finite weights. With `run_dir`, older `checkpoints/step-<N>` beyond
        `ppo.keep_last` are deleted afterwards."""
        self.guard.weights(self.weights_finite(), self.step)
        state = {**self.state(), "fingerprint": self.fingerprint}
        if self.dist.is_main:
            save_checkpoint(path, self.policy, self.optimizer, state)
            if run_dir is not None:
                for old in prune_checkpoints(run_dir, self.ppo_cfg.keep_last):
                    log.info("deleted %s (ppo.keep_last=%s)", old, self.ppo_cfg.keep_last)
        self.guard.last_good_checkpoint = path
        return path

    def append_rollouts(self, run_dir: str, r: Rollout) -> None:
        """Every sampled response of this step with its score and KL, so a user can read what
        PPO rewarded (data-parallel: every process's, written by the main one)."""
        rows = r.rows(self.step)
        if self.dist.enabled:
            rows = [row for part in self.dist.gather_object(rows) for row in part]
            if not self.dist.is_main:
                return
        with open(os.path.join(run_dir, ROLLOUTS_FILE), "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)

    def _global_metrics(self, metrics: dict[str, float], exact: tuple[str, ...]) -> dict[str, float]:
        """Means over processes of this process's metrics (one all-reduce); `exact` ones are
        already global; throughput is the sum."""
        keys = sorted(k for k in metrics if k not in exact)
        means = self.dist.mean(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64))
        out = {**metrics, **dict(zip(keys, means.tolist()))}
        out["perf/samples_per_s"] *= self.dist.world_size
        return out
