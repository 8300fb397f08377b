import os
from importlib import resources

import pytest
from conftest import make_cfg
from omegaconf import OmegaConf

from detox.config.validate import validate
from detox.core.errors import ConfigError

CONF = resources.files("detox.conf")
GROUPS = ["policy", "reward", "ppo", "lora", "eval", "data", "logger", "experiment"]


def group_members():
    for group in GROUPS:
        for entry in sorted((CONF / group).iterdir()):
            if entry.name.endswith(".yaml"):
                yield group, entry.name[: -len(".yaml")]


@pytest.mark.parametrize("group,member", list(group_members()))
def test_every_group_member_composes_and_validates(group, member):
    cfg = make_cfg([f"{group}={member}"])
    validate(cfg)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves (asset paths too)


def test_groups_are_all_present():
    assert {g for g, _ in group_members()} == set(GROUPS)
    assert {"quickstart", "lab3"} <= {m for g, m in group_members() if g == "experiment"}


def test_default_is_the_real_recipe():
    cfg = make_cfg()
    assert cfg.policy.name_or_path == "google/flan-t5-base"
    assert cfg.reward.components.toxicity.name_or_path == "facebook/roberta-hate-speech-dynabench-r4-target"
    assert cfg.reward.components.toxicity.label == "nothate" and list(cfg.reward.components) == ["toxicity"]
    assert cfg.data.name_or_path == "knkarthick/dialogsum"
    assert cfg.policy.adapter is None and cfg.lora.enabled


def test_lab3_pins_the_recipe():
    cfg = make_cfg(["experiment=lab3"])
    assert cfg.reward.components.toxicity.input == "prompt_response" and cfg.reward.components.toxicity.kind == "logit"
    assert cfg.data.shuffle is False and cfg.data.test_size == 0.2 and cfg.data.split_seed == 42
    assert (cfg.ppo.learning_rate, cfg.ppo.batch_size, cfg.ppo.mini_batch_size, cfg.ppo.steps) == (1.41e-5, 16, 4, 10)
    assert cfg.ppo.kl.controller == "adaptive" and cfg.ppo.kl.init_coef == 0.2 and cfg.ppo.kl.target == 6
    assert (cfg.generation.max_new_tokens_min, cfg.generation.max_new_tokens_max) == (100, 400)
    assert cfg.generation.top_k == 0 and cfg.generation.min_length == 5
    assert list(cfg.lora.target_modules) == ["q", "v"]  # the recipe's adapter; the lora group's default is all-linear


@pytest.mark.parametrize("preset,template", [
    ("bart_large_cnn", "{dialogue}"), ("pegasus_xsum", "{dialogue}"), ("mt5_base", "summarize: {dialogue}"),
    ("flan_t5_xl", "\nSummarize the following conversation.\n\n{dialogue}\n\nSummary:\n"),
])
def test_a_policy_preset_brings_its_models_prompt_unless_the_command_line_sets_one(preset, template):
    assert make_cfg([f"policy={preset}", "data=bundled"]).data.prompt_template == template
    assert make_cfg([f"policy={preset}", "data.prompt_template='Sum up: {dialogue}'"]).data.prompt_template == \
        "Sum up: {dialogue}"


def test_quickstart_points_at_shipped_assets():
    cfg = make_cfg(["experiment=quickstart"])
    assert os.path.isfile(cfg.data.name_or_path)
    for path in (cfg.policy.name_or_path, cfg.reward.components.toxicity.name_or_path):
        assert os.path.isfile(os.path.join(path, "config.json")), path


@pytest.mark.parametrize("override,key", [
    ("ppo.not_a_key=1", "not_a_key"),
    ("ppo.steps=many", "ppo.steps"),
    ("policy.reference=sideways", "policy.reference"),
    ("reward.kind=softmax", "reward.kind"),
    ("ppo.kl.estimator=k9", "ppo.kl.estimator"),
    ("policy.dtype=float64", "policy.dtype"),
    ("eval.decoding=beam", "eval.decoding"),
    ("lora.train=sometimes", "lora.train"),
    ("generation.cache_implementation=paged", "generation.cache_implementation"),
])
def test_bad_type_or_unknown_key_names_the_key(override, key):
    with pytest.raises(Exception) as info:
        make_cfg([override])
    assert key in str(info.value) or key in str(info.value.__cause__)


@pytest.mark.parametrize("override,key", [
    ("ppo.batch_size=10", "ppo.batch_size"),
    ("ppo.learning_rate=0", "ppo.learning_rate"),
    ("ppo.learning_rate=-1e-5", "ppo.learning_rate"),
    ("ppo.kl.target=0", "ppo.kl.target"),
    ("generation.max_new_tokens_min=0", "generation.max_new_tokens_min"),
    ("generation.max_new_tokens_max=50", "generation.max_new_tokens_min"),
    ("data.max_chars=-5", "data.max_chars"),
    ("data.prompt_template=no placeholder", "{dialogue}"),
    ("resume=maybe", "resume"),
    ("stage=export", "run_dir"),
])
def test_invalid_values_fail_validation_with_the_key(override, key):
    cfg = make_cfg([override])
    with pytest.raises(ConfigError, match=key.replace("{", r"\{").replace("}", r"\}")):
        validate(cfg)


def test_cli_help_and_cfg_job(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "detox", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "experiment: blind_spot, lab3, quickstart" in out.stdout
    out = subprocess.run([sys.executable, "-m", "detox", "experiment=lab3", "--cfg", "job"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0
    job = OmegaConf.create(out.stdout)
    assert job.reward.components.toxicity.input == "prompt_response" and job.data.shuffle is False


@pytest.mark.parametrize("override,message", [
    ("++ppo.stepz=5", r"ppo.stepz is not a setting detox knows \(forced in with \+\+\?\); did you mean ppo.steps\?"),
    ("++eval.judgez=[profanity]", r"eval.judgez is not a setting .*did you mean eval.judges\?"),
    ("++nonsense=1", r"nonsense is not a setting .*the keys of the config are \["),
    ("++logger.trackers.mine.anything=1", r"logger.trackers.mine names no _target_"),
    ("++logger.trackers.mine._target_=tiny_models.ListTracker", None),  # a tracker's node is its class's: free
])
def test_keys_forced_in_with_plus_plus_are_refused_unless_free(override, message):
    cfg = make_cfg([override, *(["++logger.trackers.mine.anything=1"] if message is None else [])])
    if message is None:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=message):
            validate(cfg)


def test_a_value_hydra_cannot_merge_exits_2_like_every_config_error(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "detox", "ppo.steps=abc"], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 2 and "ppo.steps" in out.stderr and "Traceback" not in out.stderr


def test_presets_override_top_level_keys():
    # `_self_` before the groups in conf/config.yaml: otherwise the root's seed/device win silently
    cfg = make_cfg(["experiment=quickstart"])
    assert cfg.seed == 0 and cfg.device == "cpu"
    assert make_cfg(["experiment=quickstart", "seed=7"]).seed == 7
