"""The rollout's sampler (detox/models/sampling.py): `generate`'s distribution, a row leaving the
batch at its EOS or cap. Greedy decoding is deterministic, so it must equal `generate`'s token for
token; sampled draws are checked against the model's own probabilities."""

import json

import pytest
import torch
from tiny_models import decode_both
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

from detox.core.assets import asset_path
from detox.models.families import family_of
from detox.models.sampling import draw, sample


@pytest.fixture(scope="module")
def summarizer():
    """The shipped tiny T5: trained, so its summaries end with EOS at different lengths."""
    path = asset_path("tiny-t5")
    model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    family = family_of(model.config)
    return model, AutoTokenizer.from_pretrained(path), family, family.prepare(model)


def prompts(n: int) -> list[str]:
    rows = [json.loads(line) for line in open(asset_path("dialogues.jsonl"))][:n]
    return [f"\nSummarize the following conversation.\n\n{r['dialogue']}\n\nSummary:\n" for r in rows]


def settings(tokens, **kw) -> GenerationConfig:
    return GenerationConfig(pad_token_id=tokens.pad, eos_token_id=tokens.eos, decoder_start_token_id=tokens.decoder_start,
                            forced_bos_token_id=tokens.forced_bos, **{"do_sample": True, "top_k": 0, **kw})


def responses(batch) -> list[list[int]]:
    return [ids[: int(n)] for ids, n in zip(batch.response_ids.tolist(), batch.mask.sum(1))]


def test_greedy_decoding_equals_generate_with_rows_leaving_at_eos_and_at_their_caps(summarizer):
    model, tok, family, tokens = summarizer
    enc = tok(prompts(8), padding=True, return_tensors="pt")
    caps = torch.tensor([40, 3, 40, 12, 40, 7, 40, 25])
    gen = settings(tokens, do_sample=False, min_length=6)
    ours, theirs, (a, b) = decode_both(model, family, tokens, enc, gen, caps)
    lengths = a.mask.sum(1)
    assert responses(a) == responses(b)
    ended = (a.response_ids == tokens.eos).any(1)
    assert ended[caps == 40].all() and (lengths[caps == 40] < 40).all(), "the rows with room end by EOS"
    assert torch.equal(lengths[~ended], caps[~ended].float()), "the others stop at their caps"
    assert (lengths >= caps.clamp(max=5)).all()  # min_length 6 counts the decoder start token
    assert (ours[:, 1:][a.mask == 0] == tokens.pad).all(), "pad after a row's end"


def test_draws_follow_the_probabilities_and_never_a_barred_token():
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, 2.0, -float("inf"), 0.5, -3.0])
    drawn = draw(logits.expand(60_000, -1))
    freq = torch.bincount(drawn, minlength=6).double() / len(drawn)
    assert freq[3] == 0
    assert torch.allclose(freq, logits.softmax(-1).double(), atol=0.006)  # ~3 standard errors


def test_sampled_first_tokens_follow_the_models_distribution_and_its_top_k(summarizer):
    """4,000 rows of one prompt, one token each: the drawn tokens' frequencies are the model's
    softmax; with top_k=3 only its 3 likeliest tokens are drawn, in their renormalised shares."""
    model, tok, family, tokens = summarizer
    enc = tok(prompts(1) * 4000, return_tensors="pt")
    with torch.no_grad():
        states = family.encode(model, enc["input_ids"][:1], enc["attention_mask"][:1]).last_hidden_state
        logits, _ = family.decode_step(model, family.encoder_outputs(states), enc["attention_mask"][:1],
                                       torch.full((1, 1), tokens.decoder_start), None)
    probs = logits[0].softmax(-1)
    caps = torch.ones(4000, dtype=torch.long)
    states = states.expand(4000, -1, -1)
    torch.manual_seed(1)
    for top_k in (0, 3):
        with torch.no_grad():
            first = sample(model, family, tokens, states, enc["attention_mask"], settings(tokens, top_k=top_k), caps)[:, 1]
        freq = torch.bincount(first, minlength=len(probs)).double() / len(first)
        expected = probs.double()
        if top_k:
            kept = probs.topk(top_k).indices
            assert set(first.unique().tolist()) <= set(kept.tolist())
            expected = torch.zeros_like(expected).index_copy(0, kept, expected[kept] / expected[kept].sum())
        assert (freq - expected).abs().max() < 0.025, (top_k, (freq - expected).abs().max())
