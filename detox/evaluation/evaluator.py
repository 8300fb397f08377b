"""Held-out evaluation: the starting policy vs the trained one on the same prompts.

Three variants are sampled on identical test prompts: `before` (the policy at step 0),
`after` (the trained policy) and `null` (the starting policy again with a second sampling
seed: the change that noise alone produces); `eval.samples_per_prompt` responses each. Each
response gets every judge's P(toxic), its length and the exact KL to the reference;
`detox.evaluation.report` computes everything else from those rows. Each extra eval set
(`eval.sets`) is evaluated as the test split is. A fixed validation subset is evaluated the
same way (before/after, and periodically during training, with the reward-hacking watch) for
sweeps to optimise without touching the test split.

All sampling here runs under a forked RNG, so enabling evaluation never changes training.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from typing import Sequence

import torch
from datasets import Dataset
from omegaconf import DictConfig, OmegaConf

from detox.algo.metrics import exact_sequence_kl
from detox.core.atomic import atomic_write_json
from detox.core.errors import DataError
from detox.data.splits import row_columns
from detox.evaluation.report import missed_rates, per_example, renamed, report
from detox.evaluation.report_files import write_report, write_set_samples
from detox.evaluation.watch import MissedRateWatch
from detox.models.generation import (
    decode_responses,
    generate_batches,
    generation_config,
)
from detox.models.judges import REWARD_JUDGES, Judge, score_responses
from detox.models.policy import Policy

log = logging.getLogger(__name__)
BASELINE_FILE = "baseline.json"


def eval_rows(test: Dataset, num_samples: int, what: str = "the test split", key: str = "eval.num_samples") -> Dataset:
    if len(test) == 0:
        raise DataError(f"{what} is empty: nothing to evaluate; raise data.test_size / data.val_size.")
    if num_samples > len(test):
        log.warning("%s=%d is larger than %s (%d rows): using all %d.", key, num_samples, what, len(test), len(test))
    return test.select(range(min(num_samples, len(test))))


@contextlib.contextmanager
def forked_rng(device: torch.device):
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@torch.no_grad()
def sample_responses(policy: Policy, tokenizer, prompts: Sequence[str], seed: int, *, eval_cfg: DictConfig,
                     generation: DictConfig, max_input_tokens: int, device: torch.device) -> list[dict]:
    """Responses with their length (tokens, EOS included) and exact KL to the reference."""
    gen = generation_config(generation, policy.special_tokens, greedy=eval_cfg.decoding == "greedy")
    out = []
    with forked_rng(device):
        torch.manual_seed(seed)
        for batch in generate_batches(policy, tokenizer, prompts, gen, eval_cfg.batch_size, max_input_tokens,
                                      generation.max_new_tokens_max, device):
            logits = policy(batch, with_values=False).logits
            kl = exact_sequence_kl(logits, policy.reference_logits(batch), batch.mask)
            texts, lengths = decode_responses(tokenizer, batch)
            out += [{"response": t, "length": n, "kl": float(k)} for t, n, k in zip(texts, lengths, kl.tolist())]
    return out


def repeat_rows(rows: Dataset, k: int) -> Dataset:
    """Each row k times in a row (a prompt's k samples side by side)."""
    return rows if k == 1 else rows.select([i for i in range(len(rows)) for _ in range(k)])


def group_draws(out: list[dict], k: int) -> list[dict]:
    """[N * k] responses in prompt order -> [N] entries: the first draw's fields, and with k > 1
    all k as `samples`."""
    if k == 1:
        return out
    return [{**out[i], "samples": out[i:i + k]} for i in range(0, len(out), k)]


def build_samples(data_cfg: DictConfig, eval_cfg: DictConfig, rows: Dataset, variants: dict[str, list[dict]]) -> list[dict]:
    samples = []
    for i, row in enumerate(rows):
        refs = {c: row[c] for c in [data_cfg.summary_column, *eval_cfg.reference_columns]}
        sample = {"id": row[data_cfg.id_column] if data_cfg.id_column else i, "prompt": row["prompt"],
                  "references": refs, "group": row[eval_cfg.group_by] if eval_cfg.group_by else None}
        sample.update({v: variants[v][i] for v in variants})
        samples.append(sample)
    return samples


class Evaluator:
    """Samples and scores one policy on fixed held-out prompts: the test rows of the final
    report, and a validation subset for periodic curves and the figures sweeps optimise.

    eval_cfg, generation, data: the config's nodes; starting_point: what identifies the policy
    at step 0 (its model, adapter, reference), part of the cached baseline's key; sets: the
    extra eval sets' rows by name (`eval.sets`)."""

    def __init__(self, policy: Policy, tokenizer, judges: Sequence[Judge], splits, *, eval_cfg: DictConfig,
                 generation: DictConfig, data: DictConfig, seed: int, starting_point: list, device: torch.device,
                 sets: dict[str, Dataset] | None = None):
        self.policy, self.tokenizer, self.judges, self.device = policy, tokenizer, judges, device
        self.eval_cfg, self.generation, self.data_cfg, self.starting_point = eval_cfg, generation, data, starting_point
        self.k = eval_cfg.samples_per_prompt
        self.test = eval_rows(splits["test"], eval_cfg.num_samples)
        # a set's own num_samples warns when the set is smaller; eval.num_samples, its default, does not
        self.sets = {name: eval_rows(rows, eval_cfg.sets[name].get("num_samples") or min(eval_cfg.num_samples, len(rows)),
                                     f"eval.sets.{name}", f"eval.sets.{name}.num_samples")
                     for name, rows in (sets or {}).items()}
        self.val = None
        if eval_cfg.val_samples and len(splits.get("validation", [])):
            self.val = eval_rows(splits["validation"], eval_cfg.val_samples, "the validation split", "eval.val_samples")
        else:
            log.warning("no validation prompts (data.val_size=%s, eval.val_samples=%s): no periodic `val/` curves "
                        "and no sweep objective.", data.val_size, eval_cfg.val_samples)
        self.seeds = {"before": seed, "after": seed, "null": seed + 1, "val": seed + 2}
        # judges that score with what PPO optimised (the reward's classifier, its components): open to hacking
        self.optimised_judges = [*REWARD_JUDGES, *(j.name for j in judges if getattr(j, "optimised", False))]
        self.watch: MissedRateWatch | None = None

    def sample(self, rows: Dataset, seed: int) -> list[dict]:
        """One entry per row: its response(s), scored."""
        rows = repeat_rows(rows, self.k)
        prompts = list(rows["prompt"])
        out = sample_responses(self.policy, self.tokenizer, prompts, seed, eval_cfg=self.eval_cfg,
                               generation=self.generation, max_input_tokens=self.data_cfg.max_input_tokens,
                               device=self.device)
        score_responses(out, self.judges, prompts, row_columns(rows, self.data_cfg))
        return group_draws(out, self.k)

    # ------------------------------------------------------------------ the starting policy
    def baseline_key(self) -> str:
        """What the cached starting-policy samples depend on."""
        parts = {"test": list(self.test["prompt"]), "val": list(self.val["prompt"]) if self.val else [],
                 "seeds": self.seeds, "judges": list(self.eval_cfg.judges), "decoding": str(self.eval_cfg.decoding),
                 "generation": OmegaConf.to_container(self.generation, resolve=True, enum_to_str=True),
                 "policy": self.starting_point}
        if self.k > 1:  # only when set: the keys of runs from before these settings stay valid
            parts["samples_per_prompt"] = self.k
        if self.sets:
            parts["sets"] = {name: list(rows["prompt"]) for name, rows in self.sets.items()}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def baseline(self, cache_dir: str | None = None) -> dict[str, list[dict]]:
        """`before` and `null` on the test rows and `before` on the validation subset, from the
        policy as it is now (call it before any training or checkpoint loading). Cached in
        `cache_dir` so a resumed run evaluates against the same starting samples."""
        path = os.path.join(cache_dir, BASELINE_FILE) if cache_dir else None
        key = self.baseline_key()
        if path and os.path.exists(path):
            with open(path) as f:
                cached = json.load(f)
            if cached.get("key") == key:
                return cached["variants"]
            log.warning("eval settings changed since %s was written: re-sampling the starting policy.", path)
        log.info("evaluating the starting policy on %d test prompts%s", len(self.test),
                 f" and {len(self.val)} validation prompts" if self.val else "")
        variants = {"before": self.sample(self.test, self.seeds["before"]),
                    "null": self.sample(self.test, self.seeds["null"])}
        if self.val is not None:
            variants["val_before"] = self.sample(self.val, self.seeds["val"])
        for name, rows in self.sets.items():
            variants[f"sets/{name}/before"] = self.sample(rows, self.seeds["before"])
            variants[f"sets/{name}/null"] = self.sample(rows, self.seeds["null"])
        if path:
            os.makedirs(cache_dir, exist_ok=True)
            atomic_write_json(path, {"key": key, "variants": variants})
        return variants

    # ------------------------------------------------------------------ during training
    def watch_missed_rate(self, out_dir: str, history: list[dict]) -> None:
        """Warn when a judge's `val/<judge>/missed_rate` rises (see detox/evaluation/watch.py);
        the validation samples of that step go to `out_dir`."""
        self.watch = MissedRateWatch(self.eval_cfg.missed_rate_rise, out_dir, history)

    def periodic(self, step: int = 0) -> tuple[dict[str, float], list[dict]]:
        """`val/...` means of the current policy on the validation subset (the missed rates
        among them), and a few samples."""
        if self.val is None:
            return {}, []
        rows = self.sample(self.val, self.seeds["val"])
        samples = build_samples(self.data_cfg, self.eval_cfg, self.val, {"before": rows})
        threshold = self.eval_cfg.toxic_threshold
        values = per_example(samples, "before", self.data_cfg.summary_column, list(self.eval_cfg.reference_columns),
                             threshold)
        metrics = {f"val/{name}": float(x.mean()) for name, x in values.items()}
        metrics |= {f"val/{name}": x for name, x in missed_rates(samples, "before", threshold).items()}
        if self.watch is not None:
            self.watch(metrics, step, samples)
        table = [{"id": s["id"], "prompt": s["prompt"][-300:], "response": s["before"]["response"],
                  **{f"toxicity/{j}": s["before"]["toxicity"][j] for j in s["before"]["toxicity"]},
                  "kl": s["before"]["kl"]} for s in samples[:8]]
        return metrics, table

    # ------------------------------------------------------------------ the final report
    def final(self, baseline: dict[str, list[dict]], out_dir: str) -> tuple[dict, dict, list[dict], list[str]]:
        """Sample the policy as it is now (`after`), write the report files under `out_dir`.

        Returns (test metrics, validation metrics, test samples, written paths)."""
        data, ev = self.data_cfg, self.eval_cfg
        variants = {"before": baseline["before"], "after": self.sample(self.test, self.seeds["after"]),
                    "null": baseline["null"]}
        samples = build_samples(data, ev, self.test, variants)
        args = (data.summary_column, list(ev.reference_columns), ev.toxic_threshold, ev.group_by)
        metrics = report(samples, *args)
        val_metrics = {}
        if self.val is not None and "val_before" in baseline:
            val_variants = {"before": baseline["val_before"], "after": self.sample(self.val, self.seeds["val"])}
            val_metrics = report(build_samples(data, ev, self.val, val_variants), *args)
        set_info = {}
        for name, rows in self.sets.items():
            set_variants = {"before": baseline[f"sets/{name}/before"], "after": self.sample(rows, self.seeds["after"]),
                            "null": baseline[f"sets/{name}/null"]}
            set_samples = build_samples(data, ev, rows, set_variants)
            metrics |= renamed(report(set_samples, *args), f"eval_sets/{name}/")
            set_info[name] = {"prompts": len(rows), "name_or_path": ev.sets[name]["name_or_path"],
                              "samples": write_set_samples(out_dir, name, set_samples)}
        info = {"split": "test", "decoding": str(ev.decoding), "seed": self.seeds["before"],
                "threshold": ev.toxic_threshold, "group_by": ev.group_by, "examples": ev.examples,
                "optimised_judges": self.optimised_judges, "samples_per_prompt": self.k, "sets": set_info}
        paths = write_report(out_dir, samples, metrics, info)
        return metrics, val_metrics, samples, paths
