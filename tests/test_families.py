"""The model-family seam (detox/models/families.py): one adapter says how a family is called;
everything else goes through it. A family the generic adapter cannot read is refused with one
line before weights load, and runs once its adapter is registered."""

import json

import pytest
import torch
from conftest import make_cfg
from omegaconf import OmegaConf
from tiny_models import FAMILIES as TINY_FAMILIES
from tiny_models import decode_both, save_tiny_family, save_tiny_tower
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

from detox.algo.tokens import logprobs_from_logits
from detox.config.schema import typed_config
from detox.core.errors import ConfigError, LoadError
from detox.generate import main as detox_generate
from detox.models.assembly import build_policy, check_policy
from detox.models.families import (
    FAMILIES,
    Seq2SeqFamily,
    SpecialTokens,
    family_of,
    register_family,
)
from detox.models.generation import model_generation_config
from detox.rl.trainer import PPOTrainer
from detox.runtime.checkpoint import load_trained
from detox.stages.assemble import assemble, build_trainer
from detox.stages.common import starting_policy
from detox.stages.dispatch import run_stage
from detox.stages.ppo import run_ppo
from detox.stages.sft import run_sft


class TowerFamily(Seq2SeqFamily):
    """Sizes and special tokens from the nested `text` config; the rest is the generic adapter's."""

    name = "tower"

    def hidden_size(self, config) -> int:
        return config.text["d_model"]

    def special_tokens(self, config, generation_config=None) -> SpecialTokens:
        t = config.text
        return SpecialTokens(pad=t["pad_token_id"], eos=t["eos_token_id"], decoder_start=t["decoder_start_token_id"])


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    return save_tiny_tower(str(tmp_path_factory.mktemp("tower")))


@pytest.fixture
def registered():
    register_family("detox_test_tower")(TowerFamily)
    yield
    del FAMILIES["detox_test_tower"]


def test_an_unknown_layout_is_refused_before_weights_load(tower, tiny_overrides):
    cfg = make_cfg([*tiny_overrides, f"policy.name_or_path={tower}"])
    with pytest.raises(LoadError, match=r"policy.name_or_path=.* is a 'detox_test_tower' model, whose config names no "
                                        r"d_model or hidden_size .* needs a family adapter"):
        check_policy(cfg.policy)


def test_a_registered_adapter_runs_ppo_from_kl_zero_and_ratio_one(tower, tiny_overrides, registered, tmp_path):
    overrides = [*tiny_overrides, f"policy.name_or_path={tower}", "ppo.ppo_epochs=1", "ppo.mini_batch_size=8"]
    cfg = make_cfg(overrides, output_dir=str(tmp_path / "probe"))
    trainer = build_trainer(cfg, assemble(cfg, judges=False))
    assert isinstance(trainer.policy.family, TowerFamily) and trainer.policy.value_head.summary.in_features == 32
    metrics, rollout = trainer.train_step()
    assert abs(metrics["objective/kl"]) < 1e-6 and abs(metrics["ppo/policy/ratio_mean"] - 1) < 1e-5
    assert metrics["ppo/policy/clipfrac"] == 0 and rollout.mask.sum() > 0

    run_ppo(make_cfg([*overrides, "eval.num_samples=4", "eval.val_samples=4"], output_dir=str(tmp_path / "run")))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "done" and results["eval"]["eval/before/kl_to_ref"] == pytest.approx(0, abs=1e-6)


def test_the_generic_adapter_reads_t5_and_bart_layouts():
    from transformers import BartConfig, T5Config

    t5 = T5Config(d_model=48, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    assert family_of(t5).hidden_size(t5) == 48 and family_of(t5).special_tokens(t5).prefix_length == 1
    bart = BartConfig(d_model=40)
    assert family_of(bart).hidden_size(bart) == 40
    assert family_of(bart).special_tokens(bart) == SpecialTokens(pad=1, eos=2, decoder_start=2)  # BART starts with EOS


# ------------------------------------------------------------------------------ every family transformers ships
# Tiny random models of each family (tests/tiny_models.py), LoRA on all-linear, through detox's own
# code. The default suite runs a few (a quirk each); `pytest -m slow` runs the whole matrix.
QUIRKY = ["bart-forced-bos", "t5gemma", "switch_transformers"]  # a forced first token; nested config; experts
MATRIX = [*TINY_FAMILIES, "bart-forced-bos"]


@pytest.fixture(scope="module")
def family_models(tmp_path_factory):
    root, made = tmp_path_factory.mktemp("families"), {}

    def model(name: str) -> str:
        if name not in made:
            family, _, variant = name.partition("-")
            made[name] = save_tiny_family(family, str(root / name), forced_bos=variant == "forced-bos")
        return made[name]

    return model


def family_overrides(tiny_overrides, path, *extra):
    return [*tiny_overrides, f"policy.name_or_path={path}", "lora.target_modules=all-linear", *extra]


def first_step(overrides, run_dir) -> tuple[dict, object, PPOTrainer]:
    cfg = make_cfg([*overrides, "ppo.ppo_epochs=1", "ppo.mini_batch_size=8", "eval.enabled=false"],
                   output_dir=str(run_dir))
    trainer = build_trainer(cfg, assemble(cfg, judges=False))
    metrics, rollout = trainer.train_step()
    return metrics, rollout, trainer


@pytest.mark.parametrize("name", QUIRKY)
def test_a_family_starts_at_kl_zero_and_ratio_one(name, family_models, tiny_overrides, tmp_path):
    metrics, rollout, trainer = first_step(family_overrides(tiny_overrides, family_models(name)), tmp_path)
    assert abs(metrics["objective/kl"]) < 1e-6 and abs(metrics["ppo/policy/ratio_mean"] - 1) < 1e-5
    assert metrics["ppo/policy/clipfrac"] == 0 and rollout.mask.sum() > 0
    assert any(".lora_A." in n for n, p in trainer.policy.named_parameters() if p.requires_grad)
    assert ("ppo/loss/aux" in metrics) == (name == "switch_transformers")  # the routers' loss joins the PPO loss


@pytest.mark.parametrize("name", QUIRKY)
def test_the_rollout_sampler_decodes_as_generate_does(name, family_models):
    """Greedy (deterministic) decoding through `Seq2SeqFamily.decode_step`, rows leaving the batch
    at their caps, gives `generate`'s tokens: the family's cache, encoder outputs and forced
    first token travel through detox's own sampler as through transformers'."""
    path = family_models(name)
    model, tok = AutoModelForSeq2SeqLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    family = family_of(model.config)
    tokens = family.prepare(model)
    enc = tok(["the a and to of is you", "summary of the conversation that you are", "you are"], padding=True,
              return_tensors="pt")
    caps = torch.tensor([5, 12, 9])
    gen = GenerationConfig(do_sample=False, min_length=4, pad_token_id=tokens.pad, eos_token_id=tokens.eos,
                           decoder_start_token_id=tokens.decoder_start, forced_bos_token_id=tokens.forced_bos)
    ours, theirs, (a, b) = decode_both(model, family, tokens, enc, gen, caps)
    assert torch.equal(a.mask.sum(1), caps.float()) and torch.equal(a.mask, b.mask)
    assert torch.equal(a.response_ids * a.mask.long(), b.response_ids * b.mask.long())
    assert torch.equal(ours[:, 0], theirs[:, 0]) and (tokens.forced_bos is None or (ours[:, 1] == tokens.forced_bos).all())


def test_a_forced_first_token_is_outside_the_response_and_no_checkpoint_setting_leaks(family_models, tiny_overrides,
                                                                                      tmp_path):
    """bart-large-cnn-like: its generation config forces `<s>` after the decoder start and asks for
    beams, trigram blocking, a length penalty, a minimum length and a forced final EOS. The forced
    `<s>` is part of the decoder's prefix; nothing else of that config acts: the policy's log-probs
    equal generate's own processed scores for every sampled token."""
    path = family_models("bart-forced-bos")
    _, rollout, trainer = first_step(family_overrides(tiny_overrides, path, "generation.min_length=0"), tmp_path)
    policy, batch = trainer.policy, rollout.batch
    assert policy.special_tokens.forced_bos == 0 and policy.special_tokens.prefix_length == 2
    assert (batch.decoder_input_ids[:, :2] == torch.tensor([2, 0])).all()  # </s> then the forced <s>
    assert batch.decoder_input_ids.shape[1] == batch.response_ids.shape[1] + 1
    gen_cfg = policy.model.generation_config
    assert gen_cfg.num_beams in (None, 1) and not gen_cfg.no_repeat_ngram_size and gen_cfg.forced_eos_token_id is None

    torch.manual_seed(0)
    out = policy.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          generation_config=trainer.gen_config, max_new_tokens=12, output_scores=True,
                          return_dict_in_generate=True)
    generated = policy.family.to_batch(batch.input_ids, batch.attention_mask, out.sequences, policy.special_tokens)
    processed = torch.stack(out.scores[1:], 1)  # the first score is the forced <s>'s
    with torch.no_grad():
        ours = logprobs_from_logits(policy(generated).logits, generated.response_ids)
    theirs = logprobs_from_logits(processed, generated.response_ids)
    mask = generated.mask.bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-4, rtol=1e-4)


def test_all_linear_is_the_default_and_a_named_module_the_model_lacks_is_still_one_line(family_models, tiny_overrides):
    assert make_cfg([]).lora.target_modules == "all-linear"
    cfg = make_cfg([*tiny_overrides, f"policy.name_or_path={family_models('bart')}", "lora.target_modules=[q,v]"])
    with pytest.raises(ConfigError, match=r"lora.target_modules \['q', 'v'\] are not modules of .*q_proj"):
        build_policy(cfg.policy, cfg.lora)


@pytest.mark.slow
@pytest.mark.parametrize("name", MATRIX)
def test_every_family_trains_exports_and_generates(name, family_models, tiny_overrides, tmp_path, capsys):
    """PPO with evaluation, RLOO, export (reloaded by plain transformers: the run policy's greedy
    tokens), detox-generate and stage=sft, for each family."""
    path = family_models(name)
    base = family_overrides(tiny_overrides, path, "eval.num_samples=4", "eval.val_samples=4")
    run_dir = tmp_path / "ppo"
    run_cfg = make_cfg(base, output_dir=str(run_dir))
    run_ppo(run_cfg)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(run_cfg, run_dir / ".hydra" / "config.yaml")  # what Hydra writes for a CLI run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "done" and results["eval"]["eval/before/kl_to_ref"] == pytest.approx(0, abs=1e-5)

    metrics, _, _ = first_step([*base, "ppo=rloo"], tmp_path / "rloo")
    assert abs(metrics["objective/kl"]) < 1e-6 and "ppo/value/mean" not in metrics
    assert abs(metrics["ppo/policy/ratio_mean"] - 1) < 1e-5  # the rollout's log-probs are the update's

    run_stage(make_cfg(["stage=export", f"run_dir={run_dir}"], output_dir=str(tmp_path / "export-job")))
    exported = AutoModelForSeq2SeqLM.from_pretrained(run_dir / "export").eval()
    cfg = typed_config(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    policy = starting_policy(cfg)
    load_trained(str(run_dir / "final"), policy)
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok([cfg.data.prompt_template.format(dialogue="#Person1#: you are a stupid idiot.\n#Person2#: thanks.")],
              return_tensors="pt")
    with torch.no_grad():
        ours = policy.generate(**enc, generation_config=model_generation_config(cfg.generation, policy, greedy=True),
                               max_new_tokens=exported.generation_config.max_new_tokens)
        theirs = exported.generate(**enc, do_sample=False, max_new_tokens=exported.generation_config.max_new_tokens)
    assert theirs.tolist() == ours.tolist()

    dialogues = tmp_path / "dialogues.txt"
    dialogues.write_text("#Person1#: Where is the bus?\n#Person2#: Two blocks north.\n\n#Person1#: Hi.\n#Person2#: Hello.\n")
    capsys.readouterr()
    assert detox_generate([str(run_dir), str(dialogues), "--compare"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and all({"summary", "start_summary"} <= set(r) for r in rows)

    sft = make_cfg([*base, "stage=sft", "sft.max_steps=2", "sft.batch_size=4", "sft.eval_samples=2",
                    "sft.eval_max_new_tokens=4", "sft.logging_steps=1"], output_dir=str(tmp_path / "sft"))
    run_sft(sft)
    assert json.loads((tmp_path / "sft" / "results.json").read_text())["train"]["steps"] == 2


@pytest.mark.parametrize("config_name,why", [
    ("ProphetNetConfig", "predicts several future tokens at once"),
    ("NllbMoeConfig", "the PPO ratio would not start at 1"),
    ("BertConfig", "not an encoder-decoder"),
])
def test_a_family_detox_cannot_train_is_refused_from_its_config_alone(config_name, why, tiny_overrides, tmp_path):
    import transformers

    getattr(transformers, config_name)().save_pretrained(tmp_path)  # a config, no weights at all
    cfg = make_cfg([*tiny_overrides, f"policy.name_or_path={tmp_path}"])
    with pytest.raises(LoadError, match=why):
        check_policy(cfg.policy)
