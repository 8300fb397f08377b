"""The benchmark script runs the project's step and the raw-compute baseline side by side."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("generate", "reward", "forward", "optimise", "total")


def test_bench_times_the_project_step_against_the_raw_baseline():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--steps", "1", "--batch", "4",
                          "--mini-batch", "2", "--new-tokens", "6", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["batch"] == 4 and report["size"] == "tiny" and report["new_tokens"] == [6]
    assert {"torch", "transformers", "peft", "threads", "cpu"} <= set(report["machine"])
    for side in ("project", "raw"):
        assert all(report["medians"][side][p] > 0 for p in PHASES), report["medians"]
    # both sides did the same work: every response exactly 6 tokens
    assert report["medians"]["project"]["response_tokens"] == 4 * 6
    ratios = report["ratios"]["project/raw"]
    assert set(ratios) == set(PHASES) and all(r > 0 for r in ratios.values())
    assert report["memory"]["peak_rss_gb"] > 0


@pytest.mark.slow
def test_bench_against_a_commit_runs_both_in_worktrees_interleaved():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--steps", "1", "--batch", "4",
                          "--mini-batch", "2", "--new-tokens", "6", "--vs-commit", "HEAD", "--json"],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    other = next(k for k in report["medians"] if k not in ("this", "raw"))
    assert set(report["ratios"]) == {f"/{other}", "/raw"} and report["ratios"][f"/{other}"]["total"] > 0
