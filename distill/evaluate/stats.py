"""Paired bootstrap: how sure we are that one model differs from another on the same items,
and the degradation verdict that CI gates on."""

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


def verdict(interval: dict, tolerance: float, higher_is_better: bool = True, min_items: int = 1) -> str:
    """'degraded', 'improved', 'no clear change' or 'too few items'.

    Degraded means the whole interval lies on the worse side of -tolerance: for a metric
    where higher is better, its upper end is below -tolerance (for a lower-is-better metric
    such as NLL, its lower end is above +tolerance). Fewer than `min_items` items give no
    verdict: a percentile interval from a handful of items is too narrow to trust.
    """
    if interval["n"] < min_items or interval["delta"] is None:
        return "too few items"
    low, high = interval["low"], interval["high"]
    if not higher_is_better:
        low, high = -high, -low
    if high < -tolerance:
        return "degraded"
    if low > tolerance:
        return "improved"
    return "no clear change"


def compare_scores(base: list[float], other: list[float], *, tolerance: float, higher_is_better: bool = True,
                   n_boot: int = 2000, seed: int = 0, level: float = 0.95, min_items: int = 1) -> dict:
    """The interval of other - base and its verdict, in one record."""
    result = paired_bootstrap(base, other, n_boot=n_boot, seed=seed, level=level)
    result["verdict"] = verdict(result, tolerance, higher_is_better, min_items)
    result["degraded"] = result["verdict"] == "degraded"
    return result
