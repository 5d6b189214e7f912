"""Metric modules for `evaluate`, shipped as files so that they load offline by path.

Each module returns per-item `scores` so the paired bootstrap can resample items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

METRICS_DIR = Path(__file__).parent


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

_loaded: dict[str, object] = {}


def compute(name: str, predictions: list, references: list) -> dict:
    """Run one metric module (loaded once per process, by path) and return its result with per-item `scores`."""
    import evaluate

    spec = METRICS[name]
    if spec.module not in _loaded:
        _loaded[spec.module] = evaluate.load(metric_path(spec.module))
    return _loaded[spec.module].compute(predictions=predictions, references=references, **spec.options)
