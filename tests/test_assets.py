"""The shipped quickstart assets: bundled dialogues, tiny T5 summarizer, tiny RoBERTa reward."""

import importlib.util
import json
import os
import re

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from detox.core.assets import asset_path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows():
    with open(asset_path("dialogues.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_bundled_dialogues_are_dialogsum_style(rows):
    assert len(rows) >= 1000
    assert set(rows[0]) >= {"id", "dialogue", "summary", "summary_clean", "topic", "heated"}
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["topic"] for r in rows}) >= 20
    words = {w for r in rows for w in re.findall(r"[a-z]+", (r["dialogue"] + " " + r["summary"]).lower())}
    assert len(words) >= 2000
    heated = [r for r in rows if r["heated"]]
    assert 0.2 <= len(heated) / len(rows) <= 0.3
    for r in rows:
        assert r["dialogue"].startswith("#Person1#: ")
        if r["heated"]:
            assert r["insult"] in r["summary"] and r["insult"] not in r["summary_clean"]
        else:
            assert r["summary"] == r["summary_clean"]


def test_generator_is_deterministic_and_matches_the_shipped_file(rows):
    make = load_script("make_dialogues")
    assert make.generate(n=1500, seed=0, heated_fraction=0.25) == rows  # the shipped file, exactly
    other = make.generate(n=40, seed=1, heated_fraction=0.5)
    assert other == make.generate(n=40, seed=1, heated_fraction=0.5) and other != rows[:40]
    assert sum(r["heated"] for r in other) == 20


def test_the_independent_judge_flags_the_insults(rows):
    from profanity_check import predict_prob

    heated = [r for r in rows if r["heated"]][:200]
    flagged = (predict_prob([r["summary"] for r in heated]) > 0.5).mean()
    clean = (predict_prob([r["summary_clean"] for r in heated]) > 0.5).mean()
    assert flagged >= 0.9 and clean <= 0.05


def test_tiny_t5_tokenizer_round_trips_and_agrees_with_the_model():
    path = asset_path("tiny-t5")
    tok = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)
    assert len(tok) <= config.vocab_size
    assert tok.bos_token_id is None
    text = "#Person1# asks #Person2# to return the blue jacket to the shop on Friday."
    ids = tok(text).input_ids
    assert ids[-1] == 1 and 2 not in ids  # eos appended, nothing unknown
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.convert_ids_to_tokens(tok("#Person2#").input_ids)[0].strip("\u2581") == "#Person2#"


def test_tiny_reward_model_has_the_real_models_labels_and_separates_insults(rows):
    path = asset_path("tiny-roberta-hate")
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.id2label == {0: "nothate", 1: "hate"}
    heated = [r for r in rows if r["heated"]][-50:]
    with torch.no_grad():
        toxic = model(**tok([r["summary"] for r in heated], padding=True, return_tensors="pt")).logits[:, 0]
        clean = model(**tok([r["summary_clean"] for r in heated], padding=True, return_tensors="pt")).logits[:, 0]
    assert (clean - toxic).mean() > 2  # the nothate logit drops clearly on an insult


def test_assets_are_small():
    total = sum(os.path.getsize(os.path.join(d, f)) for name in ("tiny-t5", "tiny-roberta-hate")
                for d, _, files in os.walk(asset_path(name)) for f in files)
    assert total < 10 * 2**20


def test_blind_spot_eval_sets_are_reproducible():
    build = load_script("build_quickstart_assets")  # its --blind-spot mode wrote them
    sets = build.make_eval_sets(min_chars=200, max_chars=1000)  # conf/data/bundled.yaml
    for name, rows in sets.items():
        with open(asset_path(f"blind_spot/{name}.jsonl")) as f:
            assert [json.loads(line) for line in f] == rows, name
