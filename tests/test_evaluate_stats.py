"""The statistics behind "degraded": paired bootstrap intervals and their verdicts, on synthetic score vectors.

Pure math, so it can be repeated many times: the false-alarm rate of comparing a model
with itself must stay within the nominal level, and a real drop must be caught.
"""

from __future__ import annotations

import numpy as np

from distill.evaluate.stats import compare_scores, paired_bootstrap, verdict


def _same_model_twice(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Two sampling runs of one model: each item has its own difficulty, each run draws its answers afresh."""
    p_correct = rng.beta(2, 1, size=n)
    return (rng.random(n) < p_correct).astype(float), (rng.random(n) < p_correct).astype(float)


def test_same_model_is_not_flagged_more_often_than_the_nominal_level():
    rng = np.random.default_rng(0)
    repeats, level = 300, 0.95
    flagged = 0
    for i in range(repeats):
        a, b = _same_model_twice(rng, n=150)
        flagged += compare_scores(a, b, tolerance=0.0, n_boot=1000, seed=i, level=level)["degraded"]
    assert flagged / repeats <= 1 - level, f"false alarms {flagged}/{repeats}"


def test_a_real_drop_is_flagged():
    rng = np.random.default_rng(1)
    caught = 0
    for i in range(50):
        a, _ = _same_model_twice(rng, n=150)
        worse = np.where(rng.random(150) < 0.2, 0.0, a)  # forgets a fifth of what it knew
        caught += compare_scores(a, worse, tolerance=0.0, n_boot=1000, seed=i)["degraded"]
    assert caught >= 45


def test_tolerance_absorbs_small_drops():
    a = np.ones(400)
    b = a.copy()
    b[:8] = 0.0  # a drop of exactly 0.02
    assert compare_scores(a, b, tolerance=0.0)["verdict"] == "degraded"
    assert compare_scores(a, b, tolerance=0.05)["verdict"] == "no clear change"


def test_lower_is_better_metrics_degrade_upwards():
    rng = np.random.default_rng(2)
    nll = rng.normal(3.0, 0.5, size=100)
    assert compare_scores(nll, nll + 0.5, tolerance=0.1, higher_is_better=False)["verdict"] == "degraded"
    assert compare_scores(nll, nll - 0.5, tolerance=0.1, higher_is_better=False)["verdict"] == "improved"


def test_small_slices_get_wide_intervals_and_no_verdict():
    rng = np.random.default_rng(3)
    a = (rng.random(400) < 0.8).astype(float)
    b = np.where(rng.random(400) < 0.3, 0.0, a)
    large = paired_bootstrap(a, b)
    small = paired_bootstrap(a[:12], b[:12])
    assert small["high"] - small["low"] > 2 * (large["high"] - large["low"])
    tiny = compare_scores(a[:3], b[:3], tolerance=0.0, min_items=5)
    assert tiny["verdict"] == "too few items" and not tiny["degraded"] and tiny["n"] == 3
    assert verdict({"n": 0, "delta": None, "low": None, "high": None}, 0.0) == "too few items"


def test_interval_brackets_the_observed_difference():
    rng = np.random.default_rng(4)
    a, b = rng.random(50), rng.random(50)
    r = paired_bootstrap(a, b, seed=7)
    assert r["low"] <= r["delta"] <= r["high"] and r["n"] == 50
    assert r == paired_bootstrap(a, b, seed=7)  # reproducible
