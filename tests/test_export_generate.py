"""Using what a run trained: `detox stage=export` (a model to ship) and `detox-generate`
(summaries of new dialogues), on the shared 10-step quickstart run (conftest.quickstart_run)."""

import io
import json
import os
import shutil

import pytest
import torch
from detox_cli import run_detox
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

from detox.config.schema import typed_config
from detox.core.assets import asset_path
from detox.generate import main as detox_generate
from detox.models.assembly import build_policy
from detox.models.generation import generation_config
from detox.runtime.checkpoint import load_trainable, read_state
from detox.stages.common import has_critic

HEATED = 8  # test-split heated dialogues the checks summarize


@pytest.fixture(scope="module")
def dialogues(quickstart_run):
    """The first heated dialogues of the run's own test split (id, dialogue)."""
    run_dir = quickstart_run[0]
    test_ids = {json.loads(line)["id"] for line in open(run_dir / "eval" / "samples.jsonl")}
    rows = [json.loads(line) for line in open(asset_path("dialogues.jsonl"))]
    return [{"id": r["id"], "dialogue": r["dialogue"]} for r in rows if r["id"] in test_ids and r["heated"]][:HEATED]


@pytest.fixture(scope="module")
def run_policy_greedy(quickstart_run, dialogues):
    """The run policy's greedy summaries (token ids and texts), computed here from the run's
    config and final/ checkpoint: the run's template, one batch, the run's generation settings."""
    run_dir = quickstart_run[0]
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    saved.output_dir = str(run_dir)
    cfg = typed_config(saved)
    policy = build_policy(cfg.policy, cfg.lora, value_head=has_critic(cfg))
    load_trainable(str(run_dir / "final"), read_state(str(run_dir / "final")), policy)
    tok = AutoTokenizer.from_pretrained(cfg.policy.name_or_path)
    prompts = [cfg.data.prompt_template.format(dialogue=d["dialogue"]) for d in dialogues]
    enc = tok(prompts, padding=True, return_tensors="pt")
    gen = generation_config(cfg.generation, policy.special_tokens, greedy=True)
    with torch.no_grad():
        ids = policy.model.generate(**enc, generation_config=gen, max_new_tokens=cfg.generation.max_new_tokens_max)
    return ids, tok.batch_decode(ids, skip_special_tokens=True), enc


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def generate_rows(args, capsys) -> list[dict]:
    capsys.readouterr()
    assert detox_generate(args) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# ------------------------------------------------------------------------------------- export


def export_run(run_dir, job_dir, *overrides):
    """`detox stage=export run_dir=<run_dir>`, in-process (the CLI's Hydra wiring of a stage is
    exercised by stage=generate below and by stage=eval in tests/test_cli_e2e.py)."""
    from conftest import make_cfg

    from detox.stages.dispatch import run_stage

    run_stage(make_cfg(["stage=export", f"run_dir={run_dir}", *overrides], output_dir=str(job_dir)))


def test_export_reloads_with_plain_transformers_and_reproduces_the_run_policy(quickstart_run, run_policy_greedy,
                                                                              tmp_path, capsys):
    run_dir = quickstart_run[0]
    export_run(run_dir, tmp_path / "job")
    printed = capsys.readouterr().out
    export = run_dir / "export"
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
            "detox_export.json"} <= set(os.listdir(export))
    assert not [f for f in os.listdir(export) if f.endswith((".bin", ".pt"))]
    assert oct(os.stat(export / "model.safetensors").st_mode & 0o777) == "0o644"  # shareable

    model = AutoModelForSeq2SeqLM.from_pretrained(export).eval()
    assert model.dtype == torch.float32
    gen = GenerationConfig.from_pretrained(export)  # the run's evaluation decoding: sampled, its cap
    assert gen.do_sample and gen.max_new_tokens == 64 and gen.top_k == 0
    ids, _, enc = run_policy_greedy
    with torch.no_grad():
        exported = model.generate(**enc, do_sample=False, max_new_tokens=gen.max_new_tokens)
    assert exported.tolist() == ids.tolist()  # token for token

    info = json.load(open(export / "detox_export.json"))
    assert (info["step"], info["checkpoint"], info["finished"], info["format"]) == (10, "final", True, "merged")
    assert info["config"]["ppo"]["steps"] == 10 and info["packages"]["torch"]
    card = (export / "README.md").read_text()
    report = json.load(open(run_dir / "eval" / "report.json"))
    lo, hi = report["eval/delta/profanity/toxic_rate_ci_low"], report["eval/delta/profanity/toxic_rate_ci_high"]
    for text in ["tiny-roberta-hate", "P(`nothate`)", "10 exported", "LoRA r=16", f"[{lo:+.3f}, {hi:+.3f}]",
                 "Prompts with heated=True", "AutoModelForSeq2SeqLM.from_pretrained(here)", "open to reward hacking"]:
        assert text in card, text
    assert str(export) in printed and "model.safetensors" in printed


def test_export_is_atomic_and_adapter_only_reloads_on_the_base(quickstart_run, run_policy_greedy, dialogues,
                                                               tmp_path, monkeypatch, capsys):
    import detox.stages.export

    run_dir = tmp_path / "run"
    shutil.copytree(quickstart_run[0], run_dir, ignore=shutil.ignore_patterns("wandb", "rollouts.jsonl", "export"))

    def export(*overrides):
        export_run(run_dir, tmp_path / "job", *overrides)

    def crash(*args, **kwargs):
        raise RuntimeError("injected crash mid-export")

    with monkeypatch.context() as m:  # the weights are written, the model card is not
        m.setattr(detox.stages.export, "model_card", crash)
        with pytest.raises(RuntimeError, match="injected"):
            export()
    assert not (run_dir / "export").exists()
    assert [p for p in os.listdir(run_dir) if p.startswith(".")] == [".hydra"]  # no half folder left behind

    export("export.adapter_only=true")
    files = set(os.listdir(run_dir / "export"))
    assert {"adapter_config.json", "adapter_model.safetensors", "generation_config.json", "README.md"} <= files
    assert "model.safetensors" not in files
    base = AutoModelForSeq2SeqLM.from_pretrained(asset_path("tiny-t5"))
    model = PeftModel.from_pretrained(base, str(run_dir / "export")).eval()
    ids, _, enc = run_policy_greedy
    with torch.no_grad():
        assert model.generate(**enc, do_sample=False, max_new_tokens=64).tolist() == ids.tolist()
    assert "PeftModel.from_pretrained(base, here)" in (run_dir / "export" / "README.md").read_text()
    rows = generate_rows([str(run_dir / "export"), str(write_jsonl(tmp_path / "in.jsonl", dialogues))], capsys)
    assert [r["summary"] for r in rows] == run_policy_greedy[1]  # detox-generate reads it too

    before = (run_dir / "export" / "adapter_model.safetensors").read_bytes()
    with monkeypatch.context() as m:  # a crashed re-export leaves the old export whole
        m.setattr(detox.stages.export, "model_card", crash)
        with pytest.raises(RuntimeError, match="injected"):
            export()
    assert (run_dir / "export" / "adapter_model.safetensors").read_bytes() == before
    export()  # and a re-export replaces it
    assert "model.safetensors" in os.listdir(run_dir / "export")
    assert "adapter_model.safetensors" not in os.listdir(run_dir / "export")


def test_a_full_fine_tuning_run_exports_in_its_dtype_and_has_no_adapter_to_export(tiny_overrides, tmp_path):
    from conftest import make_cfg
    from omegaconf import OmegaConf

    from detox.core.errors import ConfigError
    from detox.stages.dispatch import run_stage

    run_dir = tmp_path / "run"
    cfg = make_cfg([*tiny_overrides, "lora.enabled=false", "policy.dtype=bfloat16", "eval.enabled=false", "ppo.steps=1"],
                   output_dir=str(run_dir))
    run_stage(cfg)  # mixed precision: fp32 weights train, bf16 computes
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what Hydra writes
    export = ["stage=export", f"run_dir={run_dir}"]
    with pytest.raises(ConfigError, match=r"export.adapter_only=true, but run .* trained every weight"):
        run_stage(make_cfg([*export, "export.adapter_only=true"], output_dir=str(tmp_path / "job")))
    assert not (run_dir / "export").exists()
    run_stage(make_cfg(export, output_dir=str(tmp_path / "job")))
    model = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "export", dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert "every weight (full fine-tuning)" in (run_dir / "export" / "README.md").read_text()


# ----------------------------------------------------------------------------------- generate


def test_generate_gives_the_run_policys_greedy_summaries_from_jsonl_text_and_stdin(
        quickstart_run, dialogues, run_policy_greedy, tmp_path, capsys, monkeypatch):
    run_dir = quickstart_run[0]
    expected = run_policy_greedy[1]

    # a .jsonl with ids; the run's starting policy beside it, and a judge's scores
    rows = generate_rows([str(run_dir), str(write_jsonl(tmp_path / "in.jsonl", dialogues)), "--compare",
                          "--judges", "profanity"], capsys)
    assert [r["id"] for r in rows] == [d["id"] for d in dialogues]
    assert [r["summary"] for r in rows] == expected
    assert any(r["start_summary"] != r["summary"] for r in rows)  # the trained policy says other things
    start = AutoModelForSeq2SeqLM.from_pretrained(asset_path("tiny-t5")).eval()  # the quickstart's start
    tok = AutoTokenizer.from_pretrained(asset_path("tiny-t5"))
    with torch.no_grad():
        start_ids = start.generate(**run_policy_greedy[2], do_sample=False, max_new_tokens=64, min_length=0)
    assert [r["start_summary"] for r in rows] == tok.batch_decode(start_ids, skip_special_tokens=True)
    assert all(0 <= r["toxicity"]["profanity"] <= 1 and 0 <= r["start_toxicity"]["profanity"] <= 1 for r in rows)

    # a text file, one dialogue per blank-line-separated block, through `detox stage=generate`
    text = tmp_path / "in.txt"
    text.write_text("\n\n".join(d["dialogue"] for d in dialogues) + "\n")
    out = run_detox(["stage=generate", f"run_dir={run_dir}", f"generate.input={text}", "device=cpu",
                     f"generate.output={tmp_path / 'out.jsonl'}", f"hydra.run.dir={tmp_path / 'job'}"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert [r["id"] for r in rows] == list(range(HEATED)) and [r["summary"] for r in rows] == expected

    # stdin (JSON lines), when INPUT is absent
    monkeypatch.setattr("sys.stdin", io.StringIO((tmp_path / "in.jsonl").read_text()))
    assert [r["summary"] for r in generate_rows([str(run_dir)], capsys)] == expected


def test_generate_reads_an_export_and_an_unfinished_run(quickstart_run, run_policy_greedy, dialogues, tmp_path,
                                                         capsys, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(quickstart_run[0], run_dir, ignore=shutil.ignore_patterns("wandb", "rollouts.jsonl", "export"))
    export_run(run_dir, tmp_path / "job")
    inputs = str(write_jsonl(tmp_path / "in.jsonl", dialogues))
    rows = generate_rows([str(run_dir / "export"), inputs, "--compare"], capsys)
    assert [r["summary"] for r in rows] == run_policy_greedy[1]
    assert any(r["start_summary"] != r["summary"] for r in rows)

    # --sample: the run's sampling settings, reproducible by seed
    sampled = [generate_rows([str(run_dir / "export"), inputs, "--sample", "--seed", "3"], capsys) for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert [r["summary"] for r in sampled[0]] != [r["summary"] for r in rows]  # not the greedy ones

    shutil.rmtree(run_dir / "final")  # unfinished: its newest checkpoint, with a warning
    rows = generate_rows([str(run_dir), inputs], capsys)
    assert "the run is unfinished: using its newest checkpoint, step 5" in caplog.text
    assert len(rows) == HEATED


def _seq2seq_free_model(path):
    from transformers import BertConfig

    BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8).save_pretrained(path)
    return path


@pytest.mark.parametrize("case, message", [
    ("no-column", "has no column 'dialogue'; its columns are ['id', 'text']. Set --column"),
    ("empty-file", "holds no dialogues (it is empty)"),
    ("missing-file", "does not exist (or is not a file)"),
    ("bad-json", "line 2 is not JSON"),
    ("no-checkpoint", "holds no checkpoint"),
    ("not-seq2seq", "is a bert, not an encoder-decoder (seq2seq) language model"),
    ("compare-plain", "--compare needs a run dir or a detox export"),
])
def test_generate_bad_inputs_get_one_clear_line(case, message, quickstart_run, tmp_path, capsys):
    run_dir, inputs = str(quickstart_run[0]), tmp_path / "in.jsonl"
    write_jsonl(inputs, [{"id": 1, "dialogue": "#Person1#: Hi.\n#Person2#: Hello."}])
    args = {
        "no-column": [run_dir, str(write_jsonl(tmp_path / "t.jsonl", [{"id": 1, "text": "hi"}]))],
        "empty-file": [run_dir, str(write_jsonl(tmp_path / "e.jsonl", []))],
        "missing-file": [run_dir, str(tmp_path / "nowhere.jsonl")],
        "bad-json": [run_dir, str(tmp_path / "b.jsonl")],
        "no-checkpoint": [str(tmp_path / "bare-run"), str(inputs)],
        "not-seq2seq": [str(_seq2seq_free_model(tmp_path / "bert")), str(inputs)],
        "compare-plain": [asset_path("tiny-t5"), str(inputs), "--compare"],
    }[case]
    (tmp_path / "b.jsonl").write_text('{"dialogue": "a"}\n{"dialogue": \n')
    shutil.copytree(quickstart_run[0] / ".hydra", tmp_path / "bare-run" / ".hydra")
    capsys.readouterr()
    assert detox_generate(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("detox-generate: ") and "Traceback" not in "\n".join(err)
