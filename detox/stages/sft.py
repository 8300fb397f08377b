"""stage=sft: supervised fine-tuning of the policy on dialogue -> summary pairs.

The recipe's PPO started from a summarizer that had been LoRA-fine-tuned on DialogSum in an
earlier step (r 32, alpha 32, q/v, dropout 0.05: the `lora` group's default). This stage is
that step, for any base model and data: the same loaders as PPO (`detox.policy`,
`detox.data.load_splits`, so the same prompt template and split), LoRA by default or full
fine-tuning with `lora.enabled=false`, trained by transformers' `Seq2SeqTrainer`. (TRL's
`SFTTrainer` builds decoder-only batches, prompt and completion concatenated into one
`input_ids`, so it does not fit an encoder-decoder model.)

ROUGE against the reference summaries is measured on the test split before and after
training (greedy, batched). The run dir gets:

  final/adapter/ or final/model/   the LoRA adapter (peft) or the full model, plus the tokenizer;
                                   written to a temp dir and renamed into place
  sft_trainer/                     Seq2SeqTrainer's output dir (its checkpoints if sft.save_steps > 0)
  metrics.jsonl                    the trainer's logs: train/loss, train/learning_rate, ... by step
  sft_samples.jsonl                per test dialogue: id, reference, summary before and after
  results.json                     status, ROUGE before/after, training figures, artifact, next command

A PPO run starts from the result with `policy.adapter=<run>/final/adapter` (kept frozen, the
reference is base + that adapter) or, after full fine-tuning, `policy.name_or_path=<run>/final/model`;
the stage prints that command line.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import time

import numpy as np
import torch
from datasets import Dataset
from omegaconf import DictConfig
from transformers import SchedulerType, set_seed

from detox.algo.metrics import ROUGE_KEYS, rouge
from detox.core.atomic import atomic_dir, atomic_write_jsonl
from detox.core.errors import ConfigError, DataError
from detox.core.overrides import hydra_overrides, override_key, under
from detox.core.run_dir import FINAL_DIR, SFT_SAMPLES_FILE, SFT_TRAINER_DIR
from detox.data.prompts import fit_prompts
from detox.data.splits import load_splits
from detox.models.assembly import (
    assemble_policy,
    enable_gradient_checkpointing,
    load_adapter,
    load_base_model,
    load_tokenizer,
)
from detox.models.generation import (
    decode_responses,
    generate_batches,
    model_generation_config,
)
from detox.models.policy import TRAIN_ADAPTER, count_parameters
from detox.runtime.distributed import resolve_device
from detox.runtime.results import Results, model_provenance, provenance
from detox.runtime.run_lock import RunLock
from detox.runtime.tracking import Tracking
from detox.stages.common import JobRecord, config_dict, should_resume
from detox.stages.sft_trainer import fine_tune, last_trainer_checkpoint, seq2seq_trainer

log = logging.getLogger("detox")
# Overrides of the SFT command that do not carry over to the follow-up PPO command.
NOT_CARRIED = ("stage", "sft", "experiment", "lora", "hydra", "output_dir", "run_dir", "resume",
               "policy.name_or_path", "policy.adapter")


# ------------------------------------------------------------------------------------- data


def with_summaries(rows: Dataset, column: str, split: str) -> Dataset:
    """Rows whose reference summary is non-empty; a clear error if none are."""
    keep = [i for i, s in enumerate(rows[column]) if isinstance(s, str) and s.strip()]
    if not keep:
        raise DataError(f"the {split} split has no non-empty `{column}` (data.summary_column): nothing to "
                        "fine-tune on or compare with.")
    if len(keep) < len(rows):
        log.warning("%s split: dropped %d rows with an empty `%s`", split, len(rows) - len(keep), column)
    return rows.select(keep)


# ----------------------------------------------------------------------------------- model


def build_model(cfg: DictConfig):
    """The base model through PPO's own loader; LoRA: PPO's fresh adapter (`assemble_policy`, no
    starting adapter), so the adapter has exactly the shape a PPO run would build."""
    if cfg.lora.enabled:
        model = assemble_policy(cfg.policy, cfg.lora).model
        if cfg.policy.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        return model
    # Full fine-tuning keeps fp32 weights; a half policy.dtype is the compute dtype (the trainer's
    # bf16/fp16 autocast), since AdamW's small updates round away in half-precision weights.
    return load_base_model(cfg.policy, dtype="float32")


@torch.no_grad()
def greedy_summaries(model, tokenizer, prompts: list[str], cfg: DictConfig, device) -> list[str]:
    """Greedy, batched; each summary cut after its first EOS."""
    gen = model_generation_config(cfg.generation, model, greedy=True)
    was_training = model.training
    model.eval()
    out = []
    for batch in generate_batches(model, tokenizer, prompts, gen, cfg.sft.eval_batch_size, cfg.data.max_input_tokens,
                                  cfg.sft.eval_max_new_tokens, device):
        out += decode_responses(tokenizer, batch)[0]
    model.train(was_training)
    return out


def rouge_means(predictions: list[str], references: list[str], variant: str) -> dict[str, float]:
    scores = rouge(predictions, references)
    return {f"eval/{variant}/{k}": round(float(np.mean(scores[k])), 4) for k in ROUGE_KEYS}


def save_artifact(model, tokenizer, final_dir: str, lora: bool) -> str:
    """final/adapter (peft) or final/model (full) with the tokenizer, renamed into place at once."""
    name = "adapter" if lora else "model"
    with atomic_dir(final_dir) as tmp:
        model.save_pretrained(os.path.join(tmp, name))
        tokenizer.save_pretrained(os.path.join(tmp, name))
    return os.path.join(final_dir, name)


def load_artifact(cfg: DictConfig, path: str):
    """The fine-tuned model back from `save_artifact`'s folder, through PPO's loaders."""
    if cfg.lora.enabled:
        return load_adapter(load_base_model(cfg.policy), path, TRAIN_ADAPTER, trainable=False)
    policy_cfg = cfg.policy.copy()
    policy_cfg.name_or_path = path
    return load_base_model(policy_cfg)


# --------------------------------------------------------------------------------- command


def follow_up_command(cfg: DictConfig, artifact: str, overrides: list[str]) -> str:
    """The PPO command that starts from this run's result: the SFT command's data / policy /
    training overrides carried over, plus the new starting point."""
    words = ["detox"]
    if cfg.sft.ppo_experiment:
        words.append(f"experiment={cfg.sft.ppo_experiment}")
    words += [o for o in overrides if not under(override_key(o), NOT_CARRIED)]
    artifact = os.path.abspath(artifact)
    if cfg.lora.enabled:
        base = cfg.policy.name_or_path
        words += [f"policy.name_or_path={os.path.abspath(base) if os.path.exists(base) else base}",
                  f"policy.adapter={artifact}"]
    else:
        words.append(f"policy.name_or_path={artifact}")
    return " ".join(shlex.quote(w) for w in words)


# ------------------------------------------------------------------------------------ stage


def run_sft(cfg: DictConfig) -> float:
    """Fine-tune, evaluate before/after, save; return the test ROUGE-L after training.

    A finished artifact is never retrained (its ROUGE is re-measured unless results.json says
    the run is done); a trainer checkpoint is continued."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    with RunLock(cfg.output_dir, "sft"):
        return _run_sft(cfg)


def _check(cfg: DictConfig) -> None:
    if not cfg.lora.enabled and cfg.policy.dtype == "float16" and resolve_device(cfg.device).type == "cpu":
        raise ConfigError("stage=sft full fine-tuning with policy.dtype=float16 needs a GPU (fp16 autocast); on a "
                          "CPU use policy.dtype=bfloat16 or float32.")
    if cfg.sft.lr_scheduler not in {t.value for t in SchedulerType}:
        raise ConfigError(f"sft.lr_scheduler={cfg.sft.lr_scheduler!r} is unknown; use one of "
                          f"{sorted(t.value for t in SchedulerType)}.")


def _run_sft(cfg: DictConfig) -> float:
    _check(cfg)
    run_dir = cfg.output_dir
    artifact = os.path.join(run_dir, FINAL_DIR, "adapter" if cfg.lora.enabled else "model")
    previous = Results.reopen(run_dir).data
    finished = os.path.isdir(artifact)
    checkpoint = None if finished else last_trainer_checkpoint(os.path.join(run_dir, SFT_TRAINER_DIR))
    should_resume(cfg.resume, run_dir, bool(finished or checkpoint), bool(finished or checkpoint or previous),
                  what="SFT checkpoint or final/ artifact")
    overrides = hydra_overrides()
    command = follow_up_command(cfg, artifact, overrides)
    if finished and previous.get("status") == "done":
        log.info("run dir %s already holds a finished SFT run (%s); nothing to do", run_dir, artifact)
        _print_done(run_dir, artifact, previous.get("eval") or {}, command, cfg.lora.enabled)
        return (previous.get("eval") or {}).get("eval/after/rougeL")
    config = config_dict(cfg)
    results = Results(run_dir, overrides, config)
    with JobRecord(results) as job:
        results.update(next_command=command)
        figures = _fine_tune_and_measure(cfg, job, results, config, artifact, checkpoint, previous)
        results.done(eval=figures)
        job.tracker.finish(0)
    _print_done(run_dir, artifact, figures, command, cfg.lora.enabled)
    return figures["eval/after/rougeL"]


def _fine_tune_and_measure(cfg: DictConfig, job: JobRecord, results: Results, config: dict, artifact: str,
                           checkpoint: str | None, previous: dict) -> dict:
    """ROUGE before (unless results.json has it), the fine-tuning (unless `artifact` exists), the
    artifact saved, ROUGE after; the figures."""
    run_dir, finished = cfg.output_dir, os.path.isdir(artifact)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.policy)
    train, val, test = sft_splits(cfg, tokenizer)
    model = load_artifact(cfg, artifact) if finished else build_model(cfg)
    trainable, total = count_parameters(model)
    log.info("sft: %s %s trainable of %s parameters (%.2f%%)", "LoRA" if cfg.lora.enabled else "full",
             f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    results.update(provenance=provenance(model_provenance(cfg, model.config)))
    step = int(json.load(open(os.path.join(checkpoint, "trainer_state.json")))["global_step"]) if checkpoint else 0
    job.tracker = Tracking(cfg.logger, run_dir, config, start_step=step if not finished else None)
    trainer = seq2seq_trainer(cfg, model, tokenizer, train, val, run_dir, job.tracker)
    device = trainer.args.device

    prompts, references = list(test["prompt"]), list(test[cfg.data.summary_column])
    before = {k: v for k, v in (previous.get("eval") or {}).items() if k.startswith("eval/before/")}
    predictions_before = None
    if finished and not before:
        log.warning("results.json of %s lost the ROUGE before SFT; reporting the fine-tuned model only", run_dir)
    elif not before:
        predictions_before, before = measure_rouge(model, tokenizer, prompts, references, cfg, device, "before")
    results.update(eval=before)

    train_metrics: dict = {"trainable_params": trainable, "total_params": total}
    if finished:
        train_metrics.update(previous.get("train") or {})
    else:
        train_metrics.update(fine_tune(trainer, checkpoint, with_validation=val is not None))
        model.eval()
        save_artifact(model, tokenizer, os.path.dirname(artifact), cfg.lora.enabled)
        log.info("saved %s", artifact)
    results.update(train=train_metrics, artifact={"kind": "adapter" if cfg.lora.enabled else "model",
                                                  "path": os.path.abspath(artifact)})
    predictions_after, after = measure_rouge(model, tokenizer, prompts, references, cfg, device, "after")
    figures = {**before, **after, "eval/num_samples": len(prompts)}
    if before:
        figures.update({f"eval/delta/{k}": round(after[f"eval/after/{k}"] - before[f"eval/before/{k}"], 4)
                        for k in ROUGE_KEYS})
    _write_samples(run_dir, test, cfg, predictions_before, predictions_after)
    job.tracker.summary({**figures, **{f"final/{k}": v for k, v in train_metrics.items() if isinstance(v, (int, float))}})
    return figures


def sft_splits(cfg: DictConfig, tokenizer) -> tuple[Dataset, Dataset | None, Dataset]:
    """Train, validation (None when there is none) and test rows with a reference summary;
    test cut to `sft.eval_samples`; over-long dialogues cut to fit `data.max_input_tokens`."""
    splits = fit_prompts(load_splits(cfg.data), tokenizer, cfg.data)
    log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    column = cfg.data.summary_column
    train = with_summaries(splits["train"], column, "train")
    test = with_summaries(splits["test"], column, "test")
    if cfg.sft.eval_samples is not None:
        test = test.select(range(min(cfg.sft.eval_samples, len(test))))
    val = None
    if "validation" in splits and len(splits["validation"]):
        val = with_summaries(splits["validation"], column, "validation")
    return train, val, test


def measure_rouge(model, tokenizer, prompts: list[str], references: list[str], cfg: DictConfig, device,
                  variant: str) -> tuple[list[str], dict[str, float]]:
    """Greedy summaries of the test prompts and their mean ROUGE as `eval/<variant>/...`."""
    start = time.time()
    predictions = greedy_summaries(model, tokenizer, prompts, cfg, device)
    figures = rouge_means(predictions, references, variant)
    log.info("%s SFT, %d test dialogues (greedy, %.0fs): %s", variant, len(prompts), time.time() - start, figures)
    return predictions, figures


def _write_samples(run_dir: str, test: Dataset, cfg: DictConfig, before: list[str] | None, after: list[str]) -> None:
    id_col = cfg.data.id_column
    rows = [{"id": row[id_col] if id_col else i, "reference": row[cfg.data.summary_column],
             "before": before[i] if before is not None else None, "after": after[i]} for i, row in enumerate(test)]
    atomic_write_jsonl(os.path.join(run_dir, SFT_SAMPLES_FILE), rows)


def _print_done(run_dir: str, artifact: str, figures: dict, command: str, lora: bool) -> None:
    what = "LoRA adapter" if lora else "full model"
    rouge_line = ""
    if "eval/after/rougeL" in figures:
        rouge_line = (f"\n  test ROUGE-L (greedy, {figures.get('eval/num_samples')} dialogues): "
                      f"{figures.get('eval/before/rougeL')} -> {figures['eval/after/rougeL']}")
    print(f"\ndetox: SFT run dir {os.path.abspath(run_dir)}\n"
          f"  {os.path.relpath(artifact, run_dir)} ({what} + tokenizer), results.json, metrics.jsonl, {SFT_SAMPLES_FILE}"
          f"{rouge_line}\n"
          f"PPO from this summarizer:\n  {command}")
