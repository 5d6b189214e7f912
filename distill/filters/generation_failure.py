"""Rows the generate stage recorded as failed (e.g. a label that never parsed) or cut off never reach training."""

from __future__ import annotations

from distill import rows as C
from distill.filters.base import Filter


class GenerationFailure(Filter):
    name = "generation_failure"
    label = "generation_failure"
    reads = (C.FAILURE,)
    parallel_safe = True

    def flags(self, batch):
        return [None if failure is None else f"generation failed: {failure}" for failure in batch[C.FAILURE]]


class Truncated(Filter):
    """An answer the teacher did not finish (cut at max_tokens) would be trained with EOS appended: the student
    would learn to stop mid-answer."""

    name = "truncated"
    label = "truncated"
    reads = (C.FINISH_REASON,)
    parallel_safe = True

    def __init__(self, max_tokens: int | None = None):
        self.max_tokens = max_tokens

    def flags(self, batch):
        at = f" at generate.sampling.max_tokens = {self.max_tokens}" if self.max_tokens else " at max_tokens"
        return [f"truncated: the teacher's answer was cut{at}" if reason == "length" else None
                for reason in batch[C.FINISH_REASON]]
