"""The real CLI, in a subprocess, on the shipped quickstart with fewer steps (run once, shared)."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import E2E_STEPS
from detox_cli import run_detox
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from wandb_offline import read_run

from detox.core.assets import asset_path

METRICS = ["env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "objective/entropy",
           "ppo/loss/policy", "ppo/loss/value", "ppo/policy/approxkl", "ppo/policy/clipfrac",
           "ppo/value/explained_variance", "ppo/returns/mean", "response/length_mean", "perf/step_time_s",
           "perf/samples_per_s"]


def test_run_dir_has_every_file(quickstart_run):
    run_dir, out = quickstart_run
    for name in ["metrics.jsonl", "curves.png", "results.json", "rollouts.jsonl", ".hydra/config.yaml",
                 "final/adapter/adapter_config.json", "final/value_head.safetensors", "final/trainer_state.json",
                 "checkpoints/step-5/adapter/adapter_model.safetensors", "checkpoints/step-5/manifest.json"]:
        assert (run_dir / name).exists(), name
    assert str(run_dir) in out.stdout  # tells the user where the outputs went
    results = json.load(open(run_dir / "results.json"))
    assert results["status"] == "done"
    assert f"ppo.steps={E2E_STEPS}" in results["overrides"]
    assert results["provenance"]["packages"]["torch"] and results["provenance"]["models"]["policy"]["name_or_path"]
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(0, E2E_STEPS + 1))  # step 0: the validation curves' start
    assert all(set(METRICS) <= set(r) for r in rows[1:])
    assert [r["step"] for r in rows if "val/profanity/toxicity_mean" in r] == list(range(0, E2E_STEPS + 1, 10))
    for name in ["eval/samples.jsonl", "eval/report.json", "eval/report.md", "eval/toxicity_hist.png"]:
        assert (run_dir / name).exists(), name
    assert "eval/report.md" in out.stdout
    assert results["eval"]["eval/delta/profanity/toxic_rate"] == json.load(open(run_dir / "eval/report.json"))[
        "eval/delta/profanity/toxic_rate"]
    assert "eval/after/rougeL" in results["eval_val"] and isinstance(results["objective"], float)
    assert json.load(open(run_dir / "final/trainer_state.json"))["step"] == E2E_STEPS


def test_saved_adapter_reloads_with_plain_peft_as_the_trained_policy(quickstart_run):
    """final/adapter on the base model, with nothing of detox, is the policy the run trained: the
    same logits as the run's policy rebuilt from final/ (and not the base model's)."""
    from omegaconf import OmegaConf

    from detox.config.schema import typed_config
    from detox.runtime.checkpoint import load_trained
    from detox.stages.common import starting_policy

    run_dir, _ = quickstart_run
    base = AutoModelForSeq2SeqLM.from_pretrained(asset_path("tiny-t5")).eval()
    tok = AutoTokenizer.from_pretrained(asset_path("tiny-t5"))
    enc = tok(["\nSummarize the following conversation.\n\n#Person1#: Where is the bus station?\n"
               "#Person2#: Two blocks north, next to the bakery.\n\nSummary:\n"], return_tensors="pt")
    with torch.no_grad():
        greedy = base.generate(**enc, max_new_tokens=30, do_sample=False)
        inputs = dict(**enc, decoder_input_ids=greedy[:, :-1])
        base_logits = base(**inputs).logits
        model = PeftModel.from_pretrained(base, str(run_dir / "final" / "adapter")).eval()
        reloaded = model(**inputs).logits
        cfg = typed_config(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
        policy = starting_policy(cfg)
        assert load_trained(str(run_dir / "final"), policy) == E2E_STEPS
        trained = policy.model(**inputs).logits
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=1e-5)
    assert (reloaded - base_logits).abs().max() > 1e-3  # the adapter trained: it changes the model


def test_wandb_offline_run_holds_the_curves(quickstart_run):
    run_dir, _ = quickstart_run
    run = read_run(str(run_dir))
    assert run["group"] == "e2e"
    assert run["config"]["ppo"]["steps"] == E2E_STEPS and run["config"]["lora"]["r"] == 16
    history = [h for h in run["history"] if "env/reward_mean" in h]
    assert len(history) == E2E_STEPS
    assert run["summary"]["eval/delta/profanity/toxic_rate"] == pytest.approx(
        json.load(open(run_dir / "eval/report.json"))["eval/delta/profanity/toxic_rate"])
    assert "eval_val/after/rougeL" in run["summary"] and run["summary"]["eval/examples/_type"] == "table-file"
    assert set(METRICS) <= set(history[-1])
    logged = [r["env/reward_mean"] for r in map(json.loads, open(run_dir / "metrics.jsonl")) if "env/reward_mean" in r]
    assert [h["env/reward_mean"] for h in history] == pytest.approx(logged)


def test_stage_eval_reevaluates_a_finished_run(quickstart_run, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(quickstart_run[0], run_dir, ignore=shutil.ignore_patterns("wandb", "rollouts.jsonl"))
    hydra_config = (run_dir / ".hydra" / "config.yaml").read_text()
    # in the run's own dir: its .hydra/ (which eval reads) is left alone
    # a set the run never had, from the command line
    out = run_detox(["stage=eval", f"run_dir={run_dir}", "eval.num_samples=36", "eval.judges=[profanity]",
                     f"++eval.sets.mine.name_or_path={asset_path('dialogues.jsonl')}", "++eval.sets.mine.num_samples=8",
                     "logger=none", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / ".hydra" / "config.yaml").read_text() == hydra_config
    assert (run_dir / ".hydra-eval" / "config.yaml").exists() and not (run_dir / "detox.lock").exists()
    rows = [json.loads(line) for line in open(run_dir / "eval" / "samples.jsonl")]
    assert len(rows) == 36 and set(rows[0]["after"]["toxicity"]) == {"profanity"}
    assert max(abs(r["before"]["kl"]) for r in rows) < 1e-4 < np.mean([r["after"]["kl"] for r in rows])
    results = json.load(open(run_dir / "results.json"))
    assert results["status"] == "done" and "eval/after/reward/toxicity_mean" not in results["eval"]
    report = json.load(open(run_dir / "eval" / "report.json"))
    assert results["eval"] == report and report["eval/after/profanity/toxic_rate"] == pytest.approx(
        np.mean([r["after"]["toxicity"]["profanity"] > 0.5 for r in rows]))
    mine = [json.loads(line) for line in open(run_dir / "eval" / "sets" / "mine" / "samples.jsonl")]
    assert len(mine) == 8 and report["eval_sets/mine/after/profanity/toxic_rate"] == pytest.approx(
        np.mean([r["after"]["toxicity"]["profanity"] > 0.5 for r in mine]))
    assert "## Eval set `mine` (8 prompts" in (run_dir / "eval" / "report.md").read_text()
    # the first 32 prompts (one generation batch) and their seeds match the training run's own evaluation
    in_run = [json.loads(line) for line in open(quickstart_run[0] / "eval" / "samples.jsonl")][:32]
    assert [r["after"]["response"] for r in rows[:32]] == [r["after"]["response"] for r in in_run]


def test_stage_eval_errors_name_the_problem(quickstart_run, tmp_path):
    from conftest import make_cfg

    from detox.core.errors import ConfigError
    from detox.stages.dispatch import run_stage

    with pytest.raises(ConfigError, match="does not exist"):
        run_stage(make_cfg(["stage=eval", f"run_dir={tmp_path / 'nowhere'}"], output_dir=str(tmp_path / "j1")))
    # eval.* overrides reach a finished run's config from the command line (Hydra's overrides)
    out = run_detox(["stage=eval", f"run_dir={quickstart_run[0]}", "eval.judges=[no-such-judge]",
                     f"hydra.run.dir={tmp_path / 'j2'}"], cwd=tmp_path)
    assert out.returncode == 2 and "eval.judges='no-such-judge'" in out.stderr and "Traceback" not in out.stderr
    assert "built-in judges: reward, profanity" in out.stderr
