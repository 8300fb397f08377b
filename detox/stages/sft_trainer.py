"""transformers' `Seq2SeqTrainer` set up for stage=sft: tokenized examples, the training
arguments from `sft.*`, a callback that hands its logs to the run's trackers, resuming from its own checkpoints, and the
training figures results.json records. (TRL's `SFTTrainer` builds decoder-only batches,
prompt and completion in one `input_ids`, so it does not fit an encoder-decoder model.)"""

from __future__ import annotations

import os
import time

from datasets import Dataset
from omegaconf import DictConfig
from transformers import (
    DataCollatorForSeq2Seq,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
)

from detox.core.run_dir import SFT_TRAINER_DIR
from detox.runtime.distributed import resolve_device
from detox.runtime.tracking import Tracking


def encode(rows: Dataset, tokenizer, data_cfg: DictConfig, max_target_tokens: int) -> Dataset:
    """input_ids/attention_mask of the prompt and `labels` of the summary (`text_target`); the
    collator pads labels with -100, so padding never counts in the loss."""

    def fn(batch):
        enc = tokenizer(batch["prompt"], truncation=True, max_length=data_cfg.max_input_tokens)
        enc["labels"] = tokenizer(text_target=batch[data_cfg.summary_column], truncation=True,
                                  max_length=max_target_tokens)["input_ids"]
        return enc

    return rows.map(fn, batched=True, remove_columns=rows.column_names)


class TrackingCallback(TrainerCallback):
    """The trainer's logs to the run's tracking (metrics.jsonl and every tracker), named as PPO
    names its metrics: train/loss, train/learning_rate, eval/loss, ..."""

    def __init__(self, tracking: Tracking):
        self.tracking = tracking

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        self.tracking.log({f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}": v for k, v in logs.items()},
                          state.global_step)


def last_trainer_checkpoint(trainer_dir: str) -> str | None:
    """The newest complete `checkpoint-N` (trainer_state.json is the last file the trainer writes)."""
    if not os.path.isdir(trainer_dir):
        return None
    done = [(int(n.split("-")[1]), n) for n in os.listdir(trainer_dir)
            if n.startswith("checkpoint-") and n.split("-")[1].isdigit()
            and os.path.exists(os.path.join(trainer_dir, n, "trainer_state.json"))]
    return os.path.join(trainer_dir, max(done)[1]) if done else None


def training_arguments(cfg: DictConfig, trainer_dir: str) -> Seq2SeqTrainingArguments:
    s = cfg.sft
    cpu = resolve_device(cfg.device).type == "cpu"
    return Seq2SeqTrainingArguments(
        output_dir=trainer_dir,
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=cpu,
        # full fine-tuning: fp32 weights, the half policy.dtype as autocast (see sft.build_model)
        bf16=not cfg.lora.enabled and cfg.policy.dtype == "bfloat16",
        fp16=not cfg.lora.enabled and cfg.policy.dtype == "float16",
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
        report_to="none",  # the trackers hear the trainer's logs through TrackingCallback
        push_to_hub=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=not cpu,
        remove_unused_columns=False,
    )


def seq2seq_trainer(cfg: DictConfig, model, tokenizer, train: Dataset, val: Dataset | None, run_dir: str,
                    tracking: Tracking) -> Seq2SeqTrainer:
    def encoded(rows):
        return encode(rows, tokenizer, cfg.data, cfg.sft.max_target_tokens) if rows is not None else None

    args = training_arguments(cfg, os.path.join(run_dir, SFT_TRAINER_DIR))
    return Seq2SeqTrainer(
        model=model, args=args, train_dataset=encoded(train), eval_dataset=encoded(val), processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        callbacks=[TrackingCallback(tracking)],
    )


def fine_tune(trainer: Seq2SeqTrainer, checkpoint: str | None, with_validation: bool) -> dict:
    """Train (from `checkpoint`, if any); the training figures for results.json."""
    figures: dict = {}
    if with_validation and not checkpoint:
        figures["val_loss_before"] = round(trainer.evaluate()["eval_loss"], 4)
    start = time.time()
    out = trainer.train(resume_from_checkpoint=checkpoint)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    figures.update(seconds=round(time.time() - start, 1), steps=trainer.state.global_step,
                   epochs=round(trainer.state.epoch or 0.0, 3), loss_mean=round(out.training_loss, 4),
                   loss_first=losses[0] if losses else None, loss_last=losses[-1] if losses else None,
                   resumed_from=checkpoint)
    if with_validation:
        figures["val_loss_after"] = round(trainer.evaluate()["eval_loss"], 4)
    return figures
