"""The model-family seam (detox/models/families.py): one adapter says how a family is called;
everything else goes through it. A family the generic adapter cannot read is refused with one
line before weights load, and runs once its adapter is registered."""

import json

import pytest
from conftest import make_cfg
from tiny_models import save_tiny_tower

from detox.core.errors import LoadError
from detox.models.assembly import check_policy
from detox.models.families import (
    FAMILIES,
    Seq2SeqFamily,
    SpecialTokens,
    family_of,
    register_family,
)
from detox.stages.assemble import assemble, build_trainer
from detox.stages.ppo import run_ppo


class TowerFamily(Seq2SeqFamily):
    """Sizes and special tokens from the nested `text` config; the rest is the generic adapter's."""

    name = "tower"

    def hidden_size(self, config) -> int:
        return config.text["d_model"]

    def special_tokens(self, config) -> SpecialTokens:
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

    t5 = family_of(T5Config(d_model=48, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    assert t5.hidden_size(T5Config(d_model=48)) == 48 and t5.prefix_length == 1
    bart = BartConfig(d_model=40)
    assert family_of(bart).hidden_size(bart) == 40
    assert family_of(bart).special_tokens(bart) == SpecialTokens(pad=1, eos=2, decoder_start=2)  # BART starts with EOS
