import pytest
import torch
from conftest import make_cfg
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import save_tiny_t5, teacher_forced
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from detox.algo import tokens
from detox.core.errors import ConfigError
from detox.core.hub import LoadError
from detox.models.assembly import build_policy
from detox.models.generation import generation_config


@pytest.fixture(scope="module")
def start_adapter(tiny, tmp_path_factory):
    """A LoRA adapter (q, v) with non-zero B, so it really changes the model's outputs."""
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(tiny["policy"]),
                           LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, lora_alpha=8, target_modules=["q", "v"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    path = str(tmp_path_factory.mktemp("start"))
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def batch(tiny):
    tok = AutoTokenizer.from_pretrained(tiny["policy"])
    enc = tok(["#Person1#: you are a stupid idiot.", "#Person2#: thanks, see you at work tomorrow."],
              padding=True, return_tensors="pt")
    dec = tok(["calls a stupid idiot", "asks to meet"], padding=True, return_tensors="pt")["input_ids"]
    dec = torch.cat([torch.zeros(2, 1, dtype=torch.long), dec], 1)  # decoder start token first
    return teacher_forced(enc["input_ids"], enc["attention_mask"], dec)


def logits_of(model, batch):
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                     decoder_input_ids=batch.decoder_input_ids).logits


@pytest.fixture(scope="module")
def expected(tiny, start_adapter, batch):
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny["policy"]).eval()
    base_logits = logits_of(base, batch)
    started = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny["policy"]), start_adapter).eval()
    return {"base": base_logits, "initial": logits_of(started, batch)}


def policy_for(tiny, *overrides):
    cfg = make_cfg([f"policy.name_or_path={tiny['policy']}", "policy.dtype=float32", "lora.r=4",
                    "lora.dropout=0.1", *overrides])
    return build_policy(cfg.policy, cfg.lora)


@pytest.mark.parametrize("train,reference", [("new", "initial"), ("new", "base"),
                                             ("continue", "initial"), ("continue", "base")])
def test_adapter_schemes_policy_starts_at_start_and_reference_is_right(tiny, start_adapter, batch, expected,
                                                                       train, reference):
    policy = policy_for(tiny, f"policy.adapter={start_adapter}", f"lora.train={train}",
                        f"policy.reference={reference}")
    out = policy(batch)
    torch.testing.assert_close(out.logits, expected["initial"], atol=1e-5, rtol=1e-5)  # policy at step 0
    assert out.values.shape == batch.response_ids.shape
    torch.testing.assert_close(policy.reference_logits(batch), expected[reference], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(policy(batch).logits, expected["initial"], atol=1e-5, rtol=1e-5)  # restored
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert any("value_head" in n for n in trainable)
    lora = {n for n in trainable if "lora_" in n}
    assert lora, "no adapter is trainable"
    if train == "new":
        assert all(".default." in n for n in lora), sorted(lora)
        assert all(p.shape[0] == 4 or p.shape[1] == 4 for n, p in policy.named_parameters() if n in lora)
    # the reference context must not leave a frozen adapter trainable (peft's set_adapter does)
    assert {n for n, p in policy.named_parameters() if p.requires_grad} == trainable
    assert not policy.training and all(not m.training for m in policy.modules())


def test_no_adapter_reference_is_the_base_model(tiny, batch, expected):
    policy = policy_for(tiny)
    torch.testing.assert_close(policy.reference_logits(batch), expected["base"])
    torch.testing.assert_close(policy(batch).logits, expected["base"])


def test_full_finetuning_keeps_a_frozen_copy(tiny, batch, expected):
    policy = policy_for(tiny, "lora.enabled=false")
    assert all(p.requires_grad for p in policy.model.parameters())
    assert not any(p.requires_grad for p in policy.reference_model.parameters())
    torch.testing.assert_close(policy.reference_logits(batch), expected["base"])


def test_missing_lora_target_is_a_clear_error(tiny):
    with pytest.raises(ConfigError, match=r"lora.target_modules \['query'\].*linear layers are named"):
        policy_for(tiny, "lora.target_modules=[q,query]")


def test_adapter_that_does_not_fit_or_does_not_exist(tiny, tmp_path):
    other = save_tiny_t5(str(tmp_path / "other_base"))
    from transformers import T5Config, T5ForConditionalGeneration

    bigger = T5ForConditionalGeneration(T5Config(vocab_size=130, d_model=48, d_ff=64, num_layers=2, num_heads=2, d_kv=16))
    get_peft_model(bigger, LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, target_modules=["q", "v"])).save_pretrained(
        str(tmp_path / "wrong"))
    assert other
    with pytest.raises(LoadError, match="does not fit"):
        policy_for(tiny, f"policy.adapter={tmp_path / 'wrong'}")
    with pytest.raises(LoadError, match="policy.adapter"):
        policy_for(tiny, f"policy.adapter={tmp_path / 'missing'}")


def test_unreachable_policy_says_which_name_failed():
    cfg = make_cfg(["policy.name_or_path=nobody/no-such-t5"])
    with pytest.raises(LoadError, match=r"(?s)policy.name_or_path='nobody/no-such-t5'.*experiment=quickstart"):
        build_policy(cfg.policy, cfg.lora)


def test_forward_logprobs_match_generate_scores(tiny, batch):
    """Position t's logits score token t+1 of the decoder sequence, as generate does."""
    policy = policy_for(tiny)
    gen_cfg = make_cfg().generation
    torch.manual_seed(0)
    gen = generation_config(gen_cfg, policy.special_tokens)
    out = policy.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_config=gen,
                                max_new_tokens=12, output_logits=True, return_dict_in_generate=True)
    generated = policy.family.to_batch(batch.input_ids, batch.attention_mask, out.sequences, policy.special_tokens)
    raw = torch.stack(out.logits, 1)  # [B, L, V] logits before any processor
    gen_logprobs = tokens.logprobs_from_logits(raw, generated.response_ids)
    fwd_logprobs = tokens.logprobs_from_logits(policy(generated).logits, generated.response_ids)
    mask = generated.mask.bool()
    torch.testing.assert_close(fwd_logprobs[mask], gen_logprobs[mask], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------ real-size settings


def test_gradient_checkpointing_recomputes_in_backward_with_dropout_off(tiny, batch):
    """The tiny T5 has dropout 0.1 and LoRA dropout 0.5: outputs must still equal eval mode's."""
    from transformers.models.t5.modeling_t5 import T5Attention

    checkpointed = policy_for(tiny, "policy.gradient_checkpointing=true", "lora.dropout=0.5")
    plain = policy_for(tiny, "lora.dropout=0.5")
    plain.load_state_dict(checkpointed.state_dict())
    calls = []
    for module in checkpointed.modules():
        if isinstance(module, T5Attention):  # inside the checkpointed blocks (their own hooks stay outside)
            module.register_forward_hook(lambda *args: calls.append(torch.is_grad_enabled()))
    out = checkpointed(batch)  # with grad: train mode, checkpointed
    logits, values = out.logits, out.values
    forwards = len(calls)
    (logits.float().logsumexp(-1).mean() + values.mean()).backward()
    assert forwards == 6 and len(calls) == 2 * forwards  # all 6 attentions (2 encoder, 2+2 decoder) ran again
    assert not checkpointed.training and checkpointed.model.training  # train mode, for the checkpointing
    with torch.no_grad():
        torch.testing.assert_close(plain(batch).logits, logits.detach(), atol=1e-5, rtol=1e-5)  # dropout off
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in checkpointed.named_parameters() if "lora" in n)


def test_bf16_full_finetuning_keeps_fp32_weights_and_really_updates(tiny, batch):
    policy = policy_for(tiny, "lora.enabled=false", "policy.dtype=bfloat16")
    params = [p for p in policy.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in params) and policy.compute_dtype == torch.bfloat16
    logits = policy(batch).logits
    assert logits.dtype == torch.bfloat16  # the compute is bf16 (autocast)
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    logits.float().logsumexp(-1).mean().backward()
    optimizer.step()
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(params, before)) / sum(b.numel() for b in before)
    assert changed > 0.99, changed


def test_tempered_logprobs_match_generates_processed_scores(tiny, batch):
    """generation.temperature != 1: the policy's log-probs are those of the distribution sampled from."""
    policy = policy_for(tiny)
    policy.temperature = 0.7
    gen_cfg = make_cfg(["generation.temperature=0.7", "generation.min_length=0"]).generation
    torch.manual_seed(0)
    gen = generation_config(gen_cfg, policy.special_tokens)
    out = policy.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, generation_config=gen,
                                max_new_tokens=12, output_scores=True, return_dict_in_generate=True)
    generated = policy.family.to_batch(batch.input_ids, batch.attention_mask, out.sequences, policy.special_tokens)
    processed = torch.stack(out.scores, 1)  # after the temperature warper
    gen_logprobs = tokens.logprobs_from_logits(processed, generated.response_ids)
    fwd_logprobs = tokens.logprobs_from_logits(policy(generated).logits, generated.response_ids)
    mask = generated.mask.bool()
    torch.testing.assert_close(fwd_logprobs[mask], gen_logprobs[mask], atol=1e-4, rtol=1e-4)
    ref = tokens.logprobs_from_logits(policy.reference_logits(generated), generated.response_ids)
    torch.testing.assert_close(ref[mask], fwd_logprobs[mask].detach(), atol=1e-5, rtol=1e-5)  # KL 0 at start


def test_forward_keeps_only_the_last_hidden_state_and_reuses_encoder_states(tiny, batch):
    """What the performance work relies on, bit for bit: the decoder hook gives the same last
    hidden state as `output_hidden_states=True` (which would keep every layer's), and logits
    from `encode`'s states equal those of a forward that runs the encoder itself."""
    policy = policy_for(tiny)
    policy.eval()
    with torch.no_grad():
        out = policy.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           decoder_input_ids=batch.decoder_input_ids, output_hidden_states=True, use_cache=False)
        full = policy(batch, keep_hidden=True)
        states = policy.encode(batch.input_ids, batch.attention_mask).last_hidden_state
        reused = policy(batch, encoder_states=states)
        bare = policy(batch, with_values=False)
    assert torch.equal(full.hidden, out.decoder_hidden_states[-1]) and torch.equal(full.logits, out.logits)
    assert torch.equal(reused.logits, full.logits) and reused.hidden is None
    assert bare.values is None and bare.hidden is None
    assert torch.equal(full.values, policy.value_head(full.hidden))


def test_fused_gelu_replaces_gelu_new_and_computes_the_same_logits(tiny):
    """FLAN-T5's gelu_new (eight kernels; the shipped tiny T5 has it) is swapped for transformers'
    one-kernel GELUTanh, and T5's RMS norm for torch's: the same functions, so the same logits to
    float rounding, and the same parameter names."""
    from transformers.activations import NewGELUActivation

    from detox.core.assets import asset_path
    from detox.models.assembly import FusedT5Norm, fuse_activations

    plain = AutoModelForSeq2SeqLM.from_pretrained(asset_path("tiny-t5")).eval()
    fused = AutoModelForSeq2SeqLM.from_pretrained(asset_path("tiny-t5")).eval()
    assert any(isinstance(m, NewGELUActivation) for m in plain.modules())
    assert fuse_activations(fused) > 0 and not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert sum(isinstance(m, FusedT5Norm) for m in fused.modules()) == 2 * 2 + 2 * 3 + 2  # per layer, and the stacks'
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()]
    ids = torch.randint(3, 4000, (2, 30), generator=torch.Generator().manual_seed(0))
    batch = teacher_forced(ids, torch.ones_like(ids), ids[:, :12])
    torch.testing.assert_close(logits_of(fused, batch), logits_of(plain, batch), rtol=1e-5, atol=1e-5)
    policy = policy_for(tiny, f"policy.name_or_path={asset_path('tiny-t5')}")
    assert not any(isinstance(m, NewGELUActivation) for m in policy.modules())  # every loaded policy
