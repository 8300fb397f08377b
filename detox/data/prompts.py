"""Prompts: the template around a dialogue, and a prompt fitted into the input limit by
cutting the END of its dialogue, never the template's text."""

from __future__ import annotations

import logging

from datasets import DatasetDict
from omegaconf import DictConfig

from detox.core.errors import ConfigError

log = logging.getLogger(__name__)


def build_prompt(template: str, dialogue: str) -> str:
    return template.format(dialogue=dialogue)


def check_prompt_room(tokenizer, template: str, limit: int, key: str = "data.max_input_tokens") -> None:
    """The template alone must leave room for a dialogue within `limit` tokens (`key`: the setting)."""
    overhead = len(tokenizer(build_prompt(template, ""))["input_ids"])
    if overhead >= limit:
        raise ConfigError(f"{key}={limit} leaves no room for the dialogue: the prompt template alone "
                          f"is {overhead} tokens. Raise {key} (the recipe: 512).")


def fit_prompt(tokenizer, template: str, dialogue: str, limit: int) -> tuple[str, bool]:
    """The prompt of `dialogue` in at most `limit` tokens, and whether the dialogue was cut: a
    prompt too long loses the END of its dialogue, never the template's text around it (the
    closing "Summary:" instruction)."""
    prompt = build_prompt(template, dialogue)
    excess = len(tokenizer(prompt)["input_ids"]) - limit
    if excess <= 0:
        return prompt, False
    ids = tokenizer(dialogue, add_special_tokens=False)["input_ids"]
    keep = max(len(ids) - excess, 0)
    while True:  # decoding and re-encoding can merge tokens at the cut: shrink until it fits
        prompt = build_prompt(template, tokenizer.decode(ids[:keep], skip_special_tokens=True))
        if len(tokenizer(prompt)["input_ids"]) <= limit or keep == 0:
            return prompt, True
        keep -= 1


def warn_cut(cut: int, total: int, limit: int) -> None:
    if cut:
        log.warning("%d of %d prompts were longer than data.max_input_tokens=%d: their dialogues were cut at the "
                    "end, the template's text kept", cut, total, limit)


def fit_prompts(splits: DatasetDict, tokenizer, cfg: DictConfig) -> DatasetDict:
    """Every split's prompts fitted into `data.max_input_tokens` (`fit_prompt`), with one warning
    giving how many were cut. `cfg` is the `data` config node."""
    limit = cfg.max_input_tokens
    check_prompt_room(tokenizer, cfg.prompt_template, limit)

    def fit(row):
        prompt, cut = fit_prompt(tokenizer, cfg.prompt_template, row[cfg.dialogue_column], limit)
        return {"prompt": prompt, "_cut": cut}

    fitted = splits.map(fit)
    warn_cut(sum(sum(split["_cut"]) for split in fitted.values()), sum(len(split) for split in fitted.values()), limit)
    return fitted.remove_columns("_cut")
