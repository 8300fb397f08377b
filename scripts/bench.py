"""Benchmark PPO steps: time per phase and peak memory.

    python scripts/bench.py                       # the quickstart (tiny T5, CPU)
    python scripts/bench.py --size base --device cuda --dtype bfloat16 --batch 16 \\
        --new-tokens 100 400                      # flan-t5-base-sized policy from its config

`--size base` builds a T5 with flan-t5-base's architecture (248M parameters, vocab 32128) from
its config with random weights (no hub here), a synthetic 32128-piece tokenizer, and a
roberta-base-sized random classifier as the reward model (`--reward tiny` uses the shipped
tiny one), saves them to a temp dir and loads them by path through the product's own code.
Random weights rarely emit EOS, so responses run to their caps: a worst case for length.
Prints one JSON line per step and a summary (median seconds per phase, samples/s, peak memory).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

import torch
from hydra import compose, initialize_config_module

from detox.schema import register
from detox.stages import build_ppo
from detox.runs import quiet_libraries


def build_base_models(root: str, reward: str) -> dict[str, str]:
    from transformers import (RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast,
                              T5Config, T5ForConditionalGeneration, T5Tokenizer)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz#.,:"]
    pieces += [(f"\u2581w{i}", -10.0) for i in range(32128 - len(pieces))]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    config = T5Config(vocab_size=32128, d_model=768, d_ff=2048, d_kv=64, num_layers=12, num_heads=12,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
                      eos_token_id=1, decoder_start_token_id=0)
    policy = os.path.join(root, "t5-base")
    T5ForConditionalGeneration(config).save_pretrained(policy)
    tok.save_pretrained(policy)
    paths = {"policy": policy}
    if reward == "base":
        vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>"])}
        for ch in bytes_to_unicode().values():
            vocab.setdefault(ch, len(vocab))
        vocab["<mask>"] = len(vocab)
        rcfg = RobertaConfig(vocab_size=len(vocab), id2label={0: "nothate", 1: "hate"},
                             label2id={"nothate": 0, "hate": 1}, max_position_embeddings=514,
                             pad_token_id=1, bos_token_id=0, eos_token_id=2)
        paths["reward"] = os.path.join(root, "roberta-base")
        RobertaForSequenceClassification(rcfg).save_pretrained(paths["reward"])
        RobertaTokenizerFast(vocab=vocab, merges=[]).save_pretrained(paths["reward"])
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["tiny", "base"], default="tiny")
    ap.add_argument("--reward", choices=["tiny", "base"], default="base")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--mini-batch", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, nargs=2, default=None, metavar=("MIN", "MAX"))
    ap.add_argument("--gen-batch", type=int, default=None)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args()
    register()
    quiet_libraries()

    overrides = ["experiment=quickstart", "logger=none", f"device={args.device}", f"policy.dtype={args.dtype}",
                 f"ppo.steps={args.steps}"]
    tmp = tempfile.mkdtemp(prefix="detox-bench-")
    if args.size == "base":
        paths = build_base_models(tmp, args.reward)
        overrides += [f"policy.name_or_path={paths['policy']}", "lora.r=32", "lora.alpha=32",
                      "lora.target_modules=[q,v]"]
        if "reward" in paths:
            overrides += [f"reward.name_or_path={paths['reward']}"]
    if args.batch:
        overrides += [f"ppo.batch_size={args.batch}"]
    if args.mini_batch:
        overrides += [f"ppo.mini_batch_size={args.mini_batch}"]
    if args.new_tokens:
        overrides += [f"generation.max_new_tokens_min={args.new_tokens[0]}",
                      f"generation.max_new_tokens_max={args.new_tokens[1]}"]
    if args.gen_batch:
        overrides += [f"generation.batch_size={args.gen_batch}"]
    with initialize_config_module("detox.conf", version_base="1.3"):
        cfg = compose("config", overrides=[f"output_dir={tmp}/run", *overrides, *args.overrides])

    trainer, _ = build_ppo(cfg)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for step in range(cfg.ppo.steps):
        metrics, _ = trainer.train_step()
        row = {k: round(v, 4) for k, v in metrics.items() if k.startswith(("perf/", "response/"))}
        print(json.dumps({"step": step + 1, **row}), flush=True)
        rows.append(row)
    timed = rows[1:] or rows  # the first step includes warm-up
    summary = {k: round(statistics.median(r[k] for r in timed), 4) for k in timed[0]}
    summary.update(size=args.size, device=args.device, dtype=args.dtype, batch=cfg.ppo.batch_size,
                   new_tokens=[cfg.generation.max_new_tokens_min, cfg.generation.max_new_tokens_max],
                   peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))
    if torch.cuda.is_available():
        summary["peak_cuda_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print("summary " + json.dumps(summary))


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.1f}s", file=sys.stderr)
