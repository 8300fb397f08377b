"""Data-parallel PPO across processes (`accelerate launch`): who this process is, and the
few collectives PPO needs.

In one process (no `WORLD_SIZE` > 1 in the environment) `Distributed()` is inert: rank 0 of
1, the main process, and every helper returns its input unchanged, so a single-process run
computes exactly what it computed before data parallelism existed.

Launched with more than one process, an `accelerate.Accelerator` joins the process group
(gloo on CPU, NCCL on GPUs). Each process then samples its own prompts (its shard of the
train split, its own sampling seed), and the PPO step shares, by all-reduce: the advantage
(and reward) whitening statistics, the KL that drives the KL controller, the early-stop
approx-KL, the logged metrics, and the gradients (averaged once per optimizer step, so
every process takes the same step from the same weights). Only the main process writes
files, logs to W&B and evaluates; the others wait for it at the next collective of the
training step and otherwise never block on it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import torch

from detox.core.atomic import atomic_write_json

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """The `device` setting: `auto` is CUDA when there is a GPU, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def launched_world_size() -> int:
    """Number of processes the launcher (`accelerate launch`, torchrun) started; 1 otherwise."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def weights_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names and exact bytes of `tensors` (sorted by name): equal on two
    processes only if their weights are bit-identical."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Distributed:
    """This process's place in a data-parallel run; a no-op stand-in in a single process."""

    def __init__(self, accelerator=None, device: torch.device | None = None):
        self.accelerator = accelerator
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world_size = accelerator.num_processes if accelerator is not None else 1
        self.is_main = self.rank == 0
        self.device = device  # where collectives run (NCCL needs CUDA tensors); None in one process

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def start(cls, device: torch.device) -> "Distributed":
        """Join the process group when launched with more than one process.

        device: the resolved `device` setting. On CPU the processes talk over gloo
        (`Accelerator(cpu=True)`); on CUDA each process takes its local GPU (the configured
        index, if any, is replaced by the process's own).
        """
        if launched_world_size() <= 1:
            return cls()
        from accelerate import Accelerator
        from accelerate.utils import InitProcessGroupKwargs

        cpu = device.type == "cpu"
        # The other processes wait for the main one at the next collective while it evaluates
        # (eval.every_n_steps, the starting policy): allow that much time.
        timeout = timedelta(seconds=float(os.environ.get("DETOX_DIST_TIMEOUT", 2 * 3600)))
        accelerator = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timeout)])
        self = cls(accelerator, torch.device("cpu") if cpu else accelerator.device)
        if not self.is_main:
            # One voice: the main process logs; the others only warn.
            logging.getLogger("detox").setLevel(logging.WARNING)
        log.info("data-parallel: %d processes (%s), this is rank %d on %s", self.world_size,
                 torch.distributed.get_backend(), self.rank, self.device)
        return self

    def place(self, device: torch.device) -> torch.device:
        """A configured device for this process: CUDA becomes this process's own GPU."""
        if self.enabled and device.type == "cuda":
            return self.device
        return device

    # ------------------------------------------------------------------ collectives
    def _reduce(self, x, reduction: str):
        if not self.enabled:
            return x
        from accelerate.utils import reduce

        if isinstance(x, torch.Tensor):
            return reduce(x.to(self.device), reduction).to(x.device)
        return float(reduce(torch.tensor(float(x), dtype=torch.float64, device=self.device), reduction))

    def mean(self, x):
        """Mean over processes of a tensor (elementwise) or a float; the input in one process."""
        return self._reduce(x, "mean")

    def sum(self, x):
        """Sum over processes of a tensor (elementwise) or a float; the input in one process."""
        return self._reduce(x, "sum")

    def any(self, flag: bool) -> bool:
        """Whether `flag` holds on any process (one all-reduce); `flag` itself in one process."""
        return self.sum(float(flag)) > 0 if self.enabled else bool(flag)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every process's `x` (same shape everywhere), concatenated along dim 0 in rank order."""
        if not self.enabled:
            return x
        return self.accelerator.gather(x.to(self.device)).to(x.device)

    def gather_object(self, obj: Any) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every process; [obj] in one process."""
        if not self.enabled:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def broadcast_object(self, obj: Any) -> Any:
        """The main process's `obj`, on every process."""
        if not self.enabled:
            return obj
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([obj], from_process=0)[0]

    @torch.no_grad()
    def broadcast_parameters(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Copy the main process's values of `params` into every process's (in place)."""
        if not self.enabled:
            return
        from accelerate.utils import broadcast

        for p in params:
            p.copy_(broadcast(p.detach().to(self.device).contiguous(), from_process=0).to(p.device))

    @torch.no_grad()
    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over processes: one all-reduce per dtype.

        Parameters without a gradient (the policy during value warm-up) stay without one; every
        process runs the same step, so the set is the same everywhere."""
        if not self.enabled:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
        for grads in by_dtype.values():
            flat = torch.cat([g.reshape(-1) for g in grads])
            flat = self.mean(flat)
            offset = 0
            for g in grads:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def masked_moments(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and unbiased variance of `x` over the masked entries of EVERY process's batch
        (the statistics `ppo.masked_whiten` takes), from all-reduced sums and counts."""
        m = mask.bool()
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        xz = torch.where(m, x, zero)
        total, count = self.sum(torch.stack([xz.sum(), m.sum().to(x.dtype)]).double()).unbind()
        if count < 2:
            raise ValueError(f"whitening over {int(count)} masked entries in all processes: need at least 2")
        mean = (total / count).to(x.dtype)
        squares = self.sum(torch.where(m, (x - mean) ** 2, zero).sum().double())
        return mean, (squares / (count - 1)).to(x.dtype)

    def record(self, path: str, own: Callable[[], dict], **fields: Any) -> None:
        """Data-parallel only: every process's `own()` facts, written by the main process with
        `fields` to `path` (`distributed.json`). A collective."""
        if not self.enabled:
            return
        ranks = self.gather_object(own())
        if self.is_main:
            atomic_write_json(path, {"world_size": self.world_size, "backend": torch.distributed.get_backend(),
                                     **fields, "ranks": ranks})

    def barrier(self) -> None:
        if self.enabled:
            self.accelerator.wait_for_everyone()

    def close(self) -> None:
        """Leave the process group. accelerate's `end_training` destroys it; `free_memory` first
        (torch 2.13 + gloo could abort at exit when the group went down with models referenced)."""
        if self.accelerator is None:
            return
        self.accelerator.free_memory()
        self.accelerator.end_training()
        self.accelerator = None


def use_main_run_dir(own_dir: str, main_dir: str) -> None:
    """A non-main process whose Hydra run dir differs from the main process's (`${now:...}`
    resolved across a second boundary) works in the main's dir; it removes its own if it holds
    nothing but what Hydra wrote there at start-up."""
    if os.path.abspath(own_dir) == os.path.abspath(main_dir) or not os.path.isdir(own_dir):
        return
    entries = set(os.listdir(own_dir))
    log_file = os.path.join(own_dir, "detox.log")
    if entries <= {".hydra", "detox.log"} and (not os.path.exists(log_file) or os.path.getsize(log_file) == 0):
        shutil.rmtree(own_dir, ignore_errors=True)
