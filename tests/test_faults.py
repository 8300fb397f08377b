"""Runs that survive a cluster: stop signals, divergence, a shared run dir, resume that
refuses what it cannot honour, and damaged checkpoints. Tiny models, CPU, no network."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import make_cfg
from detox_cli import run_detox
from safetensors.torch import load_file
from tiny_models import NaNClassifier

from detox.core.errors import CheckpointError, Diverged, Interrupted, RunDirBusy
from detox.runtime.checkpoint import (
    checkpoint_dirs,
    checkpoint_problem,
    fingerprint,
    fingerprint_diffs,
    latest_checkpoint,
)
from detox.runtime.tracking import read_metrics
from detox.stages.ppo import run_ppo


def results(run_dir):
    return json.load(open(os.path.join(run_dir, "results.json")))


def rollout_steps(run_dir):
    return [json.loads(line)["step"] for line in open(os.path.join(run_dir, "rollouts.jsonl"))]


def weights(path):
    return load_file(os.path.join(path, "trainable.safetensors"))


def assert_every_checkpoint_good(run_dir):
    for path in checkpoint_dirs(str(run_dir)):
        assert checkpoint_problem(path) is None, path


@pytest.fixture
def base(tiny_overrides):
    return [*tiny_overrides, "eval.enabled=false", "ppo.save_every_minutes=null", "ppo.keep_last=null"]


# ------------------------------------------------------------------------------------ signals


def signal_after_first_step(run_dir, signum):
    """Send `signum` to this process once step 1 is in metrics.jsonl (i.e. during step 2)."""
    def watch():
        deadline = time.time() + 120
        while time.time() < deadline:
            if read_metrics(str(run_dir)):
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_sigterm_finishes_the_step_checkpoints_and_resumes_exactly(base, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_ppo(make_cfg([*base, "ppo.steps=5"], output_dir=str(straight)))
    signal_after_first_step(stopped, signal.SIGTERM)
    with pytest.raises(Interrupted) as info:
        run_ppo(make_cfg([*base, "ppo.steps=5"], output_dir=str(stopped)))
    step = info.value.step
    assert 1 <= step < 5 and info.value.exit_code == 143 and info.value.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored
    r = results(stopped)
    assert r["status"] == "interrupted" and r["signal"] == "SIGTERM" and r["step"] == step
    assert r["checkpoint"] == str(stopped / "checkpoints" / f"step-{step}") and latest_checkpoint(str(stopped)) == r["checkpoint"]
    assert [m["step"] for m in read_metrics(str(stopped))] == list(range(1, step + 1))
    assert not os.path.exists(stopped / "detox.lock")

    run_ppo(make_cfg([*base, "ppo.steps=5"], output_dir=str(stopped)))
    r = results(stopped)
    assert r["status"] == "done" and r["started_at"] <= r["resumes"][0]["at"] and r["resumes"][0]["from_step"] == step
    a, b = read_metrics(str(straight)), read_metrics(str(stopped))
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5]
    for key in ("env/reward_mean", "objective/kl", "ppo/loss/policy", "ppo/loss/value", "response/length_mean"):
        assert [m[key] for m in a] == [m[key] for m in b], key  # bit-identical
    assert rollout_steps(stopped) == rollout_steps(straight)
    wa, wb = weights(straight / "final"), weights(stopped / "final")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_cli_refuses_a_second_process_and_exits_143_on_sigterm(tiny_overrides, tmp_path):
    run_dir = tmp_path / "run"
    args = [*tiny_overrides, "eval.enabled=false", "ppo.steps=400", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "detox", *args], cwd=tmp_path, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not read_metrics(str(run_dir)) and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert read_metrics(str(run_dir)), "the first run did not start training"
        holder = json.load(open(run_dir / "detox.lock"))
        assert holder["pid"] == first.pid and holder["stage"] == "ppo"
        second = run_detox(args, cwd=tmp_path, threads=1)
        assert second.returncode == 2 and "Traceback" not in second.stdout + second.stderr
        assert f"is in use by pid {first.pid}" in second.stdout + second.stderr
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 143, out[-2000:]
    r = results(run_dir)
    assert r["status"] == "interrupted" and "To resume, run the same command with hydra.run.dir" in out
    assert os.path.isdir(r["checkpoint"]) and checkpoint_problem(r["checkpoint"]) is None
    assert "Traceback" not in out and not os.path.exists(run_dir / "detox.lock")


@pytest.mark.slow  # ~45 s; the default suite runs submitit_local in tests/test_sweep.py and SIGTERM in-process
def test_submitit_preemption_checkpoints_first_then_requeues_and_resumes(tiny_overrides, tmp_path):
    """SLURM's pre-timeout USR2 through submitit's real handler (the local executor): our
    checkpoint first, then submitit's requeue, and the requeued job resumes in the same dir."""
    sweep = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "-m", "detox", "-m", *tiny_overrides, "eval.enabled=false", "ppo.steps=20",
                            "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, env=env,
                           text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not read_metrics(str(sweep / "0")) and time.time() < deadline and job.poll() is None:
            time.sleep(0.05)
        os.kill(json.load(open(sweep / "0" / "detox.lock"))["pid"], signal.SIGUSR2)
        out, _ = job.communicate(timeout=300)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, out[-3000:]
    r = results(sweep / "0")
    assert r["status"] == "done" and len(r["resumes"]) == 1
    step = r["resumes"][0]["from_step"]
    assert [m["step"] for m in read_metrics(str(sweep / "0"))] == list(range(1, 21))
    log = open(next((sweep / ".submitit").glob("*/*_0_log.err"))).read()  # our logs and submitit's, on stderr
    ours = log.index(f"interrupted by SIGUSR2 after step {step} (checkpoint {sweep / '0' / 'checkpoints' / f'step-{step}'})")
    assert ours < log.index("Calling checkpoint method") < log.index("Requeued job")
    assert log.index("Requeued job") < log.index(f"resumed from {sweep / '0' / 'checkpoints' / f'step-{step}'}")


# ------------------------------------------------------------------------------------ guards


def nan_reward(monkeypatch, bad) -> str:
    """A reward component that returns NaN for the calls numbered in `bad`: its override."""
    monkeypatch.setattr(NaNClassifier, "bad", bad)
    return "reward.components.toxicity._target_=tiny_models.NaNClassifier"


def test_a_nan_reward_batch_is_skipped_and_counted(base, tmp_path, monkeypatch, caplog):
    nan = nan_reward(monkeypatch, bad={2})
    with caplog.at_level("WARNING", logger="detox.rl.guards"):
        run_ppo(make_cfg([*base, "ppo.steps=3", nan], output_dir=str(tmp_path)))
    rows = read_metrics(str(tmp_path))
    assert [m["ppo/skipped_minibatches"] for m in rows] == [0, 4, 0]  # 2 epochs x 2 mini-batches
    assert rows[1]["ppo/epochs"] == 0 and "non-finite reward-model scores" in caplog.text
    assert results(tmp_path)["status"] == "done"
    assert_every_checkpoint_good(tmp_path)


def test_repeated_nan_rewards_stop_the_run_as_diverged(base, tmp_path, monkeypatch):
    nan = nan_reward(monkeypatch, bad={3, 4, 5, 6})
    with pytest.raises(Diverged, match="3 updates in a row were skipped") as info:
        run_ppo(make_cfg([*base, "ppo.steps=8", "ppo.save_every=1", nan], output_dir=str(tmp_path)))
    assert info.value.exit_code == 3
    r = results(tmp_path)
    assert r["status"] == "diverged" and r["step"] == 5 and "non-finite reward-model scores" in r["reason"]
    assert r["last_good_checkpoint"] == str(tmp_path / "checkpoints" / "step-4")
    assert latest_checkpoint(str(tmp_path)) == r["last_good_checkpoint"] and not os.path.exists(tmp_path / "final")
    assert_every_checkpoint_good(tmp_path)


def test_an_inf_gradient_skips_one_update_and_weights_stay_finite(tiny_overrides, tmp_path, caplog):
    from test_trainer import make_trainer

    trainer = make_trainer(tiny_overrides, tmp_path)
    param = next(p for n, p in trainer.policy.named_parameters() if "lora_B" in n and p.requires_grad)
    calls = []

    def poison_once(grad):
        calls.append(1)
        return grad * float("inf") if len(calls) == 1 else grad

    param.register_hook(poison_once)
    with caplog.at_level("WARNING", logger="detox.rl.guards"):
        metrics, _ = trainer.train_step()
    assert metrics["ppo/skipped_minibatches"] == 1 and "non-finite gradient norm" in caplog.text
    assert all(bool(torch.isfinite(p).all()) for p in trainer.update.trainable)
    assert trainer.guard.consecutive_skips == 0  # the next update went through


def test_kl_max_stops_a_kl_explosion(base, tmp_path):
    overrides = [*base, "ppo.steps=30", "ppo.learning_rate=0.05", "ppo.kl.init_coef=0", "ppo.kl.max=3",
                 "ppo.guard.patience=2", "ppo.save_every=1"]
    with pytest.raises(Diverged, match=r"objective/kl = .* above ppo.kl.max=3 for 2 steps"):
        run_ppo(make_cfg(overrides, output_dir=str(tmp_path)))
    rows = read_metrics(str(tmp_path))
    assert rows[-1]["objective/kl"] > 3 and rows[-2]["objective/kl"] > 3  # logged, then stopped
    assert results(tmp_path)["status"] == "diverged"
    assert_every_checkpoint_good(tmp_path)


# ------------------------------------------------------------------------------------ lock


def test_a_live_lock_is_refused_and_a_stale_one_taken_over(base, tmp_path, caplog):
    import socket

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": live.pid, "host": socket.gethostname(), "stage": "ppo", "started_at": "then"}
        (run_dir / "detox.lock").write_text(json.dumps(lock))
        with pytest.raises(RunDirBusy, match=f"in use by pid {live.pid} on {socket.gethostname()}"):
            run_ppo(make_cfg([*base, "ppo.steps=1"], output_dir=str(run_dir)))
        assert not os.path.exists(run_dir / "results.json")  # the holder's files are left alone
    finally:
        live.kill()
        live.wait()
    with caplog.at_level("WARNING", logger="detox.runtime.run_lock"):
        run_ppo(make_cfg([*base, "ppo.steps=1"], output_dir=str(run_dir)))  # its pid is gone now
    assert f"process {live.pid} is gone" in caplog.text and results(run_dir)["status"] == "done"
    assert not os.path.exists(run_dir / "detox.lock")


# ------------------------------------------------------------------------------------ resume


def test_resume_refuses_a_changed_setting_unless_allowed(base, tmp_path):
    run_ppo(make_cfg([*base, "ppo.steps=2"], output_dir=str(tmp_path)))
    with pytest.raises(CheckpointError, match=r"ppo.learning_rate: 0.0002 in the checkpoint, 0.5 now.*"
                                              r"resume_allow=\[ppo.learning_rate\]"):
        run_ppo(make_cfg([*base, "ppo.steps=3", "ppo.learning_rate=0.5"], output_dir=str(tmp_path)))
    run_ppo(make_cfg([*base, "ppo.steps=3", "ppo.learning_rate=0.5", "resume_allow=[ppo.learning_rate]"],
                     output_dir=str(tmp_path)))
    r = results(tmp_path)
    assert r["status"] == "done" and r["resumes"][-1]["changed"] == {"ppo.learning_rate": [0.0002, 0.5]}
    optimizer = torch.load(tmp_path / "final" / "optimizer.pt", weights_only=False)
    assert optimizer["param_groups"][0]["lr"] == 0.5
    assert [m["step"] for m in read_metrics(str(tmp_path))] == [1, 2, 3]
    assert rollout_steps(tmp_path) == [s for s in (1, 2, 3) for _ in range(8)]  # each step once


def test_a_checkpoint_from_before_reward_components_resumes_as_its_sole_component():
    current = fingerprint(make_cfg(["experiment=quickstart"]))
    # What such a checkpoint recorded: the classifier's settings as reward.<key>, no components.
    component = "reward.components.toxicity."
    saved = {k: v for k, v in current.items() if not k.startswith("reward.")}
    saved |= {"reward." + k[len(component):]: v for k, v in current.items()
              if k.startswith(component) and k[len(component):] not in ("_target_", "weight", "normalize")}
    saved |= {"reward.clip": current["reward.clip"]}
    assert saved["reward.label"] == "nothate" and saved["reward.kind"] == "prob"
    assert fingerprint_diffs(saved, current) == {}
    assert fingerprint_diffs({**saved, "reward.kind": "logodds"}, current) == {
        "reward.components.toxicity.kind": ("logodds", "prob")}


def test_checkpoints_by_time_and_keep_last(base, tmp_path):
    run_ppo(make_cfg([*base, "ppo.steps=4", "ppo.save_every_minutes=0.00001", "ppo.keep_last=2"],
                     output_dir=str(tmp_path)))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step-2", "step-3"]  # step 4 is final/


# ------------------------------------------------------------------------------------ damage


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(base, tmp_path, caplog):
    run_ppo(make_cfg([*base, "ppo.steps=3", "ppo.save_every=1"], output_dir=str(tmp_path)))
    with open(tmp_path / "final" / "trainable.safetensors", "r+b") as f:
        f.truncate(100)
    os.remove(tmp_path / "checkpoints" / "step-2" / "trainer_state.json")
    with caplog.at_level("WARNING", logger="detox.runtime.checkpoint"):
        assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoints" / "step-1")
    assert "trainable.safetensors is 100 bytes, the manifest says" in caplog.text
    assert "trainer_state.json is missing" in caplog.text
    (tmp_path / "checkpoints" / "step-1" / "trainer_state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="no usable checkpoint.*trainer_state.json is unreadable"):
        latest_checkpoint(str(tmp_path))


def test_eval_of_an_unfinished_run_says_which_step_and_needs_allow_unfinished(base, tmp_path):
    import shutil

    from detox.stages.common import load_run

    run_ppo(make_cfg([*base, "ppo.steps=2", "ppo.save_every=1"], output_dir=str(tmp_path / "run")))
    shutil.rmtree(tmp_path / "run" / "final")
    (tmp_path / "run" / ".hydra").mkdir()
    make_cfg_ = make_cfg([*base, "ppo.steps=2"], output_dir=str(tmp_path / "run"))
    from omegaconf import OmegaConf

    OmegaConf.save(make_cfg_, tmp_path / "run" / ".hydra" / "config.yaml")
    cfg = make_cfg([*base, "stage=eval", f"run_dir={tmp_path / 'run'}"], output_dir=str(tmp_path / "job"))
    with pytest.raises(CheckpointError, match=r"unfinished.*step 1 .*allow_unfinished=true"):
        load_run(cfg)
    cfg.allow_unfinished = True
    _, checkpoint = load_run(cfg)
    assert checkpoint == str(tmp_path / "run" / "checkpoints" / "step-1")


def test_an_empty_lock_file_is_busy_while_fresh_and_stale_when_old(tmp_path):
    from detox.runtime.run_lock import RunLock

    lock = tmp_path / "detox.lock"
    lock.write_text("")  # a process killed between creating and writing its lock
    with pytest.raises(RunDirBusy, match="in use by another process.*delete"):
        RunLock(str(tmp_path), "ppo").acquire()
    old = time.time() - 120
    os.utime(lock, (old, old))
    with RunLock(str(tmp_path), "ppo") as taken:
        assert json.loads(lock.read_text())["pid"] == os.getpid() and taken.held
    assert not lock.exists()


def test_reward_clip_bounds_scores_and_ratio_threshold_skips_updates(tiny_overrides, tmp_path, caplog):
    from test_trainer import make_trainer

    trainer = make_trainer([*tiny_overrides, "reward.kind=logit", "reward.clip=0.01", "ppo.ratio_threshold=1.0000001",
                            "ppo.learning_rate=0.05", "ppo.ppo_epochs=2", "ppo.guard.max_consecutive_skips=10"],
                           tmp_path)
    with caplog.at_level("WARNING", logger="detox.rl.guards"):
        metrics, r = trainer.train_step()
    assert r.scores.abs().max() <= 0.01 and r.scores.abs().max() > 0  # old TRL's score_clip
    # the first update moves the policy by lr 0.05: later mini-batches' ratios leave [1, 1 + 1e-7]
    assert metrics["ppo/skipped_minibatches"] >= 1 and "> ppo.ratio_threshold=1" in caplog.text, metrics
