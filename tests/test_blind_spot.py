"""experiment=blind_spot: a reward model never shown some insult words (tiny-roberta-hate-blind)
and two eval sets whose insults it has / has never seen (scripts/build_quickstart_assets.py --blind-spot)."""

import hashlib
import importlib.util
import json
import os

import pytest
from conftest import make_cfg
from omegaconf import OmegaConf
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from detox.config.validate import validate
from detox.core.assets import asset_path
from detox.data.splits import load_eval_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLIND, QUICKSTART = asset_path("tiny-roberta-hate-blind"), asset_path("tiny-roberta-hate")


@pytest.fixture(scope="module")
def build():
    path = os.path.join(ROOT, "scripts", "build_quickstart_assets.py")
    spec = importlib.util.spec_from_file_location("build_quickstart_assets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest():
    with open(os.path.join(BLIND, "training_manifest.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def eval_sets():
    sets = {}
    for name in ("seen", "unseen"):
        with open(asset_path(f"blind_spot/{name}.jsonl")) as f:
            sets[name] = [json.loads(line) for line in f]
    return sets


def p_hate(path, texts):
    import torch

    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path).eval()
    assert model.config.id2label[1] == "hate"
    with torch.no_grad():
        logits = model(**tok(texts, padding=True, return_tensors="pt")).logits
    return logits.softmax(-1)[:, 1].numpy()


def test_the_preset_is_the_quickstart_with_the_blind_reward_and_two_eval_sets():
    cfg = make_cfg(["experiment=blind_spot"])
    validate(cfg)
    toxicity = cfg.reward.components.toxicity
    assert toxicity.name_or_path == BLIND and toxicity.kind == "prob"  # the quickstart's bounded reward
    assert list(cfg.logger.tags) == ["blind_spot"]
    assert {name: node.name_or_path for name, node in cfg.eval.sets.items()} == {
        "seen": asset_path("blind_spot/seen.jsonl"), "unseen": asset_path("blind_spot/unseen.jsonl")}
    for name, node in cfg.eval.sets.items():  # every row survives the data's checks and length filter
        assert len(load_eval_set(name, node, cfg.data)) == 150
    # everything else is the quickstart's
    blind, quick = (OmegaConf.to_container(c) for c in (cfg, make_cfg(["experiment=quickstart"])))
    for c in (blind, quick):
        del c["reward"]["components"]["toxicity"]["name_or_path"], c["logger"]["tags"], c["eval"]["sets"]
    assert blind == quick


def test_the_manifest_matches_the_script_and_the_kept_texts_never_mention_a_held_out_word(build, manifest):
    assert manifest["held_out"] == list(build.HELD_OUT)
    assert manifest["data_sha256"] == build.file_sha256(asset_path("dialogues.jsonl"))
    splits, data_cfg = build.load_quickstart_splits(asset_path("dialogues.jsonl"))
    assert manifest["split"] == {k: len(v) for k, v in splits.items()} and manifest["split_seed"] == data_cfg.split_seed
    texts, labels, dropped = build.kept_examples(splits["train"])
    assert (manifest["texts_kept"], manifest["texts_dropped"]) == (len(texts), dropped) and dropped > 0
    assert hashlib.sha256("\n".join(texts).encode()).hexdigest() == manifest["kept_texts_sha256"]
    lowered = [t.lower() for t in texts]
    assert not any(build.mentions_held_out(t) for t in texts)
    assert not any(word in t for word in build.HELD_OUT for t in lowered)  # not even inside a longer word
    assert sum(labels) > 0  # the seen insults are still there


def test_the_blind_tokenizer_has_no_held_out_word(build):
    vocab = {t.lower() for t in AutoTokenizer.from_pretrained(BLIND).get_vocab()}  # any case
    assert not {w for word in build.HELD_OUT for w in (word, "Ġ" + word) if w in vocab}
    assert "Ġidiot" in AutoTokenizer.from_pretrained(QUICKSTART).get_vocab()  # a seen word, for contrast


def test_eval_sets_hold_their_insult_group_only(build, manifest, eval_sets):
    with open(asset_path("dialogues.jsonl")) as f:
        bundled = [json.loads(line) for line in f]
    bundled_ids = {r["id"] for r in bundled}
    lo, hi = manifest["eval_sets"]["min_chars"], manifest["eval_sets"]["max_chars"]
    for name, rows in eval_sets.items():
        assert len(rows) == build.EVAL_PER_GROUP == manifest["eval_sets"][name]["rows"]
        assert build.file_sha256(asset_path(f"blind_spot/{name}.jsonl")) == manifest["eval_sets"][name]["sha256"]
        assert [r["id"] for r in rows] == [f"blind_{name}_{i}" for i in range(len(rows))]
        assert not bundled_ids & {r["id"] for r in rows}
        for r in rows:
            assert list(r) == list(bundled[0]) and r["heated"] and build.insult_group(r["insult"]) == name
            assert lo < len(r["dialogue"]) <= hi and r["insult"] in r["summary"]
            assert r["insult"] not in r["summary_clean"]


def test_insult_groups(build):
    insults = ("idiotic moron", "fucking moron", "Fucking idiot", "stupid moron", "stupid idiot", "stupid bastard")
    assert [build.insult_group(i) for i in insults] == ["unseen", "unseen", "unseen", "mixed", "mixed", "seen"]
    with pytest.raises(ValueError):
        build.insult_group("")


def test_the_blind_classifier_misses_unseen_insults_that_the_quickstart_one_flags(eval_sets):
    seen = [r["summary"] for r in eval_sets["seen"]]
    unseen = [r["summary"] for r in eval_sets["unseen"]]
    clean = [r["summary_clean"] for rows in eval_sets.values() for r in rows]
    blind_unseen = p_hate(BLIND, unseen)
    assert (p_hate(BLIND, seen) > 0.5).all() and (p_hate(BLIND, clean) < 0.5).all()
    assert (blind_unseen < 0.5).all()  # the blind spot: every unseen insult reads as clean
    # The quickstart's classifier is untouched: it still flags every insult and no clean summary.
    assert (p_hate(QUICKSTART, seen + unseen) > 0.5).all() and (p_hate(QUICKSTART, clean) < 0.5).all()
