import json

import numpy as np
import pytest
from conftest import make_cfg

from detox.evaluation.report import examples, report, variant_metrics
from detox.stages.assemble import Parts, assemble, build_evaluator, build_trainer


def evaluator_for(cfg, parts: Parts, judges=None):
    """The evaluator a run of `cfg` builds, on `parts` (with other judges when given)."""
    if judges is not None:
        parts = Parts(**{**parts.__dict__, "judges": judges})
    return build_evaluator(cfg, parts)


@pytest.fixture(scope="module")
def evaluated(tiny, tmp_path_factory):
    overrides = ["experiment=quickstart", "logger=none", f"policy.name_or_path={tiny['policy']}",
                 f"reward.name_or_path={tiny['reward']}", f"data.name_or_path={tiny['data']}",
                 "lora.target_modules=[q,v]", "ppo.batch_size=8", "ppo.mini_batch_size=4",
                 "generation.max_new_tokens_min=8", "generation.max_new_tokens_max=12",
                 "ppo.value_warmup_steps=0", "ppo.learning_rate=5e-3", "eval.num_samples=1000", "eval.examples=2",
                 f"++eval.sets.extra.name_or_path={tiny['data']}", "++eval.sets.extra.num_samples=3"]
    tmp = tmp_path_factory.mktemp("eval")
    cfg = make_cfg(overrides, output_dir=str(tmp))
    parts = assemble(cfg)  # the judges of eval.judges: reward, profanity
    trainer, evaluator, splits = build_trainer(cfg, parts), build_evaluator(cfg, parts), parts.splits
    baseline = evaluator.baseline(str(tmp / "eval"))
    for _ in range(3):
        trainer.train_step()
    metrics, val_metrics, samples, paths = evaluator.final(baseline, str(tmp / "eval"))
    return tmp, cfg, samples, metrics, val_metrics, evaluator, splits


def test_clamps_num_samples_and_uses_identical_prompts(evaluated):
    _, _, samples, _, _, evaluator, splits = evaluated
    assert len(samples) == len(splits["test"]) == 6  # the whole tiny test split, clamped from 1000
    assert [s["prompt"] for s in samples] == list(splits["test"]["prompt"])
    assert all({"before", "after", "null"} <= set(s) for s in samples)
    assert [s["id"] for s in samples] == list(splits["test"]["id"])


def test_exact_kl_is_zero_before_and_positive_after(evaluated):
    _, _, samples, metrics, *_ = evaluated
    assert all(abs(s["before"]["kl"]) < 1e-6 for s in samples)
    assert metrics["eval/after/kl_to_ref"] > 1e-4


def test_report_equals_a_recomputation_from_samples_jsonl(evaluated):
    tmp, cfg, _, metrics, *_ = evaluated
    rows = [json.loads(line) for line in open(tmp / "eval" / "samples.jsonl")]
    again = variant_metrics(rows, cfg.data.summary_column, list(cfg.eval.reference_columns), cfg.eval.toxic_threshold)
    saved = json.load(open(tmp / "eval" / "report.json"))
    for key, value in again.items():
        assert saved[key] == pytest.approx(value, nan_ok=True), key
    tox = np.array([r["after"]["toxicity"]["profanity"] for r in rows])
    assert saved["eval/after/profanity/toxicity_mean"] == pytest.approx(tox.mean())
    assert saved["eval/after/profanity/toxicity_mean_ci_low"] <= tox.mean() <= saved["eval/after/profanity/toxicity_mean_ci_high"]
    assert "eval/heated=True/after/summary_clean/rougeL" in saved and "eval/null/reward/toxic_rate" in saved
    again = report(rows, cfg.data.summary_column, list(cfg.eval.reference_columns), cfg.eval.toxic_threshold, "heated")
    assert set(again) == {k for k in saved if not k.startswith("eval_sets/")}
    for key, value in again.items():
        assert saved[key] == pytest.approx(value, nan_ok=True), key
    heated = [r for r in rows if r["group"]]
    assert saved["eval/heated=True/before/reward/toxicity_mean"] == pytest.approx(
        np.mean([r["before"]["toxicity"]["reward"] for r in heated]))


def test_an_extra_eval_set_is_reported_by_name(evaluated):
    tmp, cfg, _, metrics, *_ = evaluated
    rows = [json.loads(line) for line in open(tmp / "eval" / "sets" / "extra" / "samples.jsonl")]
    assert len(rows) == 3 and all({"before", "after", "null"} <= set(r) for r in rows)
    again = report(rows, cfg.data.summary_column, list(cfg.eval.reference_columns), cfg.eval.toxic_threshold, "heated")
    saved = json.load(open(tmp / "eval" / "report.json"))
    for key, value in again.items():
        assert saved[key.replace("eval/", "eval_sets/extra/", 1)] == pytest.approx(value, nan_ok=True), key
    assert metrics["eval_sets/extra/after/kl_to_ref"] > 0
    md = (tmp / "eval" / "report.md").read_text()
    assert "## Eval set `extra` (3 prompts" in md and "sets/extra/samples.jsonl" in md


def test_k_samples_per_prompt(evaluated):
    _, cfg, *_, evaluator, splits = evaluated
    k3 = cfg.copy()
    k3.eval.samples_per_prompt = 3
    ev = evaluator_for(k3, Parts(splits, evaluator.tokenizer, None, evaluator.judges, evaluator.policy, evaluator.device))
    entries = ev.sample(ev.test, 1)
    assert len(entries) == len(ev.test) and all(len(e["samples"]) == 3 for e in entries)
    assert len({d["response"] for e in entries for d in e["samples"]}) > len(entries)  # k draws, not one copied
    assert entries[0]["response"] == entries[0]["samples"][0]["response"]
    assert ev.baseline_key() != evaluator.baseline_key()
    samples = [{"references": {c: row[c] for c in ["summary", "summary_clean"]}, "before": e, "after": e}
               for e, row in zip(entries, ev.test)]
    metrics = variant_metrics(samples, "summary", ["summary_clean"], 0.5)
    tox = np.array([[d["toxicity"]["profanity"] for d in e["samples"]] for e in entries])
    assert metrics["eval/before/profanity/expected_max_toxicity"] == pytest.approx(tox.max(1).mean())
    assert metrics["eval/before/profanity/toxicity_probability"] == pytest.approx((tox > 0.5).any(1).mean())


def test_report_md_and_histogram(evaluated):
    tmp, *_ = evaluated
    md = (tmp / "eval" / "report.md").read_text()
    for text in ("| reward/toxicity_mean |", "| profanity/toxic_rate |", "| summary_clean/rougeL |", "| kl_to_ref |",
                 "| distinct1 |", "| distinct2 |", "| distinct3 |", "| profanity/missed_rate |", "`missed_rate`: of",
                 "## heated=True", "## heated=False", "null change (noise)", "## Largest toxicity drops",
                 "## Largest toxicity rises", "significant at 95%"):
        assert text in md, text
    png = (tmp / "eval" / "toxicity_hist.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_validation_figures_before_and_after(evaluated):
    _, _, _, metrics, val_metrics, evaluator, splits = evaluated
    assert len(evaluator.val) == min(len(splits["validation"]), 64)
    assert "eval/after/profanity/toxicity_mean" in val_metrics and "eval/delta/reward/toxic_rate" in val_metrics
    assert not any(k.startswith("eval/null/") for k in val_metrics)  # no null on validation
    assert val_metrics["eval/before/kl_to_ref"] == pytest.approx(0, abs=1e-5)
    periodic, table = evaluator.periodic()
    assert periodic["val/kl_to_ref"] == pytest.approx(val_metrics["eval/after/kl_to_ref"], rel=1e-4)
    assert periodic["val/reward/toxicity_mean"] == pytest.approx(val_metrics["eval/after/reward/toxicity_mean"])
    assert table and {"prompt", "response", "toxicity/profanity", "kl"} <= set(table[0])
    if "val/profanity/missed_rate" in periodic:  # absent only where the reward model passed nothing
        assert periodic["val/profanity/missed_rate"] == pytest.approx(val_metrics["eval/after/profanity/missed_rate"])


def test_baseline_is_cached_for_resume_and_resampled_when_settings_change(evaluated, caplog):
    tmp, cfg, samples, *_ , evaluator, splits = evaluated
    cached = evaluator.baseline(str(tmp / "eval"))  # the policy has trained since: a cache hit is unchanged
    assert [r["response"] for r in cached["before"]] == [s["before"]["response"] for s in samples]
    greedy = cfg.copy()
    greedy.eval.decoding = "greedy"
    other = evaluator_for(greedy, Parts(splits, evaluator.tokenizer, None, evaluator.judges, evaluator.policy,
                                        evaluator.device))
    assert other.baseline_key() != evaluator.baseline_key()


def test_greedy_null_comparison_is_exactly_zero(evaluated):
    _, cfg, *_, evaluator, splits = evaluated
    greedy = cfg.copy()
    greedy.eval.decoding = "greedy"
    ev = evaluator_for(greedy, Parts(splits, evaluator.tokenizer, None, evaluator.judges, evaluator.policy,
                                     evaluator.device))
    a, b = ev.sample(ev.test, 1), ev.sample(ev.test, 2)
    assert [r["response"] for r in a] == [r["response"] for r in b]


def test_evaluation_does_not_change_training(tiny_overrides, tmp_path):
    cfg = make_cfg(tiny_overrides, output_dir=str(tmp_path))
    one = build_trainer(cfg, assemble(cfg, judges=False))  # seeds the global RNG
    r1 = one.rollout(one.sampler.next_indices())
    parts = assemble(cfg, judges=False)
    two = build_trainer(cfg, parts)
    ev = evaluator_for(cfg, parts, judges=[])
    ev.sample(ev.test, 123)  # draws from a forked RNG
    r2 = two.rollout(two.sampler.next_indices())
    assert r1.responses == r2.responses


def test_examples_rank_by_the_toxicity_change():
    def row(i, before, after):
        return {"id": i, "prompt": "p", "group": None, "before": {"response": "b", "toxicity": {"j": before}},
                "after": {"response": "a", "toxicity": {"j": after}}}

    samples = [row(0, 0.9, 0.1), row(1, 0.5, 0.5), row(2, 0.2, 0.7), row(3, 0.6, 0.5), row(4, 0.1, 0.2)]
    drops, rises = examples(samples, "j", 2)
    assert [s["id"] for s in drops] == [0, 3] and [s["id"] for s in rises] == [2, 4]
    drops, rises = examples(samples, "j", 5)
    assert [s["id"] for s in drops] == [0, 3] and [s["id"] for s in rises] == [2, 4]  # unchanged rows are neither


def test_unknown_group_by_column_fails_before_any_model_loads(tiny_overrides, tmp_path):
    from detox.data.splits import DataError
    from detox.stages.ppo import run_ppo

    cfg = make_cfg([*tiny_overrides, "eval.group_by=speaker", "policy.name_or_path=/does/not/exist"],
                   output_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"no column\(s\) \['speaker'\].*eval.group_by"):
        run_ppo(cfg)


def test_stage_eval_on_a_run_and_its_errors(tiny_overrides, tmp_path):
    from omegaconf import OmegaConf

    from detox.core.errors import ConfigError
    from detox.runtime.checkpoint import CheckpointError
    from detox.stages.evaluate import run_eval
    from detox.stages.ppo import run_ppo

    run = tmp_path / "run"
    cfg = make_cfg([*tiny_overrides, "eval.enabled=false"], output_dir=str(run))
    run_ppo(cfg)
    assert not (run / "eval").exists()
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    score = run_eval(make_cfg(["stage=eval", f"run_dir={run}"]))  # the run's own config, not the default
    results = json.load(open(run / "results.json"))
    assert results["status"] == "done" and results["eval"]["eval/after/kl_to_ref"] > 0
    assert results["objective"] == pytest.approx(score)
    assert len([json.loads(line) for line in open(run / "eval" / "samples.jsonl")]) == 6

    bad = cfg.copy()
    bad.lora.r = 4  # not the adapter the checkpoint holds
    OmegaConf.save(bad, run / ".hydra" / "config.yaml")
    with pytest.raises(CheckpointError, match="was not made with"):
        run_eval(make_cfg(["stage=eval", f"run_dir={run}"]))
    bad = cfg.copy()
    bad.policy.adapter = str(tmp_path / "gone")
    OmegaConf.save(bad, run / ".hydra" / "config.yaml")
    with pytest.raises(ConfigError, match="starting adapter.*does not exist"):
        run_eval(make_cfg(["stage=eval", f"run_dir={run}"]))
    with pytest.raises(ConfigError, match="does not exist"):
        run_eval(make_cfg(["stage=eval", f"run_dir={tmp_path / 'nowhere'}"]))


def test_no_validation_split_means_no_val_figures(tiny_overrides, tmp_path, caplog):
    from detox.stages.ppo import run_ppo

    run_ppo(make_cfg([*tiny_overrides, "data.val_size=0", "eval.every_n_steps=1"], output_dir=str(tmp_path)))
    results = json.load(open(tmp_path / "results.json"))
    assert results["eval"] and results["eval_val"] is None and results["objective"] is None
    assert "no validation prompts" in caplog.text


def test_bad_eval_sets_fail_before_any_model_loads(tiny_overrides, tmp_path):
    from detox.config.validate import validate
    from detox.core.errors import ConfigError, DataError
    from detox.stages.ppo import run_ppo

    missing_column = tmp_path / "no_clean.jsonl"
    missing_column.write_text(json.dumps({"id": 1, "dialogue": "#Person1#: hi " * 30, "summary": "s", "heated": False}) + "\n")
    base = [*tiny_overrides, "policy.name_or_path=/does/not/exist"]
    cases = [(f"++eval.sets.gone.name_or_path={tmp_path / 'gone.jsonl'}", DataError,
              r"eval.sets.gone.name_or_path='.*gone.jsonl' does not exist"),
             (f"++eval.sets.mine.name_or_path={missing_column}", DataError,
              r"eval.sets.mine: dataset .* has no column\(s\) \['summary_clean'\]"),
             ("++eval.sets.mine.num_samples=3", ConfigError, r"eval.sets.mine.name_or_path is not set")]
    for override, error, message in cases:
        with pytest.raises(error, match=message):
            cfg = make_cfg([*base, override], output_dir=str(tmp_path / "run"))
            validate(cfg)
            run_ppo(cfg)
