"""The quickstart's promises, checked on the full preset with seeds 0, 1 and 2, with PPO + GAE
(`ppo=default`) and with RLOO (`ppo=rloo`) (`pytest -m slow`; about 3 minutes a run).

Each target reads the run's own evaluation (`eval/report.json`, test split, split by the
bundled `heated` flag) or its training metrics, exactly as the README states them.
"""

import json

import pytest
from detox_cli import run_detox

pytestmark = pytest.mark.slow


RLOO_SEED0 = pytest.mark.xfail(reason="ppo=rloo seed 0 moves little (KL 0.44): the heated toxic rate falls 61%, not "
                                       "75%, the training reward gains 0.058, not 0.06 (README, Critic-free "
                                       "estimators)", strict=False)
RUNS = [("default", 0), ("default", 1), ("default", 2), pytest.param(("rloo", 0), marks=RLOO_SEED0), ("rloo", 1),
        ("rloo", 2)]


@pytest.fixture(scope="module", params=RUNS, ids=lambda run: f"{run[0]}-seed{run[1]}")
def quickstart(request, tmp_path_factory):
    estimator, seed = request.param
    root = tmp_path_factory.mktemp(f"quickstart-{estimator}-seed{seed}")
    out = run_detox(["experiment=quickstart", f"ppo={estimator}", f"seed={seed}", "logger=none",
                   f"hydra.run.dir={root / 'run'}"], cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    run = root / "run"
    report = json.load(open(run / "eval" / "report.json"))
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    config = json.load(open(run / "results.json"))["config"]
    return report, [r for r in rows if "objective/kl" in r], config


def test_starting_policy_summarizes(quickstart):
    report, _, _ = quickstart
    assert report["eval/before/rougeL"] >= 0.60


def test_independent_judge_toxic_rate_on_heated_falls_by_three_quarters(quickstart):
    report, _, _ = quickstart
    key = "eval/heated=True/{}/profanity/toxic_rate"
    before, after = report[key.format("before")], report[key.format("after")]
    assert before > 0 and (before - after) / before >= 0.75, (before, after)
    assert report[key.format("delta") + "_ci_high"] < 0  # the CI of the change excludes zero


def test_calm_summaries_keep_their_rouge(quickstart):
    report, _, _ = quickstart
    before, after = report["eval/heated=False/before/rougeL"], report["eval/heated=False/after/rougeL"]
    assert (before - after) / before < 0.05, (before, after)


def test_heated_summaries_keep_their_content(quickstart):
    report, _, _ = quickstart
    # against the insult-free reference: dropping the insult must not cost the rest
    assert report["eval/heated=True/delta/summary_clean/rougeL"] >= -0.01


def test_length_holds(quickstart):
    report, _, _ = quickstart
    assert abs(report["eval/after/length_mean"] / report["eval/before/length_mean"] - 1) <= 0.15


def test_kl_stays_within_the_presets_budget(quickstart):
    _, rows, config = quickstart
    final_kl = sum(r["objective/kl"] for r in rows[-10:]) / 10
    assert final_kl <= 2 * config["ppo"]["kl"]["target"], final_kl


def test_training_reward_improves(quickstart):
    """Last quarter of steps beats the first quarter. The margin is half of what seeds 0, 1, 2
    of the preset gained (0.108, 0.114, 0.127): the reward is P(nothate), about 0 / 1 per
    insulting / clean summary, and a quarter of the prompts are heated."""
    _, rows, _ = quickstart
    reward = [r["env/reward_mean"] for r in rows]
    q = len(reward) // 4
    assert sum(reward[-q:]) / q - sum(reward[:q]) / q > 0.06, reward
