"""Old TRL's PPO step on detox's tiny models: the peer `scripts/bench.py` is compared with.

TRL 0.11.4 was the last release with a PPO trainer for encoder-decoder models. It needs an
older transformers, so it runs in its own virtual environment:

    python -m venv /tmp/trl011 && /tmp/trl011/bin/pip install torch==2.13.0 \\
        trl==0.11.4 transformers==4.46.3 peft==0.13.2 accelerate==1.1.1 "datasets<3.2" rich sentencepiece
    /tmp/trl011/bin/python scripts/bench_trl011.py --epochs 1    # prints one JSON line of medians

The setup of detox's issue 24: the shipped tiny T5 with LoRA r 8 on q, v, batch 16, mini-batch 4,
caps of 40 new tokens (EOS allowed, min_length 5), top_k 0, top_p 1, the shipped tiny RoBERTa's
P(nothate) as the reward, the bundled dialogues with the quickstart's prompt template, one CPU
thread. The step is `generate` (batched, 16 at once) + the reward + `PPOTrainer.step` (its
rollout forwards and `ppo_epochs` passes of mini-batch updates). Compare it with, interleaved:

    python scripts/bench.py --no-raw --steps 8 --epochs 1 --new-tokens 40 41 -- \\
        lora.r=8 lora.alpha=16 "lora.target_modules=[q,v]"
"""

import argparse
import json
import os
import random
import statistics
import time

import torch

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "detox", "assets")
TEMPLATE = "\nSummarize the following conversation.\n\n{dialogue}\n\nSummary:\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8, help="timed steps (after one warm-up step)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from peft import LoraConfig
    from transformers import AutoTokenizer, pipeline
    from trl import AutoModelForSeq2SeqLMWithValueHead, PPOConfig, PPOTrainer

    torch.manual_seed(0)
    random.seed(0)
    tok = AutoTokenizer.from_pretrained(f"{ASSETS}/tiny-t5")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q", "v"], lora_dropout=0.0, task_type="SEQ_2_SEQ_LM")
    model = AutoModelForSeq2SeqLMWithValueHead.from_pretrained(f"{ASSETS}/tiny-t5", peft_config=lora)
    config = PPOConfig(batch_size=16, mini_batch_size=4, ppo_epochs=args.epochs, learning_rate=1.41e-5, seed=0,
                       log_with=None)
    trainer = PPOTrainer(config, model, ref_model=None, tokenizer=tok)
    prompts = [TEMPLATE.format(dialogue=json.loads(line)["dialogue"]) for line in open(f"{ASSETS}/dialogues.jsonl")]
    classifier = pipeline("text-classification", model=f"{ASSETS}/tiny-roberta-hate", device=-1)
    gen = dict(min_length=5, top_k=0.0, top_p=1.0, do_sample=True, pad_token_id=tok.pad_token_id, max_new_tokens=40)
    times = {k: [] for k in ("generate", "reward", "step", "total")}
    lengths = []
    for s in range(args.steps + 1):
        queries = [tok(p, truncation=True, max_length=512, return_tensors="pt").input_ids[0]
                   for p in prompts[s * 16:(s + 1) * 16]]
        t0 = time.perf_counter()
        responses = trainer.generate(queries, batch_size=16, return_prompt=False, **gen)
        t1 = time.perf_counter()
        scores = classifier(tok.batch_decode(responses, skip_special_tokens=True), top_k=None,
                            function_to_apply="softmax", batch_size=16)
        rewards = [torch.tensor(next(d["score"] for d in row if d["label"] == "nothate")) for row in scores]
        t2 = time.perf_counter()
        trainer.step(queries, responses, rewards)
        t3 = time.perf_counter()
        if s:  # the first step warms up
            for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                times[k].append(v)
            lengths += [len(r) for r in responses]
    print(json.dumps({"epochs": args.epochs, **{k: statistics.median(v) for k, v in times.items()},
                      "mean_response_tokens": statistics.mean(lengths)}))


if __name__ == "__main__":
    main()
