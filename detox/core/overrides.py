"""The command line's Hydra overrides of the running job, and how to read their keys."""

from __future__ import annotations


def hydra_overrides() -> list[str]:
    """This job's overrides (`key=value`, as typed); [] outside Hydra (tests call stages directly)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:
        return []


def split_override(override: str) -> tuple[str, str]:
    """`key=value` -> (key, value), the key as typed (a `+`/`~` prefix kept)."""
    key, _, value = str(override).partition("=")
    return key, value


def override_key(override: str) -> str:
    """The config key an override sets: `+ppo.kl.target=3` -> `ppo.kl.target`."""
    return split_override(override)[0].lstrip("+~")


def under(key: str, prefixes) -> bool:
    """Whether `key` is one of `prefixes` or inside one of them (`eval.num_samples` is under `eval`)."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)
