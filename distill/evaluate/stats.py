"""How sure we are that one model differs from another on the same items, and the degradation gate
that CI relies on.

Every comparison gets a paired bootstrap interval (reported for every model). Only the gate's family
(by default the trained student against the baseline on every set, slice and guard set) gets verdicts:
one one-sided test per row, corrected across the family (Holm, or Benjamini-Hochberg), each shown with
the interval at the level its correction used and its minimum detectable effect.
"""

from __future__ import annotations

import math

import numpy as np

POWER = 0.8  # power at which the minimum detectable effect of a gated row is stated
CORRECTIONS = ("holm", "bh", "none")


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


def _t_upper_tail(t: float, df: int) -> float:
    from scipy.special import stdtr  # scipy: a dependency of scikit-learn, which the filters need

    return float(stdtr(df, -t))


def _quantile(q: float, n: int) -> float:
    """Quantile q of Student's t with n - 1 degrees of freedom."""
    from scipy.special import stdtrit

    return float(stdtrit(n - 1, q))


def degradation_test(base: list[float], other: list[float], *, tolerance: float, higher_is_better: bool = True,
                     share: bool = False) -> dict:
    """One-sided paired t test of "other is worse than base by more than `tolerance`" on the per-item differences.

    A t test rather than bootstrap p-values: the gate compares p with alpha/m (0.05/6 = 0.008 on the
    quickstart), and resolving such tails by resampling takes tens of thousands of resamples per row,
    with noisy tails; the t test is exactly dual to its interval, and for the >= min_items (default 30)
    items a verdict needs, the mean of bounded per-item differences is close to normal.
    `share`: per-item scores lie in [0, 1] (exact match and the like), which bounds how much spread a drop adds.
    """
    diff = np.asarray(other, dtype=float) - np.asarray(base, dtype=float)
    n = len(diff)
    out = {"n": n, "delta": float(diff.mean()) if n else None, "sd": float(diff.std(ddof=1)) if n > 1 else 0.0,
           "tolerance": tolerance, "higher_is_better": higher_is_better, "share": share, "p": None}
    if n < 2:
        return out
    worse = -out["delta"] if higher_is_better else out["delta"]
    se = out["sd"] / math.sqrt(n)
    if se == 0:  # every item moved by the same amount: no sampling spread to weigh it against
        out["p"] = 0.0 if worse > tolerance else 1.0
    else:
        out["p"] = _t_upper_tail((worse - tolerance) / se, n - 1)
    return out


def correct(pvalues: list[float], method: str = "holm", alpha: float = 0.05) -> list[dict]:
    """Family-wise (Holm) or false-discovery-rate (BH) correction of one-sided p-values.

    Each test gets its adjusted p-value, whether it is rejected, and `alpha_row`: the one-sided level
    its shown interval is built at, chosen so that the interval agrees with the decision:
    - holm: the k-th smallest p rejected at alpha/(m-k+1) gets that level; once Holm stops after r
      rejections, every remaining test gets alpha/(m-r) (all their p-values exceed it);
    - bh: every test gets max(R, 1) * alpha / m, with R rejections (the false-coverage-rate adjusted
      level of Benjamini and Yekutieli 2005);
    - none: alpha for every test.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    m = len(pvalues)
    if m == 0:
        return []
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    levels = np.empty(m)
    if method == "none":
        adjusted[:] = p
        levels[:] = alpha
    elif method == "holm":
        running = 0.0
        for k, i in enumerate(order):
            running = max(running, min(1.0, (m - k) * p[i]))
            adjusted[i] = running
        rejected_n = int((adjusted <= alpha).sum())
        for k, i in enumerate(order):
            levels[i] = alpha / (m - k) if k < rejected_n else alpha / (m - rejected_n)
    else:
        running = 1.0
        for k in range(m - 1, -1, -1):
            i = order[k]
            running = min(running, min(1.0, m * p[i] / (k + 1)))
            adjusted[i] = running
        rejected_n = int((adjusted <= alpha).sum())
        levels[:] = max(rejected_n, 1) * alpha / m
    return [{"p_adjusted": float(adjusted[i]), "rejected": bool(adjusted[i] <= alpha), "alpha_row": float(levels[i])}
            for i in range(m)]


def minimum_detectable_effect(sd: float, n: int, alpha_row: float, tolerance: float, power: float = POWER,
                              share: bool = False) -> float | None:
    """The smallest true drop (in the metric's unit, tolerance included) that a one-sided t test at level
    `alpha_row` flags with probability `power`, given the spread `sd` of the per-item differences.

    For a shift (nll) the spread stays as measured. For scores in [0, 1] a drop of d moves items by
    amounts in [-1, 0] with mean -d, which adds variance of up to d (1 - d) (Bhatia-Davis); the drop is
    solved with that variance added to the measured one (as if the items it hits were unrelated to the
    existing differences), else the stated power would be optimistic. None when no drop up to 1 is detectable.
    """
    k = (_quantile(1 - alpha_row, n) + _quantile(power, n)) / math.sqrt(n)
    if not share:
        return tolerance + k * sd
    d = np.linspace(tolerance, 1.0, 10001)[1:]  # a drop beyond the tolerance, not the trivial root at it
    ok = d >= tolerance + k * np.sqrt(sd**2 + d * (1 - d))
    return float(d[ok.argmax()]) if ok.any() else None


def gate(tests: list[dict], *, correction: str = "holm", alpha: float = 0.05, min_items: int = 30,
         power: float = POWER) -> dict:
    """Verdicts for a family of `degradation_test` results (updated in place).

    Rows with fewer than `min_items` items keep their interval but get no verdict and do not count
    in the family. The rest are corrected together; each gets `p_adjusted`, the interval at its
    correction's level (`gate_low`, `gate_high`, `gate_level`: the one-sided confidence of each end),
    `mde` (at the strictest level of the family, alpha/m, and `power`) and `verdict`:
    'degraded' (rejected: the interval lies wholly beyond the tolerance on the worse side),
    'improved' (the interval lies wholly beyond the tolerance on the better side) or 'no clear change'.
    """
    family = [t for t in tests if t["n"] >= max(min_items, 2) and t["p"] is not None]
    members = {id(t) for t in family}
    for t in tests:
        if id(t) not in members:
            t.update(verdict="too few items", degraded=False, p_adjusted=None, gate_low=None, gate_high=None,
                     gate_level=None, mde=None)
    m = len(family)
    strictest = alpha if correction == "none" else alpha / max(m, 1)
    for t, c in zip(family, correct([t["p"] for t in family], correction, alpha)):
        half = _quantile(1 - c["alpha_row"], t["n"]) * t["sd"] / math.sqrt(t["n"])
        low, high = t["delta"] - half, t["delta"] + half
        tol = t["tolerance"]
        nearest_to_worse = low if t["higher_is_better"] else -high  # the interval's end on the worse side, as a gain
        if c["rejected"]:
            verdict = "degraded"
        elif nearest_to_worse > tol:
            verdict = "improved"
        else:
            verdict = "no clear change"
        t.update(p_adjusted=c["p_adjusted"], gate_low=low, gate_high=high, gate_level=1 - c["alpha_row"],
                 mde=minimum_detectable_effect(t["sd"], t["n"], strictest, tol, power, t.get("share", False)), verdict=verdict,
                 degraded=verdict == "degraded")
    return {"correction": correction, "alpha": alpha, "tests": m, "min_items": min_items, "power": power,
            "mde_level": 1 - strictest}
