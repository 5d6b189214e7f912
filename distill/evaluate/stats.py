"""Paired bootstrap: how sure we are that one model differs from another on the same items."""

from __future__ import annotations

import numpy as np


def paired_bootstrap(a: list[float], b: list[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of b - a with a percentile interval from resampling items (the same items for both)."""
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape:
        raise ValueError("paired bootstrap needs scores on the same items")
    n = len(a_arr)
    if n == 0:
        return {"delta": None, "low": None, "high": None, "n": 0}
    diff = b_arr - a_arr
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    tail = (1 - level) / 2
    return {"delta": float(diff.mean()), "low": float(np.quantile(means, tail)), "high": float(np.quantile(means, 1 - tail)), "n": n}
