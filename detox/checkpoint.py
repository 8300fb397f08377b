"""The checkpoint format: save one, find the newest, load one back, and the fingerprint of
the settings a checkpoint must agree on with the config that resumes it.

Layout of a checkpoint dir (`checkpoints/step-<N>/` and `final/`), written to a temporary
dir and renamed into place:
  adapter/                  peft `save_pretrained` of the trained adapter (or the full model)
  value_head.safetensors    the value head
  trainable.safetensors     every trainable tensor (adapter + value head), for exact resume
  optimizer.pt, rng.pt      optimizer and RNG states
  trainer_state.json        step, KL coefficient, sampler/RNG state, file names, fingerprint
"""

from __future__ import annotations

import base64
import json
import os
import random
import re

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from detox.atomic import atomic_dir, atomic_write_json
from detox.errors import CheckpointError
from detox.run_dir import CHECKPOINTS_DIR, FINAL_DIR

STATE_FILE = "trainer_state.json"


def fingerprint(cfg: DictConfig) -> dict:
    """What a checkpoint must agree on with the config that resumes it."""
    lora = OmegaConf.to_container(cfg.lora, resolve=True, enum_to_str=True)
    return {"policy": cfg.policy.name_or_path, "adapter": cfg.policy.adapter,
            "reference": cfg.policy.reference.value, "lora": json.dumps(lora, sort_keys=True)}


def fingerprint_diffs(saved: dict, current: dict) -> dict[str, tuple]:
    """{key: (checkpoint's, config's)} for every fingerprint entry that differs."""
    return {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}


def encode_rng(state: torch.Tensor) -> str:
    """A torch RNG state (uint8 tensor) as text, for trainer_state.json."""
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


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
    final = os.path.join(run_dir, FINAL_DIR)
    if os.path.exists(os.path.join(final, STATE_FILE)):
        candidates.append((read_state(final)["step"], 1, final))
    ckpt_root = os.path.join(run_dir, CHECKPOINTS_DIR)
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
    diffs = fingerprint_diffs(state.get("fingerprint", {}), fingerprint)
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
