"""Trackers: each is built from its own node (conf/logger/<name>.yaml), several at once; what a
short run logs is read back with each tracker's own reader (W&B's is tests/test_cli_e2e.py's)."""

import json

import pytest
from conftest import make_cfg

from detox.core.instantiate import MissingPackage
from detox.runtime.trackers import mlflow_key
from detox.runtime.tracking import Tracking, read_metrics
from detox.stages.ppo import run_ppo

STEPS = 2


def short_run(tiny_overrides, run_dir, *overrides):
    run_ppo(make_cfg([*tiny_overrides, f"ppo.steps={STEPS}", "eval.enabled=false", *overrides],
                     output_dir=str(run_dir)))
    return [row["env/reward_mean"] for row in read_metrics(str(run_dir))]


def test_tensorboard_and_mlflow_at_once_hold_every_steps_reward(tiny_overrides, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rewards = short_run(tiny_overrides, tmp_path, "logger=[tensorboard,mlflow]", "logger.tags=[tiny]")
    assert len(rewards) == STEPS

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("env/reward_mean")
    assert [e.step for e in scalars] == [1, 2]
    assert [e.value for e in scalars] == pytest.approx(rewards)
    assert "objective/kl" in events.Tags()["scalars"] and "config/text_summary" in events.Tags()["tensors"]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = (tmp_path / "mlflow_run_id.txt").read_text()
    history = client.get_metric_history(run_id, "env/reward_mean")
    assert [m.step for m in history] == [1, 2] and [m.value for m in history] == pytest.approx(rewards)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["ppo.steps"] == str(STEPS)
    assert "tiny" in run.data.tags and client.get_experiment(run.info.experiment_id).name == "detox"
    assert str(tmp_path / "mlflow") in run.info.artifact_uri  # kept in the run dir, not the working dir


def test_mlflow_names_are_made_acceptable():
    assert mlflow_key("eval/heated=True/after/rougeL") == "eval/heated:True/after/rougeL"
    assert mlflow_key("val/profanity/toxic rate(%)") == "val/profanity/toxic rate___"


def test_a_tracker_added_from_its_own_yaml_without_touching_the_package(tiny_overrides, tmp_path):
    conf = tmp_path / "conf" / "logger"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("trackers:\n  mine:\n    _target_: tiny_models.ListTracker\n"
                                    "    label: ${logger.project}\n")
    rewards = short_run(tiny_overrides, tmp_path / "run", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                        "logger=[none,mine]", "logger.project=elsewhere")
    seen = json.loads((tmp_path / "run" / "list_tracker.json").read_text())
    assert seen["label"] == "elsewhere" and seen["finished"] == 0  # its own node, interpolated
    assert [s["env/reward_mean"] for s in seen["steps"]] == pytest.approx(rewards)
    assert [s["step"] for s in seen["steps"]] == [1, 2] and seen["config"]["ppo"]["steps"] == STEPS


def test_logger_none_and_the_old_backend_key_select_no_tracker(tmp_path):
    for overrides in (["logger=none"], ["logger.backend=none"]):
        cfg = make_cfg(["experiment=quickstart", *overrides])
        tracking = Tracking(cfg.logger, str(tmp_path), {}, start_step=None)
        assert tracking.trackers == {}
        tracking.log({"env/reward_mean": 0.5}, 1)
    assert len(read_metrics(str(tmp_path))) == 2  # metrics.jsonl is always written


def test_a_tracker_whose_package_is_missing_is_one_line(tmp_path):
    cfg = make_cfg(["experiment=quickstart", "logger=none",
                    "++logger.trackers.gone._target_=tiny_models.NeedsMissingPackage"])
    with pytest.raises(MissingPackage, match=r"logger=gone: .*detox_no_such_package.*pip install 'detox\[gone\]'"):
        Tracking(cfg.logger, str(tmp_path), {})
