"""Multi-reference match: any acceptable reference appears, as whole words, in the prediction.

Lenient on purpose: a model that answers "The capital is Paris." for the reference "Paris"
scores 1. Case, punctuation and articles are folded first.
"""

import re

import datasets
import evaluate

from distill.evaluate.metrics.normalize import normalize

_FOLD = dict(ignore_case=True, ignore_punctuation=True, ignore_articles=True)


def _contains(prediction: str, reference: str) -> bool:
    ref = normalize(reference, **_FOLD)
    return bool(ref) and re.search(rf"(^|\s){re.escape(ref)}(\s|$)", normalize(prediction, **_FOLD)) is not None


class MultiRefMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="1 when any reference appears as whole words in the normalised prediction.",
            citation="",
            inputs_description="predictions: list of str; references: list of lists of acceptable str",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        scores = [float(any(_contains(p, r) for r in refs)) for p, refs in zip(predictions, references)]
        return {"multi_ref_match": sum(scores) / max(len(scores), 1), "scores": scores}
