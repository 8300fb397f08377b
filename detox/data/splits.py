"""Dialogues: load (a hub name or a local file), check, filter, split, and add each row's
`prompt`. Filter and split follow the recipe (docs/design.md, section 1)."""

from __future__ import annotations

import logging
import os

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from omegaconf import DictConfig, OmegaConf

from detox.core.errors import DataError
from detox.core.hub import friendly_load_error
from detox.data.prompts import build_prompt

log = logging.getLogger(__name__)
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_raw(cfg: DictConfig, key: str = "data.name_or_path") -> Dataset:
    """The configured split of `cfg.name_or_path`: a hub dataset, a local file or a saved dataset
    dir; `key` names the setting in errors."""
    name = cfg.name_or_path
    ext = os.path.splitext(name)[1].lower()
    if os.path.isfile(name):
        if ext not in LOCAL_FORMATS:
            raise DataError(
                f"{key}={name!r}: unknown file type {ext!r}; use one of "
                f"{sorted(LOCAL_FORMATS)}."
            )
        try:
            ds = load_dataset(LOCAL_FORMATS[ext], data_files=name, split="train")
        except Exception as e:  # datasets raises many kinds (StopIteration, DatasetGenerationError, ...)
            with open(name, errors="replace") as f:
                lines = sum(1 for line in f if line.strip())
            if lines <= (1 if ext == ".csv" else 0):
                raise DataError(f"{key}={name!r} has no rows{' (a header alone)' if lines else ''}: "
                                "no dialogues.") from e
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise DataError(f"{key}={name!r} cannot be read as {LOCAL_FORMATS[ext]} "
                            f"({type(e).__name__}: {first}); check the file.") from e
        if len(ds) == 0:
            raise DataError(f"{key}={name!r} has no rows (a header alone?): no dialogues.")
        return ds
    if os.path.isdir(name):
        if os.path.exists(os.path.join(name, "dataset_info.json")) or os.path.exists(
            os.path.join(name, "dataset_dict.json")
        ):
            loaded = load_from_disk(name)
            return loaded[cfg.split] if isinstance(loaded, DatasetDict) else loaded
        return load_dataset(name, split=cfg.split)
    if ext in LOCAL_FORMATS or name.startswith((".", "/", "~")):
        raise DataError(f"{key}={name!r} does not exist.")
    with friendly_load_error(key, name):
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
    """Keep rows with min_chars < len(dialogue) <= max_chars (the recipe's filter); say how many
    rows went and why (a row without a dialogue, null or blank, is never kept)."""
    texts = ds[column]
    lengths = np.array([len(x or "") for x in texts])
    blank = np.array([not (x or "").strip() for x in texts])
    keep = np.flatnonzero((lengths > min_chars) & (lengths <= max_chars) & ~blank)
    if blank.any():
        log.warning("data: dropped %d of %d rows with no %s (null or blank)", int(blank.sum()), len(ds), column)
    outside = len(ds) - len(keep) - int(blank.sum())
    if outside:
        log.info("data: dropped %d rows outside %d < len(%s) <= %d (data.min_chars / data.max_chars)", outside,
                 min_chars, column, max_chars)
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


def checked_and_filtered(ds: Dataset, cfg: DictConfig, extra_columns: tuple[str, ...] = ()) -> Dataset:
    """`ds` checked (its columns, text in the text columns) and length-filtered as `data` says."""
    check_columns(ds, cfg, extra_columns)
    check_text(ds, [cfg.dialogue_column, cfg.summary_column], cfg.name_or_path)
    return filter_by_length(ds, cfg.min_chars, cfg.max_chars, cfg.dialogue_column)


def with_prompts(ds: Dataset | DatasetDict, cfg: DictConfig) -> Dataset | DatasetDict:
    """`ds` with each row's `prompt`: the template around its dialogue."""
    template, column = cfg.prompt_template, cfg.dialogue_column
    return ds.map(lambda row: {"prompt": build_prompt(template, row[column])})


def load_splits(cfg: DictConfig, extra_columns: tuple[str, ...] = ()) -> DatasetDict:
    """Load, check, filter, split and add a `prompt` column. `cfg` is the `data` config node."""
    ds = load_raw(cfg)
    if len(ds) == 0:
        raise DataError(f"dataset {cfg.name_or_path!r} (split {cfg.split!r}) has no rows: no dialogues.")
    n_raw = len(ds)
    ds = checked_and_filtered(ds, cfg, extra_columns)
    if len(ds) < 3:
        raise DataError(
            f"dataset {cfg.name_or_path!r}: {len(ds)} of {n_raw} dialogues are left after the "
            f"length filter {cfg.min_chars} < len({cfg.dialogue_column}) <= {cfg.max_chars}; "
            "widen data.min_chars / data.max_chars or check data.dialogue_column."
        )
    splits = with_prompts(split_dataset(ds, cfg.test_size, cfg.val_size, cfg.shuffle, cfg.split_seed), cfg)
    if len(splits["train"]) == 0:
        raise DataError(f"the train split of {cfg.name_or_path!r} is empty; lower data.test_size/val_size.")
    return splits


def row_columns(rows: Dataset, cfg: DictConfig) -> dict[str, list]:
    """Dataset rows' columns as lists, for the reward components and judges that read them, with
    the dialogue and the reference summary also under `dialogue` and `summary` whatever the data
    calls them. `cfg` is the `data` config node."""
    columns = {name: list(rows[name]) for name in rows.column_names}
    for alias, column in (("dialogue", cfg.dialogue_column), ("summary", cfg.summary_column)):
        if column in columns:
            columns.setdefault(alias, columns[column])
    return columns


def load_eval_set(name: str, node: DictConfig, cfg: DictConfig, extra_columns: tuple[str, ...] = ()) -> Dataset:
    """The extra evaluation set `eval.sets.<name>` (`node`), checked and filtered as the data is
    (`cfg`: the `data` node, whose columns it must have), with its `prompt` column."""
    key = f"eval.sets.{name}.name_or_path"
    set_cfg = OmegaConf.merge(cfg, {"name_or_path": node["name_or_path"], "split": node.get("split") or "test"})
    ds = load_raw(set_cfg, key)
    try:
        ds = checked_and_filtered(ds, set_cfg, extra_columns)
    except DataError as e:
        raise DataError(f"eval.sets.{name}: {e}") from e
    if len(ds) == 0:
        raise DataError(f"eval.sets.{name}: no row of {set_cfg.name_or_path!r} is left after the length filter "
                        f"{cfg.min_chars} < len({cfg.dialogue_column}) <= {cfg.max_chars} (data.min_chars / max_chars).")
    return with_prompts(ds, cfg)
