"""Dialogues to summarize in, summaries out (`detox-generate`): a table file (.jsonl / .json /
.csv / .parquet), a plain text file (one dialogue per blank-line-separated block), or stdin
(either form: JSON lines when its first character is `{`); rows out as JSON lines, to a file
(atomically) or stdout."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from typing import Any

from detox.core.atomic import atomic_write_text
from detox.core.errors import DataError

TABLES = (".jsonl", ".json", ".csv", ".parquet")
STDIN = "-"


def read_dialogues(source: str | None, column: str, id_column: str | None, *, column_key: str,
                   id_key: str) -> list[dict[str, Any]]:
    """[{"id", "dialogue"}] from `source` (None or "-": stdin). Ids come from `id_column` when
    the table has it, else they are the row numbers (0-based). `column_key` / `id_key` name
    the settings in messages (`--column`, `data.dialogue_column`)."""
    name = "stdin" if source in (None, STDIN) else source
    if source in (None, STDIN):
        text = sys.stdin.read()
        table = text.lstrip().startswith("{")
        rows = _json_lines(text, name) if table else _blocks(text)
    else:
        if not os.path.isfile(source):
            raise DataError(f"{source!r} does not exist (or is not a file): pass a .jsonl / .csv / .parquet file of "
                            "dialogues, a text file with one dialogue per blank-line-separated block, or - for stdin.")
        ext = os.path.splitext(source)[1].lower()
        table = ext in TABLES
        rows = _read_table(source, ext) if table else _blocks(_read_text(source))
    if not rows:
        raise DataError(f"{name} holds no dialogues (it is empty); nothing to summarize.")
    if not table:  # plain text: the blocks are the dialogues, numbered
        return [{"id": i, "dialogue": block} for i, block in enumerate(rows)]
    return _select(rows, name, column, id_column, column_key, id_key)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path!r} is not UTF-8 text ({e.reason} at byte {e.start}); pass a .jsonl / .csv / "
                        ".parquet file, or a UTF-8 text file with one dialogue per blank-line-separated block.") from e


def _blocks(text: str) -> list[str]:
    """One dialogue per block of lines; blocks are separated by (whitespace-only) blank lines."""
    blocks = re.split(r"\n(?:[ \t]*\n)+", text.replace("\r\n", "\n"))
    return [block.strip() for block in blocks if block.strip()]


def _json_lines(text: str, name: str) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{name} line {number} is not JSON ({e}); each line must be one JSON object.") from e
        if not isinstance(row, dict):
            raise DataError(f"{name} line {number} is a JSON {type(row).__name__}, not an object; each line must be "
                            'one JSON object, e.g. {"id": 1, "dialogue": "..."}.')
        rows.append(row)
    return rows


def _read_table(path: str, ext: str) -> list[dict[str, Any]]:
    if ext == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow's errors for a damaged or non-parquet file
            raise DataError(f"{path!r} cannot be read as parquet ({type(e).__name__}: {e}).") from e
    text = _read_text(path)
    if ext == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    if ext == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except ValueError as e:
            raise DataError(f"{path!r} is not valid JSON ({e}).") from e
        if not all(isinstance(row, dict) for row in rows):
            raise DataError(f"{path!r} must hold a list of JSON objects, one per dialogue.")
        return rows
    return _json_lines(text, path)


def _select(rows: list[dict], name: str, column: str, id_column: str | None, column_key: str,
            id_key: str) -> list[dict[str, Any]]:
    columns = list(rows[0])
    missing = [i for i, row in enumerate(rows) if column not in row]
    if missing:
        raise DataError(f"{name} has no column {column!r}" + (f" in row {missing[0]}" if len(missing) < len(rows) else "")
                        + f"; its columns are {columns}. Set {column_key} to the column holding the dialogues.")
    with_ids = bool(id_column) and all(id_column in row for row in rows)
    if id_column and not with_ids and any(id_column in row for row in rows):
        raise DataError(f"{name}: some rows have no {id_column!r}; give every row an id, or set {id_key} to another "
                        "column.")
    out = []
    for i, row in enumerate(rows):
        dialogue = row[column]
        if not isinstance(dialogue, str) or not dialogue.strip():
            what = "is empty" if isinstance(dialogue, str) or dialogue is None else f"is a {type(dialogue).__name__}"
            raise DataError(f"{name} row {i}: the dialogue ({column!r}) {what}; every row needs the dialogue's text.")
        out.append({"id": row[id_column] if with_ids else i, "dialogue": dialogue})
    return out


def write_rows(rows: list[dict], destination: str | None) -> None:
    """JSON lines to `destination` (written atomically), or to stdout (None or "-")."""
    if destination in (None, STDIN):
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()
        return
    atomic_write_text(destination, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))
