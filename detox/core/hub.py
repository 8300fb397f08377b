"""Turn a failed model/dataset fetch into an error that names the key and the way out."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from detox.core.errors import LoadError


@contextlib.contextmanager
def friendly_load_error(key: str, name: str | None) -> Iterator[None]:
    try:
        yield
    except (LoadError, KeyboardInterrupt):
        raise
    except Exception as e:  # hub, network, and file errors come in many classes
        first_line = (str(e).strip().splitlines() or [""])[0][:300].rstrip(".")
        if name and os.path.exists(os.path.expanduser(name)):
            raise LoadError(
                f"Could not load {key}={name!r} (an existing local path): {type(e).__name__}: {first_line}. "
                "Check that it is a folder saved by save_pretrained of the right kind of model."
            ) from e
        if looks_local(name):
            raise LoadError(f"{key}={name!r} does not exist (a local path); point {key} at a folder saved by "
                            "save_pretrained, or at a hub name.") from e
        where = "a hub name"
        raise LoadError(
            f"Could not load {key}={name!r} ({where}): {type(e).__name__}: {first_line}. "
            f"If there is no network here or the name is wrong, point {key} at a local folder or "
            "file (save_pretrained / a .jsonl), or run the offline preset `detox experiment=quickstart`."
        ) from e


def model_kind(config) -> str:
    """How a model config names itself: its architecture, else its model type."""
    return ", ".join(getattr(config, "architectures", None) or []) or getattr(config, "model_type", "?")


def looks_local(name: str | None) -> bool:
    return bool(name) and (name.startswith((".", "/", "~")) or os.path.exists(name))
