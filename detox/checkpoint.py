"""Checkpoints and result files, written atomically so no crash leaves a half-written one.

Layout of a checkpoint dir (`checkpoints/step-<N>/` and `final/`):
  adapter/                  peft `save_pretrained` of the trained adapter (or the full model)
  value_head.safetensors    the value head
  trainable.safetensors     every trainable tensor (adapter + value head), for exact resume
  optimizer.pt, rng.pt      optimizer and RNG states
  trainer_state.json        step, KL coefficient, sampler/RNG state, file names, fingerprint
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "trainer_state.json"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used with this run's config."""


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


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temp dir beside `path`; on success it replaces `path` in one rename."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{os.path.basename(path)}-")
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
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


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str, policy, optimizer: torch.optim.Optimizer, state: dict) -> None:
    with atomic_dir(path) as tmp:
        policy.save_adapter(os.path.join(tmp, "adapter"))
        save_file(policy.value_head.state_dict(), os.path.join(tmp, "value_head.safetensors"))
        save_file(policy.trainable_state_dict(), os.path.join(tmp, "trainable.safetensors"))
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        torch.save(rng_state(), os.path.join(tmp, "rng.pt"))
        files = {"adapter": "adapter", "value_head": "value_head.safetensors",
                 "trainable": "trainable.safetensors", "optimizer": "optimizer.pt", "rng": "rng.pt"}
        atomic_write_json(os.path.join(tmp, STATE_FILE), {**state, "files": files})


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete `checkpoints/step-<N>` (or `final`) of a run dir, if any."""
    candidates = []
    final = os.path.join(run_dir, "final")
    if os.path.exists(os.path.join(final, STATE_FILE)):
        candidates.append((read_state(final)["step"], 1, final))
    ckpt_root = os.path.join(run_dir, "checkpoints")
    if os.path.isdir(ckpt_root):
        for name in os.listdir(ckpt_root):
            m = re.fullmatch(r"step-(\d+)", name)
            if m and os.path.exists(os.path.join(ckpt_root, name, STATE_FILE)):
                candidates.append((int(m.group(1)), 0, os.path.join(ckpt_root, name)))
    return max(candidates)[2] if candidates else None


def read_state(path: str) -> dict:
    with open(os.path.join(path, STATE_FILE)) as f:
        return json.load(f)


def load_trainable(path: str, state: dict, policy) -> None:
    """Copy a checkpoint's trainable tensors into `policy`; CheckpointError if they don't fit."""
    tensors = load_file(os.path.join(path, state["files"]["trainable"]))
    expected = {n: p for n, p in policy.named_parameters() if p.requires_grad}
    if set(tensors) != set(expected) or any(tensors[n].shape != expected[n].shape for n in expected):
        raise CheckpointError(
            f"checkpoint {path} holds other trainable tensors than this policy "
            f"({len(tensors)} saved vs {len(expected)} expected); start a new run dir."
        )
    with torch.no_grad():
        for name, param in expected.items():
            param.copy_(tensors[name].to(param.device, param.dtype))


def load_checkpoint(path: str, policy, optimizer: torch.optim.Optimizer, fingerprint: dict) -> dict:
    """Restore trainable weights, optimizer and RNG; return the trainer state.

    Raises CheckpointError when the checkpoint was made with a different model/adapter setup.
    """
    state = read_state(path)
    saved = state.get("fingerprint", {})
    diffs = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
    if diffs:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in diffs.items())
        raise CheckpointError(
            f"checkpoint {path} does not match this config ({detail}). Resume with the run's own "
            "config, or start a new run dir (resume=false / a new hydra.run.dir)."
        )
    load_trainable(path, state, policy)
    optimizer.load_state_dict(torch.load(os.path.join(path, state["files"]["optimizer"]), weights_only=False))
    set_rng_state(torch.load(os.path.join(path, state["files"]["rng"]), weights_only=False))
    return state
