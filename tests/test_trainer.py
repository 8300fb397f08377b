import json
import os

import pytest
import torch
from conftest import make_cfg
from safetensors.torch import load_file

from detox.algo import masked
from detox.rl.guards import warn_if_kl_significantly_negative
from detox.rl.rollout import forward_logprobs
from detox.rl.trainer import PPOTrainer
from detox.runtime.checkpoint import CheckpointError
from detox.runtime.tracking import read_metrics
from detox.stages.assemble import assemble, build_trainer
from detox.stages.ppo import run_ppo


def make_trainer(overrides, tmp_path) -> PPOTrainer:
    cfg = make_cfg(overrides, output_dir=str(tmp_path))
    return build_trainer(cfg, assemble(cfg, judges=False))


def test_first_minibatch_ratio_is_one_and_kl_zero(tiny_overrides, tmp_path):
    # One epoch of one mini-batch: the step's logged ratio is the first mini-batch's.
    trainer = make_trainer([*tiny_overrides, "ppo.ppo_epochs=1", "ppo.mini_batch_size=8"], tmp_path)
    r = trainer.rollout(trainer.sampler.next_indices())
    kl = (r.logprobs - r.ref_logprobs) * r.mask
    assert kl.abs().max() < 1e-6
    rows = torch.arange(trainer.ppo_cfg.mini_batch_size)
    with torch.no_grad():
        _, logprobs = forward_logprobs(trainer.policy, r.batch.rows(rows))
    ratio = torch.exp(logprobs - r.logprobs[rows])[r.mask[rows].bool()]
    assert (ratio - 1).abs().max() < 1e-5
    # and through the full step: the logged ratio, nothing clipped, and the step-1 KL
    metrics, _ = trainer.train_step()
    assert abs(metrics["ppo/policy/ratio_mean"] - 1) < 1e-5
    assert metrics["ppo/policy/clipfrac"] == 0 and metrics["ppo/policy/approxkl"] < 1e-9
    assert abs(metrics["objective/kl"]) < 1e-6


def test_rollout_mask_ends_at_the_first_eos_and_respects_caps(tiny_overrides, tmp_path):
    trainer = make_trainer(tiny_overrides, tmp_path)
    r = trainer.rollout(trainer.sampler.next_indices())
    eos = trainer.policy.config.eos_token_id
    lengths = r.mask.sum(1).long()
    assert (lengths <= 15).all()  # caps drawn from [8, 16)
    for row, n in zip(r.batch.response_ids, lengths):
        eos_positions = (row == eos).nonzero().flatten()
        if len(eos_positions) and eos_positions[0] < n:
            assert eos_positions[0] == n - 1  # EOS is the last response token, inside the mask
    assert r.mask.shape == r.batch.response_ids.shape == r.logprobs.shape
    assert (r.mask[:, :-1] >= r.mask[:, 1:]).all()  # a prefix


def test_training_changes_the_policy_but_not_the_reference(tiny_overrides, tmp_path):
    trainer = make_trainer([*tiny_overrides, "ppo.learning_rate=5e-3"], tmp_path)
    policy = trainer.policy
    frozen_before = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    r = trainer.rollout([0, 1, 2, 3])
    ref_before = policy.reference_logits(r.batch)
    for _ in range(3):
        trainer.train_step()
    assert trainer.step == 3
    for n, p in policy.named_parameters():
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    torch.testing.assert_close(policy.reference_logits(r.batch), ref_before, atol=0, rtol=0)
    with torch.no_grad():
        after = policy(r.batch).logits
    assert (after - ref_before).abs().max() > 1e-3


def test_kl_is_added_per_token_and_score_on_last_token(tiny_overrides, tmp_path):
    trainer = make_trainer(tiny_overrides, tmp_path)
    r = trainer.rollout(trainer.sampler.next_indices())
    r.ref_logprobs = r.logprobs - 0.5 * r.mask  # pretend: k1 = 0.5 on every response token
    r.scores = torch.linspace(-1.0, 2.0, len(r.scores))
    beta = trainer.kl_ctl.value
    adv = trainer.update.advantages(r, beta)
    assert adv.kl.sum(1).tolist() == pytest.approx((0.5 * r.mask.sum(1)).tolist(), abs=1e-5)
    last = r.mask.sum(1).long() - 1
    expected = -beta * 0.5 * r.mask
    expected[torch.arange(len(last)), last] += r.scores  # the score on the last response token only
    torch.testing.assert_close(adv.rewards, expected)


def test_resume_continues_exactly_where_it_stopped(tiny_overrides, tmp_path):
    base = [*tiny_overrides, "ppo.save_every=1"]
    straight = tmp_path / "straight"
    run_ppo(make_cfg([*base, "ppo.steps=3"], output_dir=str(straight)))
    resumed = tmp_path / "resumed"
    run_ppo(make_cfg([*base, "ppo.steps=2"], output_dir=str(resumed)))
    assert json.load(open(resumed / "results.json"))["status"] == "done"
    run_ppo(make_cfg([*base, "ppo.steps=3"], output_dir=str(resumed)))
    a, b = read_metrics(str(straight)), read_metrics(str(resumed))
    assert [m["step"] for m in b] == [0, 1, 2, 3]  # step 0: the validation curves, once
    for key in ("env/reward_mean", "objective/kl", "ppo/loss/policy", "response/length_mean"):
        assert a[2][key] == pytest.approx(b[2][key], rel=1e-4, abs=1e-6), key
    wa, wb = load_file(straight / "final" / "trainable.safetensors"), load_file(resumed / "final" / "trainable.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
    assert os.path.isdir(resumed / "checkpoints" / "step-1")
    assert json.load(open(resumed / "final" / "trainer_state.json"))["step"] == 3

    with pytest.raises(CheckpointError, match=r"other settings.*lora.r: 16 in the checkpoint, 8 now.*cannot change"):
        run_ppo(make_cfg([*base, "ppo.steps=4", "lora.r=8"], output_dir=str(resumed)))
    with pytest.raises(CheckpointError, match="resume=false"):
        run_ppo(make_cfg([*base, "ppo.steps=4", "resume=false"], output_dir=str(resumed)))


def test_failed_run_is_marked_failed(tiny_overrides, tmp_path):
    cfg = make_cfg([*tiny_overrides, "lora.target_modules=[nope]"], output_dir=str(tmp_path))
    with pytest.raises(Exception, match="nope"):
        run_ppo(cfg)
    assert not os.path.exists(tmp_path / "final")
    results = json.load(open(tmp_path / "results.json"))
    assert results["status"] == "failed" and "nope" in results["error"]


def test_gae_and_whitening_use_only_response_tokens(tiny_overrides, tmp_path):
    trainer = make_trainer(tiny_overrides, tmp_path)
    r = trainer.rollout(trainer.sampler.next_indices())
    adv = trainer.update.advantages(r, trainer.kl_ctl.value)
    m = r.mask.bool()
    assert (adv.advantages[~m] == 0).all()
    assert abs(float(masked.masked_mean(adv.advantages, r.mask))) < 1e-5


def test_negative_kl_warns_only_when_significant(caplog):
    with caplog.at_level("WARNING", logger="detox.rl.guards"):
        warn_if_kl_significantly_negative(torch.tensor([-0.1, 0.2, -0.3, 0.1, 0.05, -0.02]), 1)  # noise around 0
        assert not caplog.records
        warn_if_kl_significantly_negative(torch.tensor([-2.0, -2.2, -1.9, -2.1, -2.05, -1.95]), 1)
    assert "significantly negative" in caplog.text and "min_length" in caplog.text


def test_value_warmup_trains_only_the_value_head(tiny_overrides, tmp_path):
    trainer = make_trainer([*tiny_overrides, "ppo.value_warmup_steps=1", "ppo.value_learning_rate=1e-2"], tmp_path)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [trainer.ppo_cfg.learning_rate, 1e-2]
    before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if p.requires_grad}
    trainer.train_step()
    changed = {n for n, p in trainer.policy.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert changed and all(n.startswith("value_head") for n in changed)
    trainer.train_step()  # warm-up over: the adapter moves too
    assert any("lora_" in n for n, p in trainer.policy.named_parameters()
               if p.requires_grad and not torch.equal(p, before[n]))


def test_value_warmup_trains_the_head_on_the_rollouts_hidden_states(tiny_overrides, tmp_path):
    """A warm-up step runs no model forward or backward: the head trains on the rollout's hidden
    states and the policy's log-probs are the rollout's. Same statistics and the same head as
    the full forward it replaces (to float rounding: the rollout's forward and the update's cut
    their rows to other widths)."""
    import copy

    trainer = make_trainer([*tiny_overrides, "ppo.value_warmup_steps=1", "ppo.ppo_epochs=2"], tmp_path)
    r = trainer.rollout(trainer.sampler.next_indices())
    assert r.hidden is not None and r.hidden.shape[:2] == r.mask.shape
    adv = trainer.update.advantages(r, trainer.kl_ctl.value)
    start = copy.deepcopy((trainer.policy.value_head.state_dict(), trainer.optimizer.state_dict()))
    calls = []
    hook = trainer.policy.model.get_encoder().register_forward_hook(lambda *a: calls.append(1))
    cached_stats, _ = trainer.update.optimise(r, adv, step=0)
    hook.remove()
    cached_head = copy.deepcopy(trainer.policy.value_head.state_dict())
    assert not calls and cached_stats["ppo/policy/ratio_mean"] == 1.0

    trainer.policy.value_head.load_state_dict(start[0])
    trainer.optimizer.load_state_dict(start[1])
    r.hidden = None  # the full forward, values detached
    full_stats, _ = trainer.update.optimise(r, adv, step=0)
    assert full_stats == pytest.approx(cached_stats, rel=1e-5, abs=1e-7)
    assert all(torch.allclose(cached_head[k], v, rtol=1e-5, atol=1e-7) for k, v in trainer.policy.value_head.state_dict().items())
    assert not torch.equal(cached_head["summary.weight"], start[0]["summary.weight"])  # the head did train


@pytest.mark.slow
def test_compiled_updates_train_and_save_the_same_parameters(tiny_overrides, tmp_path):
    """ppo.compile=true (minutes of compilation on a CPU): steps run, and the checkpoint holds the
    same parameter names as an eager run's (the compiled call is not a registered module)."""
    eager = make_trainer(tiny_overrides, tmp_path / "eager")
    compiled = make_trainer([*tiny_overrides, "ppo.compile=true"], tmp_path / "compiled")
    for _ in range(2):
        metrics, _ = compiled.train_step()
    assert all(v == v for v in metrics.values())  # no NaN
    assert compiled.policy.trainable_state_dict().keys() == eager.policy.trainable_state_dict().keys()


def test_rloo_runs_without_a_value_head_and_resumes_exactly(tiny_overrides, tmp_path):
    """ppo=rloo: k responses per prompt sharing its encoder input, no value head anywhere (not
    trained, not saved, no value metrics), the group metrics, and an exact resume."""
    base = [*tiny_overrides, "ppo=rloo", "eval.enabled=false", "ppo.save_every=1"]
    cfg = make_cfg([*base, "ppo.steps=1"], output_dir=str(tmp_path / "probe"))
    from detox.stages.assemble import build_ppo

    trainer, _ = build_ppo(cfg)
    assert trainer.policy.value_head is None and len(trainer.optimizer.param_groups) == 1
    assert not any("value_head" in n for n, p in trainer.policy.named_parameters() if p.requires_grad)
    encoded_rows = []
    hook = trainer.policy.model.get_encoder().register_forward_hook(
        lambda module, args, kwargs, out: encoded_rows.append(len(kwargs["input_ids"])), with_kwargs=True)
    r = trainer.rollout(trainer.sampler.next_indices())
    hook.remove()
    assert encoded_rows[0] == 2  # generation encodes each of the 2 prompts once, not 4 times
    assert r.values is None and r.groups.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    for g in range(2):  # the 4 samples of a prompt share its encoder input and its id
        rows = r.batch.input_ids[4 * g: 4 * g + 4]
        assert (rows == rows[0]).all() and len(set(map(str, r.ids[4 * g: 4 * g + 4]))) == 1

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_ppo(make_cfg([*base, "ppo.steps=3"], output_dir=str(straight)))
    run_ppo(make_cfg([*base, "ppo.steps=2"], output_dir=str(resumed)))
    run_ppo(make_cfg([*base, "ppo.steps=3"], output_dir=str(resumed)))
    a, b = read_metrics(str(straight)), read_metrics(str(resumed))
    assert not any(k.startswith("ppo/value/") or k == "ppo/loss/value" for k in a[-1])
    assert {"ppo/advantage/mean", "ppo/advantage/std", "env/group_reward_std", "env/zero_signal_fraction"} <= set(a[-1])
    for key in ("env/reward_mean", "objective/kl", "ppo/loss/policy", "env/group_reward_std"):
        assert a[-1][key] == pytest.approx(b[-1][key], rel=1e-4, abs=1e-6), key
    assert not os.path.exists(straight / "final" / "value_head.safetensors")
    wa, wb = load_file(straight / "final" / "trainable.safetensors"), load_file(resumed / "final" / "trainable.safetensors")
    assert wa.keys() == wb.keys() and not any("value_head" in k for k in wa)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_group_estimators_need_several_samples_per_prompt(tiny_overrides):
    from detox.config.validate import validate
    from detox.core.errors import ConfigError

    with pytest.raises(ConfigError, match="ppo.samples_per_prompt >= 2"):
        validate(make_cfg([*tiny_overrides, "ppo.advantage=rloo"]))
    with pytest.raises(ConfigError, match="not divisible by ppo.samples_per_prompt=3"):
        validate(make_cfg([*tiny_overrides, "ppo=rloo", "ppo.samples_per_prompt=3"]))


@pytest.mark.parametrize("preset,extra", [("grpo", []), ("default", ["ppo.advantage=reinforce_pp"])])
def test_grpo_and_reinforce_pp_steps_train_without_a_value_head(preset, extra, tiny_overrides, tmp_path):
    from detox.stages.assemble import build_ppo

    trainer, _ = build_ppo(make_cfg([*tiny_overrides, f"ppo={preset}", *extra, "eval.enabled=false"],
                                    output_dir=str(tmp_path)))
    before = {n: t.clone() for n, t in trainer.policy.trainable_state_dict().items()}
    metrics, _ = trainer.train_step()
    assert trainer.policy.value_head is None and "ppo/value/mean" not in metrics
    assert all(v == v for v in metrics.values()) and metrics["ppo/policy/approxkl"] > 0
    after = trainer.policy.trainable_state_dict()
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the policy moved


def test_an_rloo_update_makes_better_than_average_responses_more_likely(tiny_overrides, tmp_path):
    """The policy-gradient direction, end to end: after one ppo=rloo optimisation, the responses
    with a positive leave-one-out advantage gained log-probability relative to the others."""
    from detox.stages.assemble import build_ppo

    trainer, _ = build_ppo(make_cfg([*tiny_overrides, "ppo=rloo", "eval.enabled=false", "ppo.ppo_epochs=4",
                                     "ppo.learning_rate=1e-3"], output_dir=str(tmp_path)))
    r = trainer.rollout(trainer.sampler.next_indices())
    adv = trainer.update.advantages(r, trainer.kl_ctl.value)
    trainer.update.optimise(r, adv, step=0)
    with torch.no_grad():
        _, logprobs = forward_logprobs(trainer.policy, r.batch)
    gained = ((logprobs - r.logprobs) * r.mask).sum(1)
    per_response = adv.raw[:, 0]
    assert per_response.abs().sum() > 0
    assert float((per_response * gained).sum()) > 0, (per_response, gained)


def test_each_reward_component_is_logged_and_written_with_its_responses(tiny_overrides, tmp_path):
    # the fixture's reward.name_or_path is shorthand for a sole component: name it with two
    overrides = [o.replace("reward.name_or_path", "reward.components.toxicity.name_or_path") for o in tiny_overrides]
    trainer = make_trainer([*overrides, "++reward.components.length._target_=detox.models.reward_rules.LengthPenalty",
                            "++reward.components.length.target=4", "++reward.components.length.weight=0.5"], tmp_path)
    metrics, r = trainer.train_step()
    toxicity, length = r.component_scores["toxicity"], r.component_scores["length"]
    torch.testing.assert_close(length, -0.01 * (r.mask.sum(1) - 4).abs())  # raw: before its weight
    torch.testing.assert_close(r.scores, toxicity + 0.5 * length)
    assert metrics["env/reward/length_mean"] == pytest.approx(float(length.mean()))
    assert metrics["env/reward/toxicity_mean"] == pytest.approx(float(toxicity.mean()))
    assert metrics["env/reward_mean"] == pytest.approx(float(r.scores.mean()))
    rows = r.rows(step=1)
    assert rows[0]["components"] == {"toxicity": pytest.approx(float(toxicity[0])), "length": pytest.approx(float(length[0]))}


def test_update_forwards_see_no_column_past_their_rows_longest_prompt_and_response(tiny_overrides, tmp_path):
    trainer = make_trainer([*tiny_overrides, "ppo.batch_size=8", "ppo.mini_batch_size=4",
                            "ppo.gradient_accumulation_steps=2", "generation.max_new_tokens_min=4",
                            "generation.max_new_tokens_max=16"], tmp_path)
    r = trainer.rollout(trainer.sampler.next_indices())
    adv = trainer.update.advantages(r, trainer.kl_ctl.value)
    prompt_widths, response_widths = r.batch.row_widths()
    assert response_widths.max() == r.mask.shape[1] and len(set(response_widths.tolist())) > 1  # rows differ
    seen = []
    hook = trainer.policy.model.get_decoder().register_forward_hook(
        lambda module, args, kwargs, out: seen.append((kwargs["encoder_attention_mask"].shape[1],
                                                       kwargs["input_ids"].shape[1] if kwargs.get("input_ids") is not None
                                                       else kwargs["inputs_embeds"].shape[1])), with_kwargs=True)
    trainer.update.optimise(r, adv, step=0)
    hook.remove()
    # the micro-batches, in the update's own order (its generator, 2 per mini-batch of 4)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(trainer.update.seed * 100_003))
    expected = [(int(prompt_widths[rows].max()), int(response_widths[rows].max())) for rows in order.split(2)]
    prefix = r.batch.decoder_input_ids.shape[1] - r.mask.shape[1]
    assert [(s, t - prefix) for s, t in seen[:4]] == expected
    assert any(t - prefix < r.mask.shape[1] for _, t in seen)  # some micro-batch was cut


def test_cut_and_uncut_updates_give_the_same_losses_and_gradients(tiny_overrides, tmp_path):
    trainer = make_trainer([*tiny_overrides, "generation.max_new_tokens_min=4", "generation.max_new_tokens_max=16"],
                           tmp_path)
    r = trainer.rollout(trainer.sampler.next_indices())
    adv = trainer.update.advantages(r, trainer.kl_ctl.value)
    prompt_widths, response_widths = r.batch.row_widths()
    # rows narrower than the batch on both sides: the most to cut
    rows = ((prompt_widths < r.batch.input_ids.shape[1]) & (response_widths < r.mask.shape[1])).nonzero().squeeze(1)[:3]
    assert len(rows) >= 2
    widths = {"cut": (int(prompt_widths[rows].max()), int(response_widths[rows].max())),
              "uncut": (r.batch.input_ids.shape[1], r.mask.shape[1])}
    assert all(c < u for c, u in zip(widths["cut"], widths["uncut"]))
    results = {}
    for name, (prompt, response) in widths.items():
        trainer.optimizer.zero_grad(set_to_none=True)
        stats = {k: [] for k in ("policy", "value", "aux", "approxkl", "clipfrac", "vf_clipfrac", "ratio")}
        part = r.batch.rows(rows).cut(prompt, response)
        loss = trainer.update._loss(r, adv, rows, part, warmup=False, stats=stats)
        loss.backward()
        results[name] = (loss.detach(), [p.grad.clone() for p in trainer.update.trainable if p.grad is not None])
    (loss_cut, grads_cut), (loss_full, grads_full) = results["cut"], results["uncut"]
    assert torch.allclose(loss_cut, loss_full, rtol=1e-5, atol=1e-7)
    assert len(grads_cut) == len(grads_full) > 0
    for a, b in zip(grads_cut, grads_full):  # to 1e-5 of each gradient's norm (an element near 0 has no relative scale)
        assert (a - b).norm() <= 1e-5 * b.norm() + 1e-8, float((a - b).norm() / b.norm())


def test_group_by_length_mini_batches_hold_rows_of_similar_widths(tiny_overrides, tmp_path):
    trainer = make_trainer([*tiny_overrides, "ppo.batch_size=8", "ppo.mini_batch_size=2", "ppo.group_by_length=true"],
                           tmp_path)
    widths = torch.tensor([[10, 3], [50, 40], [12, 2], [48, 41], [30, 20], [11, 4], [31, 19], [49, 39]])
    pieces = trainer.update._minibatches(widths, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(pieces).tolist()) == list(range(8))  # every row once per epoch
    groups = sorted(sorted(p.tolist()) for p in pieces)
    totals = widths.sum(1)
    for p in pieces:  # each mini-batch holds neighbours in length order
        rank = torch.argsort(torch.argsort(totals))
        assert abs(int(rank[p[0]]) - int(rank[p[1]])) == 1
    assert groups != sorted(sorted(p.tolist()) for p in torch.arange(8).split(2))
    plain = make_trainer([*tiny_overrides, "ppo.batch_size=8", "ppo.mini_batch_size=2"], tmp_path / "plain")
    order = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    assert [p.tolist() for p in plain.update._minibatches(widths, torch.Generator().manual_seed(0))] == \
        [p.tolist() for p in order.split(2)]  # off: the shuffled order, as before


def test_the_critic_free_reference_encodes_each_prompt_once(tiny_overrides, tmp_path):
    from detox.algo.tokens import logprobs_from_logits

    trainer = make_trainer([*tiny_overrides, "ppo=rloo", "ppo.batch_size=8", "ppo.samples_per_prompt=4",
                            "ppo.mini_batch_size=4"], tmp_path)
    rows = []
    hook = trainer.policy.model.get_encoder().register_forward_hook(
        lambda module, args, kwargs, out: rows.append(len(kwargs["input_ids"])), with_kwargs=True)
    r = trainer.rollout(trainer.sampler.next_indices())
    hook.remove()
    assert rows == [2, 2]  # sampling, then the reference: 2 prompts of 4 samples each, once each
    policy = trainer.policy
    with torch.no_grad(), policy.reference() as ref:  # every row through the reference's own encoder
        full = policy._tempered(policy.family.forward(ref, r.batch, policy.special_tokens).logits)
    assert torch.allclose(r.ref_logprobs * r.mask, logprobs_from_logits(full, r.batch.response_ids) * r.mask,
                          rtol=1e-5, atol=1e-6)
