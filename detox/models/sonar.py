"""HateSonar as a judge: a classifier nobody here trained (TF-IDF + logistic regression on
Davidson et al. 2017's hate / offensive / neither tweets, shipped as an ONNX model inside the
`hatesonar` wheel, offline). P(toxic) = 1 - P(neither).

Its graph lower-cases text with an ONNX `StringNormalizer` that names no locale, which
onnxruntime reads as `en_US.UTF-8`: on a machine without that locale (minimal images, CI) the
session fails to load. The graph is therefore loaded with the locale set to `C.UTF-8` (or `C`),
which lower-cases ASCII as `en_US` does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from detox.core.errors import LoadError

SONAR_LABELS = {0: "neither", 1: "hate_or_offensive"}
NEITHER = 2  # the model's own classes: 0 hate_speech, 1 offensive_language, 2 neither
LOCALES = ("C.UTF-8", "C")


def _session(locale: str):
    import onnx
    import onnxruntime as ort
    from hatesonar.api import DEFAULT_MODEL_FILE

    model = onnx.load(DEFAULT_MODEL_FILE)
    for node in model.graph.node:
        if node.op_type == "StringNormalizer":
            kept = [a for a in node.attribute if a.name != "locale"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("locale", locale)])
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failed locale is answered below, not printed by onnxruntime
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


class SonarClassifier:
    """HateSonar's probabilities as two labels: `neither` and `hate_or_offensive` (hate speech or
    offensive language), so that a judge reads P(toxic) = 1 - P(neither)."""

    id2label = SONAR_LABELS

    def __init__(self):
        try:
            import hatesonar  # noqa: F401
        except ImportError:
            raise LoadError("eval.judges has `hatesonar`, but the hatesonar package is not installed: "
                            "pip install 'detox[judges]' (or pip install hatesonar).") from None
        errors = []
        for locale in LOCALES:
            try:
                self.session = _session(locale)
                break
            except Exception as e:  # onnxruntime raises its own Fail for a locale it cannot build
                errors.append(f"{locale}: {str(e).splitlines()[0][-160:]}")
        else:
            raise LoadError(f"HateSonar's model does not load on this machine ({'; '.join(errors)}); drop `hatesonar` "
                            "from eval.judges.")

    def probs(self, texts: Sequence[str]) -> np.ndarray:
        """[N, 2]: P(neither), P(hate or offensive) of each text."""
        if not texts:
            return np.zeros((0, 2))
        _, dists = self.session.run(None, {"text": np.array(list(texts), dtype=object)})
        neither = np.array([d[NEITHER] for d in dists], dtype=np.float64)
        return np.stack([neither, 1 - neither], axis=-1)
