"""Every bad input gets one clear message, early, and leaves nothing that looks like a result.

A table of bad inputs (config values and combinations, data files and columns, models and
adapters, run dirs and disks, sweep dirs), each run through the real stage entry point on
tiny models; a few through the CLI for what a user sees there (stderr, exit code, no
traceback). The messages are pinned by their key phrases."""

import json
import os
import subprocess

import pytest
import torch
from conftest import make_cfg
from detox_cli import run_detox
from tiny_models import save_tiny_classifier, save_tiny_t5

from detox.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    DetoxError,
    LoadError,
)
from detox.stages.dispatch import run_stage


def write(path, text):
    path.write_text(text)
    return str(path)


def jsonl(path, rows):
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


def dialogues(n=12, **extra):
    return [{"id": f"d{i}", "dialogue": f"#Person1#: hello {i} " + "y" * 250, "summary": f"summary {i}", **extra}
            for i in range(n)]


def headless_classifier(tmp_path, tiny):
    """A classifier config whose checkpoint holds no trained head (a bare RoBERTa body)."""
    from transformers import AutoModel

    path = tmp_path / "headless"
    AutoModel.from_pretrained(tiny["reward"]).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["RobertaForSequenceClassification"]
    (path / "config.json").write_text(json.dumps(config))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tiny["reward"]).save_pretrained(path)
    return str(path)


def foreign_adapter(tmp_path, tiny):
    from peft import LoraConfig, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    bigger = T5ForConditionalGeneration(T5Config(vocab_size=130, d_model=48, d_ff=64, num_layers=2, num_heads=2,
                                                 d_kv=16))
    path = tmp_path / "foreign-adapter"
    get_peft_model(bigger, LoraConfig(task_type="SEQ_2_SEQ_LM", r=4, target_modules=["q", "v"])).save_pretrained(path)
    return str(path)


# (id, overrides (a function of tmp_path and the tiny assets, or a list), error, key phrase)
CASES = [
    # config values and combinations: refused before anything loads
    ("batch-not-divisible", ["ppo.batch_size=6"], ConfigError, r"ppo.batch_size=6 is not divisible"),
    ("zero-learning-rate", ["ppo.learning_rate=0"], ConfigError, r"ppo.learning_rate=0.0 is invalid"),
    ("top-p-above-one", ["generation.top_p=5"], ConfigError, r"generation.top_p=5.0 is invalid: .*\(0, 1\]"),
    ("top-p-zero", ["generation.top_p=0"], ConfigError, r"generation.top_p=0.0 is invalid"),
    ("negative-top-k", ["generation.top_k=-1"], ConfigError, r"generation.top_k=-1 is invalid"),
    ("toxic-threshold-above-one", ["eval.toxic_threshold=5"], ConfigError, r"eval.toxic_threshold=5.0 is invalid"),
    ("negative-gamma", ["ppo.gamma=-3"], ConfigError, r"ppo.gamma=-3.0 is invalid: it is a discount in \[0, 1\]"),
    ("lambda-above-one", ["ppo.lam=7"], ConfigError, r"ppo.lam=7.0 is invalid"),
    ("lora-dropout-one", ["lora.dropout=1.0"], ConfigError, r"lora.dropout=1.0 is invalid"),
    ("template-other-placeholder", ["data.prompt_template='Summarize {dialog}:'"], ConfigError,
     r"placeholder \{dialogue\} once and no other \(it has \['\{dialog\}'\]\)"),
    ("template-extra-placeholder", ["data.prompt_template='{dialogue} {speaker}'"], ConfigError,
     r"it has \['\{dialogue\}', '\{speaker\}'\]"),
    ("template-unmatched-brace", ["data.prompt_template='{dialogue} {'"], ConfigError, r"not a valid template"),
    ("unknown-device", ["device=tpu"], ConfigError, r"device='tpu' is not a device"),
    ("cuda-without-gpu", ["device=cuda"], ConfigError, r"device=cuda but this machine has no usable CUDA GPU"),
    ("reward-on-missing-gpu", ["reward.device=cuda:3"], ConfigError, r"reward.components.toxicity.device=cuda:3"),
    ("caps-reversed", ["generation.max_new_tokens_min=16", "generation.max_new_tokens_max=8"], ConfigError,
     r"max_new_tokens_min=16 must be < generation.max_new_tokens_max=8"),
    ("splits-too-large", ["data.test_size=0.9", "data.val_size=0.2"], ConfigError, r"data.test_size \+ data.val_size"),
    ("chars-reversed", ["data.min_chars=500", "data.max_chars=100"], ConfigError, r"data.min_chars=500 must be <"),
    ("unknown-resume", ["resume=maybe"], ConfigError, r"resume='maybe' is unknown"),
    ("zero-keep-last", ["ppo.keep_last=0"], ConfigError, r"ppo.keep_last=0 is invalid"),
    ("export-without-run-dir", ["stage=export"], ConfigError, r"stage=export needs run_dir="),
    ("generate-without-model", ["stage=generate"], ConfigError, r"stage=generate needs the model to summarize with"),
    ("generate-zero-batch", ["stage=generate", "run_dir=r", "generate.batch_size=0"], ConfigError,
     r"generate.batch_size=0 is invalid"),
    ("input-tokens-below-template", ["data.max_input_tokens=2"], ConfigError,
     r"data.max_input_tokens=2 leaves no room for the dialogue: the prompt template alone is \d+ tokens"),
    ("missing-lora-target", ["lora.target_modules=[nope]"], ConfigError, r"lora.target_modules \['nope'\]"),
    ("unknown-reward-label", ["reward.label=toxic"], ConfigError, r"reward.components.toxicity.label='toxic' is not a label"),
    ("resume-true-without-checkpoint", ["resume=true"], CheckpointError, r"resume=true but run dir .* holds no"),
    # data files and columns
    ("empty-jsonl", lambda t, a: [f"data.name_or_path={write(t / 'empty.jsonl', '')}"], DataError,
     r"is an empty file|has no rows"),
    ("header-only-csv", lambda t, a: [f"data.name_or_path={write(t / 'h.csv', 'dialogue,summary' + chr(10))}"],
     DataError, r"has no rows \(a header alone\)"),
    ("non-text-dialogues", lambda t, a: [f"data.name_or_path={jsonl(t / 'n.jsonl', [dict(r, dialogue=3.5) for r in dialogues()])}",
                                         "eval.enabled=false"], DataError,
     r"column 'dialogue' holds non-text values \(float 3.5 in row 0"),
    ("missing-column", lambda t, a: [f"data.name_or_path={a['data']}", "data.dialogue_column=text"], DataError,
     r"has no column\(s\) \['text'\]"),
    ("missing-eval-column", lambda t, a: [f"data.name_or_path={jsonl(t / 'd.jsonl', dialogues())}"], DataError,
     r"no column\(s\) \['heated', 'summary_clean'\].*eval.group_by"),
    ("missing-data-file", lambda t, a: [f"data.name_or_path={t / 'nowhere.jsonl'}"], DataError, r"does not exist"),
    ("unknown-file-type", lambda t, a: [f"data.name_or_path={write(t / 'd.txt', 'hello')}"], DataError,
     r"unknown file type '.txt'"),
    ("everything-filtered", lambda t, a: [f"data.name_or_path={a['data']}", "data.min_chars=5000",
                                          "data.max_chars=6000"], DataError, r"0 of \d+ dialogues are left"),
    # models and adapters
    ("policy-is-a-classifier", lambda t, a: [f"policy.name_or_path={a['reward']}"], LoadError,
     r"policy.name_or_path=.* is a RobertaForSequenceClassification, not an encoder-decoder"),
    ("policy-path-missing", lambda t, a: [f"policy.name_or_path={t / 'no-model'}"], LoadError,
     r"policy.name_or_path=.* does not exist \(a local path\)"),
    ("reward-is-seq2seq", lambda t, a: [f"reward.name_or_path={a['policy']}"], LoadError,
     r"reward.components.toxicity.name_or_path=.* is a T5ForConditionalGeneration, not a sequence classifier"),
    ("reward-without-head", lambda t, a: [f"reward.name_or_path={headless_classifier(t, a)}"], LoadError,
     r"has no trained classification head"),
    ("adapter-for-another-base", lambda t, a: [f"policy.adapter={foreign_adapter(t, a)}"], LoadError,
     r"policy.adapter=.* does not fit policy.name_or_path"),
    ("unknown-judge", ["eval.judges=[no-such-judge]"], LoadError, r"eval.judges='no-such-judge'.*built-in judges"),
]


@pytest.mark.parametrize("name,overrides,error,phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_error(name, overrides, error, phrase, tiny_overrides, tiny, tmp_path):
    if name.startswith(("cuda", "reward-on-missing")) and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    extra = overrides(tmp_path, tiny) if callable(overrides) else overrides
    run_dir = tmp_path / "run"
    cfg = make_cfg([*tiny_overrides, *extra], output_dir=str(run_dir))
    with pytest.raises(error, match=phrase) as info:
        run_stage(cfg)
    assert isinstance(info.value, DetoxError) and len(str(info.value)) < 600
    results = run_dir / "results.json"
    assert not results.exists() or json.loads(results.read_text())["status"] == "failed"
    for nothing in ("final", "checkpoints", "eval", "metrics.jsonl"):
        assert not (run_dir / nothing).exists(), nothing


def test_eval_disabled_does_not_ask_for_the_evaluation_columns(tiny_overrides, tmp_path):
    data = jsonl(tmp_path / "plain.jsonl", dialogues(16))
    cfg = make_cfg([*tiny_overrides, f"data.name_or_path={data}", "eval.enabled=false", "ppo.steps=1"],
                   output_dir=str(tmp_path / "run"))
    run_stage(cfg)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "done"


def test_long_dialogues_are_cut_and_the_template_kept(tiny, caplog):
    from detox.data.prompts import fit_prompts
    from detox.data.splits import load_splits
    from detox.models.assembly import load_tokenizer

    cfg = make_cfg([f"data.name_or_path={tiny['data']}", "data=bundled", "data.max_input_tokens=40",
                    f"policy.name_or_path={tiny['policy']}"])
    tokenizer = load_tokenizer(cfg.policy)
    with caplog.at_level("WARNING", logger="detox.data.prompts"):
        splits = fit_prompts(load_splits(cfg.data), tokenizer, cfg.data)
    prompts = [p for split in splits.values() for p in split["prompt"]]
    assert all(len(tokenizer(p)["input_ids"]) <= 40 for p in prompts)
    assert all(p.endswith("\n\nSummary:\n") and p.startswith("\nSummarize the following conversation.") for p in prompts)
    assert f"{len(prompts)} of {len(prompts)} prompts were longer than data.max_input_tokens=40" in caplog.text


# ------------------------------------------------------------------------------------ the CLI


def test_cli_prints_one_line_on_stderr_and_exits_2(tiny_overrides, tmp_path):
    out = run_detox([*tiny_overrides, "generation.top_p=5", f"hydra.run.dir={tmp_path / 'r'}"], cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "top_p" not in out.stdout
    lines = [line for line in out.stderr.splitlines() if "generation.top_p" in line]
    assert lines == ["detox: ConfigError: generation.top_p=5.0 is invalid: it is a probability mass in (0, 1]."]
    assert "Traceback" in (tmp_path / "r" / "detox.log").read_text()  # kept for a bug report
    full = run_detox([*tiny_overrides, "generation.top_p=5", f"hydra.run.dir={tmp_path / 'f'}"], cwd=tmp_path,
                     env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr


def test_cli_refuses_a_run_dir_that_is_a_file(tmp_path):
    target = tmp_path / "afile"
    target.write_text("")
    out = run_detox(["experiment=quickstart", f"hydra.run.dir={target / 'run'}"], cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"detox: hydra.run.dir={target / 'run'}: {target} is a file" in out.stderr


def mount_tmpfs(path, options):
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root")


def test_cli_refuses_a_read_only_run_dir(tmp_path):
    mount_tmpfs(tmp_path / "ro", "size=1m,ro")
    try:
        out = run_detox(["experiment=quickstart", f"hydra.run.dir={tmp_path / 'ro' / 'run'}"], cwd=tmp_path)
    finally:
        subprocess.run(["umount", str(tmp_path / "ro")])
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"{tmp_path / 'ro'} is not writable; point hydra.run.dir at a folder" in out.stderr


def test_cli_a_full_disk_is_one_line_and_exit_1(tiny_overrides, tmp_path):
    """A real full disk: a 300 KB tmpfs holds the run's config and logs, not its checkpoint."""
    mount_tmpfs(tmp_path / "small", "size=300k")
    try:
        out = run_detox([*tiny_overrides, "eval.enabled=false", "ppo.steps=1", "lora.r=64",
                         f"hydra.run.dir={tmp_path / 'small' / 'run'}"], cwd=tmp_path)
        run_dir = tmp_path / "small" / "run"
        status = json.loads((run_dir / "results.json").read_text())["status"] if (run_dir / "results.json").exists() else None
        leftovers = [n for n in os.listdir(run_dir) if n.startswith(".tmp")]
        final = (run_dir / "final").exists()
    finally:
        subprocess.run(["umount", str(tmp_path / "small")])
    assert out.returncode == 1, out.stderr[-2000:]
    assert "detox: OSError: No space left on device" in out.stderr and "free some space" in out.stderr
    assert "Traceback" not in out.stderr and not final and not leftovers and status in ("failed", None)


# ------------------------------------------------------------------------------------ sweep dirs


def test_sweep_summary_reads_wrong_shapes_as_failed_jobs(tmp_path):
    from detox.sweeps.summary import write_sweep_summary as summarize

    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "results.json").write_text("[1, 2]")
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text("- lora.r=8\n")
    (tmp_path / "1" / "results.json").write_text(json.dumps({"status": "running", "overrides": "lora.r=8"}))
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "results.json").write_text(json.dumps({"status": "diverged", "overrides": ["lora.r=16"]}))
    (tmp_path / "3").mkdir()  # fields of the wrong shape: a broken job, not a traceback
    (tmp_path / "3" / "results.json").write_text(json.dumps({"status": "done", "overrides": ["lora.r=32"],
                                                             "eval_val": [1, 2], "train": "fast"}))
    text = summarize(str(tmp_path))["markdown"]
    assert "4 jobs: 0 done, 1 running, 2 failed, 0 not started / missing, 1 diverged." in text
    assert "unreadable results.json: a JSON list, not an object" in text
    assert "broken results.json: `train` is \"fast\", not an object; `eval_val` is [1, 2], not an object" in text
    assert "lora.r=32" in text  # which job it was
    assert "l= o=" not in text


def test_tiny_assets_are_what_the_table_needs(tiny, tmp_path):
    # the fixtures used above really are a T5 and a classifier (so the table tests the checks, not the files)
    assert json.loads(open(os.path.join(tiny["policy"], "config.json")).read())["architectures"] == [
        "T5ForConditionalGeneration"]
    assert save_tiny_t5 and save_tiny_classifier
