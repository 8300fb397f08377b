import pytest
import torch
from conftest import make_cfg
from tiny_models import save_tiny_classifier

from detox.core.errors import ConfigError
from detox.core.hub import LoadError
from detox.models.rewards import (
    Classifier,
    Reward,
    build_reward,
    check_reward_label,
    resolve_label,
)

CPU = torch.device("cpu")


def reward_cfg(path, *overrides):
    return make_cfg(["reward=tiny", f"reward.name_or_path={path}", *overrides]).reward


def classifier(settings) -> Classifier:
    """The reward's component, built by hydra.utils.instantiate from the `reward` node."""
    reward = build_reward(settings, CPU)
    assert isinstance(reward, Reward) and isinstance(reward.component, Classifier)
    return reward.component


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    """A classifier whose id2label puts `hate` FIRST (index 0), and whose hate logit is on top."""
    return save_tiny_classifier(str(tmp_path_factory.mktemp("flip")), {0: "hate", 1: "nothate"}, seed=1,
                                bias=[3.0, -1.0])


def test_label_is_resolved_by_name_not_position(tiny, flipped):
    assert classifier(reward_cfg(tiny["reward"])).label_index == 1 - 1  # nothate at 0
    assert classifier(reward_cfg(flipped)).label_index == 1


def test_reward_is_the_named_labels_logit_not_the_top_score(flipped):
    reward = classifier(reward_cfg(flipped))
    texts = ["you are a stupid idiot", "thanks, see you tomorrow", "a", "buy the book"]
    enc = reward.model.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = reward.hf_model(**enc).logits
    got = reward(["p"] * 4, texts)
    torch.testing.assert_close(got, logits[:, 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, logits.max(-1).values)  # the recipe's bug: max(nothate, hate)


def test_reward_kinds_are_consistent(tiny):
    texts = ["hello there", "you idiot", "see you at work"]
    logit = classifier(reward_cfg(tiny["reward"]))(texts, texts)
    prob = classifier(reward_cfg(tiny["reward"], "reward.kind=prob"))(texts, texts)
    logodds = classifier(reward_cfg(tiny["reward"], "reward.kind=logodds"))(texts, texts)
    assert ((prob > 0) & (prob < 1)).all()
    torch.testing.assert_close(logodds, torch.log(prob / (1 - prob)), atol=1e-4, rtol=1e-4)
    # for a 2-class softmax the log-odds equal the logit difference
    reward = classifier(reward_cfg(tiny["reward"]))
    with torch.no_grad():
        full = reward.hf_model(**reward.model.tokenizer(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(logodds, full[:, 0] - full[:, 1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logit, logodds)


def test_unknown_label_lists_the_models_labels(tiny):
    with pytest.raises(ConfigError, match=r"reward.label='toxic'.*\['nothate', 'hate'\]"):
        check_reward_label(reward_cfg(tiny["reward"], "reward.label=toxic"))
    with pytest.raises(ConfigError, match="clean"):
        check_reward_label(make_cfg(["reward=profanity", "reward.label=nothate"]).reward)
    assert resolve_label({"0": "nothate", "1": "hate"}, "hate", "m") == 1


def test_prompt_is_truncated_from_the_left_and_the_response_kept(tiny):
    reward = classifier(reward_cfg(tiny["reward"], "reward.input=prompt_response", "reward.max_length=64"))
    prompt, response = "P" * 500, "the response"
    got = reward([prompt], [response])
    # byte-level tokenizer: one token per character; 62 tokens of body + <s> </s>
    kept = (prompt + response)[-62:]
    assert kept.endswith(response)
    reward.model.tokenizer.truncation_side = "right"
    enc = reward.model.tokenizer([kept], return_tensors="pt")
    assert enc["input_ids"].shape[1] == 64
    with torch.no_grad():
        expected = reward.hf_model(**enc).logits[:, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_response_only_input_ignores_the_prompt(tiny):
    reward = classifier(reward_cfg(tiny["reward"]))
    a = reward(["prompt one"], ["same words"])
    b = reward(["a very different prompt"], ["same words"])
    torch.testing.assert_close(a, b)


def test_multi_label_classifier_uses_sigmoid(tmp_path):
    path = save_tiny_classifier(str(tmp_path / "ml"), {0: "toxic", 1: "insult", 2: "threat"},
                                problem_type="multi_label_classification")
    reward = classifier(reward_cfg(path, "reward.label=insult", "reward.kind=prob"))
    probs = reward.probs(["one text", "another"])
    assert probs.shape == (2, 3) and abs(probs.sum(1) - 1).max() > 1e-3  # not a softmax
    torch.testing.assert_close(reward(["", ""], ["one text", "another"]),
                               torch.tensor(probs[:, 1], dtype=torch.float32))


def test_profanity_backend_scores_insults_lower():
    reward = classifier(make_cfg(["reward=profanity"]).reward)
    assert reward.backend == "profanity" and reward.hf_model is None
    scores = reward(["", ""], ["#Person2# calls #Person1# a stupid idiot.",
                                     "#Person1# asks #Person2# to buy a book."])
    assert scores[0] < 0 < scores[1]


def test_unreachable_reward_model_says_which_name_failed():
    with pytest.raises(LoadError, match="reward.name_or_path='nobody/no-model'"):
        check_reward_label(make_cfg(["reward.name_or_path=nobody/no-model"]).reward)


def test_the_reward_clips_its_components_scores_and_passes_the_node_to_its_target(tiny):
    settings = reward_cfg(tiny["reward"], "reward.clip=0.005")
    texts = ["you are a stupid idiot", "thanks, see you tomorrow"]
    raw = classifier(reward_cfg(tiny["reward"]))(texts, texts)
    assert raw.abs().max() > 0.005  # the tiny classifier's logits exceed the bound
    clipped = build_reward(settings, CPU).score(texts, texts)
    torch.testing.assert_close(clipped, raw.clamp(-0.005, 0.005))
    # the component is whatever `_target_` names, built from the node (clip stays with the reward)
    custom = build_reward(reward_cfg(tiny["reward"], "reward._target_=tiny_models.LengthScore"), CPU)
    assert custom.component.kwargs["label"] == "nothate" and "clip" not in custom.component.kwargs
    torch.testing.assert_close(custom.score(["p", "p"], ["a b", "a b c"]), torch.tensor([2.0, 3.0]))
