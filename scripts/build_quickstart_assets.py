"""Build the two tiny models the offline quickstart ships (`detox experiment=quickstart`).

The quickstart runs the whole PPO detoxification loop on a CPU in minutes, with no model hub.
It needs a policy and a reward model; this script trains both from scratch on the bundled
synthetic dialogues (`detox/assets/dialogues.jsonl`, written by scripts/make_dialogues.py),
using transformers' own classes and training machinery, and saves them into the package:

- `detox/assets/tiny-t5/`: a ~1M-parameter `T5ForConditionalGeneration` summarizer with its own
  sentencepiece (unigram) tokenizer wrapped in a real `T5Tokenizer` (pad=0, eos=1, unk=2, no bos,
  `#Person1#`..`#Person3#` single pieces). It is created with random weights and then trained by
  the project's own SFT stage (`detox stage=sft experiment=sft_tiny lora.enabled=false`, i.e.
  `Seq2SeqTrainer`, full fine-tuning; `--t5-epochs/--t5-lr/--t5-batch-size` override the preset's
  40 / 2e-3 / 16) on the TRAIN split: input = the prompt (the recipe's template around the
  dialogue), target = `summary`, the reference WITH the insult sentence of heated dialogues
  ("#Person2# calls #Person1# a stupid idiot."), except for a fixed share (`--clean-share`, by
  hash of the id) of heated dialogues whose target is `summary_clean` (a copy of the data file
  with that target as column `sft_target`, row for row, so the split is the same). So the starting policy usually reproduces insults, which PPO
  is then meant to remove, and sometimes leaves them out, which gives PPO something to reinforce
  (a policy that always insults can only escape the penalty by breaking its summaries).
- `detox/assets/tiny-roberta-hate/`: a tiny `RobertaForSequenceClassification` with a byte-level
  BPE tokenizer wrapped in a real `RobertaTokenizer`, labels `{0: "nothate", 1: "hate"}` (the
  order of facebook/roberta-hate-speech-dynabench-r4-target). It is trained (`Trainer`) on the
  train split's utterances (hate iff the turn contains the record's insult phrase) and on
  summaries: `summary` and its sentences (hate iff they contain the insult) and `summary_clean`
  (nothate), because the PPO reward scores generated SUMMARIES: the `nothate` logit must be
  clearly lower on "#Person2# calls #Person1# a stupid idiot." than on the clean summary.

Only train-split records are trained on (tokenizers included); the split is the quickstart's own
(conf/data/bundled.yaml), so the test split, where both models are evaluated, is never seen.
Whitespace: both tokenizers' round trips are exact up to whitespace normalisation; the T5
tokenizer (as T5's) splits on whitespace, so newlines and runs of spaces decode as one space.

Each folder gets a `build_info.json` with the measured metrics (ROUGE, insult reproduction,
accuracy, logit gap), seconds, parameter count and seed. Deterministic for a given `--seed`.

    python scripts/build_quickstart_assets.py [--data detox/assets/dialogues.jsonl] \
        [--out detox/assets] [--seed 0] [--t5-epochs N] [--clf-epochs N]

`--blind-spot` builds, instead, the assets of `experiment=blind_spot` (does PPO remove toxicity
that its reward model cannot see?), leaving the two models above as they are:

- `detox/assets/tiny-roberta-hate-blind/`: a second classifier built exactly as tiny-roberta-hate
  (same split, functions, arguments and seed) from the same examples less every text that
  contains a word of `HELD_OUT` (whole word, any case); its tokenizer is trained on the kept
  texts only. Its `training_manifest.json` records the rule, the counts and the sha256 of the
  kept texts; `build_info.json` the test metrics and P(hate) on the two eval sets (and the
  quickstart classifier's, for comparison), on their references and on the shipped tiny-t5's
  sampled summaries of them.
- `detox/assets/blind_spot/{seen,unseen}.jsonl`: heated dialogues from make_dialogues.py with
  another seed than the bundled file's, by `insult_group()` of their insult (`make_eval_sets`).

The classifier is lexical, as real reward models often are: what it misses is decided by its
subwords. With "idiotic" held out but "idiot" seen, BPE splits "idiotic" into "idiot" + "ic" and
"idiotic moron" / "idiotic jerk" were still flagged (P(hate) 0.997, while "fucking moron" read
0.002), so "idiot" is held out too. The frame all insult summaries share ("#Person2# calls
#Person1# a ...") is not what flags them: nothate sentences in that frame with harmless objects,
added to the training data, changed nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERSON_TAGS = ["#Person1#", "#Person2#", "#Person3#"]
PERSON_PIECES = ["▁" + t for t in PERSON_TAGS] + PERSON_TAGS  # single pieces after a space, or not
TURN_PREFIX = re.compile(r"^\s*#Person\d+#:\s*")
LABELS = {0: "nothate", 1: "hate"}  # the real facebook/roberta-hate-speech-dynabench-r4-target order


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------- data


def load_quickstart_splits(data_path: str):
    """The quickstart's own train/validation/test split (conf/data/bundled.yaml) of `data_path`."""
    from detox.config.schema import DataSettings, register
    from detox.data.splits import load_splits

    register()  # the ${detox_asset:...} resolver
    cfg = OmegaConf.merge(
        OmegaConf.structured(DataSettings), OmegaConf.load(os.path.join(REPO, "conf/data/bundled.yaml"))
    )
    cfg.name_or_path = data_path
    return load_splits(cfg), cfg


def turns(dialogue: str) -> list[str]:
    """The utterances of a dialogue, without their "#PersonN#: " prefix."""
    return [TURN_PREFIX.sub("", t).strip() for t in dialogue.split("\n") if t.strip()]


def sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def has_insult(text: str, insult: str) -> bool:
    return bool(insult) and insult.lower() in text.lower()


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def param_count(model: torch.nn.Module) -> int:
    # Tied parameters are counted once, as .parameters() yields each tensor once.
    return sum(p.numel() for p in model.parameters())


def scratch_args(cls, output_dir: str, seed: int, **kwargs):
    """Training arguments for a throwaway output dir: CPU, no checkpoints, no reporting."""
    return cls(
        output_dir=output_dir,
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        logging_strategy="steps",
        **kwargs,
    )


# ------------------------------------------------------------------------------ T5 tokenizer


def build_t5_tokenizer(train, vocab_size: int):
    """A sentencepiece model on the train split's text, wrapped in a real T5Tokenizer.

    T5's special ids: pad=0, eos=1, unk=2, no bos, no sentinels. The person tags are
    user-defined symbols, so always single pieces: "▁#Person1#" (a tag after a space, which is
    every tag here, since the pre-tokenizer splits on whitespace) and "#Person1#" (after any
    other character). Identity normalisation with full character coverage: every character of
    the training text is in the vocabulary, and decode(encode(x)) == x up to whitespace (the T5
    pre-tokenizer splits on whitespace, so newlines and runs of spaces read as one space).

    Trained as BPE, then scored as a unigram LM: transformers' T5Tokenizer is a Unigram model
    (Viterbi over piece log-probs), and sentencepiece's own unigram trainer gives a poor
    vocabulary on this small templated corpus (no "▁and"; ~12% more tokens). Each piece's score
    is its log-frequency in the BPE segmentation of the training text, re-estimated once from
    the Viterbi segmentation (an EM step), which reproduces BPE's token counts.
    """
    import sentencepiece as spm

    texts = [squash_ws(t) for t in list(train["prompt"]) + list(train["summary"]) + list(train["summary_clean"])]
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=proto,
        model_type="bpe",
        vocab_size=vocab_size,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        user_defined_symbols=PERSON_PIECES,
        normalization_rule_name="identity",
        remove_extra_whitespaces=True,
        character_coverage=1.0,
        max_sentence_length=1 << 16,
        num_threads=1,  # deterministic
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    fixed = 3 + len(PERSON_PIECES)  # special and user-defined pieces keep score 0 (always taken whole)
    assert pieces[:fixed] == ["<pad>", "</s>", "<unk>", *PERSON_PIECES], pieces[:fixed]
    segmentation = [sp.encode(t) for t in texts]
    for _ in range(2):  # BPE counts, then one re-estimate from the Viterbi segmentation
        tokenizer = unigram_t5_tokenizer(pieces, segmentation, fixed)
        segmentation = [ids[:-1] for ids in tokenizer(texts)["input_ids"]]
    check_t5_tokenizer(tokenizer, texts)
    return tokenizer


def unigram_t5_tokenizer(pieces: list[str], segmentation: list[list[int]], fixed: int):
    """A T5Tokenizer whose unigram scores are the pieces' log-frequencies in `segmentation`."""
    from transformers import T5Tokenizer

    counts = np.bincount(np.concatenate([np.asarray(s, dtype=np.int64) for s in segmentation]), minlength=len(pieces))
    logp = np.log(np.maximum(counts, 0.1) / counts.sum())  # unseen pieces: rare, not impossible
    vocab = [(piece, 0.0 if i < fixed else float(logp[i])) for i, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def squash_ws(text: str) -> str:
    return " ".join(text.split())


def check_t5_tokenizer(tokenizer, texts: list[str]) -> None:
    """Special ids, single-piece person tags, eos appended, no unk, exact round trips."""
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.bos_token_id is None
    for tag in PERSON_TAGS:
        assert tokenizer.tokenize(f"{tag}: hi") == ["▁" + tag, ":", "▁hi"], tokenizer.tokenize(f"{tag}: hi")
        assert tag in tokenizer.tokenize(f"({tag})"), tokenizer.tokenize(f"({tag})")
    for text in texts[:200] + texts[-100:]:
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == 1 and 1 not in ids[:-1] and 2 not in ids and 0 not in ids, ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == squash_ws(text)


def tokenizer_stats(tokenizer, rows) -> dict:
    prompt_lens = [len(x) for x in tokenizer(list(rows["prompt"]))["input_ids"]]
    summary_lens = [len(x) for x in tokenizer(list(rows["summary"]))["input_ids"]]
    words = sum(len(s.split()) for s in list(rows["summary"]))
    unk = sum(ids.count(tokenizer.unk_token_id) for ids in tokenizer(list(rows["prompt"]))["input_ids"])
    return {
        "vocab_size": len(tokenizer),
        "prompt_tokens_mean": float(np.mean(prompt_lens)),
        "prompt_tokens_max": int(np.max(prompt_lens)),
        "summary_tokens_mean": float(np.mean(summary_lens)),
        "summary_tokens_max": int(np.max(summary_lens)),
        "summary_tokens_per_word": sum(summary_lens) / max(words, 1),
        "test_prompt_unk_tokens": int(unk),
    }


# ------------------------------------------------------------------------------ T5 summarizer


def init_t5(tokenizer, args, path: str) -> str:
    """The untrained summarizer: a from-scratch T5 and its tokenizer, saved as a model folder."""
    from transformers import (
        GenerationConfig,
        T5Config,
        T5ForConditionalGeneration,
        set_seed,
    )

    set_seed(args.seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=args.t5_d_model,
        d_ff=args.t5_d_ff,
        d_kv=args.t5_d_model // args.t5_heads,
        num_layers=args.t5_layers,
        num_decoder_layers=args.t5_layers,
        num_heads=args.t5_heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.1,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(config)
    # Only T5's own ids, as google/flan-t5-*'s generation_config.json: no max_length, no sampling defaults.
    model.generation_config = GenerationConfig(decoder_start_token_id=0, eos_token_id=1, pad_token_id=0)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def sft_target(row, clean_share: float) -> str:
    """Real summarizers sometimes leave an insult out. Training on the clean reference for a fixed
    share of heated dialogues (by hash of the id) gives the policy a small chance of an insult-free
    summary, which is what PPO can reinforce; without it the only insult-free outcomes it can
    sample are broken or empty summaries."""
    if row["heated"] and int(hashlib.sha256(row["id"].encode()).hexdigest(), 16) % 100 < 100 * clean_share:
        return row["summary_clean"]
    return row["summary"]


def write_sft_data(data_path: str, splits, clean_share: float, path: str) -> str:
    """The dialogues file again, row for row (so the split is the same), plus the column
    `sft_target`: `sft_target()` for train and validation rows, `summary` for test rows."""
    trained = {r["id"]: sft_target(r, clean_share) for name in ("train", "validation") for r in splits[name]}
    with open(data_path) as f, open(path, "w") as out:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.write(json.dumps({**row, "sft_target": trained.get(row["id"], row["summary"])}) + "\n")
    return path


def train_t5(tokenizer, splits, args) -> tuple[object, dict]:
    """A tiny T5 trained from scratch on prompt -> summary (with insults) over the train split, by
    the project's own SFT stage (`detox stage=sft experiment=sft_tiny`, full fine-tuning)."""
    from hydra import compose, initialize_config_module
    from transformers import AutoModelForSeq2SeqLM

    from detox.data.splits import load_splits
    from detox.stages.sft import run_sft

    work = tempfile.mkdtemp(prefix="tiny-t5-")
    try:
        init_dir = init_t5(tokenizer, args, os.path.join(work, "init"))
        data = write_sft_data(args.data, splits, args.clean_share, os.path.join(work, "dialogues_sft.jsonl"))
        run_dir = os.path.join(work, "sft-run")
        overrides = [
            f"output_dir={run_dir}", "stage=sft", "experiment=sft_tiny", "logger=none", "lora.enabled=false",
            f"seed={args.seed}", f"policy.name_or_path={init_dir}", f"data.name_or_path={data}",
            "data.summary_column=sft_target", f"sft.epochs={args.t5_epochs}", f"sft.learning_rate={args.t5_lr}",
            f"sft.batch_size={args.t5_batch_size}", f"sft.eval_max_new_tokens={args.eval_max_new_tokens}",
        ]
        with initialize_config_module("detox.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
        sft_splits = load_splits(cfg.data)
        for name in splits:  # the same rows in every split
            assert list(sft_splits[name]["id"]) == list(splits[name]["id"]), name
        run_sft(cfg)
        with open(os.path.join(run_dir, "results.json")) as f:
            sft = json.load(f)
        model = AutoModelForSeq2SeqLM.from_pretrained(os.path.join(run_dir, "final", "model")).eval()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    train = sft["train"]
    metrics = {
        "train_seconds": train["seconds"],
        "train_loss_last_logged": train["loss_last"],
        "train_loss_mean": train["loss_mean"],
        "validation_loss": train["val_loss_after"],
        "params": param_count(model),
        "sft": {"overrides": overrides[1:], "eval": sft["eval"], "steps": train["steps"]},
    }
    log(f"T5 trained in {train['seconds']:.0f}s: {metrics}")
    return model, metrics


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], sample: bool, seed: int, max_new_tokens: int, batch_size=32):
    """Summaries of `prompts`: greedy, or pure ancestral sampling (top_k=0, top_p=1: what PPO uses)."""
    torch.manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tokenizer(prompts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=512)
        kwargs = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0) if sample else dict(do_sample=False)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, num_beams=1, **kwargs)
        out += tokenizer.batch_decode(ids, skip_special_tokens=True)
    return out


def rouge(predictions: list[str], references: list[str]) -> dict:
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {k: round(float(np.mean([s[k].fmeasure for s in scores])), 4) for k in ("rouge1", "rouge2", "rougeL")}


def profanity_rate(texts: list[str]) -> float | None:
    if not texts:
        return None
    from profanity_check import predict_prob

    return round(float(np.mean(np.asarray(predict_prob(texts)) > 0.5)), 4)


def evaluate_t5(model, tokenizer, test, seed: int, max_new_tokens: int) -> tuple[dict, dict]:
    """ROUGE vs `summary`, insult reproduction on heated dialogues, profanity flags, greedy and sampled."""
    prompts, refs = list(test["prompt"]), list(test["summary"])
    heated = np.asarray(list(test["heated"]), dtype=bool)
    metrics, generations = {}, {}
    for mode in ("greedy", "sampled"):
        start = time.time()
        preds = generate(model, tokenizer, prompts, sample=mode == "sampled", seed=seed, max_new_tokens=max_new_tokens)
        generations[mode] = preds
        lens = [len(x) for x in tokenizer(preds)["input_ids"]]
        m = rouge(preds, refs)
        m["rougeL_clean_ref"] = rouge(preds, list(test["summary_clean"]))["rougeL"]
        m["insult_reproduced_heated"] = round(float(np.mean(
            [has_insult(p, ins) for p, ins, h in zip(preds, list(test["insult"]), heated) if h])), 4)
        m["profanity_flag_rate_heated"] = profanity_rate([p for p, h in zip(preds, heated) if h])
        m["profanity_flag_rate_calm"] = profanity_rate([p for p, h in zip(preds, heated) if not h])
        m["length_tokens_mean"] = round(float(np.mean(lens)), 2)
        m["ended_with_eos"] = round(float(np.mean([l <= max_new_tokens for l in lens])), 4)
        m["seconds"] = round(time.time() - start, 1)
        metrics[mode] = m
        log(f"T5 test {mode}: {m}")
    metrics["reference"] = {
        "profanity_flag_rate_heated": profanity_rate([r for r, h in zip(refs, heated) if h]),
        "profanity_flag_rate_calm": profanity_rate([r for r, h in zip(refs, heated) if not h]),
    }
    return metrics, generations


# ---------------------------------------------------------------------- RoBERTa tokenizer


def build_roberta_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE (tokenizers) on the texts, wrapped in a real RobertaTokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import RobertaTokenizer

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids 0..4
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = RobertaTokenizer(vocab=model["vocab"], merges=merges, model_max_length=512)
    assert [tokenizer.convert_tokens_to_ids(t) for t in specials] == [0, 1, 2, 3, 4]
    for text in texts[:200]:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    return tokenizer


# --------------------------------------------------------------------- RoBERTa classifier


def classifier_examples(rows) -> tuple[list[str], list[int]]:
    """(text, label) pairs: utterances and summaries; hate iff the text contains the insult."""
    texts, labels = [], []
    for row in rows:
        insult = row["insult"] if row["heated"] else ""
        for text in turns(row["dialogue"]) + [row["summary"]] + sentences(row["summary"]):
            texts.append(text)
            labels.append(int(has_insult(text, insult)))
        texts.append(row["summary_clean"])
        labels.append(0)
    return texts, labels


def train_classifier(tokenizer, texts: list[str], labels: list[int], args) -> tuple[object, dict]:
    """A from-scratch RoBERTa classifier trained on (texts, labels): `classifier_examples()` of the
    train split, or the blind-spot mode's filtered ones (same model, arguments and seed)."""
    from transformers import (
        DataCollatorWithPadding,
        RobertaConfig,
        RobertaForSequenceClassification,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(args.seed)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.clf_hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * args.clf_hidden,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=2,
        id2label=dict(LABELS),
        label2id={v: k for k, v in LABELS.items()},
    )
    model = RobertaForSequenceClassification(config)
    ds = Dataset.from_dict({"text": texts, "label": labels}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=128), batched=True, remove_columns=["text"]
    )
    log(f"classifier: {len(ds)} train examples, {sum(labels)} hate")
    scratch = tempfile.mkdtemp(prefix="tiny-roberta-")
    try:
        training_args = scratch_args(
            TrainingArguments,
            scratch,
            args.seed,
            per_device_train_batch_size=32,
            num_train_epochs=args.clf_epochs,
            learning_rate=args.clf_lr,
            lr_scheduler_type="linear",
            warmup_steps=0.05,
            weight_decay=0.01,
            train_sampling_strategy="group_by_length",
            logging_steps=100,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            data_collator=DataCollatorWithPadding(tokenizer),
            train_dataset=ds,
            processing_class=tokenizer,
        )
        start = time.time()
        result = trainer.train()
        seconds = time.time() - start
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    model.eval()
    metrics = {"train_seconds": round(seconds, 1), "train_loss_mean": round(result.training_loss, 4),
               "train_examples": len(ds), "train_hate_examples": int(sum(labels)), "params": param_count(model)}
    log(f"classifier trained in {seconds:.0f}s: {metrics}")
    return model, metrics


@torch.no_grad()
def classifier_logits(model, tokenizer, texts: list[str], batch_size: int = 128) -> np.ndarray:
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True, max_length=512)
        out.append(model(**enc).logits.float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2))


def evaluate_classifier(model, tokenizer, test, generations: dict) -> dict:
    """Held-out accuracy; the `nothate` logit on heated `summary` vs `summary_clean` (the PPO signal)."""
    texts, labels = classifier_examples(test)
    labels = np.asarray(labels)
    pred = classifier_logits(model, tokenizer, texts).argmax(-1)
    heated = np.asarray(list(test["heated"]), dtype=bool)
    hot = [s for s, h in zip(list(test["summary"]), heated) if h]
    clean = [s for s, h in zip(list(test["summary_clean"]), heated) if h]
    nothate_hot = classifier_logits(model, tokenizer, hot)[:, 0]
    nothate_clean = classifier_logits(model, tokenizer, clean)[:, 0]
    metrics = {
        "test_examples": int(len(labels)),
        "test_accuracy": round(float((pred == labels).mean()), 4),
        "test_accuracy_hate": round(float((pred[labels == 1] == 1).mean()), 4),
        "test_accuracy_nothate": round(float((pred[labels == 0] == 0).mean()), 4),
        "nothate_logit_heated_summary": round(float(nothate_hot.mean()), 3),
        "nothate_logit_summary_clean": round(float(nothate_clean.mean()), 3),
        "nothate_logit_gap": round(float(nothate_clean.mean() - nothate_hot.mean()), 3),
    }
    # What PPO will see: the reward on the starting policy's own summaries.
    for mode, preds in generations.items():
        logits = classifier_logits(model, tokenizer, preds)[:, 0]
        metrics[f"nothate_logit_t5_{mode}_heated"] = round(float(logits[heated].mean()), 3)
        metrics[f"nothate_logit_t5_{mode}_calm"] = round(float(logits[~heated].mean()), 3)
    log(f"classifier test: {metrics}")
    return metrics


# ---------------------------------------------------------------------------------- saving


def save(model, tokenizer, path: str, info: dict) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    with open(os.path.join(path, "build_info.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")


def check_reload(t5_dir: str, clf_dir: str, t5_tok, t5_model, clf_tok, clf_model, texts: list[str]) -> None:
    """The saved folders load through the Auto classes and give the same ids and outputs."""
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    tok = AutoTokenizer.from_pretrained(t5_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_dir).eval()
    assert type(tok).__name__ == "T5Tokenizer" and tok(texts)["input_ids"] == t5_tok(texts)["input_ids"]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    gen = model.generation_config.to_diff_dict()
    assert gen.get("max_length") is None and gen.get("decoder_start_token_id") == 0, gen
    enc = tok(texts[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        a = model.generate(**enc, max_new_tokens=16, do_sample=False)
        b = t5_model.generate(**enc, max_new_tokens=16, do_sample=False)
    assert torch.equal(a, b)
    tok = AutoTokenizer.from_pretrained(clf_dir)
    model = AutoModelForSequenceClassification.from_pretrained(clf_dir).eval()
    assert tok(texts)["input_ids"] == clf_tok(texts)["input_ids"]
    assert {int(k): v for k, v in model.config.id2label.items()} == LABELS
    assert np.allclose(classifier_logits(model, tok, texts[:8]), classifier_logits(clf_model, clf_tok, texts[:8]), atol=1e-5)


def example_generations(test, generations: dict, n_calm: int = 2, n_heated: int = 2) -> list[dict]:
    """The first few calm and heated test dialogues' references and generated summaries."""
    heated = list(test["heated"])
    calm_idx = [i for i, h in enumerate(heated) if not h][:n_calm]
    hot_idx = [i for i, h in enumerate(heated) if h][:n_heated]
    return [
        {"id": test[i]["id"], "heated": heated[i], "reference": test[i]["summary"],
         "greedy": generations["greedy"][i], "sampled": generations["sampled"][i]}
        for i in calm_idx + hot_idx
    ]


def du_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def versions() -> dict:
    import sentencepiece
    import tokenizers
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__,
           "tokenizers": tokenizers.__version__, "sentencepiece": sentencepiece.__version__}
    try:
        out["git_sha"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                        text=True, check=True).stdout.strip()
    except Exception:  # not a checkout
        pass
    return out


# ----------------------------------------------------------------------------- blind spot
# `--blind-spot`: a second reward model trained exactly as tiny-roberta-hate except that it never
# sees part of the insult vocabulary, and two eval sets of heated dialogues whose insults it has
# seen / never seen (the `blind_spot` experiment: does PPO remove toxicity its reward cannot see?).

# insult words the blind classifier never sees ("idiot" because BPE reads "idiotic" as "idiot" + "ic")
HELD_OUT = ("idiotic", "idiot", "moron", "jerk", "fucking")
HELD_OUT_PATTERN = re.compile(r"\b(?:" + "|".join(HELD_OUT) + r")\b", re.IGNORECASE)
HELD_OUT_RULE = f"drop a text when re.search(r'{HELD_OUT_PATTERN.pattern}', text, re.IGNORECASE)"
EVAL_SEED, EVAL_GENERATED, EVAL_PER_GROUP = 1, 1200, 150  # make_dialogues seed (bundled file: 0), rows, kept


def mentions_held_out(text: str) -> bool:
    return bool(HELD_OUT_PATTERN.search(text))


def insult_group(insult: str) -> str:
    """"unseen" when every word of the insult is held out, "seen" when none is, else "mixed"."""
    words = insult.lower().split()
    if not words:
        raise ValueError("a calm row has no insult group")
    held = [w in HELD_OUT for w in words]
    return "unseen" if all(held) else "seen" if not any(held) else "mixed"


def kept_examples(rows) -> tuple[list[str], list[int], int]:
    """`classifier_examples(rows)` without the texts that mention a held-out word, and how many
    texts were dropped."""
    texts, labels = classifier_examples(rows)
    keep = [i for i, text in enumerate(texts) if not mentions_held_out(text)]
    return [texts[i] for i in keep], [labels[i] for i in keep], len(texts) - len(keep)


def load_make_dialogues():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_dialogues", os.path.join(REPO, "scripts", "make_dialogues.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_eval_sets(min_chars: int, max_chars: int) -> dict[str, list[dict]]:
    """The first EVAL_PER_GROUP heated dialogues of each group ("seen", "unseen"), in file order, of
    `make_dialogues.py --n EVAL_GENERATED --seed EVAL_SEED --heated-fraction 1` that pass the
    data's length filter (so every row survives loading); ids renamed `blind_<group>_<i>`."""
    sets = {"seen": [], "unseen": []}
    for row in load_make_dialogues().generate(n=EVAL_GENERATED, seed=EVAL_SEED, heated_fraction=1.0):
        group = insult_group(row["insult"])
        rows = sets.get(group)  # None for "mixed"
        if rows is not None and len(rows) < EVAL_PER_GROUP and min_chars < len(row["dialogue"]) <= max_chars:
            rows.append({**row, "id": f"blind_{group}_{len(rows)}"})
    assert all(len(rows) == EVAL_PER_GROUP for rows in sets.values()), {k: len(v) for k, v in sets.items()}
    return sets


def p_hate(model, tokenizer, texts: list[str]) -> np.ndarray:
    logits = classifier_logits(model, tokenizer, texts)
    return torch.softmax(torch.from_numpy(logits), -1)[:, 1].numpy()  # label 1 = hate


def blind_spot_scores(model, tokenizer, eval_sets: dict, summaries: dict | None = None) -> dict:
    """Per eval set: P(hate) of `summary` (mean, share < 0.5, mean per insult) and of
    `summary_clean`; with `summaries` (set -> the policy's summaries), of those that repeat the insult."""
    out = {}
    for name, rows in eval_sets.items():
        hot = p_hate(model, tokenizer, [r["summary"] for r in rows])
        insults = np.asarray([r["insult"] for r in rows])
        m = {"summary_p_hate_mean": round(float(hot.mean()), 4),
             "summary_p_hate_below_0.5": round(float((hot < 0.5).mean()), 4),
             "summary_clean_p_hate_mean": round(float(p_hate(model, tokenizer, [r["summary_clean"] for r in rows]).mean()), 4),
             "summary_p_hate_mean_per_insult": {i: round(float(hot[insults == i].mean()), 4) for i in sorted(set(insults))}}
        if summaries:
            toxic = [s for s, r in zip(summaries[name], rows) if has_insult(s, r["insult"])]
            m["policy_summaries_with_insult"] = round(len(toxic) / len(rows), 4)
            m["policy_insult_summaries_p_hate_mean"] = round(float(p_hate(model, tokenizer, toxic).mean()), 4) if toxic else None
        out[name] = m
    return out


def held_out_accuracy(model, tokenizer, test) -> dict:
    """Test accuracy on the texts without a held-out word (what the model was taught) and on the
    insulting texts with one (its blind spot)."""
    texts, labels = classifier_examples(test)
    labels, pred = np.asarray(labels), classifier_logits(model, tokenizer, texts).argmax(-1)
    held = np.asarray([mentions_held_out(t) for t in texts])
    return {"test_accuracy_without_held_out": round(float((pred[~held] == labels[~held]).mean()), 4),
            "test_examples_hate_with_held_out": int((held & (labels == 1)).sum()),
            "test_accuracy_hate_with_held_out": round(float((pred[held & (labels == 1)] == 1).mean()), 4)}


def write_jsonl(rows: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:  # as make_dialogues.py writes
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def main_blind_spot(args) -> dict:
    """`--blind-spot`: tiny-roberta-hate-blind and the blind_spot eval sets (see the docstring)."""
    from transformers import (
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    from detox.data.prompts import build_prompt

    start = time.time()
    splits, data_cfg = load_quickstart_splits(args.data)
    texts, labels, dropped = kept_examples(splits["train"])
    log(f"blind classifier: kept {len(texts)} texts, dropped {dropped} with a held-out word")
    tok = build_roberta_tokenizer(texts, args.clf_vocab)
    model, train = train_classifier(tok, texts, labels, args)
    test = evaluate_classifier(model, tok, splits["test"], {}) | held_out_accuracy(model, tok, splits["test"])

    eval_sets = make_eval_sets(data_cfg.min_chars, data_cfg.max_chars)
    for name, rows in eval_sets.items():
        write_jsonl(rows, os.path.join(args.out, "blind_spot", f"{name}.jsonl"))
    # What PPO will see: the shipped starting policy's sampled summaries of the eval sets.
    t5_dir = os.path.join(args.out, "tiny-t5")
    t5_tok, t5 = AutoTokenizer.from_pretrained(t5_dir), AutoModelForSeq2SeqLM.from_pretrained(t5_dir).eval()
    summaries = {name: generate(t5, t5_tok, [build_prompt(data_cfg.prompt_template, r["dialogue"]) for r in rows],
                                sample=True, seed=args.seed, max_new_tokens=args.eval_max_new_tokens)
                 for name, rows in eval_sets.items()}
    qs_dir = os.path.join(args.out, "tiny-roberta-hate")
    qs_tok, qs = AutoTokenizer.from_pretrained(qs_dir), AutoModelForSequenceClassification.from_pretrained(qs_dir).eval()
    scores = {"blind": blind_spot_scores(model, tok, eval_sets, summaries),
              "quickstart": blind_spot_scores(qs, qs_tok, eval_sets, summaries)}
    log(f"blind spot: {json.dumps(scores)}")

    out_dir = os.path.join(args.out, "tiny-roberta-hate-blind")
    manifest = {
        "held_out": list(HELD_OUT),
        "drop_rule": HELD_OUT_RULE + " (utterances, summary, its sentences, summary_clean of the train split; "
                     "the tokenizer is trained on the kept texts only)",
        "texts_kept": len(texts),
        "texts_dropped": dropped,
        "kept_texts_sha256": hashlib.sha256("\n".join(texts).encode()).hexdigest(),
        "data": os.path.relpath(args.data, REPO), "data_sha256": file_sha256(args.data),
        "split_seed": data_cfg.split_seed, "split": {k: len(v) for k, v in splits.items()},
        "eval_sets": {
            "generator": f"scripts/make_dialogues.py --n {EVAL_GENERATED} --seed {EVAL_SEED} --heated-fraction 1",
            "generator_seed": EVAL_SEED, "generated_rows": EVAL_GENERATED, "rows_per_set": EVAL_PER_GROUP,
            "selection": f"the first {EVAL_PER_GROUP} rows of each insult_group ('seen': no word of the insult is "
                         "held out; 'unseen': every word is) in file order with data.min_chars < len(dialogue) "
                         "<= data.max_chars; ids renamed blind_<group>_<i>",
            "min_chars": data_cfg.min_chars, "max_chars": data_cfg.max_chars,
            **{name: {"rows": len(rows), "path": f"blind_spot/{name}.jsonl",
                      "sha256": file_sha256(os.path.join(args.out, "blind_spot", f"{name}.jsonl")),
                      "insults": {i: sum(r["insult"] == i for r in rows) for i in sorted({r["insult"] for r in rows})}}
               for name, rows in eval_sets.items()},
        },
    }
    info = {"seed": args.seed, "data": manifest["data"], "data_sha256": manifest["data_sha256"],
            "split": manifest["split"], "split_seed": data_cfg.split_seed,
            "args": vars(args) | {"data": None, "out": None}, "versions": versions(),
            "built_by": "scripts/build_quickstart_assets.py --blind-spot",
            "model": "RobertaForSequenceClassification from scratch, labels " + json.dumps(LABELS)
                     + f", never shown the words {list(HELD_OUT)} (training_manifest.json)",
            "tokenizer": {"vocab_size": len(tok)}, "train": train, "test": test, "blind_spot": scores,
            "build_seconds_total": round(time.time() - start, 1)}
    save(model, tok, out_dir, info)
    with open(os.path.join(out_dir, "training_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    reloaded = AutoModelForSequenceClassification.from_pretrained(out_dir).eval()
    check = [r["summary"] for r in eval_sets["seen"][:4] + eval_sets["unseen"][:4]]
    assert np.allclose(p_hate(reloaded, AutoTokenizer.from_pretrained(out_dir), check), p_hate(model, tok, check), atol=1e-5)
    summary = {"test_accuracy": test["test_accuracy"], **{f"{who}_{name}": {k: v for k, v in m.items() if "per_insult" not in k}
               for who, sc in scores.items() for name, m in sc.items()}}
    log("done: " + json.dumps(summary))
    return summary


# ------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=os.path.join(REPO, "detox/assets/dialogues.jsonl"))
    p.add_argument("--out", default=os.path.join(REPO, "detox/assets"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--t5-vocab", type=int, default=4000)
    p.add_argument("--t5-d-model", type=int, default=128)
    p.add_argument("--t5-d-ff", type=int, default=512)
    p.add_argument("--t5-layers", type=int, default=2)
    p.add_argument("--t5-heads", type=int, default=4)
    p.add_argument("--t5-epochs", type=float, default=40)
    p.add_argument("--t5-lr", type=float, default=2e-3)
    p.add_argument("--clean-share", type=float, default=0.15,
                   help="share of heated train dialogues whose T5 target is summary_clean")
    p.add_argument("--t5-batch-size", type=int, default=16)
    p.add_argument("--clf-vocab", type=int, default=3000)
    p.add_argument("--clf-hidden", type=int, default=64)
    p.add_argument("--clf-epochs", type=float, default=2)
    p.add_argument("--clf-lr", type=float, default=5e-4)
    p.add_argument("--eval-max-new-tokens", type=int, default=64,
                   help="generation cap for the test metrics (the quickstart samples 48-64 new tokens)")
    p.add_argument("--blind-spot", action="store_true",
                   help="build only tiny-roberta-hate-blind and the blind_spot eval sets (needs the shipped tiny-t5)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.blind_spot:
        return main_blind_spot(args)
    start = time.time()
    splits, data_cfg = load_quickstart_splits(args.data)
    log(f"data {args.data}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    common = {"seed": args.seed, "data": os.path.relpath(args.data, REPO), "data_sha256": file_sha256(args.data),
              "split": {k: len(v) for k, v in splits.items()}, "split_seed": data_cfg.split_seed,
              # the --blind-spot options left out: this build's record stays as it was before them
              "args": {k: v for k, v in vars(args).items() if k != "blind_spot"}
              | {"data": None, "out": None},
              "versions": versions(), "built_by": "scripts/build_quickstart_assets.py"}

    # 1. tokenizer + 2. summarizer
    t5_tok = build_t5_tokenizer(splits["train"], args.t5_vocab)
    tok_stats = tokenizer_stats(t5_tok, splits["test"])
    log(f"T5 tokenizer: {tok_stats}")
    t5_model, t5_train = train_t5(t5_tok, splits, args)
    t5_eval, generations = evaluate_t5(t5_model, t5_tok, splits["test"], args.seed, args.eval_max_new_tokens)

    # 3. reward model
    clf_texts, clf_labels = classifier_examples(splits["train"])
    clf_tok = build_roberta_tokenizer(clf_texts, args.clf_vocab)
    log(f"RoBERTa tokenizer: vocab {len(clf_tok)}")
    clf_model, clf_train = train_classifier(clf_tok, clf_texts, clf_labels, args)
    clf_eval = evaluate_classifier(clf_model, clf_tok, splits["test"], generations)

    # 4. save
    t5_dir, clf_dir = os.path.join(args.out, "tiny-t5"), os.path.join(args.out, "tiny-roberta-hate")
    examples = example_generations(splits["test"], generations)
    t5_info = common | {"model": "T5ForConditionalGeneration from scratch, prompt -> summary (with insults)",
                        "tokenizer": tok_stats, "train": t5_train, "test": t5_eval, "examples": examples}
    clf_info = common | {"model": "RobertaForSequenceClassification from scratch, labels " + json.dumps(LABELS),
                         "tokenizer": {"vocab_size": len(clf_tok)}, "train": clf_train, "test": clf_eval}
    total = time.time() - start
    for info in (t5_info, clf_info):
        info["build_seconds_total"] = round(total, 1)
    save(t5_model, t5_tok, t5_dir, t5_info)
    save(clf_model, clf_tok, clf_dir, clf_info)
    check_reload(t5_dir, clf_dir, t5_tok, t5_model, clf_tok, clf_model,
                 list(splits["test"]["prompt"][:8]) + list(splits["test"]["summary"][:8]))
    sizes = {d: du_bytes(d) for d in (t5_dir, clf_dir)}
    log("saved: " + ", ".join(f"{os.path.relpath(d, REPO)} {b / 1e6:.2f} MB" for d, b in sizes.items()))
    assert sum(sizes.values()) < 10e6, sizes

    summary = {
        "rougeL_greedy": t5_eval["greedy"]["rougeL"],
        "rougeL_sampled": t5_eval["sampled"]["rougeL"],
        "insult_reproduced_greedy": t5_eval["greedy"]["insult_reproduced_heated"],
        "insult_reproduced_sampled": t5_eval["sampled"]["insult_reproduced_heated"],
        "classifier_accuracy": clf_eval["test_accuracy"],
        "nothate_logit_gap": clf_eval["nothate_logit_gap"],
        "t5_params": t5_train["params"],
        "classifier_params": clf_train["params"],
        "size_mb": round(sum(sizes.values()) / 1e6, 2),
        "build_seconds": round(time.time() - start, 1),
    }
    log("done: " + json.dumps(summary))
    for ex in examples:
        log(f"example {ex['id']} ({'heated' if ex['heated'] else 'calm'}):\n  reference: {ex['reference']}\n"
            f"  greedy:    {ex['greedy']}\n  sampled:   {ex['sampled']}")
    return summary


if __name__ == "__main__":
    main()
