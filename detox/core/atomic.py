"""Atomic writes: a crash leaves the old file (or folder) or the new one, never half of one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any, Iterator


def atomic_write_text(path: str, text: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_write_jsonl(path: str, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temp file name beside `path` (same suffix, so writers that pick a format by
    extension still work); on success it replaces `path` in one rename."""
    root, ext = os.path.splitext(os.path.abspath(path))
    tmp = f"{os.path.dirname(root)}/.tmp-{os.path.basename(root)}-{os.getpid()}{ext}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temp dir beside `path`; on success it replaces `path` in one rename."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(path)}-")
    try:
        yield tmp
        _readable(tmp)
        if os.path.exists(path):
            old = tempfile.mkdtemp(dir=parent, prefix=f".old-{os.path.basename(path)}-")
            os.replace(path, os.path.join(old, "x"))
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _readable(root: str) -> None:
    """Folders 755 and files 644 under `root`: mkdtemp makes its folder private, and safetensors
    writes its files private (0600), which a model meant to be shared must not be."""
    os.chmod(root, 0o755)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def read_jsonl(path: str) -> list[dict]:
    """The rows of a .jsonl file that is appended to row by row ([] when it does not exist).
    A torn last line, from a process killed mid-write, is dropped."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise
    return rows


def cut_jsonl_after(path: str, step: int) -> None:
    """Rewrite a step-keyed .jsonl file (metrics, rollouts) without its rows after `step`, so
    that a resumed run logs every step once."""
    if os.path.exists(path):
        atomic_write_jsonl(path, [row for row in read_jsonl(path) if row.get("step", 0) <= step])
