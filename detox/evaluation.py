"""Held-out evaluation: the starting policy vs the trained one on the same test prompts.

Three variants are sampled on identical prompts: `before` (the policy at step 0), `after`
(the trained policy) and `null` (the starting policy again with a second sampling seed: the
change that noise alone produces). Each response gets every judge's P(toxic), its length and
the exact KL to the reference. `eval/samples.jsonl` holds all of it, and `summarize` computes
the report from those rows alone.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import numpy as np
import torch
from datasets import Dataset
from omegaconf import DictConfig

from detox.checkpoint import atomic_write_json, atomic_write_text
from detox.eval_metrics import bootstrap_ci, distinct_n, exact_sequence_kl, paired_change, rouge
from detox.judges import Judge
from detox.ppo import response_mask
from detox.trainer import decode_responses, generation_config

log = logging.getLogger(__name__)
VARIANTS = ("before", "after", "null")


def eval_rows(test: Dataset, num_samples: int) -> Dataset:
    if num_samples > len(test):
        log.warning("eval.num_samples=%d is larger than the test split (%d rows): using all %d.",
                    num_samples, len(test), len(test))
    return test.select(range(min(num_samples, len(test))))


@torch.no_grad()
def sample_responses(cfg: DictConfig, policy, tokenizer, prompts: Sequence[str], seed: int,
                     device: torch.device, batch_size: int = 32) -> list[dict]:
    """Responses with their length (tokens, EOS included) and exact KL to the reference."""
    gen = generation_config(cfg.generation, policy.config)
    if cfg.eval.decoding == "greedy":
        gen.do_sample, gen.top_k, gen.top_p = False, None, None
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(list(prompts[i : i + batch_size]), padding=True, truncation=True,
                        max_length=cfg.data.max_input_tokens, return_tensors="pt").to(device)
        seqs = policy.model.generate(**enc, generation_config=gen,
                                     max_new_tokens=cfg.generation.max_new_tokens_max)
        response_ids = seqs[:, 1:]
        mask = response_mask(response_ids, policy.config.eos_token_id)
        logits, _ = policy(enc["input_ids"], enc["attention_mask"], seqs[:, :-1], with_values=False)
        ref_logits = policy.reference_logits(enc["input_ids"], enc["attention_mask"], seqs[:, :-1])
        kl = exact_sequence_kl(logits, ref_logits, mask)
        texts, lengths = decode_responses(tokenizer, response_ids, mask)
        out += [{"response": t, "length": n, "kl": float(k)} for t, n, k in zip(texts, lengths, kl.tolist())]
    return out


def score_variant(rows: list[dict], judges: Sequence[Judge], prompts: Sequence[str]) -> None:
    texts = [r["response"] for r in rows]
    for judge in judges:
        for r, p in zip(rows, judge.toxicity(texts)):
            r.setdefault("toxicity", {})[judge.name] = float(p)
    recipe = next((j for j in judges if j.name == "reward"), None)
    if recipe is not None:  # the recipe's own measure: the reward classifier on prompt + summary
        joined = [p + t for p, t in zip(prompts, texts)]
        for r, p in zip(rows, recipe.toxicity(joined)):
            r["toxicity"]["reward_on_prompt"] = float(p)


def build_samples(data_cfg: DictConfig, eval_cfg: DictConfig, rows: Dataset, variants: dict[str, list[dict]]) -> list[dict]:
    samples = []
    for i, row in enumerate(rows):
        refs = {c: row[c] for c in [data_cfg.summary_column, *eval_cfg.reference_columns]}
        sample = {"id": row[data_cfg.id_column] if data_cfg.id_column else i, "prompt": row["prompt"],
                  "references": refs, "group": row[eval_cfg.group_by] if eval_cfg.group_by else None}
        sample.update({v: variants[v][i] for v in variants})
        samples.append(sample)
    return samples


def _variant_stats(samples: list[dict], variant: str, summary_column: str, ref_columns: Sequence[str],
                   threshold: float) -> dict[str, float]:
    resp = [s[variant]["response"] for s in samples]
    out: dict[str, float] = {}
    for judge in samples[0][variant]["toxicity"]:
        tox = np.array([s[variant]["toxicity"][judge] for s in samples])
        lo, hi = bootstrap_ci(tox)
        out |= {f"{judge}/toxicity_mean": float(tox.mean()), f"{judge}/toxicity_mean_ci_low": lo,
                f"{judge}/toxicity_mean_ci_high": hi, f"{judge}/toxic_rate": float((tox > threshold).mean())}
    scores = rouge(resp, [s["references"][summary_column] for s in samples])
    out |= {k: float(v.mean()) for k, v in scores.items()}
    for col in ref_columns:
        out[f"{col}/rougeL"] = float(rouge(resp, [s["references"][col] for s in samples])["rougeL"].mean())
    out |= {"kl_to_ref": float(np.mean([s[variant]["kl"] for s in samples])),
            "length_mean": float(np.mean([s[variant]["length"] for s in samples])),
            "distinct2": distinct_n(resp, 2)}
    return out


def summarize(samples: list[dict], summary_column: str, ref_columns: Sequence[str], threshold: float) -> dict[str, float]:
    """Flat `eval/...` metrics (names as in DESIGN.md section 4) from sample rows alone."""
    metrics: dict[str, float] = {}
    variants = [v for v in VARIANTS if v in samples[0]]
    for v in ("before", "after"):  # `null` is reported only as a change (eval/null/...)
        if v not in variants:
            continue
        metrics |= {f"eval/{v}/{k}": x for k, x in _variant_stats(samples, v, summary_column, ref_columns, threshold).items()}
    for v, prefix in (("after", "eval/delta"), ("null", "eval/null")):
        if v not in variants:
            continue
        for judge in samples[0]["before"]["toxicity"]:
            for stat, fn in (("toxicity_mean", lambda x: x), ("toxic_rate", lambda x: (x > threshold).astype(float))):
                b = fn(np.array([s["before"]["toxicity"][judge] for s in samples]))
                a = fn(np.array([s[v]["toxicity"][judge] for s in samples]))
                change = paired_change(b, a)
                metrics |= {f"{prefix}/{judge}/{stat}": change["delta"],
                            f"{prefix}/{judge}/{stat}_ci_low": change["ci_low"],
                            f"{prefix}/{judge}/{stat}_ci_high": change["ci_high"]}
    return metrics


def report(samples: list[dict], data_cfg: DictConfig, eval_cfg: DictConfig) -> dict[str, float]:
    args = (data_cfg.summary_column, list(eval_cfg.reference_columns), eval_cfg.toxic_threshold)
    metrics = summarize(samples, *args)
    if eval_cfg.group_by:
        for value in sorted({str(s["group"]) for s in samples}):
            group = [s for s in samples if str(s["group"]) == value]
            metrics |= {k.replace("eval/", f"eval/{eval_cfg.group_by}={value}/", 1): x
                        for k, x in summarize(group, *args).items()}
    return metrics


def write_report(run_dir: str, samples: list[dict], metrics: dict[str, float]) -> None:
    out = os.path.join(run_dir, "eval")
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "samples.jsonl"), "".join(json.dumps(s) + "\n" for s in samples))
    atomic_write_json(os.path.join(out, "report.json"), metrics)
    atomic_write_text(os.path.join(out, "report.md"), markdown(metrics, len(samples)))


def markdown(metrics: dict[str, float], n: int) -> str:
    """Before / after / change table (ungrouped metrics), with 95% bootstrap CIs."""
    lines = [f"# Evaluation ({n} held-out prompts)", "",
             "| metric | before | after | change | change 95% CI | null change (noise) |",
             "| --- | --- | --- | --- | --- | --- |"]
    keys = sorted({k[len("eval/before/"):] for k in metrics if k.startswith("eval/before/")
                   and not k.endswith(("_ci_low", "_ci_high"))})
    for key in keys:
        b, a = metrics.get(f"eval/before/{key}"), metrics.get(f"eval/after/{key}")
        d = metrics.get(f"eval/delta/{key}")
        ci = (f"[{metrics[f'eval/delta/{key}_ci_low']:+.4f}, {metrics[f'eval/delta/{key}_ci_high']:+.4f}]"
              if f"eval/delta/{key}_ci_low" in metrics else "")
        null = metrics.get(f"eval/null/{key}")
        change = d if d is not None else (a - b if a is not None and b is not None else None)
        rel = f" ({100 * change / b:+.1f}%)" if change is not None and b else ""
        lines.append(f"| {key} | {_fmt(b)} | {_fmt(a)} | {_fmt(change, sign=True)}{rel} | {ci} | {_fmt(null, sign=True)} |")
    return "\n".join(lines) + "\n"


def _fmt(x, sign: bool = False) -> str:
    if x is None:
        return ""
    return f"{x:+.4f}" if sign else f"{x:.4f}"
