import numpy as np
import pytest
import torch
from rouge_score import rouge_scorer

from detox.algo.metrics import (
    bootstrap_ci,
    distinct_n,
    exact_sequence_kl,
    paired_change,
    rouge,
)


def test_rouge_equals_rouge_score_directly():
    preds = ["#Person1# asks #Person2# to buy a book.", "they meet at noon"]
    refs = ["#Person1# asks #Person2# to help buy a book.", "they meet at work tomorrow"]
    got = rouge(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for i, (p, r) in enumerate(zip(preds, refs)):
        expected = scorer.score(r, p)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert got[key][i] == pytest.approx(expected[key].fmeasure)
    with pytest.raises(ValueError):
        rouge(["a"], [])


def test_distinct_2():
    assert distinct_n(["a b c", "a b d"]) == pytest.approx(3 / 4)  # (a b) repeats
    assert distinct_n(["x x x x"]) == pytest.approx(1 / 3)
    assert np.isnan(distinct_n(["one"]))


def test_bootstrap_ci_contains_the_mean_and_shrinks_with_more_samples():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3


def test_paired_change_is_paired():
    before = np.array([0.9, 0.8, 0.1, 0.2])
    after = before - 0.1
    change = paired_change(before, after)
    assert change["delta"] == pytest.approx(-0.1)
    assert change["ci_low"] == pytest.approx(-0.1) and change["ci_high"] == pytest.approx(-0.1)
    assert change["relative"] == pytest.approx(-0.1 / before.mean())
    with pytest.raises(ValueError):
        paired_change(before, after[:2])


def test_exact_kl_is_zero_for_identical_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert torch.equal(exact_sequence_kl(logits, logits, mask), torch.zeros(2))
    other = logits + torch.randn(2, 3, 7)
    kl = exact_sequence_kl(logits, other, mask)
    assert (kl > 0).all()
    p, q = torch.softmax(logits[0, 0], -1), torch.softmax(other[0, 0], -1)
    first = (p * (p.log() - q.log())).sum()
    second = (torch.softmax(logits[0, 1], -1) * (torch.log_softmax(logits[0, 1], -1)
                                                  - torch.log_softmax(other[0, 1], -1))).sum()
    assert kl[0] == pytest.approx(float(first + second), rel=1e-5)  # the masked position is ignored


def _draw(**toxicity):
    return {"response": "a b c", "toxicity": toxicity, "kl": 0.0, "length": 3}


def _sample(*draws, variant="before"):
    return {"references": {"summary": "a b c"}, variant: {**draws[0], "samples": list(draws)}}


def test_worst_of_k_figures_on_hand_made_scores():
    from detox.evaluation.report import per_example

    clean = _sample(_draw(j=0.1), _draw(j=0.2), _draw(j=0.3))  # all k clean
    one_toxic = _sample(_draw(j=0.1), _draw(j=0.9), _draw(j=0.2))  # one toxic sample of three
    values = per_example([clean, one_toxic], "before", "summary", [], 0.5)
    assert values["j/expected_max_toxicity"].tolist() == pytest.approx([0.3, 0.9])
    assert values["j/toxicity_probability"].tolist() == [0.0, 1.0]
    assert values["j/toxic_rate"].tolist() == pytest.approx([0, 1 / 3])  # per-prompt means over the k
    assert values["j/toxicity_mean"].tolist() == pytest.approx([0.2, 0.4])
    single = per_example([{"references": {"summary": "x"}, "before": _draw(j=0.7)}], "before", "summary", [], 0.5)
    assert "j/expected_max_toxicity" not in single and single["j/toxic_rate"].tolist() == [1.0]  # k = 1: as before


def test_missed_rate_on_hand_made_scores():
    from detox.evaluation.report import missed_counts, missed_rates, variant_metrics

    # reward passes (<= 0.5) two draws of each prompt; profanity flags one of each pair
    a = [_draw(reward=0.1, profanity=0.9), _draw(reward=0.2, profanity=0.1), _draw(reward=0.8, profanity=0.9)]
    b = [_draw(reward=0.3, profanity=0.6), _draw(reward=0.9, profanity=0.1), _draw(reward=0.4, profanity=0.2)]
    clean = [_draw(reward=0.1, profanity=0.1)] * 3
    samples = [{**_sample(*a), **_sample(*clean, variant="after")}, {**_sample(*b), **_sample(*clean, variant="after")}]
    flagged, passed = missed_counts(samples, "before", 0.5)["profanity"]
    assert flagged.tolist() == [1, 1] and passed.tolist() == [2, 2]
    assert missed_rates(samples, "before", 0.5) == {"profanity/missed_rate": pytest.approx(0.5)}
    metrics = variant_metrics(samples, "summary", [], 0.5)
    assert metrics["eval/before/profanity/missed_rate"] == pytest.approx(0.5)
    assert metrics["eval/after/profanity/missed_rate"] == 0
    assert metrics["eval/delta/profanity/missed_rate"] == pytest.approx(-0.5)
    assert metrics["eval/delta/profanity/missed_rate_ci_low"] <= -0.5 <= metrics["eval/delta/profanity/missed_rate_ci_high"]
    assert "eval/before/reward/missed_rate" not in metrics  # the reward model cannot miss itself
    no_reward = [{**_sample(_draw(profanity=0.9))}]
    assert missed_rates(no_reward, "before", 0.5) == {}  # without the reward model as a judge: no rate
    passes_nothing = [_sample(_draw(reward=0.9, profanity=0.9))]
    assert missed_rates(passes_nothing, "before", 0.5) == {}  # nothing passed: no rate, not 0


def test_distinct_n_for_n_1_to_3_in_the_report():
    from detox.evaluation.report import variant_metrics

    samples = [{"references": {"summary": "x"}, "before": {**_draw(j=0.1), "response": text}}
               for text in ("a b c", "a b d")]
    metrics = variant_metrics(samples, "summary", [], 0.5)
    assert metrics["eval/before/distinct1"] == pytest.approx(4 / 6)
    assert metrics["eval/before/distinct2"] == pytest.approx(3 / 4)
    assert metrics["eval/before/distinct3"] == pytest.approx(2 / 2)


def test_missed_rate_watch_warns_once_with_the_samples(tmp_path, caplog):
    import json

    from detox.evaluation.watch import MissedRateWatch

    key = "val/profanity/missed_rate"
    watch = MissedRateWatch(0.1, str(tmp_path), history=[{"step": 0, key: 0.05}])  # a resumed run's first value
    assert watch({key: 0.12}, 10, [{"id": 1}]) == []  # +0.07: within the setting
    assert watch({key: 0.30}, 20, [{"id": 2}]) == [key]
    assert "rose from 0.050 (step 0) to 0.300 at step 20" in caplog.text and "val-step-20.jsonl" in caplog.text
    assert [json.loads(line) for line in open(tmp_path / "val-step-20.jsonl")] == [{"id": 2}]
    assert watch({key: 0.50}, 30, [{"id": 3}]) == []  # once per judge
    off = MissedRateWatch(None, str(tmp_path / "off"))
    assert off({key: 0.0}, 0, []) == [] and off({key: 1.0}, 1, []) == [] and not (tmp_path / "off").exists()
