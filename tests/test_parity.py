"""The performance work changes no number beyond float rounding: the first PPO steps of a small
quickstart config (a value warm-up step, then two steps of 2 PPO epochs) give, on one CPU thread,
the responses and metrics that commit ac62045 gave before it (recorded in tests/data/).

"The same": the responses exactly; the metrics to 1e-4 relative, since another CPU's kernels
round float sums differently (an AMD EPYC differs from the recording machine by up to 1.3e-5
relative), and so do other shapes: the rollout and update forwards are cut to each chunk's and
micro-batch's own widths (on that EPYC the largest difference is then 2.0e-5, approx-KL, a
2.6e-5 quantity; 1.4e-5 on objective/kl, a sum of nearly cancelling terms); the clip fractions
to 0.01, since that rounding can move a token or two (of ~400) across the clip boundary. A
change to the PPO math moves them far more.

The responses are sampled by transformers' `generate` (`generation.sampler=generate`), as at
ac62045: detox's own sampler draws from the same distribution with other random numbers
(tests/test_sampling.py checks it against `generate`); the KL coefficient is the preset's of
then, 0.02.

Re-record from any commit (its code on PYTHONPATH, e.g. a git worktree with conf/ linked to
detox/conf): `PYTHONPATH=<worktree> OMP_NUM_THREADS=1 python tests/test_parity.py OUT.json`.
"""

import json
import math
import os
import sys

import torch

RECORDED = os.path.join(os.path.dirname(__file__), "data", "quickstart_first_steps_ac62045.json")
OVERRIDES = ["experiment=quickstart", "logger=none", "eval.enabled=false", "ppo.steps=3", "ppo.batch_size=8",
             "ppo.mini_batch_size=4", "ppo.ppo_epochs=2", "ppo.value_warmup_steps=1"]
# What the recording ran with and the preset has changed since: transformers' sampler (its random
# draws; a key ac62045 did not have) and the preset's KL coefficient then.
SAMPLER = ["generation.sampler=generate", "ppo.kl.init_coef=0.02"]


def first_steps(cfg, n: int) -> list[dict]:
    from detox.stages.assemble import build_ppo

    trainer, _ = build_ppo(cfg)
    rows = []
    for _ in range(n):
        before = trainer.step
        metrics, rollout = trainer.train_step()
        if trainer.step == before:  # trainers before ac62045's successors advanced the step in their loop
            trainer.step += 1
        rows.append({**{k.replace("ppo/val/", "ppo/value/"): v for k, v in metrics.items()
                        if not k.startswith("perf/")}, "responses": rollout.responses})
    return rows


def test_first_quickstart_steps_equal_the_recorded_ones(tmp_path):
    from conftest import make_cfg

    recorded = json.load(open(RECORDED))
    assert recorded["overrides"] == OVERRIDES
    torch.set_num_threads(1)
    steps = first_steps(make_cfg(OVERRIDES + SAMPLER, output_dir=str(tmp_path)), len(recorded["steps"]))
    for i, (got, expected) in enumerate(zip(steps, recorded["steps"]), start=1):
        assert got.pop("responses") == expected.pop("responses"), f"step {i}: other responses were sampled"
        differ = {k: (v, got.get(k)) for k, v in expected.items() if got.get(k) is None or not (
                  abs(got[k] - v) <= 0.01 if k.endswith("clipfrac") else math.isclose(got[k], v, rel_tol=1e-4, abs_tol=1e-8))}
        assert not differ, f"step {i}: metrics changed (recorded, now): {differ}"


if __name__ == "__main__":
    from hydra import compose, initialize_config_module

    from detox.config.schema import register

    register()
    torch.set_num_threads(1)
    with initialize_config_module("detox.conf", version_base="1.3"):
        cfg = compose("config", overrides=["output_dir=/tmp/detox-parity-run", *OVERRIDES, *SAMPLER])
    json.dump({"overrides": OVERRIDES, "steps": first_steps(cfg, 3)}, open(sys.argv[1], "w"), indent=1)
