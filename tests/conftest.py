import os
import sys

# No network in tests: fail fast instead of retrying the hub; W&B writes real offline runs.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.pop("WANDB_API_KEY", None)
# One torch thread in tests, in-process (the stages honour OMP_NUM_THREADS) and in subprocesses.
os.environ["OMP_NUM_THREADS"] = "1"

sys.path.insert(0, os.path.dirname(__file__))

import pytest  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402

from detox.config.schema import register  # noqa: E402
from detox.core.logs import quiet_libraries  # noqa: E402

register()
quiet_libraries()
torch.set_num_threads(1)


def make_cfg(overrides=(), output_dir="/tmp/detox-test-run"):
    """Compose the real config tree (as the CLI does) with overrides."""
    with initialize_config_module("detox.conf", version_base="1.3"):
        return compose("config", overrides=[f"output_dir={output_dir}", *overrides])


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Paths of a tiny random T5, a tiny random nothate/hate classifier and a small jsonl."""
    from tiny_models import tiny_assets

    return tiny_assets(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture
def tiny_overrides(tiny):
    return [
        "experiment=quickstart", "logger=none", f"policy.name_or_path={tiny['policy']}",
        f"reward.name_or_path={tiny['reward']}", f"data.name_or_path={tiny['data']}",
        "lora.target_modules=[q,v]", "ppo.batch_size=8", "ppo.mini_batch_size=4", "ppo.ppo_epochs=2",
        "generation.max_new_tokens_min=8", "generation.max_new_tokens_max=16", "ppo.steps=2",
        "ppo.save_every=0", "ppo.value_warmup_steps=0",
    ]


# A sixth of the preset, with a smaller evaluation: every file and wire of a real run (run once,
# shared by tests/test_cli_e2e.py and tests/test_export_generate.py). That training improves the
# reward is checked on the whole preset (tests/test_quickstart_targets.py, `pytest -m slow`): in a
# few steps the batch-to-batch share of heated prompts moves env/reward_mean more than learning does.
E2E_STEPS = 10
E2E_OVERRIDES = [f"ppo.steps={E2E_STEPS}", "ppo.save_every=5", "eval.num_samples=32", "eval.val_samples=16"]


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """(run dir, completed process) of `detox experiment=quickstart` with E2E_OVERRIDES."""
    from detox_cli import run_detox

    root = tmp_path_factory.mktemp("e2e")
    run_dir = root / "run"
    out = run_detox(["experiment=quickstart", *E2E_OVERRIDES, f"hydra.run.dir={run_dir}", "logger.group=e2e"],
                    cwd=root)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, out
