"""The benchmark script runs (it imports the product's builders, which change under it)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_runs_the_quickstart_steps_and_summarises():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--steps", "2", "--batch", "8"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert [s["step"] for s in steps] == [1, 2]
    summary = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("summary "))[8:])
    assert summary["batch"] == 8 and summary["size"] == "tiny"
    assert summary["perf/step_time_s"] > 0 and summary["perf/samples_per_s"] > 0 and summary["peak_rss_gb"] > 0
