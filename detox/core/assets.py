"""Files shipped inside the package (`detox/assets`: the quickstart's tiny models and dialogues)."""

from __future__ import annotations

from importlib import resources


def asset_path(name: str = "") -> str:
    """Absolute path of a file shipped in `detox/assets` (works for editable and wheel installs)."""
    return str(resources.files("detox") / "assets" / name)
