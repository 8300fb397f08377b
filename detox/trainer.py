"""PPO for an encoder-decoder policy, readable top to bottom.

One step: sample prompts -> generate responses (batched, sampled) -> score them with the
reward model -> per-token log-probs of policy and reference and values (dropout off) ->
per-token rewards (-beta * KL, plus the score on the last response token) -> GAE ->
`ppo_epochs` passes of clipped policy + value loss over mini-batches -> KL controller update.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import Dataset
from omegaconf import DictConfig
from transformers import GenerationConfig, PreTrainedTokenizerBase, set_seed

from detox import ppo
from detox.checkpoint import CheckpointError
from detox.data import PromptSampler, sample_max_new_tokens
from detox.distributed import Distributed, weights_checksum
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
    rank: int | None = None  # the sampling process, in a data-parallel run

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "decoder_input_ids": self.decoder_input_ids, "response_ids": self.response_ids}


def decode_responses(tokenizer, response_ids: torch.Tensor, mask: torch.Tensor) -> tuple[list[str], list[int]]:
    """Texts of the masked response tokens, and their lengths in tokens (EOS included)."""
    lengths = mask.sum(1).long().tolist()
    texts = tokenizer.batch_decode([r[:n] for r, n in zip(response_ids.tolist(), lengths)],
                                   skip_special_tokens=True)
    return texts, lengths


def generate_batches(model, tokenizer, prompts: Sequence[str], gen: GenerationConfig, batch_size: int,
                     max_input_tokens: int, max_new_tokens: int, device: torch.device):
    """`model.generate` over `prompts` in batches of `batch_size` (evaluation, SFT's ROUGE).

    Yields per batch: enc (the tokenized prompts), seqs [B, 1 + T] (the decoder start token
    first), response_ids = seqs[:, 1:] [B, T], and their mask [B, T] (1 up to and including
    the first EOS)."""
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), padding=True, truncation=True,
                        max_length=max_input_tokens, return_tensors="pt").to(device)
        seqs = model.generate(**enc, generation_config=gen, max_new_tokens=max_new_tokens)
        response_ids = seqs[:, 1:]
        yield enc, seqs, response_ids, ppo.response_mask(response_ids, model.config.eos_token_id)


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
    """dist: the data-parallel group (see detox/distributed.py); default: one process. With
    several, each samples `ppo.batch_size` prompts from its own shard of `train_set` per step,
    and the statistics, KL and gradients of the step are shared (the global batch is
    batch_size x processes)."""

    def __init__(
        self, cfg: DictConfig, policy: Policy, tokenizer: PreTrainedTokenizerBase, reward: RewardModel,
        train_set: Dataset, tracker: Tracker, device: torch.device, dist: Distributed | None = None,
    ):
        self.cfg, self.policy, self.tokenizer, self.reward = cfg, policy, tokenizer, reward
        self.tracker, self.device = tracker, device
        self.dist = dist = dist or Distributed()
        self.train_set = train_set
        if dist.enabled:
            # Strided shards (row i goes to process i % n), so an unshuffled split still mixes.
            if len(train_set) < dist.world_size:
                raise ValueError(f"the train split has {len(train_set)} rows, fewer than the "
                                 f"{dist.world_size} processes: nothing to shard.")
            self.train_set = train_set.shard(num_shards=dist.world_size, index=dist.rank, contiguous=False)
            log.info("data-parallel: %d processes x ppo.batch_size %d = %d prompts per step, each process "
                     "from its own shard of the train split (%d of %d rows here)", dist.world_size,
                     cfg.ppo.batch_size, dist.world_size * cfg.ppo.batch_size, len(self.train_set), len(train_set))
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
        self.sampler = PromptSampler(len(self.train_set), cfg.ppo.batch_size, seed=cfg.seed)
        self.length_rng = np.random.default_rng([cfg.seed, 1, *([dist.rank] if dist.enabled else [])])
        if dist.enabled:
            # Same start everywhere (every process built the policy under cfg.seed; the
            # broadcast makes it certain), then each process samples under its own seed.
            dist.broadcast_parameters(self.trainable)
            set_seed(cfg.seed + 1_000_003 * dist.rank)
        self.step = 0
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- state for checkpoints
    def state(self) -> dict:
        """The trainer's checkpoint state. Data-parallel: a collective (call it on every
        process); it adds every process's sampler and RNG states under `ranks`."""
        state = {
            "step": self.step, "kl_coef": self.kl_ctl.value, "kl_controller": self.kl_ctl.state_dict(),
            "sampler": self.sampler.state_dict(), "length_rng": self.length_rng.bit_generator.state,
        }
        if self.dist.enabled:
            own = {"sampler": state["sampler"], "length_rng": state["length_rng"],
                   "torch_rng": _encode_rng(torch.get_rng_state())}
            if self.device.type == "cuda":
                own["cuda_rng"] = _encode_rng(torch.cuda.get_rng_state(self.device))
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
        own = state["ranks"][self.dist.rank] if self.dist.enabled else state
        self.sampler.load_state_dict(own["sampler"])
        self.length_rng.bit_generator.state = own["length_rng"]
        if "torch_rng" in own:
            torch.set_rng_state(_decode_rng(own["torch_rng"]))
        if "cuda_rng" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(_decode_rng(own["cuda_rng"]), self.device)

    def rank_report(self) -> dict:
        """This process's facts for `distributed.json`: optimizer steps taken, a checksum of its
        trainable weights (equal on every process when gradients are in sync), its shard."""
        steps = [int(s["step"]) for s in self.optimizer.state.values() if "step" in s]
        return {"rank": self.dist.rank, "optimizer_steps": max(steps, default=0),
                "weights_sha256": weights_checksum(self.policy.trainable_state_dict()),
                "kl_coef": self.kl_ctl.value, "shard_rows": len(self.train_set), "device": str(self.device)}

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
        if self.id_column:
            ids = list(rows[self.id_column])
        else:  # row numbers of the whole train split (a shard holds rows rank, rank + n, ...)
            ids = [self.dist.rank + self.dist.world_size * i for i in indices]
        return Rollout(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
            decoder_input_ids=decoder_input_ids, response_ids=response_ids, mask=mask,
            scores=scores.to(self.device), prompts=prompts, responses=responses, ids=ids,
            rank=self.dist.rank if self.dist.enabled else None, **cat,
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
            rewards = self._whiten(rewards, r.mask, shift_mean=False)
        advantages, returns = ppo.compute_gae(rewards, r.values, r.mask, self.ppo_cfg.gamma, self.ppo_cfg.lam)
        advantages = self._whiten(advantages, r.mask)
        return {"advantages": advantages, "returns": returns, "kl": kl, "kl_coef": kl_coef}

    def _whiten(self, x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
        """`ppo.masked_whiten` with the statistics of the global batch (every process's)."""
        if not self.dist.enabled:
            return ppo.masked_whiten(x, mask, shift_mean=shift_mean)
        mean, var = self.dist.masked_moments(x, mask)
        return ppo.masked_whiten(x, mask, shift_mean=shift_mean, mean=mean, var=var)

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
                self.dist.average_gradients(self.trainable)
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.trainable, cfg.max_grad_norm)
                self.optimizer.step()
            epochs_done += 1
            # Every process must take the same decision: the global mean approx-KL decides.
            if cfg.target_approx_kl:
                approxkl = self.dist.mean(float(torch.stack(stats["approxkl"][epoch_start:]).mean()))
                if approxkl > cfg.target_approx_kl:
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
        scores, kl_per_seq = r.scores, r.kl_per_seq
        if self.dist.enabled:  # the global batch's (every process's); the KL controller steps on them
            scores, kl_per_seq = self.dist.gather(torch.stack([scores.float(), kl_per_seq.float()], 1)).unbind(1)
        kl_mean = float(kl_per_seq.mean())
        self.kl_ctl.update(kl_mean, self.ppo_cfg.batch_size * self.dist.world_size)
        if self.dist.is_main:
            self._warn_negative_kl(kl_per_seq)
        step_time = time.perf_counter() - t0
        lengths = mask.sum(1)
        ended = (r.response_ids.gather(1, (lengths.long() - 1).clamp(min=0)[:, None]).squeeze(1) == self.eos_id)
        metrics = {
            "env/reward_mean": float(scores.mean()),
            "env/reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
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
        if self.dist.enabled:
            metrics = self._global_metrics(metrics, exact=("env/reward_mean", "env/reward_std", "objective/kl",
                                                           "objective/kl_coef", "ppo/epochs"))
        return metrics, r

    def _global_metrics(self, metrics: dict[str, float], exact: tuple[str, ...]) -> dict[str, float]:
        """Means over processes of this process's metrics (one all-reduce); `exact` ones are
        already global; throughput is the sum."""
        keys = sorted(k for k in metrics if k not in exact)
        means = self.dist.mean(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64))
        out = {**metrics, **dict(zip(keys, means.tolist()))}
        out["perf/samples_per_s"] *= self.dist.world_size
        return out

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


def _encode_rng(state: torch.Tensor) -> str:
    """A torch RNG state (uint8 tensor) as text, for trainer_state.json."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def _decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)
