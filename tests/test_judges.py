import numpy as np
import pytest
import torch
from conftest import make_cfg
from tiny_models import save_tiny_classifier

from detox.core.errors import ConfigError
from detox.evaluation.report import variant_metrics
from detox.models.judges import build_judges as build
from detox.models.judges import score_responses
from detox.models.rewards import build_reward

CPU = torch.device("cpu")
INSULT = "#Person2# calls #Person1# a stupid idiot."
CLEAN = "#Person1# asks #Person2# to buy a book."


def reward_cfg(path):
    return make_cfg(["reward=tiny", f"reward.name_or_path={path}"]).reward


def build_judges(names, settings, device):
    return build(names, settings, device, build_reward(settings, device))


def test_reward_judge_is_the_toxic_labels_probability(tiny):
    # a classifier whose `hate` logit wins everywhere: it calls everything toxic
    path = save_tiny_classifier(tiny["reward"] + "-hateful", {0: "nothate", 1: "hate"}, bias=[-3.0, 3.0])
    reward, profanity = build_judges(["reward", "profanity"], reward_cfg(path), CPU)
    texts = [INSULT, CLEAN]
    r, p = reward.toxicity(texts), profanity.toxicity(texts)
    assert reward.name == "reward" and reward.toxic_index == 1
    assert (r > 0.9).all()
    assert p[0] > 0.5 > p[1]  # the independent judge disagrees on the clean text
    probs = reward.classifier.probs(texts)
    np.testing.assert_allclose(r, probs[:, 1])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)


def test_multi_label_classifier_as_a_judge(tiny, tmp_path):
    path = save_tiny_classifier(str(tmp_path / "ml"), {0: "toxic", 1: "insult", 2: "threat"},
                                problem_type="multi_label_classification")
    (judge,) = build_judges([f"{path}:insult"], reward_cfg(tiny["reward"]), CPU)
    tox = judge.toxicity([INSULT, CLEAN])
    assert judge.toxic_index == 1 and tox.shape == (2,) and ((tox > 0) & (tox < 1)).all()
    (default,) = build_judges([path], reward_cfg(tiny["reward"]), CPU)
    assert default.toxic_index == 0  # named `toxic`


def test_unknown_judge_label_is_a_clear_error(tiny, tmp_path):
    path = save_tiny_classifier(str(tmp_path / "odd"), {0: "a", 1: "b", 2: "c"})
    with pytest.raises(ConfigError, match="which label"):
        build_judges([path], reward_cfg(tiny["reward"]), CPU)
    with pytest.raises(ConfigError, match="eval.judges label='nope'.*\\['a', 'b', 'c'\\]"):
        build_judges([f"{path}:nope"], reward_cfg(tiny["reward"]), CPU)


def test_reward_components_are_judges_by_name(tiny):
    settings = make_cfg(["reward=tiny", f"reward.components.toxicity.name_or_path={tiny['reward']}",
                         "++reward.components.length._target_=detox.models.reward_rules.LengthPenalty",
                         "++reward.components.length.target=5", "++reward.components.length.per_token=0.1"]).reward
    reward = build_reward(settings, CPU)
    toxicity, length = build_judges(["toxicity", "length"], settings, CPU)
    assert toxicity.optimised and length.optimised  # PPO optimised both: the report ranks by neither
    assert toxicity.kind == "toxicity" and length.kind == "score"
    texts = [INSULT, CLEAN]
    np.testing.assert_allclose(toxicity.toxicity(texts), reward.classifier.probs(texts)[:, 1])  # P(hate)
    rows = [{"response": t, "length": n} for t, n in zip(texts, (5, 9))]
    score_responses(rows, [toxicity, length], ["", ""])
    assert [r["scores"]["length"] for r in rows] == pytest.approx([0.0, -0.4])  # the rule read each length
    assert [r["toxicity"]["toxicity"] for r in rows] == pytest.approx(toxicity.toxicity(texts).tolist())
    samples = [{"references": {"summary": t}, "before": {**r, "kl": 0.0}} for t, r in zip(texts, rows)]
    metrics = variant_metrics(samples, "summary", [], 0.5)
    assert metrics["eval/before/length/score_mean"] == pytest.approx(-0.2)  # a rule's rows in the report
    assert "eval/before/toxicity/toxic_rate" in metrics


def _has_locale(name: str) -> bool:
    import locale

    saved = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, name)
        return True
    except locale.Error:
        return False
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)


def test_hatesonar_judge_scores_without_the_en_us_locale():
    from detox.models.judges import build_judges

    cfg = make_cfg(["experiment=quickstart"])
    judge = build_judges(["hatesonar"], cfg.reward, torch.device("cpu"), None)[0]
    clean, offensive = judge.toxicity(["Thanks for dinner, see you at the office tomorrow.", "you are a fucking moron"])
    assert clean < 0.5 < 0.9 < offensive
    if not _has_locale("en_US.UTF-8"):  # the machine the fix is for: HateSonar's own graph fails to load here
        import onnxruntime
        from hatesonar.api import DEFAULT_MODEL_FILE

        with pytest.raises(Exception, match="locale"):
            onnxruntime.InferenceSession(DEFAULT_MODEL_FILE, providers=["CPUExecutionProvider"])
