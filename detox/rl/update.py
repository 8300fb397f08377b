"""The learning half of a PPO step: advantages from a rollout, then `ppo_epochs` passes of
clipped policy + value updates over shuffled mini-batches, skipping any update whose values
are not finite (detox/rl/guards.py counts the skips).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from detox.algo.advantages import compute_advantages, kl_penalized_rewards
from detox.algo.kl import kl_penalty
from detox.algo.losses import policy_loss, value_loss
from detox.algo.masked import masked_mean, masked_whiten
from detox.models.families import Seq2SeqBatch
from detox.models.policy import Policy
from detox.rl.rollout import Rollout, forward_logprobs
from detox.runtime.distributed import Distributed

STATS = ("policy", "value", "aux", "approxkl", "clipfrac", "vf_clipfrac", "ratio")


@dataclass
class Advantages:
    """What a step learns from, all [B, T] but the coefficient: the whitened advantages, the raw
    ones (logged), the value targets, the per-token KL estimate, the per-token rewards they came
    from (-coef x KL, plus the score on the last response token), and the KL coefficient used."""

    advantages: torch.Tensor
    raw: torch.Tensor
    returns: torch.Tensor
    kl: torch.Tensor
    rewards: torch.Tensor
    kl_coef: float


class PPOUpdate:
    """ppo: the `ppo` node; seed: the run's (it seeds the mini-batch order of each step)."""

    def __init__(self, ppo: DictConfig, seed: int, policy: Policy, optimizer: torch.optim.Optimizer,
                 trainable: list[torch.nn.Parameter], dist: Distributed, device: torch.device):
        self.ppo_cfg, self.seed = ppo, seed
        self.policy, self.optimizer, self.trainable, self.dist, self.device = policy, optimizer, trainable, dist, device
        self.uses_values = policy.value_head is not None  # critic-free estimators build none

    @property
    def micro_batch_size(self) -> int:
        return self.ppo_cfg.mini_batch_size // self.ppo_cfg.gradient_accumulation_steps

    @property
    def updates_per_step(self) -> int:
        return self.ppo_cfg.ppo_epochs * (self.ppo_cfg.batch_size // self.ppo_cfg.mini_batch_size)

    def advantages(self, r: Rollout, kl_coef: float) -> Advantages:
        """Per-token KL penalty, KL-penalised rewards, then the configured estimator's (whitened)
        advantages and returns."""
        cfg = self.ppo_cfg
        kl = kl_penalty(r.logprobs, r.ref_logprobs, cfg.kl.estimator.value) * r.mask
        # With ppo.kl.in_loss the KL is a loss term (see `_loss`), not a reward.
        rewards = kl_penalized_rewards(r.scores, kl, r.mask, 0.0 if cfg.kl.in_loss else kl_coef)
        if cfg.whiten_rewards:
            rewards = self._whiten(rewards, r.mask, shift_mean=False)
        raw, returns = compute_advantages(cfg.advantage.value, rewards, r.mask, values=r.values, groups=r.groups,
                                          gamma=cfg.gamma, lam=cfg.lam, scale_std=cfg.grpo_scale_std)
        return Advantages(self._whiten(raw, r.mask), raw, returns, kl, rewards, kl_coef)

    def _whiten(self, x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
        """`masked_whiten` with the statistics of the global batch (every process's)."""
        if not self.dist.enabled:
            return masked_whiten(x, mask, shift_mean=shift_mean)
        mean, var = self.dist.masked_moments(x, mask)
        return masked_whiten(x, mask, shift_mean=shift_mean, mean=mean, var=var)

    def optimise(self, r: Rollout, adv: Advantages, step: int) -> tuple[dict[str, float], list[str | None]]:
        """`ppo_epochs` passes over shuffled mini-batches. Returns the step's statistics and, per
        update, None (applied) or why it was skipped (see detox/rl/guards.py)."""
        cfg = self.ppo_cfg
        # Detached 0-dim tensors, read back once after the loop (no host sync per micro-batch).
        stats: dict[str, list[torch.Tensor]] = {k: [] for k in STATS}
        skipped: list[str | None] = []
        generator = torch.Generator().manual_seed(self.seed * 100_003 + step)
        warmup = self.uses_values and step < cfg.value_warmup_steps
        widths = torch.stack(r.batch.row_widths(), 1)  # [B, 2] on the CPU: each row's prompt and response width
        epochs_done = 0
        for _ in range(cfg.ppo_epochs):
            epoch_start = len(stats["approxkl"])
            for rows in self._minibatches(widths, generator):
                skipped.append(self._minibatch(r, adv, rows, warmup, stats))
            epochs_done += 1
            # Every process must take the same decision: the global mean approx-KL decides.
            if cfg.target_approx_kl:
                approxkl = self.dist.mean(float(torch.stack(stats["approxkl"][epoch_start:]).mean()))
                if approxkl > cfg.target_approx_kl:
                    break
        return self._summary(stats, epochs_done, skipped), skipped

    def _minibatches(self, widths: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """One epoch's mini-batches of row indices (CPU): a shuffled order cut in `mini_batch_size`
        pieces; with `ppo.group_by_length`, the shuffled rows sorted by prompt + response width
        first (stable: ties keep the shuffle), the pieces then taken in a random order."""
        order = torch.randperm(len(widths), generator=generator)
        if not self.ppo_cfg.group_by_length:
            return list(order.split(self.ppo_cfg.mini_batch_size))
        order = order[torch.argsort(widths[order].sum(1), stable=True)]
        pieces = order.split(self.ppo_cfg.mini_batch_size)
        return [pieces[i] for i in torch.randperm(len(pieces), generator=generator)]

    def _minibatch(self, r: Rollout, adv: Advantages, minibatch: torch.Tensor, warmup: bool,
                   stats: dict[str, list[torch.Tensor]]) -> str | None:
        """One optimizer step over `minibatch` (CPU row indices; gradient accumulation over its
        micro-batches, each cut to its own widest prompt and response); None when applied, else
        why it was skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        first, first_value = len(stats["policy"]), len(stats["value"])
        for m in range(0, len(minibatch), self.micro_batch_size):
            rows = minibatch[m : m + self.micro_batch_size]
            loss = self._loss(r, adv, rows.to(self.device), r.batch.cut_rows(rows), warmup, stats)
            (loss / self.ppo_cfg.gradient_accumulation_steps).backward()
        self.dist.average_gradients(self.trainable)
        reason, grad_norm = self._check_update(torch.stack(stats["policy"][first:] + stats["value"][first_value:]),
                                               torch.stack(stats["ratio"][first:]))
        if reason is not None:
            self.optimizer.zero_grad(set_to_none=True)
            return reason
        if self.ppo_cfg.max_grad_norm:  # = clip_grad_norm_, with the norm already taken
            torch.nn.utils.clip_grads_with_norm_(self.trainable, self.ppo_cfg.max_grad_norm, grad_norm)
        self.optimizer.step()
        return None

    def _loss(self, r: Rollout, adv: Advantages, rows: torch.Tensor, part: Seq2SeqBatch, warmup: bool,
              stats: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """The loss of one micro-batch: `rows` of the rollout, `part` their batch as the model
        sees it (`Seq2SeqBatch.cut_rows`: no compute on columns none of them uses): policy +
        vf_coef x value [+ the KL term]; its statistics appended to `stats`."""
        cfg = self.ppo_cfg
        aux = None
        response = part.response_ids.shape[1]

        def cut(x: torch.Tensor) -> torch.Tensor:  # [B, T, ...] -> these rows' [b, response, ...]
            return x[rows, :response]

        if warmup and r.hidden is not None:
            # The policy does not move in a warm-up step: its log-probs are the rollout's (ratio
            # 1), and the value head trains on the rollout's hidden states; no model pass.
            logprobs, values = cut(r.logprobs), self.policy.value_head(cut(r.hidden))
        else:
            out, logprobs = forward_logprobs(self.policy, part, detach_values=warmup,
                                             aux_loss=cfg.aux_loss and not warmup)
            values, aux = out.values, out.aux_loss
        mask, old_logprobs = cut(r.mask), cut(r.logprobs)
        pg_loss, pg_stats = policy_loss(logprobs, old_logprobs, cut(adv.advantages), mask, cfg.cliprange)
        loss = 0.0 if warmup else pg_loss
        if cfg.kl.in_loss and adv.kl_coef > 0:  # GRPO's: coef x the estimator's KL to the reference, token mean
            kl_term = masked_mean(kl_penalty(logprobs, cut(r.ref_logprobs), cfg.kl.estimator.value), mask)
            loss = loss + adv.kl_coef * kl_term
        if aux is not None:  # the family's (Switch Transformers' routers), its own coefficients
            loss = loss + aux
            stats["aux"].append(aux.detach())
        if values is not None:
            vf_loss, vf_stats = value_loss(values, cut(r.values), cut(adv.returns), mask, cfg.cliprange_value)
            loss = loss + cfg.vf_coef * vf_loss
            stats["value"].append(vf_loss.detach())
            stats["vf_clipfrac"].append(vf_stats["clipfrac"])
        stats["policy"].append(pg_loss.detach())
        stats["approxkl"].append(pg_stats["approxkl"])
        stats["clipfrac"].append(pg_stats["clipfrac"])
        stats["ratio"].append(masked_mean(torch.exp(logprobs.detach() - old_logprobs), mask))
        return loss

    @staticmethod
    def _summary(stats: dict[str, list[torch.Tensor]], epochs_done: int, skipped: list[str | None]) -> dict[str, float]:
        means = {k: torch.stack(v).double() for k, v in stats.items() if v}
        out = {
            "ppo/loss/policy": float(means["policy"].mean()),
            "ppo/loss/value": float(means["value"].mean()) if "value" in means else None,
            "ppo/loss/aux": float(means["aux"].mean()) if "aux" in means else None,
            "ppo/policy/approxkl": float(means["approxkl"].mean()),
            "ppo/policy/clipfrac": float(means["clipfrac"].mean()),
            "ppo/policy/ratio_mean": float(means["ratio"].mean()),
            "ppo/value/clipfrac": float(means["vf_clipfrac"].mean()) if "vf_clipfrac" in means else None,
            "ppo/epochs": epochs_done,
            "ppo/skipped_minibatches": sum(reason is not None for reason in skipped),
        }
        return {k: v for k, v in out.items() if v is not None}

    def _check_update(self, losses: torch.Tensor, ratios: torch.Tensor) -> tuple[str | None, torch.Tensor]:
        """Why this mini-batch's update must be skipped (None: apply it), and its gradient norm.
        One host sync; data-parallel, every process takes the same decision."""
        grads = [p.grad for p in self.trainable if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        loss_ok, norm_ok, ratio = torch.stack([losses.isfinite().all().to(norm.dtype), norm.isfinite().to(norm.dtype),
                                               ratios.mean().to(norm.dtype)]).tolist()
        threshold = self.ppo_cfg.ratio_threshold
        reason = None
        if not loss_ok:
            reason = "a non-finite loss"
        elif not norm_ok:
            reason = f"a non-finite gradient norm ({float(norm)})"
        elif threshold is not None and ratio > threshold:
            reason = f"mean ratio {ratio:.3g} > ppo.ratio_threshold={threshold:g}"
        if self.dist.any(reason is not None) and reason is None:
            reason = "a non-finite value or a ratio past the threshold on another process"
        return reason, norm

    def rollout_problem(self, r: Rollout) -> str | None:
        """What in a rollout is not finite (scores, or log-probs / values on response tokens)."""
        m = r.mask.bool()
        parts = {"reward-model scores": r.scores, "policy log-probs": r.logprobs[m],
                 "reference log-probs": r.ref_logprobs[m]}
        if r.values is not None:
            parts["values"] = r.values[m]
        finite = torch.stack([torch.isfinite(t).all() for t in parts.values()]).tolist()
        bad = [name for name, ok in zip(parts, finite) if not ok]
        if self.dist.any(bool(bad)) and not bad:
            bad = ["values on another process"]
        return f"non-finite {', '.join(bad)} in the rollout" if bad else None
