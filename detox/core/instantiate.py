"""`hydra.utils.instantiate` for the nodes detox builds objects from (a reward component, a
judge, a tracker), with errors that stay user errors: Hydra wraps whatever the target raises in
an `InstantiationException`, which would turn a clear `LoadError` into a traceback."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from detox.core.errors import ConfigError, DetoxError


class MissingPackage(DetoxError, ImportError):
    """A node's class needs a package that is not installed."""


def build(node: Any, where: str, *args, **kwargs) -> Any:
    """instantiate(node, *args, **kwargs); `where`: the node's config key, for messages. A
    `_target_` that does not import is a ConfigError; a DetoxError raised by the target is
    raised as it is; a package the target needs but cannot import is `MissingPackage`."""
    try:
        return instantiate(node, *args, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, DetoxError):
            raise cause from None
        target = node.get("_target_") if hasattr(node, "get") else None
        if str(e).startswith("Error locating target"):
            raise ConfigError(f"{where}._target_={target!r} cannot be imported ({cause}); name an importable class "
                              "or function (module.path.Name).") from e
        if isinstance(cause, ImportError):
            raise MissingPackage(f"{where} ({target}) needs a package that is not installed: {cause}.") from e
        raise
