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
from transformers import (DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, SchedulerType,
                          TrainerCallback, set_seed)

from detox.checkpoint import CheckpointError, atomic_dir, atomic_write_text
from detox.data import DataError, load_splits
from detox.eval_metrics import ROUGE_KEYS, rouge
from detox.policy import (TRAIN_ADAPTER, build_policy, count_parameters, load_adapter, load_base_model,
                          load_tokenizer)
from detox.results import Results, provenance
from detox.schema import ConfigError
from detox.trainer import decode_responses, generate_batches, generation_config

log = logging.getLogger("detox")
FINAL_DIR = "final"
TRAINER_DIR = "sft_trainer"
SAMPLES_FILE = "sft_samples.jsonl"
METRICS_FILE = "metrics.jsonl"
# Overrides of the SFT command that do not carry over to the follow-up PPO command.
NOT_CARRIED = ("stage", "sft", "experiment", "lora", "hydra", "output_dir", "run_dir", "resume",
               "policy.name_or_path", "policy.adapter")


# ------------------------------------------------------------------------------------- data


def encode(rows: Dataset, tokenizer, data_cfg: DictConfig, max_target_tokens: int) -> Dataset:
    """input_ids/attention_mask of the prompt and `labels` of the summary (`text_target`); the
    collator pads labels with -100, so padding never counts in the loss."""

    def fn(batch):
        enc = tokenizer(batch["prompt"], truncation=True, max_length=data_cfg.max_input_tokens)
        enc["labels"] = tokenizer(text_target=batch[data_cfg.summary_column], truncation=True,
                                  max_length=max_target_tokens)["input_ids"]
        return enc

    return rows.map(fn, batched=True, remove_columns=rows.column_names)


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
    """The base model through PPO's own loader; LoRA: PPO's fresh adapter (`build_policy`, no
    starting adapter), so the adapter has exactly the shape a PPO run would build."""
    if cfg.lora.enabled:
        return build_policy(cfg.policy, cfg.lora).model
    return load_base_model(cfg.policy)


@torch.no_grad()
def greedy_summaries(model, tokenizer, prompts: list[str], cfg: DictConfig, device) -> list[str]:
    """Greedy, batched; each summary cut after its first EOS."""
    gen = generation_config(cfg.generation, model.config)
    gen.do_sample, gen.top_k, gen.top_p, gen.temperature = False, None, None, None
    was_training = model.training
    model.eval()
    out = []
    for _, _, response_ids, mask in generate_batches(model, tokenizer, prompts, gen, cfg.sft.eval_batch_size,
                                                     cfg.data.max_input_tokens, cfg.sft.eval_max_new_tokens, device):
        out += decode_responses(tokenizer, response_ids, mask)[0]
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
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if not any(key == k or key.startswith(k + ".") for k in NOT_CARRIED):
            words.append(override)
    artifact = os.path.abspath(artifact)
    if cfg.lora.enabled:
        base = cfg.policy.name_or_path
        words += [f"policy.name_or_path={os.path.abspath(base) if os.path.exists(base) else base}",
                  f"policy.adapter={artifact}"]
    else:
        words.append(f"policy.name_or_path={artifact}")
    return " ".join(shlex.quote(w) for w in words)


# ---------------------------------------------------------------------------------- trainer


class MetricsFile(TrainerCallback):
    """The trainer's logs as metrics.jsonl rows (`step` + W&B's names: train/loss, eval/loss, ...)."""

    def __init__(self, path: str):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        row = {"step": state.global_step}
        for k, v in logs.items():
            row[f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"] = v
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def last_trainer_checkpoint(trainer_dir: str) -> str | None:
    """The newest complete `checkpoint-N` (trainer_state.json is the last file the trainer writes)."""
    if not os.path.isdir(trainer_dir):
        return None
    done = [(int(n.split("-")[1]), n) for n in os.listdir(trainer_dir)
            if n.startswith("checkpoint-") and n.split("-")[1].isdigit()
            and os.path.exists(os.path.join(trainer_dir, n, "trainer_state.json"))]
    return os.path.join(trainer_dir, max(done)[1]) if done else None


def training_arguments(cfg: DictConfig, trainer_dir: str, report_to: str) -> Seq2SeqTrainingArguments:
    from detox.stages import resolve_device

    s = cfg.sft
    cpu = resolve_device(cfg.device).type == "cpu"
    return Seq2SeqTrainingArguments(
        output_dir=trainer_dir,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=cpu,
        per_device_train_batch_size=s.batch_size,
        per_device_eval_batch_size=s.eval_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        num_train_epochs=s.epochs,
        max_steps=s.max_steps if s.max_steps is not None else -1,
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_steps,
        weight_decay=s.weight_decay,
        max_grad_norm=s.max_grad_norm,
        train_sampling_strategy="group_by_length" if s.group_by_length else "random",
        activation_checkpointing=cfg.policy.gradient_checkpointing and not cfg.lora.enabled,  # LoRA: build_policy did it
        logging_strategy="steps",
        logging_steps=s.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if s.save_steps else "no",
        save_steps=s.save_steps or 500,
        save_total_limit=1,
        eval_strategy="no",
        report_to=report_to,
        push_to_hub=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=not cpu,
        remove_unused_columns=False,
    )


# ------------------------------------------------------------------------------------ stage


def run_sft(cfg: DictConfig) -> float:
    """Fine-tune, evaluate before/after, save; return the test ROUGE-L after training."""
    from detox.stages import config_dict, hydra_overrides
    from detox.tracking import Tracker

    run_dir = cfg.output_dir
    os.makedirs(run_dir, exist_ok=True)
    final_dir = os.path.join(run_dir, FINAL_DIR)
    trainer_dir = os.path.join(run_dir, TRAINER_DIR)
    artifact = os.path.join(final_dir, "adapter" if cfg.lora.enabled else "model")
    if cfg.sft.lr_scheduler not in {t.value for t in SchedulerType}:
        raise ConfigError(f"sft.lr_scheduler={cfg.sft.lr_scheduler!r} is unknown; use one of "
                          f"{sorted(t.value for t in SchedulerType)}.")

    # Resume: a finished artifact is never retrained; a trainer checkpoint is continued.
    resume = str(cfg.resume).lower()
    previous = Results.reopen(run_dir).data
    finished = os.path.isdir(artifact)
    checkpoint = None if finished else last_trainer_checkpoint(trainer_dir)
    if resume == "false" and (finished or checkpoint or previous):
        raise CheckpointError(f"run dir {run_dir} already holds a run and resume=false; use a new "
                              "hydra.run.dir, or resume=auto to continue it.")
    if resume == "true" and not (finished or checkpoint):
        raise CheckpointError(f"resume=true but run dir {run_dir} holds no SFT checkpoint or final/ artifact.")
    overrides = hydra_overrides()
    command = follow_up_command(cfg, artifact, overrides)
    if finished and previous.get("status") == "done":
        log.info("run dir %s already holds a finished SFT run (%s); nothing to do", run_dir, artifact)
        _print_done(run_dir, artifact, previous.get("eval") or {}, command, cfg.lora.enabled)
        return (previous.get("eval") or {}).get("eval/after/rougeL")

    config = config_dict(cfg)
    results = Results(run_dir, overrides, config)
    before = {k: v for k, v in (previous.get("eval") or {}).items() if k.startswith("eval/before/")}
    tracker = None
    try:
        set_seed(cfg.seed)
        splits = load_splits(cfg.data)
        log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
        train = with_summaries(splits["train"], cfg.data.summary_column, "train")
        test = with_summaries(splits["test"], cfg.data.summary_column, "test")
        if cfg.sft.eval_samples is not None:
            test = test.select(range(min(cfg.sft.eval_samples, len(test))))
        prompts, references = list(test["prompt"]), list(test[cfg.data.summary_column])
        tokenizer = load_tokenizer(cfg.policy)
        model = load_artifact(cfg, artifact) if finished else build_model(cfg)
        trainable, total = count_parameters(model)
        log.info("sft: %s %s trainable of %s parameters (%.2f%%)", "LoRA" if cfg.lora.enabled else "full",
                 f"{trainable:,}", f"{total:,}", 100 * trainable / total)
        results.update(provenance=provenance({"policy": {
            "name_or_path": cfg.policy.name_or_path, "revision": cfg.policy.revision,
            "commit": getattr(model.config, "_commit_hash", None)}}))

        step = int(json.load(open(os.path.join(checkpoint, "trainer_state.json")))["global_step"]) if checkpoint else 0
        tracker = Tracker(cfg.logger, run_dir, config, start_step=step if not finished else None)
        train_ds = encode(train, tokenizer, cfg.data, cfg.sft.max_target_tokens)
        val_ds = None
        if "validation" in splits and len(splits["validation"]):
            val_ds = encode(with_summaries(splits["validation"], cfg.data.summary_column, "validation"),
                            tokenizer, cfg.data, cfg.sft.max_target_tokens)
        args = training_arguments(cfg, trainer_dir, "wandb" if tracker.run is not None else "none")
        trainer = Seq2SeqTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
            data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
            callbacks=[MetricsFile(os.path.join(run_dir, METRICS_FILE))],
        )
        device = trainer.args.device

        predictions_before = None
        if finished and not before:
            log.warning("results.json of %s lost the ROUGE before SFT; reporting the fine-tuned model only", run_dir)
        elif not before:
            start = time.time()
            predictions_before = greedy_summaries(model, tokenizer, prompts, cfg, device)
            before = rouge_means(predictions_before, references, "before")
            log.info("before SFT, %d test dialogues (greedy, %.0fs): %s", len(prompts), time.time() - start, before)
        results.update(eval=before)

        train_metrics: dict = {"trainable_params": trainable, "total_params": total}
        if not finished:
            if val_ds is not None and not checkpoint:
                train_metrics["val_loss_before"] = round(trainer.evaluate()["eval_loss"], 4)
            start = time.time()
            out = trainer.train(resume_from_checkpoint=checkpoint)
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            train_metrics.update(seconds=round(time.time() - start, 1), steps=trainer.state.global_step,
                                 epochs=round(trainer.state.epoch or 0.0, 3), loss_mean=round(out.training_loss, 4),
                                 loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None,
                                 resumed_from=checkpoint)
            if val_ds is not None:
                train_metrics["val_loss_after"] = round(trainer.evaluate()["eval_loss"], 4)
            model.eval()
            save_artifact(model, tokenizer, final_dir, cfg.lora.enabled)
            log.info("saved %s", artifact)
        else:
            train_metrics.update((previous.get("train") or {}))
        results.update(train=train_metrics, artifact={"kind": "adapter" if cfg.lora.enabled else "model",
                                                      "path": os.path.abspath(artifact)}, next_command=command)

        start = time.time()
        predictions_after = greedy_summaries(model, tokenizer, prompts, cfg, device)
        after = rouge_means(predictions_after, references, "after")
        log.info("after SFT (greedy, %.0fs): %s", time.time() - start, after)
        figures = {**before, **after, "eval/num_samples": len(prompts)}
        if before:
            figures.update({f"eval/delta/{k}": round(after[f"eval/after/{k}"] - before[f"eval/before/{k}"], 4)
                            for k in ROUGE_KEYS})
        _write_samples(run_dir, test, cfg, predictions_before, predictions_after)
        results.done(eval=figures)
        tracker.summary({**figures, **{f"final/{k}": v for k, v in train_metrics.items()
                                       if isinstance(v, (int, float))}})
        tracker.finish(0)
    except BaseException as e:
        results.failed(e)
        if tracker is not None:
            tracker.finish(1)
        raise
    _print_done(run_dir, artifact, figures, command, cfg.lora.enabled)
    return figures["eval/after/rougeL"]


def _write_samples(run_dir: str, test: Dataset, cfg: DictConfig, before: list[str] | None, after: list[str]) -> None:
    id_col = cfg.data.id_column
    lines = []
    for i, row in enumerate(test):
        sample = {"id": row[id_col] if id_col else i, "reference": row[cfg.data.summary_column],
                  "before": before[i] if before is not None else None, "after": after[i]}
        lines.append(json.dumps(sample) + "\n")
    atomic_write_text(os.path.join(run_dir, SAMPLES_FILE), "".join(lines))


def _print_done(run_dir: str, artifact: str, figures: dict, command: str, lora: bool) -> None:
    what = "LoRA adapter" if lora else "full model"
    rouge_line = ""
    if "eval/after/rougeL" in figures:
        rouge_line = (f"\n  test ROUGE-L (greedy, {figures.get('eval/num_samples')} dialogues): "
                      f"{figures.get('eval/before/rougeL')} -> {figures['eval/after/rougeL']}")
    print(f"\ndetox: SFT run dir {os.path.abspath(run_dir)}\n"
          f"  {os.path.relpath(artifact, run_dir)} ({what} + tokenizer), results.json, metrics.jsonl, {SAMPLES_FILE}"
          f"{rouge_line}\n"
          f"PPO from this summarizer:\n  {command}")
