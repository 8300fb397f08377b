"""The benchmark script runs the project's step and the raw-compute baseline side by side."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("generate", "reward", "forward", "optimise", "total")


def test_bench_times_the_project_step_against_the_raw_baseline():
    """At drawn lengths (`--lengths MIN:MAX`, as `--lengths recipe` draws 100-400): each response
    exactly its drawn length. The fixed-length mode runs in the slow test below."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--steps", "1", "--batch", "8",
                          "--mini-batch", "4", "--lengths", "3:20", "--json"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["batch"] == 8 and report["size"] == "tiny" and report["lengths"] == "3:20"
    assert "generation.min_length=21" in report["overrides"]  # no EOS before a row's drawn length
    assert {"torch", "transformers", "peft", "threads", "cpu"} <= set(report["machine"])
    for side in ("project", "raw"):
        assert all(report["medians"][side][p] > 0 for p in PHASES), report["medians"]
    tokens = report["medians"]["project"]["response_tokens"]
    assert 8 * 3 <= tokens < 8 * 19  # drawn per prompt from [3, 20), not all the largest
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
    assert report["medians"]["this"]["response_tokens"] == 4 * 6  # every response exactly 6 tokens
    other = next(k for k in report["medians"] if k not in ("this", "raw"))
    assert set(report["ratios"]) == {f"/{other}", "/raw"} and report["ratios"][f"/{other}"]["total"] > 0

