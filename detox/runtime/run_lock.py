"""One process per run dir: a lock file (pid, host, start time, stage) created atomically.

A second process refuses with a message naming the holder. A lock left by a dead process
on this host (kill -9, a crash) is taken over with a warning; so is one left by an earlier
attempt of the same cluster job (a SLURM requeue, possibly on another node). A lock of a
process on another host cannot be checked from here: the message says how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time

from detox.core.errors import RunDirBusy
from detox.core.run_dir import LOCK_FILE

log = logging.getLogger(__name__)


def _cluster_job() -> str | None:
    """The cluster job this process belongs to: the same across requeues of one job."""
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID"):
        if os.environ.get(key):
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            return f"slurm:{os.environ[key]}" + (f"_{task}" if key == "SLURM_ARRAY_JOB_ID" and task else "")
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunLock:
    """`with RunLock(run_dir, stage):` holds `<run_dir>/detox.lock` for the block."""

    def __init__(self, run_dir: str, stage: str):
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.info = {"pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
                     "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cluster_job": _cluster_job()}
        self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> bool:
        self.release()
        return False

    def holder(self) -> dict | None:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged: treated as held by an unknown process

    def _stale(self, holder: dict) -> str | None:
        """Why `holder`'s lock may be taken over, or None if it may be alive."""
        if not holder:  # empty or damaged: being written right now, or left by a crash mid-write
            try:
                age = time.time() - os.path.getmtime(self.path)
            except FileNotFoundError:
                return None
            return f"its lock file is empty or damaged and {age:.0f} s old" if age > 60 else None
        if holder.get("pid") == self.info["pid"] and holder.get("host") == self.info["host"]:
            return "it is this process's own"
        if holder.get("cluster_job") and holder.get("cluster_job") == self.info["cluster_job"]:
            return f"it was left by an earlier attempt of cluster job {holder['cluster_job']}"
        if holder.get("host") == self.info["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
            return f"process {holder['pid']} is gone"
        return None

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile
                reason = self._stale(holder)
                if reason is None:
                    who = (f"pid {holder.get('pid')} on {holder.get('host')} (stage={holder.get('stage')}, "
                           f"since {holder.get('started_at')})") if holder else "another process"
                    raise RunDirBusy(
                        f"run dir {os.path.dirname(self.path)} is in use by {who}. Wait for it to finish, use "
                        f"another hydra.run.dir, or, if that process is gone, delete {self.path}.")
                log.warning("taking over the lock %s: %s (%s)", self.path, reason, holder)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self.held = True
            return
        raise RunDirBusy(f"could not take the lock {self.path}: another process keeps taking it.")

    def release(self) -> None:
        if not self.held:
            return
        holder = self.holder()
        if holder and holder.get("pid") == self.info["pid"]:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self.held = False
