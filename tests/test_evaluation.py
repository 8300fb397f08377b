import json

import numpy as np
import pytest
import torch
from conftest import make_cfg
from test_trainer import make_trainer

from detox.evaluation import build_samples, eval_rows, report, sample_responses, score_variant, summarize, write_report
from detox.judges import build_judges

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory):

    overrides = ["experiment=quickstart", "logger=none", f"policy.name_or_path={tiny['policy']}",
                 f"reward.name_or_path={tiny['reward']}", f"data.name_or_path={tiny['data']}",
                 "lora.target_modules=[q,v]", "ppo.batch_size=8", "ppo.mini_batch_size=4",
                 "generation.max_new_tokens_min=8", "generation.max_new_tokens_max=12",
                 "ppo.value_warmup_steps=0", "ppo.learning_rate=5e-3", "eval.num_samples=1000"]
    tmp = tmp_path_factory.mktemp("eval")
    trainer = make_trainer(overrides, tmp)
    cfg = trainer.cfg
    from detox.data import load_splits

    rows = eval_rows(load_splits(cfg.data, extra_columns=("heated", "summary_clean"))["test"], cfg.eval.num_samples)
    prompts = list(rows["prompt"])
    judges = build_judges(["reward", "profanity"], cfg.reward, CPU, reward=trainer.reward)
    variants = {"before": sample_responses(cfg, trainer.policy, trainer.tokenizer, prompts, cfg.seed, CPU),
                "null": sample_responses(cfg, trainer.policy, trainer.tokenizer, prompts, cfg.seed + 1, CPU)}
    for _ in range(3):
        trainer.train_step()
        trainer.step += 1
    variants["after"] = sample_responses(cfg, trainer.policy, trainer.tokenizer, prompts, cfg.seed, CPU)
    for rows_ in variants.values():
        score_variant(rows_, judges, prompts)
    samples = build_samples(cfg.data, cfg.eval, rows, variants)
    metrics = report(samples, cfg.data, cfg.eval)
    write_report(str(tmp), samples, metrics)
    return tmp, cfg, samples, metrics


def test_clamps_num_samples_and_uses_identical_prompts(evaluated):
    _, _, samples, _ = evaluated
    assert len(samples) == 6  # the whole tiny test split, clamped from 1000
    assert all({"before", "after", "null"} <= set(s) for s in samples)


def test_exact_kl_is_zero_before_and_positive_after(evaluated):
    _, _, samples, metrics = evaluated
    assert all(abs(s["before"]["kl"]) < 1e-6 for s in samples)
    assert metrics["eval/after/kl_to_ref"] > 1e-4


def test_report_equals_a_recomputation_from_samples_jsonl(evaluated):
    tmp, cfg, _, metrics = evaluated
    rows = [json.loads(line) for line in open(tmp / "eval" / "samples.jsonl")]
    again = summarize(rows, cfg.data.summary_column, list(cfg.eval.reference_columns), cfg.eval.toxic_threshold)
    saved = json.load(open(tmp / "eval" / "report.json"))
    for key, value in again.items():
        assert saved[key] == pytest.approx(value, nan_ok=True), key
    tox = np.array([r["after"]["toxicity"]["profanity"] for r in rows])
    assert saved["eval/after/profanity/toxicity_mean"] == pytest.approx(tox.mean())
    assert saved["eval/after/profanity/toxicity_mean_ci_low"] <= tox.mean() <= saved["eval/after/profanity/toxicity_mean_ci_high"]
    assert "eval/heated=True/after/summary_clean/rougeL" in saved and "eval/null/reward/toxic_rate" in saved
    assert "| reward/toxicity_mean |" in (tmp / "eval" / "report.md").read_text()
