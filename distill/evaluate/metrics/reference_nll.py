"""Negative log-likelihood of the reference answers under the model, and perplexity.

Inputs are the model's log-probabilities of each reference token after its prompt (a
transformers forward pass, with the PEFT adapter for trained students). Per item: the mean NLL per token,
so long and short references weigh alike in the bootstrap. Overall: `nll`, the mean of the items' NLLs, and
`token_perplexity`, exp of the NLL over all tokens together (long references weigh more). The report's
`item_perplexity` is exp(nll), the other way of weighing.
"""

import math

import datasets
import evaluate


class ReferenceNLL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean over items of the negative log-likelihood per reference token (lower is better), and "
            "the token-weighted perplexity.",
            citation="",
            inputs_description="predictions: list of lists of float, the log-probability of each reference token; "
            "references: ignored (pass the reference texts)",
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references):
        for i, logprobs in enumerate(predictions):
            if not logprobs:
                raise ValueError(f"item {i}: the reference {references[i]!r} has no tokens to score")
        scores = [-sum(lp) / len(lp) for lp in predictions]
        tokens = sum(len(lp) for lp in predictions)
        total = -sum(sum(lp) for lp in predictions)
        return {"nll": sum(scores) / max(len(scores), 1), "token_perplexity": math.exp(total / tokens) if tokens else float("nan"),
                "scores": scores}
