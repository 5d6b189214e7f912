"""Metric modules for `evaluate`, shipped as files so that they load offline by path (declared in distill.metrics).

Each module returns per-item `scores` so the paired bootstrap can resample items.
"""

from __future__ import annotations

from distill.metrics import METRICS, metric_path

_loaded: dict[str, object] = {}


def compute(name: str, predictions: list, references: list) -> dict:
    """Run one metric module (loaded once per process, by path) and return its result with per-item `scores`."""
    import evaluate

    spec = METRICS[name]
    if spec.module not in _loaded:
        _loaded[spec.module] = evaluate.load(metric_path(spec.module))
    return _loaded[spec.module].compute(predictions=predictions, references=references, **spec.options)
