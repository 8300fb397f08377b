"""The checkpoint format: save one, find the newest good one, load one back, and the
fingerprint of the settings a checkpoint must agree on with the config that resumes it.

Layout of a checkpoint dir (`checkpoints/step-<N>/` and `final/`), written to a temporary
dir and renamed into place:
  adapter/                  peft `save_pretrained` of the trained adapter (or the full model)
  value_head.safetensors    the value head
  trainable.safetensors     every trainable tensor (adapter + value head), for exact resume
  optimizer.pt, rng.pt      optimizer and RNG states
  trainer_state.json        step, KL coefficient, sampler/RNG state, file names, fingerprint
  manifest.json             every other file's size and sha256, written last
A checkpoint whose files do not match its manifest, or whose weights are not finite, is
skipped (with a warning naming the file) in favour of the newest good one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from detox.core.atomic import atomic_dir, atomic_write_json
from detox.core.errors import CheckpointError
from detox.core.overrides import under
from detox.core.run_dir import CHECKPOINTS_DIR, FINAL_DIR

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"

# ------------------------------------------------------------------------------ fingerprint

# Everything that changes what a training step computes...
TRAINING_KEYS = ("seed", "policy", "lora", "reward", "data", "generation", "ppo")
# ...except what a resumed run honours as it is: how long, how often to save, when to stop.
HONOURED_KEYS = ("ppo.steps", "ppo.save_every", "ppo.save_every_minutes", "ppo.keep_last", "ppo.guard",
                 "ppo.kl.max", "reward.batch_size", "reward.device", "ppo.forward_batch_size", "ppo.compile",
                 "generation.cache_implementation", "generation.sampler")
# The shape of the trainable weights: never changeable on resume.
STRUCTURAL_KEYS = ("policy.name_or_path", "policy.revision", "policy.adapter", "policy.reference",
                   "policy.dtype", "lora")


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _honoured(key: str) -> bool:
    """A setting a resumed run honours as it is (a reward component's batch size and device too)."""
    component_setting = key.startswith("reward.components.") and key.rsplit(".", 1)[-1] in ("batch_size", "device")
    return under(key, HONOURED_KEYS) or component_setting


def fingerprint(cfg: DictConfig) -> dict[str, Any]:
    """Every setting that changes what training computes, flat (`ppo.learning_rate`: 2e-4)."""
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    flat = _flatten({k: tree[k] for k in TRAINING_KEYS if k in tree})
    return {k: v for k, v in flat.items() if not _honoured(k)}


def _flat_reward(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint from before reward components named its classifier's settings `reward.<key>`:
    read them as the current sole component's (`reward.components.<name>.<key>`)."""
    names = {k.split(".")[2] for k in current if k.startswith("reward.components.")}
    if any(k.startswith("reward.components.") for k in saved) or len(names) != 1:
        return saved
    (name,) = names
    shorthand = ("backend", "name_or_path", "revision", "label", "kind", "input", "max_length")
    return {(f"reward.components.{name}.{k[7:]}" if k[7:] in shorthand and k.startswith("reward.") else k): v
            for k, v in saved.items()}


def _legacy(current: dict[str, Any]) -> dict:
    """The fingerprint of checkpoints written before it covered every training setting, from
    today's flat one."""
    lora = {k.split(".", 1)[1]: v for k, v in current.items() if k.startswith("lora.")}
    return {"policy": current.get("policy.name_or_path"), "adapter": current.get("policy.adapter"),
            "reference": current.get("policy.reference"), "lora": json.dumps(lora, sort_keys=True)}


def fingerprint_diffs(saved: dict, current: dict[str, Any]) -> dict[str, tuple]:
    """{key: (checkpoint's value, current value)} for every training setting that differs.
    `current`: this config's `fingerprint`."""
    current = _legacy(current) if isinstance(saved.get("lora"), str) else current
    saved = _flat_reward(saved, current)
    # Over the checkpoint's keys: a setting added to the schema since has its old behaviour as default.
    return {k: (v, current.get(k)) for k, v in saved.items() if v != current.get(k)}


def check_resumable(path: str, saved: dict, current: dict[str, Any], allow) -> dict[str, tuple]:
    """The changes of settings since checkpoint `path` that `allow` (resume_allow) lets through.
    CheckpointError naming every other change, with its old and new value."""
    diffs = fingerprint_diffs(saved, current)
    allowed = {k: v for k, v in diffs.items() if under(k, allow) and not under(k, STRUCTURAL_KEYS)}
    refused = {k: v for k, v in diffs.items() if k not in allowed}
    if refused:
        detail = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in refused.items())
        structural = [k for k in refused if under(k, STRUCTURAL_KEYS)]
        if structural:
            fix = (f"{', '.join(structural)} cannot change on resume (the trained weights depend on it): resume "
                   "with the run's own settings")
        else:
            fix = (f"Resume with the run's own settings, add resume_allow=[{','.join(refused)}] to apply the new "
                   f"values from step {saved_step(path)} on")
        raise CheckpointError(f"checkpoint {path} was trained with other settings than this command: {detail}. "
                              f"{fix}, or start a new run dir (a new hydra.run.dir, or resume=false).")
    return allowed


def saved_step(path: str) -> int | None:
    try:
        return int(read_state(path)["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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
    """Write a checkpoint dir atomically; its manifest is the last file written."""
    trainable = policy.trainable_state_dict()
    bad = [n for n, t in trainable.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"refusing to save a checkpoint with non-finite weights ({', '.join(bad[:3])}, ...)")
    with atomic_dir(path) as tmp:
        policy.save_adapter(os.path.join(tmp, "adapter"))
        files = {"adapter": "adapter", "trainable": "trainable.safetensors", "optimizer": "optimizer.pt", "rng": "rng.pt"}
        if policy.value_head is not None:  # critic-free estimators have none
            _save_tensors(policy.value_head.state_dict(), os.path.join(tmp, "value_head.safetensors"))
            files["value_head"] = "value_head.safetensors"
        _save_tensors(trainable, os.path.join(tmp, "trainable.safetensors"))
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        torch.save(rng_state(), os.path.join(tmp, "rng.pt"))
        atomic_write_json(os.path.join(tmp, STATE_FILE), {**state, "files": files})
        atomic_write_json(os.path.join(tmp, MANIFEST_FILE), {"files": _file_facts(tmp)})


def _save_tensors(tensors: dict, path: str) -> None:
    """safetensors' save_file, its I/O failures as the OSError they are (a full disk says so)."""
    try:
        save_file(tensors, path)
    except Exception as e:  # safetensors' Rust errors carry the OS error only in their text
        found = re.search(r"os error (\d+)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), path) from e


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_facts(root: str) -> dict[str, dict]:
    facts = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root)
            if rel != MANIFEST_FILE:
                facts[rel] = {"size": os.path.getsize(full), "sha256": _sha256(full)}
    return facts


def checkpoint_problem(path: str) -> str | None:
    """What is wrong with checkpoint dir `path` (a missing, truncated or altered file, or
    non-finite weights), or None when it is good."""
    if not os.path.exists(os.path.join(path, STATE_FILE)):
        return f"{STATE_FILE} is missing"
    try:
        state = read_state(path)
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{STATE_FILE} is unreadable ({type(e).__name__}: {e})"
    manifest_path = os.path.join(path, MANIFEST_FILE)
    if os.path.exists(manifest_path):  # checkpoints from before manifests have none
        try:
            with open(manifest_path) as f:
                expected = json.load(f)["files"]
        except (OSError, ValueError, KeyError) as e:
            return f"{MANIFEST_FILE} is unreadable ({type(e).__name__}: {e})"
        for rel, facts in expected.items():
            full = os.path.join(path, rel)
            if not os.path.exists(full):
                return f"{rel} is missing"
            if os.path.getsize(full) != facts["size"]:
                return f"{rel} is {os.path.getsize(full)} bytes, the manifest says {facts['size']} (truncated?)"
            if _sha256(full) != facts["sha256"]:
                return f"{rel} does not match its sha256 in the manifest (damaged)"
    try:
        tensors = load_file(os.path.join(path, state.get("files", {}).get("trainable", "trainable.safetensors")))
    except Exception as e:  # safetensors raises its own error types on a damaged file
        return f"trainable.safetensors is unreadable ({type(e).__name__}: {e})"
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        return f"trainable.safetensors holds non-finite values ({', '.join(bad[:3])})"
    return None


def checkpoint_dirs(run_dir: str) -> list[str]:
    """Every checkpoint dir of a run, newest first (`final/` before the step it ended at)."""
    found = []
    final = os.path.join(run_dir, FINAL_DIR)
    if os.path.isdir(final):
        step = saved_step(final)
        found.append((step if step is not None else float("inf"), 1, final))
    root = os.path.join(run_dir, CHECKPOINTS_DIR)
    if os.path.isdir(root):
        for name in os.listdir(root):
            m = re.fullmatch(r"step-(\d+)", name)
            if m and os.path.isdir(os.path.join(root, name)):
                found.append((int(m.group(1)), 0, os.path.join(root, name)))
    return [path for *_, path in sorted(found, reverse=True)]


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest good checkpoint of a run dir; None when there is none at all. Damaged ones
    are skipped with a WARNING naming what is wrong; CheckpointError if none is good."""
    problems = []
    for path in checkpoint_dirs(run_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            if problems:
                log.warning("using %s, the newest good checkpoint", path)
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
        problems.append(f"{path}: {problem}")
    if problems:
        raise CheckpointError("no usable checkpoint in run dir {}: {}. Restore one, or start a new run dir "
                              "(a new hydra.run.dir, or resume=false).".format(run_dir, "; ".join(problems)))
    return None


def prune_checkpoints(run_dir: str, keep_last: int | None) -> list[str]:
    """Delete `checkpoints/step-<N>` dirs beyond the newest `keep_last` (`final/` is kept)."""
    if not keep_last:
        return []
    steps = [p for p in checkpoint_dirs(run_dir) if os.path.basename(os.path.dirname(p)) == CHECKPOINTS_DIR]
    removed = steps[keep_last:]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


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


def load_trained(path: str, policy) -> int:
    """A checkpoint's trainable tensors into `policy` (stage=eval/export, detox-generate); its step."""
    state = read_state(path)
    load_trainable(path, state, policy)
    return int(state["step"])


def load_checkpoint(path: str, policy, optimizer: torch.optim.Optimizer, current: dict[str, Any],
                    allow=()) -> tuple[dict, dict[str, tuple]]:
    """Restore trainable weights, optimizer and RNG; return the trainer state and the setting
    changes `allow` let through (the caller applies them). `current`: this run's `fingerprint`.

    Raises CheckpointError when the checkpoint was made with other settings (see `check_resumable`).
    """
    state = read_state(path)
    allowed = check_resumable(path, state.get("fingerprint", {}), current, allow)
    load_trainable(path, state, policy)
    optimizer.load_state_dict(torch.load(os.path.join(path, state["files"]["optimizer"]), weights_only=False))
    set_rng_state(torch.load(os.path.join(path, state["files"]["rng"]), weights_only=False))
    return state, allowed
