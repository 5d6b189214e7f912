"""Rows the generate stage recorded as failed (e.g. a label that never parsed) never reach training."""

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
