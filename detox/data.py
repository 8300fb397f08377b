"""Dialogues: load (hub name or local file), filter, split, prompt, and batch prompts.

Filter, split and length caps follow the recipe (docs/design.md, section 1)."""

from __future__ import annotations

import logging
import os
from typing import Iterator

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from omegaconf import DictConfig

from detox.errors import ConfigError, DataError
from detox.hub import friendly_load_error

log = logging.getLogger(__name__)
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_raw(cfg: DictConfig) -> Dataset:
    """The configured split of `data.name_or_path`: a hub dataset, a local file or a saved dataset dir."""
    name = cfg.name_or_path
    ext = os.path.splitext(name)[1].lower()
    if os.path.isfile(name):
        if ext not in LOCAL_FORMATS:
            raise DataError(
                f"data.name_or_path={name!r}: unknown file type {ext!r}; use one of "
                f"{sorted(LOCAL_FORMATS)}."
            )
        try:
            ds = load_dataset(LOCAL_FORMATS[ext], data_files=name, split="train")
        except Exception as e:  # datasets raises many kinds (StopIteration, DatasetGenerationError, ...)
            with open(name, errors="replace") as f:
                lines = sum(1 for line in f if line.strip())
            if lines <= (1 if ext == ".csv" else 0):
                raise DataError(f"data.name_or_path={name!r} has no rows{' (a header alone)' if lines else ''}: "
                                "no dialogues.") from e
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise DataError(f"data.name_or_path={name!r} cannot be read as {LOCAL_FORMATS[ext]} "
                            f"({type(e).__name__}: {first}); check the file.") from e
        if len(ds) == 0:
            raise DataError(f"data.name_or_path={name!r} has no rows (a header alone?): no dialogues.")
        return ds
    if os.path.isdir(name):
        if os.path.exists(os.path.join(name, "dataset_info.json")) or os.path.exists(
            os.path.join(name, "dataset_dict.json")
        ):
            loaded = load_from_disk(name)
            return loaded[cfg.split] if isinstance(loaded, DatasetDict) else loaded
        return load_dataset(name, split=cfg.split)
    if ext in LOCAL_FORMATS or name.startswith((".", "/", "~")):
        raise DataError(f"data.name_or_path={name!r} does not exist.")
    with friendly_load_error("data.name_or_path", name):
        return load_dataset(name, split=cfg.split)


def check_columns(ds: Dataset, cfg: DictConfig, extra: tuple[str, ...] = ()) -> None:
    needed = [cfg.dialogue_column, cfg.summary_column, *extra]
    if cfg.id_column:
        needed.append(cfg.id_column)
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(
            f"dataset {cfg.name_or_path!r} has no column(s) {missing}; its columns are "
            f"{ds.column_names}. Set data.dialogue_column / data.summary_column / data.id_column "
            "(or eval.group_by / eval.reference_columns) to existing columns."
        )


def check_text(ds: Dataset, columns, name: str) -> None:
    """Every value of the text `columns` is a string (or missing)."""
    for column in columns:
        bad = [i for i, x in enumerate(ds[column]) if x is not None and not isinstance(x, str)]
        if bad:
            example = ds[column][bad[0]]
            raise DataError(f"dataset {name!r}: column {column!r} holds non-text values ({type(example).__name__} "
                            f"{example!r} in row {bad[0]}, {len(bad)} rows in all); it must hold strings. Point "
                            "data.dialogue_column / data.summary_column at text columns.")


def filter_by_length(ds: Dataset, min_chars: int, max_chars: int, column: str) -> Dataset:
    """Keep rows with min_chars < len(dialogue) <= max_chars (the recipe's filter)."""
    lengths = np.array([len(x or "") for x in ds[column]])
    keep = np.flatnonzero((lengths > min_chars) & (lengths <= max_chars))
    return ds.select(keep)


def split_dataset(ds: Dataset, test_size: float, val_size: float, shuffle: bool, seed: int) -> DatasetDict:
    """Deterministic train/validation/test split by `seed`; fractions of the whole set.

    test comes first (as the recipe's `train_test_split(test_size, shuffle, seed)`), validation
    from what is left, so changing val_size never changes the test split.
    """
    first = ds.train_test_split(test_size=test_size, shuffle=shuffle, seed=seed)
    splits = {"test": first["test"]}
    rest = first["train"]
    if val_size > 0:
        second = rest.train_test_split(test_size=val_size / (1 - test_size), shuffle=shuffle, seed=seed)
        rest, splits["validation"] = second["train"], second["test"]
    splits["train"] = rest
    return DatasetDict({k: splits[k] for k in ("train", "validation", "test") if k in splits})


def build_prompt(template: str, dialogue: str) -> str:
    return template.format(dialogue=dialogue)


def load_splits(cfg: DictConfig, extra_columns: tuple[str, ...] = ()) -> DatasetDict:
    """Load, check, filter, split and add a `prompt` column. `cfg` is the `data` config node."""
    ds = load_raw(cfg)
    if len(ds) == 0:
        raise DataError(f"dataset {cfg.name_or_path!r} (split {cfg.split!r}) has no rows: no dialogues.")
    check_columns(ds, cfg, extra_columns)
    check_text(ds, [cfg.dialogue_column, cfg.summary_column], cfg.name_or_path)
    n_raw = len(ds)
    ds = filter_by_length(ds, cfg.min_chars, cfg.max_chars, cfg.dialogue_column)
    if len(ds) < 3:
        raise DataError(
            f"dataset {cfg.name_or_path!r}: {len(ds)} of {n_raw} dialogues are left after the "
            f"length filter {cfg.min_chars} < len({cfg.dialogue_column}) <= {cfg.max_chars}; "
            "widen data.min_chars / data.max_chars or check data.dialogue_column."
        )
    splits = split_dataset(ds, cfg.test_size, cfg.val_size, cfg.shuffle, cfg.split_seed)
    template = cfg.prompt_template
    splits = splits.map(lambda row: {"prompt": build_prompt(template, row[cfg.dialogue_column])})
    if len(splits["train"]) == 0:
        raise DataError(f"the train split of {cfg.name_or_path!r} is empty; lower data.test_size/val_size.")
    return splits


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


def sample_max_new_tokens(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    """Per-prompt caps drawn uniformly from [low, high), as the recipe's LengthSampler.

    Generating a batch up to the largest cap and cutting each response at its own cap samples
    the same distribution as one-at-a-time generation: the law of a prefix does not depend on
    how long generation would have continued.
    """
    return rng.integers(low, high, size=n)


class PromptSampler:
    """Endless shuffled epochs over the train split; its state is a (epoch, position) pair."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.position = 0, 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.size)

    def next_indices(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            order = self._order()
            take = order[self.position : self.position + self.batch_size - len(out)]
            out.extend(int(i) for i in take)
            self.position += len(take)
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next_indices()
