"""The metrics distill scores with: name, unit, direction and the tolerance of a drop that matters. One entry per
metric; its code is a module file in distill/evaluate/metrics/ (loaded by `evaluate` by path, offline). The recipe's
metric names and default tolerances are read from here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

METRICS_DIR = Path(__file__).parent / "evaluate" / "metrics"  # the modules' files


def metric_path(name: str) -> str:
    return str(METRICS_DIR / f"{name}.py")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    module: str  # file in METRICS_DIR
    label: str  # how reports name it
    options: dict = field(default_factory=dict)
    higher_is_better: bool = True
    needs_logprobs: bool = False  # scored from the reference's log-probabilities, not from a generated answer
    # Default degradation tolerance, in the metric's unit: the smallest change that matters. Shares of
    # items: 0.02 (two items in a hundred); nll: 0.1 nats per token (perplexity x1.105).
    tolerance: float = 0.02
    share: bool = True  # per-item scores lie in [0, 1]


METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("exact_match", "exact_match", "exact match"),
    MetricSpec("exact_match_normalized", "exact_match", "exact match (normalised)",
               {"ignore_case": True, "ignore_punctuation": True, "ignore_articles": True}),
    MetricSpec("accuracy", "accuracy", "accuracy"),
    MetricSpec("multi_ref_match", "multi_ref_match", "any reference in answer"),
    MetricSpec("token_f1", "token_f1", "token F1"),
    MetricSpec("nll", "reference_nll", "reference NLL", higher_is_better=False, needs_logprobs=True, tolerance=0.1,
               share=False),
)}

DEFAULT_TOLERANCES = {name: m.tolerance for name, m in METRICS.items()}
