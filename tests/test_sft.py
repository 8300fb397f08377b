"""stage=sft: supervised fine-tuning on dialogue -> summary pairs, and PPO starting from its result."""

import json
import os
import shlex

import numpy as np
import pytest
import torch
from conftest import make_cfg
from detox_cli import run_detox
from tiny_models import teacher_forced
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq

from detox.algo.metrics import rouge
from detox.config.validate import validate
from detox.core.errors import ConfigError
from detox.data.splits import load_splits
from detox.models.assembly import build_policy, load_base_model
from detox.runtime.checkpoint import CheckpointError
from detox.stages.sft import greedy_summaries, load_artifact, run_sft
from detox.stages.sft_trainer import TrackingCallback, encode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A few seconds on one core: the tiny random T5 learns the tiny data's summary template.
FAST = ["sft.batch_size=8", "sft.logging_steps=1", "sft.eval_max_new_tokens=24", "sft.warmup_steps=0",
        "sft.lr_scheduler=constant", "sft.group_by_length=false"]


def sft_overrides(tiny, *extra):
    return ["experiment=sft_tiny", "logger=none", f"policy.name_or_path={tiny['policy']}",
            f"data.name_or_path={tiny['data']}", *FAST, *extra]


@pytest.fixture(scope="module")
def lora_run(tiny, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sft-lora"))
    cfg = make_cfg(sft_overrides(tiny, "lora.enabled=true", "lora.target_modules=[q,k,v,o,wi,wo]",
                                 "sft.epochs=15", "sft.learning_rate=1e-2"), output_dir=out)
    run_sft(cfg)
    return cfg, out


@pytest.fixture(scope="module")
def full_run(tiny, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sft-full"))
    cfg = make_cfg(sft_overrides(tiny, "lora.enabled=false", "sft.epochs=10", "sft.learning_rate=3e-3"),
                   output_dir=out)
    run_sft(cfg)
    return cfg, out


def results(run_dir):
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)


def train_rouge_l(cfg, model, tokenizer):
    train = load_splits(cfg.data)["train"]
    predictions = greedy_summaries(model, tokenizer, list(train["prompt"]), cfg, torch.device("cpu"))
    return float(np.mean(rouge(predictions, list(train[cfg.data.summary_column]))["rougeL"]))


def test_labels_are_text_targets_padded_with_minus_100(tiny):
    cfg = make_cfg(sft_overrides(tiny, "sft.max_target_tokens=6"))
    tokenizer = AutoTokenizer.from_pretrained(tiny["policy"])
    train = load_splits(cfg.data)["train"].select(range(3))
    ds = encode(train, tokenizer, cfg.data, cfg.sft.max_target_tokens)
    heated = [i for i, s in enumerate(train["summary"]) if "idiot" in s]
    for row, summary in zip(ds, train["summary"]):
        full = tokenizer(text_target=summary)["input_ids"]
        assert row["labels"] == full[:5] + [tokenizer.eos_token_id] or row["labels"] == full  # truncated, EOS kept
        assert len(row["labels"]) <= 6
    ds = encode(train, tokenizer, cfg.data, 64)
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)([ds[i] for i in range(3)])
    lengths = [len(ds[i]["labels"]) for i in range(3)]
    assert heated and len(set(lengths)) > 1  # heated summaries are longer: padding happens
    for i, n in enumerate(lengths):
        assert (batch["labels"][i, n:] == -100).all() and (batch["labels"][i, :n] >= 0).all()


def test_lora_sft_lowers_loss_and_raises_rouge(lora_run, tiny):
    cfg, out = lora_run
    r = results(out)
    assert r["status"] == "done"
    train = r["train"]
    assert train["loss_last"] < 0.5 * train["loss_first"]
    assert train["val_loss_after"] < train["val_loss_before"]
    assert r["eval"]["eval/after/rougeL"] > r["eval"]["eval/before/rougeL"] + 0.3
    assert r["artifact"]["kind"] == "adapter" and os.path.isdir(os.path.join(out, "final", "adapter"))
    assert os.path.exists(os.path.join(out, "final", "adapter", "tokenizer_config.json"))
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [x["step"] for x in rows if "train/loss" in x][:3] == [1, 2, 3]
    # On its own training examples, through the saved adapter:
    tokenizer = AutoTokenizer.from_pretrained(tiny["policy"])
    before = train_rouge_l(cfg, load_base_model(cfg.policy).eval(), tokenizer)
    after = train_rouge_l(cfg, load_artifact(cfg, r["artifact"]["path"]).eval(), tokenizer)
    assert after > before + 0.3, (before, after)


@pytest.mark.parametrize("reference", ["initial", "base"])
def test_sft_adapter_is_the_frozen_start_and_reference_of_ppo(lora_run, tiny, tiny_overrides, reference):
    sft_cfg, out = lora_run
    adapter = os.path.join(out, "final", "adapter")
    cfg = make_cfg([*tiny_overrides, f"policy.adapter={adapter}", f"policy.reference={reference}"])
    validate(cfg)
    policy = build_policy(cfg.policy, cfg.lora)
    sft_model = load_artifact(sft_cfg, adapter).eval()
    base = load_base_model(sft_cfg.policy).eval()

    tokenizer = AutoTokenizer.from_pretrained(tiny["policy"])
    train = load_splits(sft_cfg.data)["train"].select(range(4))
    enc = tokenizer(list(train["prompt"]), padding=True, return_tensors="pt")
    labels = tokenizer(text_target=list(train["summary"]), padding=True, return_tensors="pt")["input_ids"]
    decoder_input_ids = base._shift_right(labels)
    inputs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], decoder_input_ids=decoder_input_ids)
    with torch.no_grad():
        sft_logits = sft_model(**inputs).logits
        base_logits = base(**inputs).logits
        logits = policy(teacher_forced(**inputs), with_values=False).logits
    ref_logits = policy.reference_logits(teacher_forced(**inputs))
    assert not torch.allclose(sft_logits, base_logits, atol=1e-3)  # the adapter matters
    torch.testing.assert_close(logits, sft_logits, atol=1e-5, rtol=1e-5)  # PPO starts from the SFT model
    torch.testing.assert_close(ref_logits, sft_logits if reference == "initial" else base_logits, atol=1e-5, rtol=1e-5)

    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("value_head.") or (".lora_" in n and ".default." in n) for n in trainable)
    start = [p for n, p in policy.named_parameters() if ".start." in n]
    if reference == "base":  # the starting adapter is kept beside the fresh one, frozen
        assert start and not any(p.requires_grad for p in start)
    else:  # merged into the (frozen) base weights
        assert not start


def test_full_sft_saves_a_model_that_loads_by_name_or_path(full_run, tiny, tiny_overrides):
    sft_cfg, out = full_run
    r = results(out)
    model_dir = os.path.join(out, "final", "model")
    assert r["status"] == "done" and r["artifact"] == {"kind": "model", "path": model_dir}
    assert r["train"]["loss_last"] < r["train"]["loss_first"]
    assert r["eval"]["eval/after/rougeL"] > r["eval"]["eval/before/rougeL"]
    assert f"policy.name_or_path={model_dir}" in r["next_command"] and "policy.adapter" not in r["next_command"]
    cfg = make_cfg([*tiny_overrides, f"policy.name_or_path={model_dir}"])
    policy = build_policy(cfg.policy, cfg.lora)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    samples = [json.loads(x) for x in open(os.path.join(out, "sft_samples.jsonl"))]
    test = load_splits(sft_cfg.data)["test"]
    assert [s["id"] for s in samples] == list(test["id"])
    again = greedy_summaries(policy.model, tokenizer, list(test["prompt"]), sft_cfg, torch.device("cpu"))
    assert again == [s["after"] for s in samples]  # what was evaluated is what was saved


def test_finished_run_is_not_retrained(full_run):
    cfg, out = full_run
    final = os.path.join(out, "final", "model", "model.safetensors")
    mtime, rows = os.path.getmtime(final), open(os.path.join(out, "metrics.jsonl")).read()
    assert run_sft(cfg) == results(out)["eval"]["eval/after/rougeL"]
    assert os.path.getmtime(final) == mtime and open(os.path.join(out, "metrics.jsonl")).read() == rows
    cfg = cfg.copy()
    cfg.resume = "false"
    with pytest.raises(CheckpointError, match="resume=false"):
        run_sft(cfg)


def test_interrupted_sft_resumes_from_its_trainer_checkpoint(tiny, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    cfg = make_cfg(sft_overrides(tiny, "lora.enabled=true", "sft.max_steps=4", "sft.save_steps=2",
                                 "sft.eval_samples=2", "sft.eval_max_new_tokens=4"), output_dir=out)
    log_step = TrackingCallback.on_log

    def crash_at_step_3(self, args, state, control, logs=None, **kwargs):
        log_step(self, args, state, control, logs=logs, **kwargs)
        if state.global_step == 3:  # after step 3's row is written, before its checkpoint
            raise KeyboardInterrupt("preempted")

    monkeypatch.setattr(TrackingCallback, "on_log", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_sft(cfg)
    assert results(out)["status"] == "failed" and not os.path.exists(os.path.join(out, "final"))
    monkeypatch.setattr(TrackingCallback, "on_log", log_step)
    run_sft(cfg)
    r = results(out)
    assert r["status"] == "done" and r["train"]["steps"] == 4
    assert r["train"]["resumed_from"] == os.path.join(out, "sft_trainer", "checkpoint-2")
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [x["step"] for x in rows if "train/loss" in x] == [1, 2, 3, 4]  # step 3 not logged twice
    assert "eval/before/rougeL" in r["eval"]  # kept from the interrupted run


def test_sft_config_errors(tiny):
    with pytest.raises(ConfigError, match="policy.adapter"):
        validate(make_cfg(sft_overrides(tiny, "lora.enabled=true", "policy.adapter=/some/adapter")))
    with pytest.raises(ConfigError, match="sft.batch_size"):
        validate(make_cfg(sft_overrides(tiny, "sft.batch_size=0")))
    with pytest.raises(ConfigError, match="sft.eval_samples"):
        validate(make_cfg(sft_overrides(tiny, "sft.eval_samples=0")))


def test_cli_sft_then_printed_ppo_command_composes(tiny, tmp_path):
    run_dir = str(tmp_path / "run")
    proc = run_detox(["stage=sft", "experiment=sft_tiny", "logger=none", f"policy.name_or_path={tiny['policy']}",
                      f"data.name_or_path={tiny['data']}", "lora.enabled=true", "sft.max_steps=3", "sft.eval_samples=2",
                      "sft.eval_max_new_tokens=4", f"hydra.run.dir={run_dir}"], REPO, threads=1, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = results(run_dir)
    assert r["status"] == "done" and r["train"]["steps"] == 3 and r["eval"]["eval/num_samples"] == 2
    assert "stage=sft" in r["overrides"]
    command = proc.stdout.strip().splitlines()[-1].strip()
    assert command == r["next_command"]
    words = shlex.split(command)
    adapter = os.path.join(run_dir, "final", "adapter")
    assert words[:2] == ["detox", "experiment=quickstart"] and f"policy.adapter={adapter}" in words
    assert f"data.name_or_path={tiny['data']}" in words and not any(w.startswith(("sft.", "lora.", "stage")) for w in words)
    cfg = make_cfg(words[1:])  # the follow-up PPO run composes and validates
    validate(cfg)
    assert cfg.stage.value == "ppo" and cfg.policy.adapter == adapter and cfg.policy.name_or_path == tiny["policy"]


def test_bf16_full_sft_keeps_fp32_weights_and_really_updates(tiny, tmp_path):
    """bf16 weights in AdamW would round the small updates away: fp32 weights, bf16 autocast."""
    out = str(tmp_path / "run")
    cfg = make_cfg(sft_overrides(tiny, "lora.enabled=false", "policy.dtype=bfloat16", "sft.max_steps=1",
                                 "sft.learning_rate=1e-5", "sft.eval_samples=2", "sft.eval_max_new_tokens=4"),
                   output_dir=out)
    run_sft(cfg)
    from safetensors.torch import load_file

    saved = load_file(os.path.join(out, "final", "model", "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the master weights, not bf16 ones
    base = AutoModelForSeq2SeqLM.from_pretrained(tiny["policy"]).state_dict()
    shared = [k for k in saved if k in base]
    changed = sum(int((saved[k] != base[k]).sum()) for k in shared) / sum(saved[k].numel() for k in shared)
    assert changed > 0.99, changed
