"""The real CLI, in a subprocess, on the shipped quickstart with fewer steps (run once, shared)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from wandb_offline import read_run

from detox.schema import asset_path

# The whole preset (about 100 s): with fewer steps, the batch-to-batch share of heated
# prompts (8 of 32 on average) moves env/reward_mean more than learning does.
E2E_STEPS = 60
E2E_OVERRIDES = [f"ppo.steps={E2E_STEPS}", "ppo.save_every=30"]
METRICS = ["env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "objective/entropy",
           "ppo/loss/policy", "ppo/loss/value", "ppo/policy/approxkl", "ppo/policy/clipfrac",
           "ppo/val/explained_variance", "ppo/returns/mean", "response/length_mean", "perf/step_time_s",
           "perf/samples_per_s"]


def run_cli(args, cwd, env=None):
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "detox", *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, timeout=900)


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    run_dir = root / "run"
    out = run_cli(["experiment=quickstart", *E2E_OVERRIDES, f"hydra.run.dir={run_dir}", "logger.group=e2e"],
                  cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, out


def test_run_dir_has_every_file(quickstart_run):
    run_dir, out = quickstart_run
    for name in ["metrics.jsonl", "curves.png", "results.json", "rollouts.jsonl", ".hydra/config.yaml",
                 "final/adapter/adapter_config.json", "final/value_head.safetensors", "final/trainer_state.json",
                 "checkpoints/step-30/adapter/adapter_model.safetensors"]:
        assert (run_dir / name).exists(), name
    assert str(run_dir) in out.stdout  # tells the user where the outputs went
    results = json.load(open(run_dir / "results.json"))
    assert results["status"] == "done"
    assert f"ppo.steps={E2E_STEPS}" in results["overrides"]
    assert results["provenance"]["packages"]["torch"] and results["provenance"]["models"]["policy"]["name_or_path"]
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(1, E2E_STEPS + 1))
    assert all(set(METRICS) <= set(r) for r in rows)
    assert json.load(open(run_dir / "final/trainer_state.json"))["step"] == E2E_STEPS


def test_reward_improves(quickstart_run):
    """Last quarter of steps beats the first quarter. The margin comes from seeds 0, 1, 2 of
    the preset, which gained 0.78, 0.70 and 0.33 (the reward is -3 / +3 per insulting /
    clean summary, and a quarter of the prompts are heated)."""
    run_dir, _ = quickstart_run
    reward = np.array([json.loads(line)["env/reward_mean"] for line in open(run_dir / "metrics.jsonl")])
    q = len(reward) // 4
    assert reward[-q:].mean() - reward[:q].mean() > 0.2, reward.round(2).tolist()


def test_saved_adapter_reloads_and_generates(quickstart_run):
    run_dir, _ = quickstart_run
    tok = AutoTokenizer.from_pretrained(asset_path("tiny-t5"))
    model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(asset_path("tiny-t5")),
                                      str(run_dir / "final" / "adapter")).eval()
    enc = tok(["\nSummarize the following conversation.\n\n#Person1#: Where is the bus station?\n"
               "#Person2#: Two blocks north, next to the bakery.\n\nSummary:\n"], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=30, do_sample=False)
    assert len(tok.decode(out[0], skip_special_tokens=True).split()) >= 3


def test_wandb_offline_run_holds_the_curves(quickstart_run):
    run_dir, _ = quickstart_run
    run = read_run(str(run_dir))
    assert run["group"] == "e2e"
    assert run["config"]["ppo"]["steps"] == E2E_STEPS and run["config"]["lora"]["r"] == 16
    history = [h for h in run["history"] if "env/reward_mean" in h]
    assert len(history) == E2E_STEPS
    assert set(METRICS) <= set(history[-1])
    logged = [json.loads(line)["env/reward_mean"] for line in open(run_dir / "metrics.jsonl")]
    assert [h["env/reward_mean"] for h in history] == pytest.approx(logged)


def test_export_merges_the_adapter(quickstart_run, tmp_path):
    run_dir, _ = quickstart_run
    out = run_cli(["stage=export", f"run_dir={run_dir}", f"hydra.run.dir={tmp_path / 'export-job'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    merged = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "export").eval()
    peft = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(asset_path("tiny-t5")),
                                     str(run_dir / "final" / "adapter")).eval()
    ids = torch.tensor([[5, 6, 7, 1]])
    dec = torch.tensor([[0, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids, decoder_input_ids=dec).logits,
                                   peft(input_ids=ids, decoder_input_ids=dec).logits, atol=1e-4, rtol=1e-4)


def test_user_errors_exit_cleanly_with_the_fix(tmp_path):
    out = run_cli(["experiment=quickstart", "reward.label=toxic", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert out.returncode == 2
    assert "reward.label='toxic'" in out.stdout + out.stderr and "Traceback" not in out.stderr
    out = run_cli(["experiment=quickstart", "policy.name_or_path=nobody/nothing", f"hydra.run.dir={tmp_path / 'p'}"],
                  cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2 and "experiment=quickstart" in out.stdout + out.stderr
