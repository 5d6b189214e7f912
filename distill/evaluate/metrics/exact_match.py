"""Normalised exact match with one or several acceptable references, scored per item."""

import re

import datasets
import evaluate

_SPACE = re.compile(r"\s+")


def _norm(text: str, ignore_case: bool) -> str:
    text = _SPACE.sub(" ", text.strip())
    return text.lower() if ignore_case else text


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="1 when the prediction equals any reference after whitespace folding (and optional lower-casing).",
            citation="",
            inputs_description="predictions: list of str; references: list of lists of acceptable str",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references, ignore_case=False):
        scores = [
            float(any(_norm(p, ignore_case) == _norm(r, ignore_case) for r in refs))
            for p, refs in zip(predictions, references)
        ]
        return {"exact_match": sum(scores) / max(len(scores), 1), "scores": scores}
