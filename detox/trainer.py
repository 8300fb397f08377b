"""PPO for an encoder-decoder policy, readable top to bottom.

One step: sample prompts -> generate responses (batched, sampled) -> score them with the
reward model -> per-token log-probs of policy and reference and values (dropout off) ->
per-token rewards (-beta * KL, plus the score on the last response token) -> GAE ->
`ppo_epochs` passes of clipped policy + value loss over mini-batches -> KL controller update.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from omegaconf import DictConfig
from transformers import GenerationConfig, PreTrainedTokenizerBase

from detox import ppo
from detox.data import PromptSampler, sample_max_new_tokens
from detox.policy import Policy
from detox.reward import RewardModel
from detox.tracking import Tracker

log = logging.getLogger(__name__)


@dataclass
class Rollout:
    """One batch of B prompts and their sampled responses (T = longest response)."""

    input_ids: torch.Tensor  # [B, S] encoder input
    attention_mask: torch.Tensor  # [B, S]
    decoder_input_ids: torch.Tensor  # [B, T] decoder start token + response[:-1]
    response_ids: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] 1 up to and including the first EOS (or the per-prompt cap)
    scores: torch.Tensor  # [B] reward-model score
    logprobs: torch.Tensor  # [B, T] policy at rollout time
    ref_logprobs: torch.Tensor  # [B, T]
    values: torch.Tensor  # [B, T]
    entropy: torch.Tensor  # [B, T]
    prompts: list[str]
    responses: list[str]
    ids: list
    kl_per_seq: torch.Tensor | None = None  # [B] k1 sum over the response, set by train_step

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "decoder_input_ids": self.decoder_input_ids, "response_ids": self.response_ids}


def decode_responses(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[str], list[int]]:
    """Texts of the masked response tokens, and their lengths in tokens (EOS included)."""
    lengths = mask.sum(1).long().tolist()
    texts = tokenizer.batch_decode([r[:n] for r, n in zip(response_ids.tolist(), lengths)],
                                   skip_special_tokens=True)
    return texts, lengths


def generation_config(gen: DictConfig, model_config) -> GenerationConfig:
    """Sampling settings from config alone: a checkpoint's own generation_config (beams,
    repetition penalties, ...) must not change the sampling distribution PPO assumes."""
    return GenerationConfig(
        do_sample=gen.do_sample, top_k=gen.top_k, top_p=gen.top_p, temperature=gen.temperature,
        min_length=gen.min_length, num_beams=1,
        pad_token_id=model_config.pad_token_id, eos_token_id=model_config.eos_token_id,
        decoder_start_token_id=model_config.decoder_start_token_id,
    )


class PPOTrainer:
    def __init__(
        self, cfg: DictConfig, policy: Policy, tokenizer: PreTrainedTokenizerBase, reward: RewardModel,
        train_set: Dataset, tracker: Tracker, device: torch.device,
    ):
        self.cfg, self.policy, self.tokenizer, self.reward = cfg, policy, tokenizer, reward
        self.train_set, self.tracker, self.device = train_set, tracker, device
        self.ppo_cfg = cfg.ppo
        self.gen_config = generation_config(cfg.generation, policy.config)
        self.eos_id = policy.config.eos_token_id
        self.id_column = cfg.data.id_column
        # A fresh value head predicts noise, and the advantages it yields push the policy at
        # random: it may learn faster (value_learning_rate) or alone first (value_warmup_steps).
        self.trainable = policy.trainable_parameters()
        value_params = list(policy.value_head.parameters())
        policy_params = [p for p in self.trainable if all(p is not v for v in value_params)]
        self.optimizer = torch.optim.AdamW(
            [{"params": policy_params, "lr": cfg.ppo.learning_rate},
             {"params": value_params, "lr": cfg.ppo.value_learning_rate or cfg.ppo.learning_rate}],
            eps=cfg.ppo.adam_eps, weight_decay=0.0,
        )
        kl = cfg.ppo.kl
        self.kl_ctl = ppo.make_kl_controller(kl.controller.value, kl.init_coef, kl.target, kl.horizon)
        self.sampler = PromptSampler(len(train_set), cfg.ppo.batch_size, seed=cfg.seed)
        self.length_rng = np.random.default_rng([cfg.seed, 1])
        self.step = 0
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- state for checkpoints
    def state(self) -> dict:
        return {
            "step": self.step, "kl_coef": self.kl_ctl.value, "kl_controller": self.kl_ctl.state_dict(),
            "sampler": self.sampler.state_dict(), "length_rng": self.length_rng.bit_generator.state,
        }

    def load_state(self, state: dict) -> None:
        self.step = state["step"]
        self.kl_ctl.load_state_dict(state["kl_controller"])
        self.sampler.load_state_dict(state["sampler"])
        self.length_rng.bit_generator.state = state["length_rng"]

    # ---------------------------------------------------------------- rollout
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, caps: np.ndarray) -> torch.Tensor:
        """Decoder sequences [B, 1 + L] (decoder start token first), sampled in chunks of
        `generation.batch_size` up to each chunk's largest cap."""
        chunk = self.cfg.generation.batch_size or len(input_ids)
        pieces = []
        for i in range(0, len(input_ids), chunk):
            out = self.policy.model.generate(
                input_ids=input_ids[i : i + chunk], attention_mask=attention_mask[i : i + chunk],
                generation_config=self.gen_config, max_new_tokens=int(caps[i : i + chunk].max()),
            )
            pieces.append(out)
        width = max(p.shape[1] for p in pieces)
        pad = self.policy.config.pad_token_id
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=pad) for p in pieces])

    def forward_logprobs(self, batch: dict, rows: torch.Tensor, detach_values: bool = False):
        logits, values = self.policy(
            batch["input_ids"][rows], batch["attention_mask"][rows], batch["decoder_input_ids"][rows],
            detach_values=detach_values,
        )
        return logits, ppo.logprobs_from_logits(logits, batch["response_ids"][rows]), values

    @torch.no_grad()
    def rollout(self, indices: list[int]) -> Rollout:
        rows = self.train_set.select(indices)
        prompts = list(rows["prompt"])
        enc = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.cfg.data.max_input_tokens,
            return_tensors="pt",
        ).to(self.device)
        gen = self.cfg.generation
        caps = sample_max_new_tokens(self.length_rng, len(prompts), gen.max_new_tokens_min, gen.max_new_tokens_max)
        t0 = time.perf_counter()
        sequences = self.generate(enc["input_ids"], enc["attention_mask"], caps)
        self.timings["perf/generate_s"] = time.perf_counter() - t0
        response_ids = sequences[:, 1:]
        mask = ppo.response_mask(response_ids, self.eos_id, torch.as_tensor(caps, device=self.device))
        width = int(mask.sum(1).max())
        response_ids, mask = response_ids[:, :width], mask[:, :width]
        decoder_input_ids = sequences[:, :width]
        responses, _ = decode_responses(self.tokenizer, response_ids, mask)
        t0 = time.perf_counter()
        scores = self.reward.score(prompts, responses).float()
        self.timings["perf/reward_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()

        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                 "decoder_input_ids": decoder_input_ids, "response_ids": response_ids}
        out = {k: [] for k in ("logprobs", "ref_logprobs", "values", "entropy")}
        for chunk in self._forward_chunks(len(prompts)):
            logits, logprobs, values = self.forward_logprobs(batch, chunk)
            out["logprobs"].append(logprobs)
            out["values"].append(values)
            out["entropy"].append(ppo.token_entropy(logits))
            del logits
            ref_logits = self.policy.reference_logits(
                batch["input_ids"][chunk], batch["attention_mask"][chunk], decoder_input_ids[chunk]
            )
            out["ref_logprobs"].append(ppo.logprobs_from_logits(ref_logits, response_ids[chunk]))
            del ref_logits
        cat = {k: torch.cat(v) for k, v in out.items()}
        self.timings["perf/forward_s"] = time.perf_counter() - t0
        ids = list(rows[self.id_column]) if self.id_column else list(indices)
        return Rollout(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
            decoder_input_ids=decoder_input_ids, response_ids=response_ids, mask=mask,
            scores=scores.to(self.device), prompts=prompts, responses=responses, ids=ids, **cat,
        )

    def _forward_chunks(self, n: int) -> list[torch.Tensor]:
        size = self.ppo_cfg.mini_batch_size // self.ppo_cfg.gradient_accumulation_steps
        return [torch.arange(i, min(i + size, n), device=self.device) for i in range(0, n, size)]

    # ---------------------------------------------------------------- optimisation
    def advantages(self, r: Rollout) -> dict[str, torch.Tensor]:
        kl_coef = self.kl_ctl.value
        kl = ppo.kl_penalty(r.logprobs, r.ref_logprobs, self.ppo_cfg.kl.estimator.value) * r.mask
        rewards = ppo.kl_penalized_rewards(r.scores, kl, r.mask, kl_coef)
        if self.ppo_cfg.whiten_rewards:
            rewards = ppo.masked_whiten(rewards, r.mask, shift_mean=False)
        advantages, returns = ppo.compute_gae(rewards, r.values, r.mask, self.ppo_cfg.gamma, self.ppo_cfg.lam)
        advantages = ppo.masked_whiten(advantages, r.mask)
        return {"advantages": advantages, "returns": returns, "kl": kl, "kl_coef": kl_coef}

    def optimise(self, r: Rollout, adv: dict) -> dict[str, float]:
        cfg = self.ppo_cfg
        batch = r.model_inputs()
        accum = cfg.gradient_accumulation_steps
        micro = cfg.mini_batch_size // accum
        # Detached 0-dim tensors, read back once after the loop (no host sync per micro-batch).
        stats: dict[str, list[torch.Tensor]] = {k: [] for k in
                                                ("policy", "value", "approxkl", "clipfrac", "vf_clipfrac", "ratio")}
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.step)
        warmup = self.step < cfg.value_warmup_steps
        epochs_done = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(len(r.prompts), generator=generator).to(self.device)
            epoch_start = len(stats["approxkl"])
            for start in range(0, len(order), cfg.mini_batch_size):
                self.optimizer.zero_grad(set_to_none=True)
                minibatch = order[start : start + cfg.mini_batch_size]
                for m in range(0, len(minibatch), micro):
                    rows = minibatch[m : m + micro]
                    _, logprobs, values = self.forward_logprobs(batch, rows, detach_values=warmup)
                    mask = r.mask[rows]
                    pg_loss, pg_stats = ppo.policy_loss(
                        logprobs, r.logprobs[rows], adv["advantages"][rows], mask, cfg.cliprange
                    )
                    vf_loss, vf_stats = ppo.value_loss(
                        values, r.values[rows], adv["returns"][rows], mask, cfg.cliprange_value
                    )
                    (((0.0 if warmup else pg_loss) + cfg.vf_coef * vf_loss) / accum).backward()
                    stats["policy"].append(pg_loss.detach())
                    stats["value"].append(vf_loss.detach())
                    stats["approxkl"].append(pg_stats["approxkl"])
                    stats["clipfrac"].append(pg_stats["clipfrac"])
                    stats["vf_clipfrac"].append(vf_stats["clipfrac"])
                    stats["ratio"].append(ppo.masked_mean(torch.exp(logprobs.detach() - r.logprobs[rows]), mask))
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
                self.optimizer.step()
            epochs_done += 1
            if cfg.target_approx_kl and float(torch.stack(stats["approxkl"][epoch_start:]).mean()) > cfg.target_approx_kl:
                break
        means = {k: torch.stack(v).double() for k, v in stats.items()}
        self.first_ratio = float(means["ratio"][0])
        return {
            "ppo/loss/policy": float(means["policy"].mean()),
            "ppo/loss/value": float(means["value"].mean()),
            "ppo/policy/approxkl": float(means["approxkl"].mean()),
            "ppo/policy/clipfrac": float(means["clipfrac"].mean()),
            "ppo/policy/ratio_mean": float(means["ratio"].mean()),
            "ppo/val/clipfrac": float(means["vf_clipfrac"].mean()),
            "ppo/epochs": epochs_done,
        }

    def train_step(self) -> tuple[dict[str, float], Rollout]:
        t0 = time.perf_counter()
        r = self.rollout(self.sampler.next_indices())
        adv = self.advantages(r)
        t1 = time.perf_counter()
        stats = self.optimise(r, adv)
        self.timings["perf/optimise_s"] = time.perf_counter() - t1
        mask = r.mask
        r.kl_per_seq = ((r.logprobs - r.ref_logprobs) * mask).sum(1)
        kl_mean = float(r.kl_per_seq.mean())
        self.kl_ctl.update(kl_mean, self.ppo_cfg.batch_size)
        self._warn_negative_kl(r.kl_per_seq)
        step_time = time.perf_counter() - t0
        lengths = mask.sum(1)
        ended = (r.response_ids.gather(1, (lengths.long() - 1).clamp(min=0)[:, None]).squeeze(1) == self.eos_id)
        metrics = {
            "env/reward_mean": float(r.scores.mean()),
            "env/reward_std": float(r.scores.std()) if len(r.scores) > 1 else 0.0,
            "objective/kl": kl_mean,
            "objective/kl_coef": adv["kl_coef"],
            "objective/kl_penalty": float(-adv["kl_coef"] * adv["kl"].sum(1).mean()),
            "objective/entropy": float(ppo.masked_mean(r.entropy, mask)),
            **stats,
            "ppo/val/explained_variance": float(ppo.explained_variance(r.values, adv["returns"], mask)),
            "ppo/val/mean": float(ppo.masked_mean(r.values, mask)),
            "ppo/returns/mean": float(ppo.masked_mean(adv["returns"], mask)),
            "response/length_mean": float(lengths.float().mean()),
            "response/eos_rate": float(ended.float().mean()),
            "perf/step_time_s": step_time,
            "perf/samples_per_s": len(r.prompts) / step_time,
            **self.timings,
        }
        return metrics, r

    def _warn_negative_kl(self, k1_per_seq: torch.Tensor) -> None:
        """Sampling settings such as min_length bias the k1 estimate negative; only a mean
        beyond two standard errors below zero says the estimate (or the setup) is off."""
        n = len(k1_per_seq)
        if n < 2:
            return
        mean, se = float(k1_per_seq.mean()), float(k1_per_seq.std()) / math.sqrt(n)
        if mean < -2 * se and mean < -1e-3:
            log.warning(
                "step %d: mean KL %.3f is significantly negative (standard error %.3f). Logits "
                "processors such as generation.min_length / top_k / top_p sample from a different "
                "distribution than the policy's log-probs describe, which biases k1 below zero.",
                self.step, mean, se,
            )
