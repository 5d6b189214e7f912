"""The statistics behind "degraded": paired bootstrap intervals, one-sided degradation tests, their
correction across a family, and the intervals shown next to each verdict, on synthetic score vectors."""

from __future__ import annotations

import numpy as np
import pytest

from distill.evaluate.stats import correct, degradation_test, gate, minimum_detectable_effect, paired_bootstrap


def _verdict(a, b, *, tolerance, higher_is_better=True, min_items=30):
    test = degradation_test(a, b, tolerance=tolerance, higher_is_better=higher_is_better)
    gate([test], min_items=min_items)
    return test


def test_tolerance_absorbs_small_drops():
    a = np.ones(400)
    b = a.copy()
    b[:8] = 0.0  # a drop of exactly 0.02
    assert _verdict(a, b, tolerance=0.0)["verdict"] == "degraded"
    assert _verdict(a, b, tolerance=0.05)["verdict"] == "no clear change"


def test_lower_is_better_metrics_degrade_upwards():
    rng = np.random.default_rng(2)
    nll = rng.normal(3.0, 0.5, size=100)
    noisy = rng.normal(0, 0.3, size=100)
    assert _verdict(nll, nll + 0.5 + noisy, tolerance=0.1, higher_is_better=False)["verdict"] == "degraded"
    assert _verdict(nll, nll - 0.5 + noisy, tolerance=0.1, higher_is_better=False)["verdict"] == "improved"
    assert _verdict(nll, nll + 0.05 + noisy, tolerance=0.1, higher_is_better=False)["verdict"] == "no clear change"


def test_small_slices_get_an_interval_but_no_verdict_and_do_not_count():
    rng = np.random.default_rng(3)
    a = (rng.random(400) < 0.8).astype(float)
    b = np.where(rng.random(400) < 0.3, 0.0, a)
    large = paired_bootstrap(a, b)
    small = paired_bootstrap(a[:12], b[:12])
    assert small["high"] - small["low"] > 2 * (large["high"] - large["low"])
    tests = [degradation_test(a, b, tolerance=0.02), degradation_test(a[:12], b[:12], tolerance=0.02)]
    family = gate(tests, min_items=30)
    assert family["tests"] == 1  # the 12-item slice does not dilute the correction
    assert tests[0]["verdict"] == "degraded"
    assert tests[1]["verdict"] == "too few items" and not tests[1]["degraded"] and tests[1]["gate_low"] is None


def test_interval_brackets_the_observed_difference():
    rng = np.random.default_rng(4)
    a, b = rng.random(50), rng.random(50)
    r = paired_bootstrap(a, b, seed=7)
    assert r["low"] <= r["delta"] <= r["high"] and r["n"] == 50
    assert r == paired_bootstrap(a, b, seed=7)  # reproducible


def test_holm_and_bh_adjust_as_their_definitions_say():
    p = [0.01, 0.02, 0.03, 0.5]
    holm = correct(p, "holm", 0.05)
    assert [round(c["p_adjusted"], 6) for c in holm] == [0.04, 0.06, 0.06, 0.5]
    assert [c["rejected"] for c in holm] == [True, False, False, False]
    bh = correct(p, "bh", 0.05)
    assert [round(c["p_adjusted"], 6) for c in bh] == [0.04, 0.04, 0.04, 0.5]
    assert [c["rejected"] for c in bh] == [True, True, True, False]
    assert [c["rejected"] for c in correct(p, "none", 0.05)] == [True, True, True, False]
    with pytest.raises(ValueError):
        correct(p, "bonferroni")


@pytest.mark.parametrize("correction", ["holm", "bh", "none"])
def test_the_shown_interval_agrees_with_the_verdict(correction):
    """Degraded exactly when the gate interval's worse end lies beyond the tolerance, for every row of many families."""
    rng = np.random.default_rng(5)
    for _ in range(100):
        tests = []
        for n in (40, 100, 200):
            a = (rng.random(n) < 0.6).astype(float)
            b = np.where(rng.random(n) < rng.uniform(0, 0.3), 0.0, a)
            tests.append(degradation_test(a, b, tolerance=0.02))
            base = rng.normal(2, 1, n)
            tests.append(degradation_test(base, base + rng.normal(rng.uniform(-0.2, 0.6), 1, n), tolerance=0.1,
                                          higher_is_better=False))
        gate(tests, correction=correction)
        for t in tests:
            worse_end = -t["gate_high"] if t["higher_is_better"] else t["gate_low"]
            assert t["degraded"] == (worse_end > t["tolerance"]), t
            assert t["gate_low"] <= t["delta"] <= t["gate_high"]


def test_more_tests_in_the_family_need_more_evidence():
    rng = np.random.default_rng(6)
    base = rng.normal(2, 1, 100)
    drop = degradation_test(base, base + rng.normal(0.4, 1, 100), tolerance=0.1, higher_is_better=False)
    alone = dict(drop)
    gate([alone])
    crowd = [dict(drop)] + [degradation_test(base, base + rng.normal(0, 1, 100), tolerance=0.1, higher_is_better=False)
                            for _ in range(19)]
    gate(crowd)
    assert alone["p"] == crowd[0]["p"] and crowd[0]["p_adjusted"] > alone["p_adjusted"]
    assert crowd[0]["gate_level"] > alone["gate_level"]  # a wider interval at a stricter level
    assert crowd[0]["mde"] > alone["mde"]


def test_minimum_detectable_effect_grows_with_spread_and_shrinks_with_n():
    assert minimum_detectable_effect(0.0, 100, 0.01, 0.1) == pytest.approx(0.1)  # no spread: the tolerance alone
    assert minimum_detectable_effect(1.0, 100, 0.01, 0.1) > minimum_detectable_effect(0.5, 100, 0.01, 0.1)
    assert minimum_detectable_effect(1.0, 400, 0.01, 0.1) < minimum_detectable_effect(1.0, 100, 0.01, 0.1)
    # z(0.99) + z(0.8) = 3.17 standard errors, a little more with t on 99 degrees of freedom
    assert minimum_detectable_effect(1.0, 100, 0.01, 0.0) == pytest.approx(0.317, abs=0.01)
    # scores in [0, 1]: a drop adds spread of its own, so even two identical runs cannot see less than about 0.1
    assert minimum_detectable_effect(0.0, 100, 0.01, 0.0, share=True) == pytest.approx(0.09, abs=0.01)
    assert minimum_detectable_effect(0.3, 100, 0.01, 0.02, share=True) > minimum_detectable_effect(0.3, 100, 0.01, 0.02)
    assert minimum_detectable_effect(0.5, 30, 1e-12, 0.02, share=True) is None  # nothing up to 1 is detectable


def test_identical_models_are_never_degraded():
    a = (np.random.default_rng(8).random(100) < 0.5).astype(float)
    t = _verdict(a, a.copy(), tolerance=0.0)
    assert t["p"] == 1.0 and t["verdict"] == "no clear change" and t["delta"] == 0.0
