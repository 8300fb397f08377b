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
