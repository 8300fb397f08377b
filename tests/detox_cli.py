"""The `detox` command in a subprocess, as a user runs it (shared by the end-to-end tests)."""

import os
import subprocess
import sys


def run_detox(args, cwd, threads=2, env=None, timeout=900) -> subprocess.CompletedProcess:
    """`python -m detox <args>` in `cwd` with `threads` torch/OMP threads (None: detox's own
    choice, no OMP_NUM_THREADS) and `env` on top of ours."""
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})}
    if threads is None:
        del full_env["OMP_NUM_THREADS"]
    return subprocess.run([sys.executable, "-m", "detox", *args], cwd=cwd, capture_output=True, text=True,
                          env=full_env, timeout=timeout)
