"""Metric modules for `evaluate`, shipped as files so that they load offline by path."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def metric_path(name: str) -> str:
    return str(METRICS_DIR / f"{name}.py")
