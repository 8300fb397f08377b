"""Hand-computed checks of the algorithm (detox/algo/: masked statistics, KL, advantages, losses, tokens). CPU, fast."""

import math

import pytest
import torch

from detox.algo import advantages, losses, masked, tokens
from detox.algo.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
    make_kl_controller,
    register_kl_estimator,
)

torch.set_default_dtype(torch.float32)


def close(a, b, tol=1e-6):
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return torch.allclose(a, b, atol=tol, rtol=tol)


# Ragged prefix masks used throughout: lengths 3, 2, 1.
MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float32)


# ---------------------------------------------------------------------------------------
# masked statistics
# ---------------------------------------------------------------------------------------


def test_masked_mean_all_and_per_row():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0], [6.0, -7.0, 9.0]])
    assert close(masked.masked_mean(x, MASK), (1 + 2 + 3 + 4 + 5 + 6) / 6)
    assert close(masked.masked_mean(x, MASK.bool()), 3.5)
    assert close(masked.masked_mean(x, MASK, dim=1), [2.0, 4.5, 6.0])
    assert close(masked.masked_mean(x, MASK, dim=0), [11 / 3, 3.5, 3.0])


def test_masked_var_biased_and_unbiased():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0], [6.0, -7.0, 9.0]])
    vals = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]  # mean 3.5, sum sq dev = 17.5
    assert close(masked.masked_var(x, MASK, unbiased=False), 17.5 / 6)
    assert close(masked.masked_var(x, MASK), 17.5 / 5)
    assert close(masked.masked_var(x, MASK), torch.tensor(vals).var(unbiased=True))
    # precomputed mean is used as given
    assert close(masked.masked_var(x, MASK, unbiased=False, mean=0.0), sum(v * v for v in vals) / 6)


def test_masked_var_degenerate_masks():
    x = torch.ones(2, 2)
    with pytest.raises(ValueError):
        masked.masked_var(x, torch.zeros(2, 2))
    one = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError):
        masked.masked_var(x, one)
    assert close(masked.masked_var(x, one, unbiased=False), 0.0)


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0], [6.0, -7.0, 9.0]])
    w = masked.masked_whiten(x, MASK)
    assert close(masked.masked_mean(w, MASK), 0.0, 1e-6)
    assert close(masked.masked_var(w, MASK), 1.0, 1e-5)
    # explicit numbers: (v - 3.5) / sqrt(3.5)
    s = math.sqrt(3.5)
    expected = torch.tensor(
        [[-2.5 / s, -1.5 / s, -0.5 / s], [0.5 / s, 1.5 / s, 0.0], [2.5 / s, 0.0, 0.0]]
    )
    assert close(w, expected, 1e-6)
    # shift_mean=False adds the mean back: masked mean stays 3.5, spread is unit
    w2 = masked.masked_whiten(x, MASK, shift_mean=False)
    assert close(masked.masked_mean(w2, MASK), 3.5, 1e-6)
    assert close(masked.masked_var(w2, MASK), 1.0, 1e-5)
    assert close(w2, (expected + 3.5) * MASK, 1e-6)
    # precomputed statistics are used as given
    w3 = masked.masked_whiten(x, MASK, mean=1.0, var=4.0, eps=0.0)
    assert close(w3, (x - 1.0) / 2.0 * MASK)


# ---------------------------------------------------------------------------------------
# KL estimators and controllers
# ---------------------------------------------------------------------------------------


def test_kl_estimators_known_numbers():
    logp = torch.tensor([[-1.0, -2.0, -0.3]])
    ref = torch.tensor([[-1.5, -1.0, -0.3]])
    # d = logp - ref = [0.5, -1.0, 0]; r = ref - logp = [-0.5, 1.0, 0]
    assert close(kl_penalty(logp, ref, "k1"), [[0.5, -1.0, 0.0]])
    assert close(kl_penalty(logp, ref, "abs"), [[0.5, 1.0, 0.0]])
    assert close(kl_penalty(logp, ref, "mse"), [[0.125, 0.5, 0.0]])
    k3 = [math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1.0, 0.0]  # 0.10653066, 0.71828183, 0
    assert close(kl_penalty(logp, ref, "k3"), [k3])
    assert close(kl_penalty(logp, ref), [[0.5, -1.0, 0.0]])  # k1 is the default


def test_kl_unknown_estimator_lists_valid_names():
    with pytest.raises(ValueError, match="k1.*k3.*abs.*mse"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k2")


def test_kl_estimators_exact_expectation_and_gradient():
    """Exact expectations over a small categorical: E_pi[k1] = E_pi[k3] = KL(pi||ref);
    the score-function gradient with k1 as detached reward is grad KL(pi||ref), with k3 it
    is grad KL(pi||ref) - grad KL(ref||pi) (as documented)."""
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64, requires_grad=True)
    ref = torch.randn(5, dtype=torch.float64).log_softmax(-1)
    logp = theta.log_softmax(-1)
    p = logp.exp()
    kl_rev = (p * (logp - ref)).sum()
    kl_fwd = (ref.exp() * (ref - logp)).sum()
    g_rev = torch.autograd.grad(kl_rev, theta, retain_graph=True)[0]
    g_fwd = torch.autograd.grad(kl_fwd, theta, retain_graph=True)[0]
    for name, grad_expected in [("k1", g_rev), ("k3", g_rev - g_fwd)]:
        k = kl_penalty(logp.detach(), ref, name)
        assert close((p.detach() * k).sum(), kl_rev.detach(), 1e-10)
        surrogate = (p.detach() * k * logp).sum()  # E_pi[k * grad log pi]
        g = torch.autograd.grad(surrogate, theta, retain_graph=True)[0]
        assert close(g, grad_expected, 1e-10)
    assert (kl_penalty(logp.detach(), ref, "k3") >= 0).all()


def test_fixed_controller_never_changes():
    c = FixedKLController(0.2)
    for kl in [0.0, 6.0, 100.0, -3.0]:
        c.update(kl, 16)
    assert c.value == 0.2
    assert isinstance(make_kl_controller("fixed", 0.2, 6.0, 10000), FixedKLController)


def test_adaptive_controller_sequence_with_clipping():
    c = AdaptiveKLController(0.2, target=6.0, horizon=100)
    expected = 0.2
    # (kl, n, clipped error): 9/6-1=0.5 -> +0.2; 6.6/6-1=0.1; 0/6-1=-1 -> -0.2; 5.4/6-1=-0.1
    for kl, n, err in [(9.0, 10, 0.2), (6.6, 10, 0.1), (0.0, 10, -0.2), (5.4, 20, -0.1), (6.0, 10, 0.0)]:
        c.update(kl, n)
        expected *= 1 + err * n / 100
        assert c.value == pytest.approx(expected, rel=1e-12)
    # the same sequence written out: 0.204, 0.20604, 0.2019192, 0.197880816, unchanged
    assert c.value == pytest.approx(0.197880816, rel=1e-9)

    state = c.state_dict()
    c2 = make_kl_controller("adaptive", 0.5, target=6.0, horizon=100)
    c2.load_state_dict(state)
    assert c2.value == c.value


def test_make_kl_controller_errors():
    with pytest.raises(ValueError):
        make_kl_controller("pid", 0.1, 6.0, 100)
    with pytest.raises(ValueError):
        make_kl_controller("adaptive", 0.1)


# ---------------------------------------------------------------------------------------
# rewards and GAE
# ---------------------------------------------------------------------------------------


def test_kl_penalized_rewards_score_on_last_token():
    scores = torch.tensor([1.0, -2.0, 3.0])
    kl = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    r = advantages.kl_penalized_rewards(scores, kl, MASK, kl_coef=0.1)
    expected = torch.tensor(
        [[-0.1, -0.2, -0.3 + 1.0], [-0.4, -0.5 - 2.0, 0.0], [-0.7 + 3.0, 0.0, 0.0]]
    )
    assert close(r, expected)


def test_kl_penalized_rewards_empty_row_raises():
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"\[1\]"):
        advantages.kl_penalized_rewards(torch.zeros(2), torch.zeros(2, 2), mask, 0.1)


def test_gae_hand_computed_ragged():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.2, -0.5, 100.0], [2.0, 50.0, 50.0]])
    values = torch.tensor([[0.5, 0.4, 0.3], [0.1, 0.6, 7.0], [0.5, 9.0, 9.0]])
    adv, ret = advantages.compute_gae(rewards, values, MASK, gamma, lam)
    # row 0: d2 = 1 - 0.3 = 0.7; d1 = 0.9*0.3 - 0.4 = -0.13; d0 = 0.9*0.4 - 0.5 = -0.14
    #        A2 = 0.7; A1 = -0.13 + 0.72*0.7 = 0.374; A0 = -0.14 + 0.72*0.374 = 0.12928
    # row 1: d1 = -0.5 - 0.6 = -1.1 (no bootstrap past the end); d0 = 0.2 + 0.54 - 0.1 = 0.64
    #        A1 = -1.1; A0 = 0.64 - 0.792 = -0.152
    # row 2: A0 = 2 - 0.5 = 1.5
    exp_adv = torch.tensor([[0.12928, 0.374, 0.7], [-0.152, -1.1, 0.0], [1.5, 0.0, 0.0]])
    exp_ret = torch.tensor([[0.62928, 0.774, 1.0], [-0.052, -0.5, 0.0], [2.0, 0.0, 0.0]])
    assert close(adv, exp_adv)
    assert close(ret, exp_ret)


def _reference_gae(rewards, values, lengths, gamma, lam):
    """Independent scalar loop, one row at a time, over the row's own length only."""
    B, T = rewards.shape
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = lengths[b]
        r = rewards[b].tolist()
        v = values[b].tolist()
        running = 0.0
        for t in range(n - 1, -1, -1):
            v_next = v[t + 1] if t + 1 < n else 0.0
            running = r[t] + gamma * v_next - v[t] + gamma * lam * running
            adv[b][t] = running
    adv = torch.tensor(adv, dtype=torch.float64)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).double()
    return adv, (adv + values.double()) * mask


def test_gae_matches_reference_loop_random():
    torch.manual_seed(1)
    lengths = [7, 1, 4, 6, 2]
    T = 7
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()
    rewards = torch.randn(5, T, dtype=torch.float64)
    values = torch.randn(5, T, dtype=torch.float64)
    for gamma, lam in [(0.9, 0.8), (1.0, 0.95), (1.0, 1.0), (0.5, 0.0)]:
        adv, ret = advantages.compute_gae(rewards, values, mask, gamma, lam)
        ref_adv, ref_ret = _reference_gae(rewards, values, lengths, gamma, lam)
        assert close(adv, ref_adv, 1e-12)
        assert close(ret, ref_ret, 1e-12)
    # gamma = lam = 1: advantage = reward-to-go - value
    adv, ret = advantages.compute_gae(rewards, values, mask, 1.0, 1.0)
    rtg = torch.flip(torch.cumsum(torch.flip(rewards * mask, [1]), 1), [1]) * mask
    assert close(ret, rtg, 1e-12)


# ---------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------


def test_policy_loss_clip_cases():
    c = 0.2
    # Each row holds one token; ratio inside / far above / far below the range.
    ratios = torch.tensor([1.1, 1.5, 0.5, 0.9], dtype=torch.float64)
    for A in [1.0, -1.0]:
        logp = torch.log(ratios).unsqueeze(1)
        old = torch.zeros_like(logp)
        adv = torch.full_like(logp, A)
        mask = torch.ones_like(logp)
        if A > 0:
            # max(-r, -clip(r)): 1.1 -> -1.1 (inside), 1.5 -> -1.2 (clipped),
            # 0.5 -> -0.5 (not clipped: pessimistic bound), 0.9 -> -0.9
            per_tok, clipped = [-1.1, -1.2, -0.5, -0.9], [0, 1, 0, 0]
        else:
            # max(r, clip(r)): 1.1 -> 1.1, 1.5 -> 1.5 (not clipped), 0.5 -> 0.8 (clipped), 0.9
            per_tok, clipped = [1.1, 1.5, 0.8, 0.9], [0, 0, 1, 0]
        for i in range(4):
            loss, stats = losses.policy_loss(logp[i : i + 1], old[i : i + 1], adv[i : i + 1], mask[i : i + 1], c)
            assert close(loss, per_tok[i], 1e-12), (A, i)
            assert close(stats["clipfrac"], clipped[i]), (A, i)
        loss, stats = losses.policy_loss(logp, old, adv, mask, c)
        assert close(loss, sum(per_tok) / 4, 1e-12)
        assert close(stats["clipfrac"], sum(clipped) / 4)
        assert close(stats["approxkl"], 0.5 * (torch.log(ratios) ** 2).mean(), 1e-12)
        assert stats["clipfrac"].dim() == 0 and not stats["clipfrac"].requires_grad


def test_policy_loss_exactly_at_clip_boundary():
    """At ratio == 1 +- c the clipped and unclipped terms coincide: not counted as clipped."""
    for lr in [0.2, -0.3]:
        logp = torch.tensor([[lr]], dtype=torch.float64)
        ratio = math.exp(lr)
        # r - 1 and 1 - r are exact in fp64 for r in [0.5, 2] (Sterbenz), so 1 +- c == r.
        c = ratio - 1.0 if ratio > 1 else 1.0 - ratio
        for A in [1.0, -1.0]:
            loss, stats = losses.policy_loss(
                logp, torch.zeros_like(logp), torch.full_like(logp, A), torch.ones_like(logp), c
            )
            assert close(loss, -A * ratio, 1e-12)
            assert stats["clipfrac"].item() == 0.0


def test_policy_loss_ratio_one_gradient_is_minus_advantage_mean():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.7, -9.0]], requires_grad=True)
    adv = torch.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    loss, stats = losses.policy_loss(logp, logp.detach(), adv, mask, 0.2)
    assert close(loss, -(1 - 2 + 3 + 4 + 5) / 5)
    assert stats["clipfrac"].item() == 0 and stats["approxkl"].item() == 0
    loss.backward()
    assert close(logp.grad, -adv * mask / 5)


def test_value_loss_clip_cases():
    c = 0.2
    old = torch.zeros(5, 1, dtype=torch.float64)
    values = torch.tensor([[0.1], [0.5], [0.5], [-0.5], [0.2]], dtype=torch.float64)
    returns = torch.tensor([[1.0], [1.0], [0.3], [0.0], [1.0]], dtype=torch.float64)
    # vclip = clamp(v, -0.2, 0.2)
    # 0: inside (0.1): (0.9)^2 = 0.81 both                                   -> 0.81, no clip
    # 1: v=0.5 beyond, R=1: unclipped 0.25, clipped (0.2-1)^2 = 0.64        -> 0.64, clipped
    # 2: v=0.5 beyond, R=0.3: unclipped 0.04, clipped (0.2-0.3)^2 = 0.01    -> 0.04, not
    # 3: v=-0.5 beyond, R=0: unclipped 0.25, clipped 0.04                   -> 0.25, not
    # 4: v=0.2 at boundary, R=1: both 0.64                                  -> 0.64, not
    per_tok = [0.81, 0.64, 0.04, 0.25, 0.64]
    clipped = [0, 1, 0, 0, 0]
    mask = torch.ones_like(values)
    for i in range(5):
        s = slice(i, i + 1)
        loss, stats = losses.value_loss(values[s], old[s], returns[s], mask[s], c)
        assert close(loss, 0.5 * per_tok[i], 1e-12), i
        assert stats["clipfrac"].item() == clipped[i], i
    loss, stats = losses.value_loss(values, old, returns, mask, c)
    assert close(loss, 0.5 * sum(per_tok) / 5, 1e-12)
    assert close(stats["clipfrac"], 0.2)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert close(losses.explained_variance(returns, returns, mask), 1.0)
    assert close(losses.explained_variance(returns + 7.0, returns, mask), 1.0)  # residual is centred
    const = torch.full_like(returns, 3.0)
    assert close(losses.explained_variance(const, returns, mask), 0.0, 1e-6)
    # values = 0.5 * returns: residual variance is 1/4 of Var(returns)
    assert close(losses.explained_variance(0.5 * returns, returns, mask), 0.75, 1e-6)
    assert math.isnan(losses.explained_variance(returns, torch.ones_like(returns), mask).item())


# ---------------------------------------------------------------------------------------
# masks, log-probs, entropy
# ---------------------------------------------------------------------------------------


def test_response_mask_cases():
    eos, pad = 1, 0
    ids = torch.tensor(
        [
            [5, 6, eos, pad, pad],  # EOS mid-row
            [eos, pad, pad, pad, pad],  # EOS at position 0
            [5, 6, 7, 8, 9],  # no EOS: truncated, all kept
            [pad, 5, eos, eos, 7],  # pad sampled before EOS stays; only first EOS counts
            [5, pad, pad, 6, eos],  # pads mid-response, EOS last
        ]
    )
    expected = torch.tensor(
        [
            [1, 1, 1, 0, 0],
            [1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1],
            [1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.float32,
    )
    m = tokens.response_mask(ids, eos)
    assert m.dtype == torch.float32
    assert torch.equal(m, expected)

    caps = torch.tensor([2, 5, 3, 1, 0])
    expected_caps = torch.tensor(
        [
            [1, 1, 0, 0, 0],
            [1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0],
            [1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(tokens.response_mask(ids, eos, max_lengths=caps), expected_caps)
    # several EOS ids
    assert torch.equal(tokens.response_mask(torch.tensor([[5, 9, 1, 1]]), [1, 9]), torch.tensor([[1.0, 1.0, 0.0, 0.0]]))


def test_logprobs_from_logits_equals_log_softmax_gather():
    torch.manual_seed(2)
    logits = torch.randn(3, 4, 11) * 3
    labels = torch.randint(0, 11, (3, 4))
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    out = tokens.logprobs_from_logits(logits, labels)
    assert out.shape == (3, 4) and out.dtype == torch.float32
    assert close(out, expected, 1e-5)
    # bf16 logits are upcast before the softmax
    lb = logits.to(torch.bfloat16)
    out_b = tokens.logprobs_from_logits(lb, labels)
    assert out_b.dtype == torch.float32
    expected_b = torch.log_softmax(lb.float(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert close(out_b, expected_b, 1e-5)
    # the gradient is the analytic one: onehot(label) - softmax
    lg = logits.clone().requires_grad_(True)
    weights = torch.randn(3, 4)
    (tokens.logprobs_from_logits(lg, labels) * weights).sum().backward()
    onehot = torch.nn.functional.one_hot(labels, 11).float()
    assert close(lg.grad, weights.unsqueeze(-1) * (onehot - logits.softmax(-1)), 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logprobs_from_logits_is_bit_identical_to_trl_on_upcast_logits(dtype):
    """The row-by-row function changes no number: forward and gradient equal, bit for bit, TRL's
    `selective_log_softmax` on an fp32 copy of the logits (the computation it replaced)."""
    from trl.trainer.utils import selective_log_softmax

    torch.manual_seed(4)
    logits = (torch.randn(3, 5, 257) * 4).to(dtype)
    labels = torch.randint(0, 257, (3, 5))
    weights = torch.randn(3, 5)
    ours, theirs = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    out = tokens.logprobs_from_logits(ours, labels)
    expected = selective_log_softmax(theirs.float(), labels)
    assert torch.equal(out, expected)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    assert ours.grad.dtype == dtype and torch.equal(ours.grad, theirs.grad)


def test_logprobs_from_logits_keeps_no_fp32_copy_of_half_logits():
    """What autograd holds for the backward: the bf16 logits and a [B, T] normaliser, not a
    [B, T, V] fp32 copy."""
    saved = []
    logits = torch.randn(2, 3, 64).to(torch.bfloat16).requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        tokens.logprobs_from_logits(logits, torch.zeros(2, 3, dtype=torch.long))
    assert max(t.numel() * t.element_size() for t in saved) == logits.numel() * 2


def test_token_entropy():
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 7)
    p = logits.softmax(-1)
    expected = -(p * p.log()).sum(-1)
    out = tokens.token_entropy(logits.to(torch.bfloat16))
    assert out.shape == (2, 3) and out.dtype == torch.float32
    assert close(tokens.token_entropy(logits), expected, 1e-5)
    assert close(tokens.token_entropy(torch.zeros(1, 2, 7)), [[math.log(7)] * 2], 1e-6)


# ---------------------------------------------------------------------------------------
# padding must not influence anything
# ---------------------------------------------------------------------------------------


def test_padding_values_change_nothing():
    torch.manual_seed(4)
    B, T = 4, 6
    lengths = torch.tensor([6, 3, 1, 4])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    pad = mask == 0

    def rand():
        return torch.randn(B, T)

    base = dict(
        logp=rand() - 2,
        old=rand() - 2,
        ref=rand() - 2,
        adv=rand(),
        values=rand(),
        old_values=rand(),
        returns=rand(),
        rewards=rand(),
    )
    scores = torch.randn(B)

    def run(t, requires_grad=False):
        logp = t["logp"].clone().requires_grad_(requires_grad)
        values = t["values"].clone().requires_grad_(requires_grad)
        kl = kl_penalty(t["logp"], t["ref"], "k3")
        rewards = advantages.kl_penalized_rewards(scores, kl, mask, 0.1)
        adv, ret = advantages.compute_gae(t["rewards"], t["values"], mask, 0.9, 0.8)
        pl, pstats = losses.policy_loss(logp, t["old"], t["adv"], mask, 0.2)
        vl, vstats = losses.value_loss(values, t["old_values"], t["returns"], mask, 0.2)
        out = {
            "mean": masked.masked_mean(t["adv"], mask),
            "rowmean": masked.masked_mean(t["adv"], mask, dim=1),
            "var": masked.masked_var(t["adv"], mask),
            "whiten": masked.masked_whiten(t["adv"], mask),
            "whiten_noshift": masked.masked_whiten(t["adv"], mask, shift_mean=False),
            "rewards": rewards,
            "adv": adv,
            "ret": ret,
            "pl": pl,
            "vl": vl,
            "ev": losses.explained_variance(t["values"], t["returns"], mask),
            **{f"p_{k}": v for k, v in pstats.items()},
            **{f"v_{k}": v for k, v in vstats.items()},
        }
        if requires_grad:
            (pl + vl).backward()
            out["grad_logp"] = logp.grad
            out["grad_values"] = values.grad
        return out

    ref_out = run(base, requires_grad=True)
    for junk in [1e6, -1e6, float("nan"), float("inf"), float("-inf")]:
        perturbed = {k: torch.where(pad, torch.full_like(v, junk), v) for k, v in base.items()}
        out = run(perturbed, requires_grad=True)
        for k in ref_out:
            assert torch.equal(out[k], ref_out[k]), (junk, k)
    # padded outputs are zero, and gradients at padding are exactly zero
    for k in ["whiten", "whiten_noshift", "rewards", "adv", "ret", "grad_logp", "grad_values"]:
        assert (ref_out[k][pad] == 0).all(), k


# ---------------------------------------------------------------------------------------
# Estimator registries: the config accepts exactly what ppo.py registers
# ---------------------------------------------------------------------------------------


def test_config_choices_are_the_registries():
    from omegaconf import OmegaConf

    from detox.config.schema import AdvantageName, Config, KLEstimatorName

    assert [e.value for e in KLEstimatorName] == list(KL_ESTIMATORS) == ["k1", "k3", "abs", "mse"]
    assert [e.value for e in AdvantageName] == list(advantages.ADVANTAGE_ESTIMATORS) == [
        "gae", "rloo", "grpo", "reinforce_pp"]
    cfg = OmegaConf.structured(Config)
    with pytest.raises(Exception, match=r"expected one of \[gae, rloo, grpo, reinforce_pp\]"):
        cfg.ppo.advantage = "reinforce"


def test_registering_an_estimator_twice_is_refused():
    with pytest.raises(ValueError, match="registered twice"):
        register_kl_estimator("k1")(lambda d: d)
    with pytest.raises(ValueError, match="registered twice"):
        advantages.register_advantage("gae", uses_values=True)(lambda *a, **k: None)


def test_gae_through_the_registry_is_compute_gae():
    torch.manual_seed(0)
    rewards, values = torch.randn(3, 5), torch.randn(3, 5)
    mask = tokens.response_mask(torch.tensor([[5, 1, 0, 0, 0], [5, 5, 5, 5, 5], [1, 0, 0, 0, 0]]), 1)
    expected = advantages.compute_gae(rewards, values, mask, 0.99, 0.9)
    got = advantages.compute_advantages("gae", rewards, mask, values=values, gamma=0.99, lam=0.9)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert advantages.ADVANTAGE_ESTIMATORS["gae"].uses_values
    with pytest.raises(ValueError, match="unknown advantage estimator 'nope'; valid: gae"):
        advantages.compute_advantages("nope", rewards, mask)


# ---------------------------------------------------------------------------------------
# critic-free estimators, by hand: two prompts (groups 0 and 1), k = 2 and k = 3
# ---------------------------------------------------------------------------------------

CF_REWARDS = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
CF_MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]]).float()
CF_GROUPS = torch.tensor([0, 0, 1, 1])  # sequence rewards: group 0 (1, 2), group 1 (3, 5)


def on_tokens(per_row):
    return torch.tensor(per_row).unsqueeze(1) * CF_MASK


def test_rloo_with_two_samples_is_the_pairwise_difference():
    adv, returns = advantages.compute_advantages("rloo", CF_REWARDS, CF_MASK, groups=CF_GROUPS, values=None)
    assert torch.equal(adv, on_tokens([1 - 2, 2 - 1, 3 - 5, 5 - 3])) and torch.equal(returns, adv)
    # k = 3: minus the mean of the other two; a group with equal rewards gets zero advantage
    seq_rewards = torch.tensor([[1.0], [4.0], [7.0], [2.0], [2.0], [2.0]])
    adv3, _ = advantages.compute_advantages("rloo", seq_rewards, torch.ones(6, 1), groups=torch.tensor([0, 0, 0, 1, 1, 1]))
    assert torch.allclose(adv3.flatten(), torch.tensor([1 - 5.5, 4 - 4.0, 7 - 2.5, 0, 0, 0]))


def test_grpo_scales_by_the_group_std_and_dr_grpo_does_not():
    adv, _ = advantages.compute_advantages("grpo", CF_REWARDS, CF_MASK, groups=CF_GROUPS, eps=0.0)
    # group 0: mean 1.5, unbiased std 0.7071; group 1: mean 4, std 1.4142
    expected = [-0.5 / 0.5 ** 0.5, 0.5 / 0.5 ** 0.5, -1 / 2 ** 0.5, 1 / 2 ** 0.5]
    assert torch.allclose(adv, on_tokens(expected), atol=1e-6)
    dr, _ = advantages.compute_advantages("grpo", CF_REWARDS, CF_MASK, groups=CF_GROUPS, scale_std=False)
    assert torch.equal(dr, on_tokens([-0.5, 0.5, -1.0, 1.0]))
    equal, _ = advantages.compute_advantages("grpo", torch.ones(2, 1), torch.ones(2, 1), groups=torch.tensor([0, 0]))
    assert torch.equal(equal, torch.zeros(2, 1))  # no signal, no NaN


def test_reinforce_pp_is_the_reward_to_go():
    adv, _ = advantages.compute_advantages("reinforce_pp", CF_REWARDS, CF_MASK)
    assert torch.equal(adv, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0], [3.0, 0.0, 0.0], [5.0, 5.0, 5.0]]))


def test_group_estimators_refuse_single_sample_groups():
    with pytest.raises(ValueError, match="samples_per_prompt >= 2"):
        advantages.compute_advantages("rloo", CF_REWARDS, CF_MASK, groups=torch.arange(4))
