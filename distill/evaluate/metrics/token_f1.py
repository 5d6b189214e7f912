"""Token F1 (SQuAD): overlap of normalised word bags, the best over the references, per item."""

from collections import Counter

import datasets
import evaluate

from distill.evaluate.metrics.normalize import normalize

_FOLD = dict(ignore_case=True, ignore_punctuation=True, ignore_articles=True)


def _f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction, **_FOLD).split(), normalize(reference, **_FOLD).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


class TokenF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Harmonic mean of word precision and recall against the best-matching reference.",
            citation="",
            inputs_description="predictions: list of str; references: list of lists of acceptable str",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        scores = [max((_f1(p, r) for r in refs), default=0.0) for p, refs in zip(predictions, references)]
        return {"token_f1": sum(scores) / max(len(scores), 1), "scores": scores}
