"""Normalised exact match with one or several acceptable references, scored per item."""

import datasets
import evaluate

from distill.evaluate.metrics.normalize import normalize


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="1 when the prediction equals any reference after whitespace folding "
            "(and optionally case, punctuation and article folding).",
            citation="",
            inputs_description="predictions: list of str; references: list of lists of acceptable str",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, ignore_case=False, ignore_punctuation=False, ignore_articles=False):
        options = dict(ignore_case=ignore_case, ignore_punctuation=ignore_punctuation, ignore_articles=ignore_articles)
        scores = [
            float(any(normalize(p, **options) == normalize(r, **options) for r in refs))
            for p, refs in zip(predictions, references)
        ]
        return {"exact_match": sum(scores) / max(len(scores), 1), "scores": scores}
