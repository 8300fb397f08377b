"""Sweeps: the objective, the sweep presets, real multiruns through the CLI (basic and submitit
launchers, a failing job, W&B offline names and groups), the SLURM script the launcher would
submit, and `detox-sweep-summary` on real, hand-made and partial sweeps. CPU only, no network."""

import csv
import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
from detox_cli import run_detox
from hydra import compose, initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from wandb_offline import read_run, records

from detox.config.schema import ObjectiveSettings
from detox.evaluation.objective import objective
from detox.runtime.hydra_job import group_name
from detox.sweeps.jobs import pareto_front
from detox.sweeps.summary import main as summary_main
from detox.sweeps.summary import write_sweep_summary as summarize

TINY_EVAL = ["eval.num_samples=6", "eval.val_samples=4", "eval.judges=[profanity]", "eval.every_n_steps=0",
             "eval.batch_size=8"]


def load(path):
    with open(path) as f:
        return json.load(f)


def table_rows(markdown):
    """The main table's rows as lists of cells (rank first)."""
    main_table = markdown.split("## Jobs not done")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in main_table.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()]


# ---------------------------------------------------------------------------------------------
# The objective and the Pareto front


def flat(delta, before, after, judge="profanity"):
    return {f"eval/delta/{judge}/toxicity_mean": delta, "eval/before/rougeL": before, "eval/after/rougeL": after}


def test_objective_rewards_less_toxicity_and_penalises_a_rouge_drop():
    cfg = {"judge": "profanity", "rouge_weight": 2.0}
    assert objective(flat(-0.2, 0.5, 0.45), cfg) == pytest.approx(0.2 - 2 * 0.05)
    assert objective(flat(-0.2, 0.5, 0.6), cfg) == pytest.approx(0.2)  # a ROUGE gain earns nothing
    assert objective(flat(0.1, 0.5, 0.5), ObjectiveSettings()) == pytest.approx(-0.1)  # more toxic: negative
    structured = OmegaConf.structured(ObjectiveSettings(judge="reward", rouge_weight=0.5))
    assert objective(flat(-0.3, 0.4, 0.2, judge="reward"), structured) == pytest.approx(0.3 - 0.5 * 0.2)
    assert objective(flat(-0.3, 0.4, 0.2, judge="reward"), ObjectiveSettings()) is None  # no profanity figure
    assert objective(None, cfg) is None and objective({}, cfg) is None
    assert objective(flat(float("nan"), 0.5, 0.5), cfg) is None


def test_pareto_front_on_handmade_points():
    # maximise both: x = ROUGE-L change, y = toxicity reduction
    xs = [0.00, 0.10, -0.10, 0.05, None, 0.10]
    ys = [0.50, 0.20, 0.60, 0.10, 0.90, 0.20]
    # (0.05, 0.10) is dominated by (0.10, 0.20); the duplicate (0.10, 0.20) dominates neither copy;
    # a point without x is never on the front
    assert pareto_front(xs, ys) == [True, True, True, False, False, True]
    assert pareto_front([], []) == []


# ---------------------------------------------------------------------------------------------
# Sweep presets


def compose_hydra(overrides):
    with initialize_config_module("detox.conf", version_base="1.3"):
        return compose("config", overrides=["output_dir=/tmp/detox-sweep-test", *overrides], return_hydra_config=True)


def planned_jobs(cfg, extra=()):
    """The jobs Hydra's basic sweeper would launch for this config's params (+ command-line sweeps)."""
    args = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.params or {}).items()] + list(extra)
    return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)[0]


@pytest.mark.parametrize("preset,n_jobs,controller", [("kl", 5, "fixed"), ("rank", 4, None),
                                                       ("kl_x_rank", 9, "fixed"), ("kl_target", 4, "adaptive"),
                                                       ("estimators", 9, None)])
def test_sweep_presets_compose(preset, n_jobs, controller):
    cfg = compose_hydra([f"+sweep={preset}", "experiment=quickstart", "lora.r=8"])
    assert len(planned_jobs(cfg)) == n_jobs
    if controller:  # KL sweeps pin the controller so the swept value means what it says
        assert cfg.ppo.kl.controller.value == controller
    if "lora.r" in cfg.hydra.sweeper.params:  # rank sweeps keep the LoRA scale alpha/r at 1
        assert cfg.lora.alpha == cfg.lora.r == 8
    if preset == "kl_target":
        assert cfg.ppo.kl.horizon < 1000  # beta must be able to move in a short run


def test_presets_combine_with_seeds_and_command_line_axes():
    cfg = compose_hydra(["+sweep=[kl_x_rank,seeds]"])
    assert len(planned_jobs(cfg)) == 27
    jobs = planned_jobs(cfg, ["lora.r=4,8"])  # a command-line sweep of a preset's key replaces its list
    assert len(jobs) == 3 * 2 * 3 and {j[1] for j in jobs} == {"lora.r=4", "lora.r=8"}


def test_optuna_preset_composes_only_with_the_plugin():
    try:
        import hydra_plugins.hydra_optuna_sweeper  # noqa: F401
    except ImportError:  # the optional extra `.[optuna]` is not installed: a clear composition error
        with pytest.raises(Exception, match="hydra/sweeper/optuna"):
            compose_hydra(["+sweep=optuna"])
        return
    cfg = compose_hydra(["+sweep=optuna", "experiment=quickstart"])
    sweeper = cfg.hydra.sweeper
    assert str(sweeper.direction).endswith("maximize") and sweeper.storage is None
    assert set(sweeper.params) == {"ppo.kl.init_coef", "lora.r", "ppo.learning_rate"}
    assert cfg.ppo.kl.controller.value == "fixed" and cfg.eval.enabled and sweeper.max_failure_rate == 1.0


# ---------------------------------------------------------------------------------------------
# A real 2 x 2 multirun through the CLI, with W&B offline, and its summary


def test_multirun_2x2_through_the_cli(tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    args = [o for o in tiny_overrides if o != "logger=none"]  # W&B, offline (tests/conftest.py)
    out = run_detox(["-m", *args, *TINY_EVAL, "lora.r=4,8", "ppo.kl.init_coef=0.01,0.1", "lora.alpha=${lora.r}",
                     f"hydra.sweep.dir={sweep}"], cwd=tmp_path, threads=1, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    # 4 job dirs, each with its results.json
    results = [load(sweep / str(i) / "results.json") for i in range(4)]
    assert [r["status"] for r in results] == ["done"] * 4
    points = {(r["config"]["lora"]["r"], r["config"]["ppo"]["kl"]["init_coef"]) for r in results}
    assert points == {(4, 0.01), (4, 0.1), (8, 0.01), (8, 0.1)}
    assert all(r["config"]["lora"]["alpha"] == r["config"]["lora"]["r"] for r in results)
    assert all(isinstance(r["objective"], float) and r["eval_val"] for r in results)

    # W&B: one group per sweep, runs named by their swept overrides, swept keys and tags in config
    for i, r in enumerate(results):
        run = read_run(str(sweep / str(i)))
        assert run["group"] == group_name(str(sweep))
        assert run["config"]["sweep"]["keys"] == ["lora.r", "ppo.kl.init_coef"]
        assert run["config"]["sweep"]["job"] == i and run["config"]["lora"]["r"] == r["config"]["lora"]["r"]
        [wandb_file] = glob.glob(str(sweep / str(i) / "wandb" / "offline-run-*" / "run-*.wandb"))
        run_record = next(rec.run for rec in records(wandb_file) if rec.WhichOneof("record_type") == "run")
        lora_r, kl_coef = r["config"]["lora"]["r"], r["config"]["ppo"]["kl"]["init_coef"]
        assert run_record.display_name == f"lora.r={lora_r} ppo.kl.init_coef={kl_coef}"
        assert "quickstart" in run_record.tags  # logger.tags of the preset

    # the summary: a table of 4 settings sorted by the validation objective, a CSV, the Pareto plot
    summary = summarize(str(sweep))
    rows = table_rows(summary["markdown"])
    assert len(rows) == 4 and all(row[2] == "1/1" for row in rows)
    assert {row[1] for row in rows} == {f"`lora.r={r} ppo.kl.init_coef={c}`" for r, c in points}
    objectives = [float(row[4]) for row in rows]
    assert objectives == sorted(objectives, reverse=True)
    assert objectives[0] == pytest.approx(max(r["objective"] for r in results), abs=1e-4)
    assert any(row[3] == "*" for row in rows)  # some setting is on the Pareto front
    with open(summary["csv"]) as f:
        assert [row["lora.r"] for row in csv.DictReader(f)] == [row[1].split()[0].split("=")[1] for row in rows]
    with open(summary["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # a partial sweep: one job has not written results.json yet, another has no job dir yet
    partial = tmp_path / "partial"
    shutil.copytree(sweep, partial, ignore=shutil.ignore_patterns("wandb", "final", "rollouts.jsonl"))
    os.remove(partial / "3" / "results.json")
    shutil.rmtree(partial / "2")
    assert summary_main([str(partial), "--out", str(tmp_path / "partial-summary")]) == 0
    text = open(tmp_path / "partial-summary" / "summary.md").read()
    assert "4 jobs: 2 done, 0 running, 0 failed, 2 not started / missing." in text
    assert "| 3 | not started / missing | `lora.r=8 ppo.kl.init_coef=0.1` |" in text
    assert "| (no job dir yet) | not started / missing | `lora.r=8 ppo.kl.init_coef=0.01` |" in text


# ---------------------------------------------------------------------------------------------
# A failing job does not take the sweep down, in-process (basic) or in separate processes (submitit)


# basic: under -m slow (the 2x2 multirun runs it); submitit_local, the cluster path, by default
@pytest.mark.parametrize("launcher", [pytest.param("basic", marks=pytest.mark.slow), "submitit_local"])
def test_a_failing_job_does_not_stop_the_sweep(launcher, tiny_overrides, tmp_path):
    sweep = tmp_path / "sweep"
    # job 0 fails at its config check (batch 8 is not divisible by mini-batch 3); job 1 must still run
    out = run_detox(["-m", *tiny_overrides, "eval.enabled=false", "ppo.mini_batch_size=3,4",
                     f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path, threads=None,
                    timeout=600)
    assert out.returncode == 1, out.stderr[-3000:]  # the sweep ends non-zero, after every job ran
    assert "ppo.mini_batch_size=3" in out.stderr
    failed, done = load(sweep / "0" / "results.json"), load(sweep / "1" / "results.json")
    assert failed["status"] == "failed" and failed["error"].startswith("ConfigError: ppo.batch_size=8")
    assert "ppo.mini_batch_size=3" in failed["overrides"]
    assert done["status"] == "done" and done["train"]["env/reward_mean"] is not None
    if launcher == "submitit_local":  # each job ran in its own process, with submitit's own log
        logs = sorted(glob.glob(str(sweep / ".submitit" / "*" / "*_log.out")))
        assert len(logs) == 2 and len({os.path.dirname(p) for p in logs}) == 2
        assert any(f"detox: run dir {sweep / '1'}" in open(p).read() for p in logs)
        # the two jobs ran at once: each took its share of the cores (no oversubscription)
        job_logs = "".join(open(p).read() for p in glob.glob(str(sweep / ".submitit" / "*" / "*_log.err")))
        cores = len(os.sched_getaffinity(0))
        assert f"threads: {max(1, cores // 2)} ({cores} cores shared by 2 parallel jobs" in job_logs
    else:  # one job at a time: each may use every core
        assert f"threads: {len(os.sched_getaffinity(0))} (" in out.stderr
    text = summarize(str(sweep))["markdown"]
    assert "2 jobs: 1 done, 0 running, 1 failed" in text
    assert "| 0 | failed | `ppo.mini_batch_size=3` | ConfigError: ppo.batch_size=8" in text


# ---------------------------------------------------------------------------------------------
# The SLURM launcher: the sbatch script it would submit, rendered without a cluster

SLURM_SCRIPT = """
import sys

from submitit.slurm.slurm import SlurmExecutor

# The one mock: no SLURM cluster exists here, so submitit's `srun` detection is bypassed.
# Everything else is the real chain (detox CLI -> Hydra's sweeper -> the submitit launcher plugin
# -> SlurmExecutor._make_submission_file_text), which writes the sbatch script and then fails to
# call the absent `sbatch`: nothing is submitted.
SlurmExecutor.affinity = classmethod(lambda cls: 2)
from detox.cli import main

sys.argv = ["detox", *sys.argv[1:]]
main()
"""


def test_slurm_launcher_renders_the_sbatch_script(tmp_path):
    if shutil.which("sbatch"):
        pytest.skip("a SLURM cluster is reachable from here: this test must not submit to it")
    sweep = tmp_path / "sweep"
    out = subprocess.run(
        [sys.executable, "-c", SLURM_SCRIPT, "-m", "experiment=quickstart", "hydra/launcher=slurm",
         "hydra.launcher.partition=gpu-a100", "hydra.launcher.gpus_per_node=2", "hydra.launcher.timeout_min=90",
         "hydra.launcher.account=myproj", "hydra.launcher.array_parallelism=2",
         'hydra.launcher.setup=["module load cuda/12.4","export WANDB_MODE=offline"]', "lora.r=4,8,16",
         f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode != 0 and "sbatch" in out.stderr, out.stderr[-3000:]
    [script] = (sweep / ".submitit").glob("*submission_file*.sh")  # pathlib's glob sees dot-files
    text = open(script).read()
    for line in ["#SBATCH --partition=gpu-a100", "#SBATCH --gpus-per-node=2", "#SBATCH --time=90",
                 "#SBATCH --account=myproj", "#SBATCH --array=0-2%2",  # 3 jobs, at most 2 at once
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB", "#SBATCH --job-name=detox",
                 "module load cuda/12.4", "export WANDB_MODE=offline"]:
        assert line in text, line
    assert text.index("module load cuda/12.4") < text.index("srun ")  # setup lines run before the job


# ---------------------------------------------------------------------------------------------
# The summary on a hand-made sweep with the full results.json shape


def fake_results(split_figures, status="done", stored_objective=None, error=None):
    """results.json of one job; split_figures: {"val": (tox_drop, rouge_change), "test": (...)} or None."""
    def flat_split(figures):
        if figures is None:
            return None
        drop, rouge = figures
        before = 0.5
        return {"eval/before/profanity/toxicity_mean": 0.3, "eval/after/profanity/toxicity_mean": 0.3 - drop,
                "eval/delta/profanity/toxicity_mean": -drop, "eval/delta/profanity/toxicity_mean_ci_low": -drop - 0.05,
                "eval/delta/profanity/toxicity_mean_ci_high": -drop + 0.05, "eval/before/rougeL": before,
                "eval/after/rougeL": before + rouge, "eval/before/kl_to_ref": 0.0, "eval/after/kl_to_ref": 1.5 + drop}

    figures = split_figures or {}
    return {"status": status, "config": {"objective": {"judge": "profanity", "rouge_weight": 1.0}},
            "train": {"env/reward_mean": 0.8, "objective/kl": 1.2} if status == "done" else None,
            "eval": flat_split(figures.get("test")), "eval_val": flat_split(figures.get("val")),
            "objective": stored_objective, **({"error": error} if error else {})}


def write_job(sweep, num, overrides, results=None):
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if results is not None:
        (job / "results.json").write_text(json.dumps({**results, "overrides": overrides}))


@pytest.fixture
def handmade_sweep(tmp_path):
    sweep = tmp_path / "handmade"
    a, b = ["ppo.kl.init_coef=0.05", "lora.r=8"], ["ppo.kl.init_coef=0.2", "lora.r=8"]
    c, d = ["ppo.kl.init_coef=0.05", "lora.r=16"], ["ppo.kl.init_coef=0.2", "lora.r=16"]
    # A: objective 0.09 and 0.11 (the stored 9.9 is ignored: recomputed from eval_val)
    write_job(sweep, 0, a + ["seed=1"], fake_results({"val": (0.10, -0.01), "test": (0.0, 0.0)}, stored_objective=9.9))
    write_job(sweep, 1, a + ["seed=2"], fake_results({"val": (0.12, -0.01), "test": (0.0, 0.0)}))
    # B: objective 0.05 (a ROUGE gain is not rewarded), but the best test figures: not what ranks
    write_job(sweep, 2, b + ["seed=1"], fake_results({"val": (0.05, 0.01), "test": (0.5, 0.1)}))
    write_job(sweep, 3, b + ["seed=2"], fake_results({"val": (0.05, 0.01), "test": (0.5, 0.1)}))
    # C: objective -0.03, dominated by A; its second seed failed
    write_job(sweep, 4, c + ["seed=1"], fake_results({"val": (0.02, -0.05), "test": (0.02, -0.05)}))
    write_job(sweep, 5, c + ["seed=2"], fake_results(None, status="failed", error="RuntimeError: CUDA out of memory"))
    # D: evaluation disabled (null figures), one seed still running, one not started
    write_job(sweep, 6, d + ["seed=1"], fake_results(None))
    write_job(sweep, 7, d + ["seed=2"], fake_results(None, status="running"))
    write_job(sweep, 8, d + ["seed=3"])
    return sweep


def test_summary_of_a_handmade_sweep(handmade_sweep, tmp_path):
    out = summarize(str(handmade_sweep), out_dir=str(tmp_path / "out"))
    rows = table_rows(out["markdown"])
    assert [r[1] for r in rows] == ["`ppo.kl.init_coef=0.05 lora.r=8`", "`ppo.kl.init_coef=0.2 lora.r=8`",
                                    "`ppo.kl.init_coef=0.05 lora.r=16`", "`ppo.kl.init_coef=0.2 lora.r=16`"]
    assert [r[2] for r in rows] == ["2/2", "2/2", "1/2", "1/3"]  # done / jobs
    assert [r[3] for r in rows] == ["*", "*", "", ""]  # the Pareto front (validation split)
    assert rows[0][4] == "+0.1000 ± 0.0141" and rows[1][4] == "+0.0500 ± 0.0000" and rows[2][4] == "-0.0300"
    assert rows[0][6] == "+0.1100 ± 0.0141" and rows[1][7] == "+0.5000 ± 0.0000"  # val / test beside it
    assert all(cell == "" for cell in rows[3][4:-1])  # no evaluation: blanks, ranked last
    text = out["markdown"]
    assert "9 jobs: 6 done, 1 running, 1 failed, 1 not started / missing." in text
    assert "| 5 | failed | `ppo.kl.init_coef=0.05 lora.r=16 seed=2` | RuntimeError: CUDA out of memory |" in text
    assert "| 7 | running | `ppo.kl.init_coef=0.2 lora.r=16 seed=2` |" in text
    assert "| 8 | not started / missing | `ppo.kl.init_coef=0.2 lora.r=16 seed=3` |" in text
    with open(out["csv"]) as f:
        table = list(csv.DictReader(f))
    assert [t["lora.r"] for t in table] == ["8", "8", "16", "16"]
    assert [t["pareto"] for t in table] == ["1", "1", "0", "0"]
    assert float(table[0]["objective_val_mean"]) == pytest.approx(0.10) and table[0]["objective_val_n"] == "2"
    assert table[3]["objective_val_mean"] == ""
    assert os.path.getsize(out["png"]) > 10_000

    # the objective recomputed with another ROUGE weight reorders the settings
    reweighted = summarize(str(handmade_sweep), out_dir=str(tmp_path / "out2"), rouge_weight=10.0)
    assert table_rows(reweighted["markdown"])[0][1] == "`ppo.kl.init_coef=0.2 lora.r=8`"


def test_summary_errors_say_what_to_pass(tmp_path):
    (tmp_path / "empty").mkdir()
    out = subprocess.run([sys.executable, "-m", "detox.sweeps.summary", str(tmp_path / "empty")], capture_output=True, text=True)
    assert out.returncode == 2 and "no job dirs under" in out.stderr and "outputs/multirun" in out.stderr
    assert summary_main([str(tmp_path / "nowhere")]) == 2
