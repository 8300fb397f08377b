"""Data-parallel PPO: real processes on CPU (gloo), started the way a user starts them.

`accelerate launch --multi_gpu --num_processes 2` with `Accelerator(cpu=True)` gives two gloo
processes on a CPU-only machine (`--cpu --num_processes 2` gives one). Run as a script under
the launcher, this file is also the worker of `test_collectives_across_two_processes`.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from detox_cli import run_detox

from detox.algo import masked
from detox.runtime.distributed import Distributed, use_main_run_dir, weights_checksum

STEPS = 3
LAUNCH_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_launch() -> str | None:
    """Why two gloo processes cannot be started here, or None."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return "accelerate is not installed"
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        return "this torch build has no gloo process groups"
    return None


def launch(args: list[str], cwd, timeout: int = LAUNCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 <args>` (two gloo processes on CPU)."""
    reason = _can_launch()
    if reason:
        pytest.skip(f"cannot start two data-parallel processes: {reason}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                          os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"launch failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


# --------------------------------------------------------------------------- one process
def test_single_process_helpers_are_the_identity():
    dist = Distributed()
    assert (dist.rank, dist.world_size, dist.is_main, dist.enabled) == (0, 1, True, False)
    x = torch.randn(3, 4)
    assert dist.mean(x) is x and dist.sum(x) is x and dist.gather(x) is x and dist.mean(2.5) == 2.5
    assert dist.gather_object({"a": 1}) == [{"a": 1}] and dist.broadcast_object("d") == "d"
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    dist.average_gradients([p])
    dist.broadcast_parameters([p])
    assert torch.equal(p.grad, torch.full((2,), 3.0)) and torch.equal(p, torch.ones(2))
    dist.barrier()
    dist.close()


def test_stray_hydra_dir_is_removed_only_when_it_holds_nothing_else(tmp_path):
    main, own, busy = tmp_path / "main", tmp_path / "own", tmp_path / "busy"
    for d in (main, own, busy):
        (d / ".hydra").mkdir(parents=True)
        (d / "detox.log").write_text("")
    (busy / "metrics.jsonl").write_text("{}\n")
    use_main_run_dir(str(own), str(main))
    use_main_run_dir(str(busy), str(main))
    use_main_run_dir(str(main), str(main))
    assert not own.exists() and busy.exists() and main.exists()


# --------------------------------------------------------------------------- two processes
def _worker(out_path: str) -> None:
    """Runs in each of two launched processes; rank 0 writes what the test checks."""
    dist = Distributed.start(torch.device("cpu"))
    rank = dist.rank
    # Rank-dependent batches with different numbers of masked tokens.
    g = torch.Generator().manual_seed(10 + rank)
    x = torch.randn(3, 5, generator=g)
    mask = torch.zeros(3, 5)
    mask[:, : 2 + 2 * rank] = 1
    mean, var = dist.masked_moments(x, mask)
    whitened = masked.masked_whiten(x, mask, mean=mean, var=var)
    # Parameters: different starts (the broadcast makes them rank 0's), different gradients.
    a = torch.nn.Parameter(torch.full((2, 2), float(rank)))
    b = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    c = torch.nn.Parameter(torch.zeros(1))  # no gradient, on both processes
    dist.broadcast_parameters([a, b, c])
    a.grad = torch.full((2, 2), float(rank + 1))
    b.grad = torch.arange(3, dtype=torch.float64) * (rank + 1)
    dist.average_gradients([a, b, c])
    facts = {
        "rank": rank, "world_size": dist.world_size,
        "x": x.tolist(), "mask": mask.tolist(), "mean": float(mean), "var": float(var),
        "whitened": whitened.tolist(), "a": a.tolist(), "a_grad": a.grad.tolist(),
        "b_grad": b.grad.tolist(), "c_grad_is_none": c.grad is None,
        "mean_float": dist.mean(float(rank)), "sum_tensor": dist.sum(torch.tensor([1.0, rank])).tolist(),
        "gather": dist.gather(torch.tensor([[rank, rank]])).tolist(),
        "broadcast": dist.broadcast_object(f"from {rank}"),
    }
    everyone = dist.gather_object(facts)
    if dist.is_main:
        with open(out_path, "w") as f:
            json.dump(everyone, f)
    dist.close()


def test_collectives_across_two_processes(tmp_path):
    out = tmp_path / "facts.json"
    launch([os.path.abspath(__file__), str(out)], cwd=tmp_path, timeout=120)
    ranks = json.loads(out.read_text())
    if len(ranks) != 2 or ranks[0]["world_size"] != 2:
        pytest.skip(f"the launcher started {len(ranks)} process(es), not 2")
    # Whitening statistics of both batches together: what one process would get for the union.
    xs = torch.cat([torch.tensor(r["x"]) for r in ranks])
    masks = torch.cat([torch.tensor(r["mask"]) for r in ranks])
    union = masked.masked_whiten(xs, masks)
    for r in ranks:
        assert r["mean"] == pytest.approx(float(masked.masked_mean(xs, masks)), rel=1e-6)
        assert r["var"] == pytest.approx(float(masked.masked_var(xs, masks)), rel=1e-6)
    torch.testing.assert_close(torch.cat([torch.tensor(r["whitened"]) for r in ranks]), union)
    for r in ranks:
        assert r["a"] == [[0.0, 0.0], [0.0, 0.0]]  # rank 0's start
        assert r["a_grad"] == [[1.5, 1.5], [1.5, 1.5]] and r["b_grad"] == [0.0, 1.5, 3.0]
        assert r["c_grad_is_none"]
        assert r["mean_float"] == 0.5 and r["sum_tensor"] == [2.0, 1.0]
        assert r["gather"] == [[0, 0], [1, 1]] and r["broadcast"] == "from 0"


def dp_args(tiny, run_dir, steps=STEPS, extra=()):
    """The tiny config (as conftest's `tiny_overrides`), evaluated every step on a few prompts,
    with an adaptive KL controller that moves, reward whitening, and an approx-KL early stop
    that always fires after the first PPO epoch, so every shared statistic and decision matters."""
    return [
        "-m", "detox", "experiment=quickstart", "logger=none", "device=cpu",
        f"policy.name_or_path={tiny['policy']}", f"reward.name_or_path={tiny['reward']}",
        f"data.name_or_path={tiny['data']}", "lora.target_modules=[q,v]", "ppo.batch_size=8",
        "ppo.mini_batch_size=4", "ppo.ppo_epochs=2", "generation.max_new_tokens_min=8",
        "generation.max_new_tokens_max=16", f"ppo.steps={steps}", "ppo.save_every=1", "ppo.value_warmup_steps=0",
        "ppo.kl.controller=adaptive", "ppo.kl.target=1.0", "ppo.kl.horizon=10", "ppo.whiten_rewards=true",
        "ppo.target_approx_kl=1e-12",
        "eval.num_samples=6", "eval.val_samples=4", "eval.every_n_steps=1", f"hydra.run.dir={run_dir}", *extra,
    ]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def straight(tiny, tmp_path_factory):
    """One data-parallel run of STEPS steps: (its dir, the launcher's output)."""
    root = tmp_path_factory.mktemp("dp")
    proc = launch(dp_args(tiny, root / "run"), cwd=root)
    if not (root / "run" / "distributed.json").exists() and (root / "run" / "results.json").exists():
        pytest.skip("the launcher ran the job in one process, not two")
    return root, proc


def test_two_processes_train_in_step_and_write_one_set_of_outputs(straight):
    root, proc = straight
    run = root / "run"
    dist = json.loads((run / "distributed.json").read_text())
    assert dist["world_size"] == 2 and dist["backend"] == "gloo" and dist["global_batch_size"] == 16
    r0, r1 = dist["ranks"]
    metrics = read_jsonl(run / "metrics.jsonl")
    # Same optimizer steps: ppo/epochs (1 of 2: the early stop) x 2 mini-batches a step, on both.
    assert [m["ppo/epochs"] for m in metrics if m["step"] > 0] == [1] * STEPS
    assert r0["optimizer_steps"] == r1["optimizer_steps"] == 2 * STEPS
    # Identical weights (bit for bit), and they are the ones saved.
    from safetensors.torch import load_file

    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert weights_checksum(load_file(run / "final" / "trainable.safetensors")) == r0["weights_sha256"]
    # The KL controller stepped on the global KL (16 samples a step) on both processes.
    coef = 0.03  # the preset's init_coef
    assert r0["kl_coef"] == r1["kl_coef"] != coef
    for m in metrics[1:]:
        assert m["objective/kl_coef"] == pytest.approx(coef, rel=1e-9)
        coef *= 1 + min(max(m["objective/kl"] / 1.0 - 1, -0.2), 0.2) * 16 / 10
    assert r0["kl_coef"] == pytest.approx(coef, rel=1e-6)

    # Different rollouts per process: disjoint shards of the train split, 8 prompts each a step.
    rollouts = read_jsonl(run / "rollouts.jsonl")
    assert len(rollouts) == STEPS * 16
    ids = {rank: {r["id"] for r in rollouts if r["rank"] == rank} for rank in (0, 1)}
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    for step in range(1, STEPS + 1):
        rows = [r for r in rollouts if r["step"] == step]
        assert sorted(r["rank"] for r in rows) == [0] * 8 + [1] * 8
        # The logged figures are the global batch's.
        m = next(m for m in metrics if m["step"] == step)
        assert m["env/reward_mean"] == pytest.approx(sum(r["score"] for r in rows) / 16, rel=1e-5)
        assert m["objective/kl"] == pytest.approx(sum(r["kl"] for r in rows) / 16, abs=1e-5)

    # One set of outputs: one row per step (step 0: the validation curves), one results.json,
    # one log with one voice, nothing written outside the run dir.
    assert [m["step"] for m in metrics] == list(range(STEPS + 1))
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "done" and results["eval"] and results["train"]["env/reward_mean"] is not None
    assert (run / "eval" / "report.md").exists() and (run / "curves.png").exists()
    assert sorted(os.listdir(run / "checkpoints")) == [f"step-{s}" for s in range(1, STEPS)]
    assert sorted(os.listdir(root)) == ["run"]
    log_text = (run / "detox.log").read_text()
    assert log_text.count("this is rank 0") == 1 and "this is rank 1" not in log_text
    assert (proc.stdout + proc.stderr).count("detox: run dir") == 1


@pytest.mark.slow  # ~1 min on a slow machine; one process's exact resume is in the default suite
def test_resume_with_two_processes_continues_exactly(straight, tiny, tmp_path):
    root, _ = straight
    resumed = tmp_path / "run"
    launch(dp_args(tiny, resumed, steps=STEPS - 1), cwd=tmp_path)
    launch(dp_args(tiny, resumed, steps=STEPS), cwd=tmp_path)
    a, b = read_jsonl(root / "run" / "metrics.jsonl"), read_jsonl(resumed / "metrics.jsonl")
    assert [m["step"] for m in b] == list(range(STEPS + 1))
    for key in ("env/reward_mean", "objective/kl", "objective/kl_coef", "ppo/loss/policy", "response/length_mean"):
        assert a[-1][key] == pytest.approx(b[-1][key], rel=1e-4, abs=1e-6), key
    last = [sorted((r["rank"], r["id"]) for r in read_jsonl(d / "rollouts.jsonl") if r["step"] == STEPS)
            for d in (root / "run", resumed)]
    assert last[0] == last[1]  # every process resumed its own prompt stream
    sha = [json.loads((d / "distributed.json").read_text())["ranks"][0]["weights_sha256"]
           for d in (root / "run", resumed)]
    assert sha[0] == sha[1]


def test_a_data_parallel_checkpoint_refuses_one_process(straight, tiny, tmp_path):
    """Resuming needs the same number of processes (each resumes its own shard and seeds)."""
    import shutil

    from conftest import make_cfg

    from detox.runtime.checkpoint import CheckpointError
    from detox.stages.ppo import run_ppo

    root, _ = straight
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    overrides = [a for a in dp_args(tiny, run, steps=STEPS + 1)[2:] if not a.startswith("hydra.")]
    with pytest.raises(CheckpointError, match=r"2 process\(es\).*has 1.*--num_processes 2"):
        run_ppo(make_cfg([*overrides, "eval.enabled=false"], output_dir=str(run)))


if __name__ == "__main__":
    _worker(sys.argv[1])


def test_multirun_under_a_data_parallel_launcher_is_refused(tiny, tmp_path):
    proc = run_detox(["-m", "experiment=quickstart", "logger=none", f"data.name_or_path={tiny['data']}", "seed=1,2",
                      f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path, threads=1,
                     env={"WORLD_SIZE": "2"}, timeout=120)  # WORLD_SIZE: what the launcher sets
    assert proc.returncode == 2
    assert "multirun" in proc.stderr + proc.stdout and "accelerate launch" in proc.stderr + proc.stdout
    assert not list((tmp_path / "sweep").rglob("results.json"))  # refused before any job ran


@pytest.mark.slow
def test_rloo_data_parallel_keeps_each_prompts_samples_on_one_process(tiny, tmp_path):
    """ppo=rloo on two processes: a prompt's k samples are sampled (and baselined) by one process,
    the weights stay in sync, and no value head is saved."""
    args = [a for a in dp_args(tiny, tmp_path / "run", steps=2, extra=["ppo=rloo", "eval.enabled=false"])
            if not a.startswith("ppo.value_warmup_steps")]  # a value-head setting: refused for rloo
    launch(args, cwd=tmp_path)
    run = tmp_path / "run"
    dist = json.loads((run / "distributed.json").read_text())
    assert dist["ranks"][0]["weights_sha256"] == dist["ranks"][1]["weights_sha256"]
    rollouts = read_jsonl(run / "rollouts.jsonl")
    for step in (1, 2):
        for rank in (0, 1):
            ids = [r["id"] for r in rollouts if r["step"] == step and r["rank"] == rank]
            assert len(ids) == 8 and all(ids[i] == ids[i - i % 4] for i in range(8)) and ids[0] != ids[4]
    metrics = read_jsonl(run / "metrics.jsonl")
    assert "env/group_reward_std" in metrics[-1] and "ppo/value/mean" not in metrics[-1]
    assert not (run / "final" / "value_head.safetensors").exists()
