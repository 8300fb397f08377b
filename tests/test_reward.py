import pytest
import torch
from conftest import make_cfg
from tiny_models import save_tiny_classifier

from detox.hub import LoadError
from detox.reward import HFReward, ProfanityReward, build_reward, check_reward_label, resolve_label
from detox.schema import ConfigError

CPU = torch.device("cpu")


def reward_cfg(path, *overrides):
    return make_cfg(["reward=tiny", f"reward.name_or_path={path}", *overrides]).reward


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    """A classifier whose id2label puts `hate` FIRST (index 0), and whose hate logit is on top."""
    return save_tiny_classifier(str(tmp_path_factory.mktemp("flip")), {0: "hate", 1: "nothate"}, seed=1,
                                bias=[3.0, -1.0])


def test_label_is_resolved_by_name_not_position(tiny, flipped):
    assert HFReward(reward_cfg(tiny["reward"]), CPU).label_index == 1 - 1  # nothate at 0
    assert HFReward(reward_cfg(flipped), CPU).label_index == 1


def test_reward_is_the_named_labels_logit_not_the_top_score(flipped):
    reward = HFReward(reward_cfg(flipped), CPU)
    texts = ["you are a stupid idiot", "thanks, see you tomorrow", "a", "buy the book"]
    enc = reward.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = reward.model(**enc).logits
    got = reward.score(["p"] * 4, texts)
    torch.testing.assert_close(got, logits[:, 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, logits.max(-1).values)  # the recipe's bug: max(nothate, hate)


def test_reward_kinds_are_consistent(tiny):
    texts = ["hello there", "you idiot", "see you at work"]
    logit = HFReward(reward_cfg(tiny["reward"]), CPU).score(texts, texts)
    prob = HFReward(reward_cfg(tiny["reward"], "reward.kind=prob"), CPU).score(texts, texts)
    logodds = HFReward(reward_cfg(tiny["reward"], "reward.kind=logodds"), CPU).score(texts, texts)
    assert ((prob > 0) & (prob < 1)).all()
    torch.testing.assert_close(logodds, torch.log(prob / (1 - prob)), atol=1e-4, rtol=1e-4)
    # for a 2-class softmax the log-odds equal the logit difference
    reward = HFReward(reward_cfg(tiny["reward"]), CPU)
    with torch.no_grad():
        full = reward.model(**reward.tokenizer(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(logodds, full[:, 0] - full[:, 1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logit, logodds)


def test_unknown_label_lists_the_models_labels(tiny):
    with pytest.raises(ConfigError, match=r"reward.label='toxic'.*\['nothate', 'hate'\]"):
        check_reward_label(reward_cfg(tiny["reward"], "reward.label=toxic"))
    with pytest.raises(ConfigError, match="clean"):
        check_reward_label(make_cfg(["reward=profanity", "reward.label=nothate"]).reward)
    assert resolve_label({"0": "nothate", "1": "hate"}, "hate", "m") == 1


def test_prompt_is_truncated_from_the_left_and_the_response_kept(tiny):
    reward = HFReward(reward_cfg(tiny["reward"], "reward.input=prompt_response", "reward.max_length=64"), CPU)
    prompt, response = "P" * 500, "the response"
    got = reward.score([prompt], [response])
    # byte-level tokenizer: one token per character; 62 tokens of body + <s> </s>
    kept = (prompt + response)[-62:]
    assert kept.endswith(response)
    reward.tokenizer.truncation_side = "right"
    enc = reward.tokenizer([kept], return_tensors="pt")
    assert enc["input_ids"].shape[1] == 64
    with torch.no_grad():
        expected = reward.model(**enc).logits[:, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_response_only_input_ignores_the_prompt(tiny):
    reward = HFReward(reward_cfg(tiny["reward"]), CPU)
    a = reward.score(["prompt one"], ["same words"])
    b = reward.score(["a very different prompt"], ["same words"])
    torch.testing.assert_close(a, b)


def test_multi_label_classifier_uses_sigmoid(tmp_path):
    path = save_tiny_classifier(str(tmp_path / "ml"), {0: "toxic", 1: "insult", 2: "threat"},
                                problem_type="multi_label_classification")
    reward = HFReward(reward_cfg(path, "reward.label=insult", "reward.kind=prob"), CPU)
    probs = reward.probs(["one text", "another"])
    assert probs.shape == (2, 3) and abs(probs.sum(1) - 1).max() > 1e-3  # not a softmax
    torch.testing.assert_close(reward.score(["", ""], ["one text", "another"]),
                               torch.tensor(probs[:, 1], dtype=torch.float32))


def test_profanity_backend_scores_insults_lower():
    reward = build_reward(make_cfg(["reward=profanity"]).reward, CPU)
    assert isinstance(reward, ProfanityReward)
    scores = reward.score(["", ""], ["#Person2# calls #Person1# a stupid idiot.",
                                     "#Person1# asks #Person2# to buy a book."])
    assert scores[0] < 0 < scores[1]


def test_unreachable_reward_model_says_which_name_failed():
    with pytest.raises(LoadError, match="reward.name_or_path='nobody/no-model'"):
        check_reward_label(make_cfg(["reward.name_or_path=nobody/no-model"]).reward)
