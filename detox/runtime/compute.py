"""How this machine computes: CPU threads (the `threads` setting) and TF32 matmuls on a GPU.

Oversubscription is the expensive mistake: five jobs of a local multirun, each with as many
threads as the machine has cores, turned a 1.5 s optimisation phase into 20-120 s on two
cores. So by default a job takes the cores it may use (its CPU affinity: a SLURM allocation
included) divided among the jobs of a local multirun that run beside it (Hydra's
submitit_local launcher starts them all at once; the basic launcher runs one at a time).
"""

from __future__ import annotations

import logging
import math
import os

import torch

log = logging.getLogger(__name__)
LOCAL_LAUNCHERS = ("submitit_launcher.LocalLauncher", "joblib_launcher.JoblibLauncher")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def sweep_size(overrides: list[str], params: dict | None = None) -> int:
    """The number of jobs the basic sweeper makes of command-line `overrides` and its config's
    `hydra.sweeper.params` (`a=1,2 b=x,y,z`: 6; the command line wins for a key in both)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in (params or {}).items()] + overrides)
    sizes = {o.key_or_group: len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1 for o in parsed}
    return math.prod(sizes.values())


def parallel_jobs() -> int:
    """How many jobs of this process's multirun share the machine's cores at once (1 outside a
    multirun, or under a launcher that runs one job at a time or sends jobs to other nodes)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
        from omegaconf import OmegaConf

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # not under Hydra
        return 1
    if hc.mode != RunMode.MULTIRUN or not str(hc.launcher.get("_target_", "")).endswith(LOCAL_LAUNCHERS):
        return 1
    n_jobs = hc.launcher.get("n_jobs")  # joblib's
    if n_jobs and n_jobs > 0:
        return int(n_jobs)
    if "optuna" in str(hc.sweeper.get("_target_", "")):
        return int(hc.sweeper.get("n_jobs") or 1)
    try:  # the sweep's command line, which Hydra saved before launching the jobs
        saved = OmegaConf.load(os.path.join(str(hc.sweep.dir), "multirun.yaml"))
        params = hc.sweeper.get("params")
        params = OmegaConf.to_container(params, resolve=False) if params else {}
        return max(1, sweep_size(list(saved.hydra.overrides.task), params))
    except Exception as e:  # an unreadable file must not stop a run: assume it runs alone
        log.warning("threads: could not count the jobs of this multirun (%s); using every core", e)
        return 1


def resolve_threads(setting: int | None) -> tuple[int, str]:
    """(threads, why) for the `threads` setting: an explicit value, else OMP_NUM_THREADS when
    set, else the available cores divided among the parallel jobs of a local multirun."""
    if setting is not None:
        return int(setting), "threads setting"
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    cores, jobs = available_cores(), parallel_jobs()
    if jobs > 1:
        return max(1, cores // jobs), f"{cores} cores shared by {jobs} parallel jobs of this local multirun"
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # accelerate launch / torchrun
    if local_processes > 1:
        return max(1, cores // local_processes), f"{cores} cores shared by {local_processes} processes"
    return cores, f"{cores} cores"


def apply_threads(setting: int | None) -> int:
    """Set torch's intra-op threads and the tokenizers' parallelism; log the choice."""
    threads, why = resolve_threads(setting)
    torch.set_num_threads(threads)
    # the Rust tokenizers' own pool (read when first used); off when a job has one thread
    os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true" if threads > 1 else "false")
    log.info("threads: %d (%s)", threads, why)
    return threads


def enable_tf32(device: torch.device) -> None:
    """TF32 tensor cores for fp32 matmuls on CUDA (the value head, LoRA weights, fp32 runs): about
    8x the fp32 throughput on Ampere and newer at ~1e-3 relative precision, which the log-softmax
    does not see (it stays fp32)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def reset_peak_memory(device: torch.device) -> None:
    """Start this job's peak-memory count: CUDA's allocator peak, or on a CPU the process's peak
    RSS (Linux's VmHWM, reset through /proc/self/clear_refs; jobs of a basic multirun share a
    process)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the peak then covers the whole process
        pass


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory since `reset_peak_memory`: allocated on CUDA, resident (RSS) on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 2**20
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
