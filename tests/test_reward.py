import numpy as np
import pytest
import torch
from conftest import make_cfg
from tiny_models import save_tiny_classifier

from detox.config.validate import validate
from detox.core.errors import ConfigError
from detox.core.hub import LoadError
from detox.models.reward_rules import (
    DialogueOverlap,
    LengthPenalty,
    PhraseBlocklist,
    RougeToReference,
)
from detox.models.rewards import (
    Classifier,
    ComponentError,
    Reward,
    build_reward,
    check_reward_label,
    resolve_label,
)

CPU = torch.device("cpu")


def reward_cfg(path, *overrides):
    return make_cfg(["reward=tiny", f"reward.components.toxicity.name_or_path={path}", *overrides]).reward


def classifier(settings) -> Classifier:
    """The reward's sole component, built by hydra.utils.instantiate from its node."""
    reward = build_reward(settings, CPU)
    assert isinstance(reward, Reward) and isinstance(reward.components["toxicity"], Classifier)
    return reward.components["toxicity"]


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    """A classifier whose id2label puts `hate` FIRST (index 0), and whose hate logit is on top."""
    return save_tiny_classifier(str(tmp_path_factory.mktemp("flip")), {0: "hate", 1: "nothate"}, seed=1,
                                bias=[3.0, -1.0])


def test_label_is_resolved_by_name_not_position(tiny, flipped):
    assert classifier(reward_cfg(tiny["reward"])).label_index == 0  # nothate at 0
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
    prob = classifier(reward_cfg(tiny["reward"], "reward.components.toxicity.kind=prob"))(texts, texts)
    logodds = classifier(reward_cfg(tiny["reward"], "reward.components.toxicity.kind=logodds"))(texts, texts)
    assert ((prob > 0) & (prob < 1)).all()
    torch.testing.assert_close(logodds, torch.log(prob / (1 - prob)), atol=1e-4, rtol=1e-4)
    # for a 2-class softmax the log-odds equal the logit difference
    reward = classifier(reward_cfg(tiny["reward"]))
    with torch.no_grad():
        full = reward.hf_model(**reward.model.tokenizer(texts, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(logodds, full[:, 0] - full[:, 1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(logit, logodds)


def test_unknown_label_lists_the_models_labels(tiny):
    with pytest.raises(ConfigError, match=r"reward.components.toxicity.label='toxic'.*\['nothate', 'hate'\]"):
        check_reward_label(reward_cfg(tiny["reward"], "reward.components.toxicity.label=toxic"))
    with pytest.raises(ConfigError, match="clean"):
        check_reward_label(make_cfg(["reward=profanity", "reward.label=nothate"]).reward)  # the shorthand key
    assert resolve_label({"0": "nothate", "1": "hate"}, "hate", "m") == 1


def test_prompt_is_truncated_from_the_left_and_the_response_kept(tiny):
    reward = classifier(reward_cfg(tiny["reward"], "reward.components.toxicity.input=prompt_response",
                                   "reward.components.toxicity.max_length=64"))
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


def test_a_pair_classifier_reads_the_dialogue_and_the_summary_together(tiny):
    """input=pair: the dialogue as the text and the summary as the text pair (a cross-encoder's
    reading), the dialogue cut when too long and the summary kept whole."""
    reward = classifier(reward_cfg(tiny["reward"], "reward.components.toxicity.input=pair",
                                   "reward.components.toxicity.max_length=48"))
    dialogues, summaries = ["D" * 300, "#Person1#: hi there.\n#Person2#: hello."], ["a short summary", "they greet"]
    got = reward(["p", "p"], summaries, dialogue=dialogues)
    enc = reward.model.tokenizer(dialogues, text_pair=summaries, truncation="only_first", max_length=48, padding=True,
                                 return_tensors="pt")
    assert enc["input_ids"].shape[1] == 48
    with torch.no_grad():
        expected = reward.hf_model(**enc).logits[:, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    alone = classifier(reward_cfg(tiny["reward"]))(["p", "p"], summaries)
    assert not torch.allclose(got, alone)  # the dialogue matters


def test_multi_label_classifier_uses_sigmoid(tmp_path):
    path = save_tiny_classifier(str(tmp_path / "ml"), {0: "toxic", 1: "insult", 2: "threat"},
                                problem_type="multi_label_classification")
    reward = classifier(reward_cfg(path, "reward.components.toxicity.label=insult", "reward.components.toxicity.kind=prob"))
    probs = reward.probs(["one text", "another"])
    assert probs.shape == (2, 3) and abs(probs.sum(1) - 1).max() > 1e-3  # not a softmax
    torch.testing.assert_close(reward(["", ""], ["one text", "another"]), torch.tensor(probs[:, 1], dtype=torch.float32))


def test_profanity_backend_scores_insults_lower():
    reward = classifier(make_cfg(["reward=profanity"]).reward)
    assert reward.backend == "profanity" and reward.hf_model is None
    scores = reward(["", ""], ["#Person2# calls #Person1# a stupid idiot.", "#Person1# asks #Person2# to buy a book."])
    assert scores[0] < 0 < scores[1]


def test_unreachable_reward_model_says_which_name_failed():
    with pytest.raises(LoadError, match="reward.components.toxicity.name_or_path='nobody/no-model'"):
        check_reward_label(make_cfg(["reward.name_or_path=nobody/no-model"]).reward)


# ------------------------------------------------------------------------------ the reward as a whole
def fixed(values):
    return lambda prompts, responses, **columns: torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("aggregate,expected", [("sum", [2.5, -1.0]), ("min", [0.5, -2.0]), ("mean", [1.25, -0.5])])
def test_weighted_scores_are_summed_taken_the_min_of_or_averaged(aggregate, expected):
    reward = Reward({"a": fixed([1.0, -4.0]), "b": fixed([2.0, 1.0])}, weights={"a": 0.5, "b": 1.0},
                    aggregate=aggregate)
    out = reward.score(["p", "p"], ["x", "y"])
    torch.testing.assert_close(out.total, torch.tensor(expected))
    torch.testing.assert_close(out.components["a"], torch.tensor([1.0, -4.0]))  # raw: before the weight


def test_clip_bounds_the_aggregate_and_one_weight_1_component_is_its_own_score():
    one = Reward({"a": fixed([0.3, -7.0])}, clip=2.0).score(["p", "p"], ["x", "y"])
    torch.testing.assert_close(one.total, torch.tensor([0.3, -2.0]))
    assert torch.equal(Reward({"a": fixed([0.3, -7.0])}).score(["p"] * 2, ["x", "y"]).total, torch.tensor([0.3, -7.0]))


def test_running_normalisation_puts_a_component_on_unit_scale_and_resumes():
    big = Reward({"big": fixed([100.0, 300.0]), "small": fixed([0.1, 0.3])}, normalize={"big": True})
    first = big.score(["p"] * 2, ["x", "y"])
    torch.testing.assert_close(first.total, torch.tensor([-1.0 + 0.1, 1.0 + 0.3]), atol=1e-5, rtol=1e-5)
    state = big.state_dict()
    again = Reward({"big": fixed([100.0, 300.0]), "small": fixed([0.1, 0.3])}, normalize={"big": True})
    again.load_state_dict(state)
    torch.testing.assert_close(again.score(["p"] * 2, ["x", "y"]).total, big.score(["p"] * 2, ["x", "y"]).total)


def test_a_function_reads_a_dataset_column_and_its_settings():
    settings = make_cfg(["reward=tiny", "++reward.components.topic._target_=tiny_models.mentions_column",
                         "++reward.components.topic.column=topic", "++reward.components.topic.weight=0.5",
                         "reward.components.toxicity.weight=0"]).reward
    reward = build_reward(settings, CPU)
    out = reward.score(["p", "p"], ["we talk about food", "nothing here"], topic=["food", "cars"],
                       dialogue=["...", "..."])
    torch.testing.assert_close(out.components["topic"], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out.total, torch.tensor([0.5, 0.0]))


def test_rules_score_lengths_phrases_references_and_overlap():
    lengths = LengthPenalty(target=10, per_token=0.5)([""] * 3, ["a", "b", "c"], response_tokens=[10, 12, 4])
    np.testing.assert_allclose(lengths, [0.0, -1.0, -3.0])
    blocked = PhraseBlocklist(["idiot", "shut up"], penalty=2)(["", ""], ["You idiot, shut up, IDIOT", "fine"])
    np.testing.assert_allclose(blocked, [-6.0, 0.0])
    rouge = RougeToReference(column="summary_clean")(["", ""], ["they buy a book", "x"],
                                                      summary_clean=["they buy a book", "a long reference"])
    assert rouge[0] == pytest.approx(1.0) and rouge[1] == 0.0
    overlap = DialogueOverlap()(["", ""], ["Person1 buy a book", "Person1 buy a car"],
                                dialogue=["#Person1#: I buy a book.", "#Person1#: I buy a book."])
    assert overlap[0] == pytest.approx(1.0) and overlap[1] == pytest.approx(2 / 3)


@pytest.mark.parametrize("target,message", [
    ("tiny_models.two_scores", r"reward component 'bad' returned \(2,\) scores for 3 responses"),
    ("tiny_models.words", r"reward component 'bad' returned something that is not numbers"),
    ("tiny_models.nan_scores", r"reward component 'bad' returned NaN or inf at the first batch"),
])
def test_a_component_that_breaks_the_contract_is_named_at_the_first_batch(target, message):
    reward = build_reward(make_cfg(["reward=tiny", f"++reward.components.bad._target_={target}"]).reward, CPU)
    with pytest.raises(ComponentError, match=message):
        reward.score(["p"] * 3, ["a", "b", "c"])


@pytest.mark.parametrize("overrides,message", [
    (["++reward.components.brevity._target_=no_such_module.brevity"],
     r"reward.components.brevity._target_='no_such_module.brevity' cannot be imported"),
    (["++reward.components.toxicity.weight=heavy"], r"reward.components.toxicity.weight='heavy' is not a number"),
    (["++reward.components.profanity._target_=tiny_models.mentions_column"],
     r"reward.components.profanity: `profanity` is a built-in judge's name"),
    (["++reward.components.len._target_=detox.models.reward_rules.LengthPenalty", "++reward.components.len.targ=9"],
     r"reward.components.len.targ is not a parameter of detox.models.reward_rules.LengthPenalty"),
    (["++reward.components.toxicity.labl=nothate"], r"reward.components.toxicity.labl .*did you mean .*label"),
    (["++reward.components.len._target_=detox.models.reward_rules.LengthPenalty", "reward.label=hate"],
     r"reward.label set the reward's sole component, and it has 2 \(toxicity, len\): set "
     r"reward.components.<name>.label instead"),
])
def test_bad_component_settings_are_one_line_before_anything_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(make_cfg(["experiment=quickstart", *overrides]))
