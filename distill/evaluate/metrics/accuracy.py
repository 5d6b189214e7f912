"""Accuracy of a labelled answer: the prediction names the first (gold) reference, case-folded."""

import datasets
import evaluate

from distill.evaluate.metrics.normalize import normalize


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="1 when the case-folded, whitespace-folded prediction equals the gold label (the first reference).",
            citation="",
            inputs_description="predictions: list of str; references: list of lists of str, the gold label first",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        scores = [float(bool(refs) and normalize(p, ignore_case=True) == normalize(refs[0], ignore_case=True))
                  for p, refs in zip(predictions, references)]
        return {"accuracy": sum(scores) / max(len(scores), 1), "scores": scores}
