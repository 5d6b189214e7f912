"""The degradation gate as a user meets it: would it fire on a student that is no worse than its baseline,
would it catch one that got worse, and which models does it judge?

Families have the quickstart's shape (recipes/quickstart/recipe.yaml): `plural` n=200 exact match with
slices regular (185) and irregular (15, too small for a verdict), guard `arithmetic` n=100 with exact
match and NLL, guard `wikidata` n=100 with any-reference match and NLL; the student is gated, 6 tests.

The simulated models, chosen to be hard on the gate rather than kind to it:
- exact match: two models of equal skill answer each item independently at the item's own difficulty
  (Beta-distributed), so they disagree on 20-40% of items; a drop makes the student forget that share
  of all items among those it had right. The plural baseline is put at 0.86 (a retrained student
  against the previous one: the quickstart's base scores 0, which cannot drop).
- NLL: per-item differences with spread 1 nat, heavy-tailed (Student t, 3 degrees of freedom).
The drops simulated are the smallest round sizes the gate catches in >= 90% of families at these n;
smaller drops that still matter (down to the tolerance: 0.02, 0.1 nats) are below what 100 or 200 items
can show under a family-wise 5%, and each verdict row prints that limit as its MDE.
"""

from __future__ import annotations

import numpy as np
import pytest

from distill.errors import RecipeError
from distill.evaluate.metrics import METRICS
from distill.evaluate.report import build_report, render_markdown
from distill.evaluate.stats import degradation_test, gate
from distill.recipe import EvalSet, EvaluateSettings

FAMILIES = 200
# The gate's rows in the quickstart's shape: (set, where, metric, items as a slice of the set's items)
ROWS = [("plural", "all", "exact_match", slice(0, 200)), ("plural", "regular", "exact_match", slice(0, 185)),
        ("plural", "irregular", "exact_match", slice(185, 200)),
        ("arithmetic", "all", "exact_match", slice(0, 100)), ("arithmetic", "all", "nll", slice(0, 100)),
        ("wikidata", "all", "multi_ref_match", slice(0, 100)), ("wikidata", "all", "nll", slice(0, 100))]
ACCURACY = {"plural": 0.86, "arithmetic": 0.5, "wikidata": 0.5}  # 0.5: the widest spread of a share
SIZE = {"plural": 200, "arithmetic": 100, "wikidata": 100}


def _equal_models(rng, n: int, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
    p = rng.beta(4 * accuracy, 4 * (1 - accuracy), size=n)
    return (rng.random(n) < p).astype(float), (rng.random(n) < p).astype(float)


def _forget(rng, scores: np.ndarray, share: float) -> np.ndarray:
    out = scores.copy()
    right = np.flatnonzero(out == 1)
    out[rng.choice(right, size=min(round(share * len(out)), len(right)), replace=False)] = 0
    return out


def _scores(rng, drop: tuple | None = None) -> dict:
    """{(set, metric): (baseline scores, student scores)} for one family; `drop` = (set, metric, size) makes one worse."""
    out = {}
    for set_name, where, metric, _ in ROWS:
        if (set_name, metric) in out:
            continue
        n = SIZE[set_name]
        if metric == "nll":
            base = rng.normal(3.0, 1.5, n)
            other = base + rng.standard_t(3, n) / np.sqrt(3)
        else:
            base, other = _equal_models(rng, n, ACCURACY[set_name])
        if drop and drop[:2] == (set_name, metric):
            other = other + drop[2] if metric == "nll" else _forget(rng, other, drop[2])
        out[set_name, metric] = (base, other)
    return out


def _family(rng, drop=None, tolerance=None, correction="holm") -> list[tuple]:
    """One family's rows as (set, where, metric, test), decided by the gate as build_report decides them."""
    scores = _scores(rng, drop)
    rows = []
    for set_name, where, metric, items in ROWS:
        base, other = scores[set_name, metric]
        tol = METRICS[metric].tolerance if tolerance is None else tolerance
        rows.append((set_name, where, metric, degradation_test(base[items], other[items], tolerance=tol, share=METRICS[metric].share,
                                                                 higher_is_better=METRICS[metric].higher_is_better)))
    gate([t for *_, t in rows], correction=correction, alpha=0.05, min_items=30)
    return rows


def _fired_share(families: int, seed: int, **kwargs) -> float:
    rng = np.random.default_rng(seed)
    return sum(any(t["degraded"] for *_, t in _family(rng, **kwargs)) for _ in range(families)) / families


@pytest.mark.parametrize("correction", ["holm", "bh"])
def test_a_student_no_worse_than_its_baseline_fires_the_gate_in_at_most_5_percent_of_families(correction):
    share = _fired_share(FAMILIES, seed=0, correction=correction)
    assert share <= 0.05, share


def test_even_with_zero_tolerance_holm_holds_5_percent_where_no_correction_does_not():
    """At tolerance 0 every row sits on its null's boundary: the hardest case for the gate's error rate."""
    families = 1000  # 200 would leave +-1.5 points of simulation noise around a rate near 5%
    holm = _fired_share(families, seed=1, tolerance=0.0)
    uncorrected = _fired_share(families, seed=1, tolerance=0.0, correction="none")
    assert holm <= 0.055, holm  # 5% plus about one standard error of the simulation
    assert uncorrected > 0.15, uncorrected  # six tests at 5% each: the false alarms the correction removes


@pytest.mark.parametrize("drop", [
    ("plural", "exact_match", 0.16),  # 32 of 200 items forgotten
    ("arithmetic", "exact_match", 0.30),  # 30 of 100
    ("arithmetic", "nll", 0.5),  # +0.5 nats per token: perplexity x1.65
    ("wikidata", "nll", 0.5),
    ("arithmetic", "nll", 4.92),  # what the quickstart's student measured
], ids=lambda d: f"{d[0]}-{d[1]}-{d[2]}")
def test_a_real_drop_is_caught_in_at_least_90_percent_of_families(drop):
    rng = np.random.default_rng(2)
    caught = 0
    for _ in range(FAMILIES):
        rows = _family(rng, drop=drop)
        caught += any(t["degraded"] for s, _, m, t in rows if (s, m) == drop[:2])
    assert caught / FAMILIES >= 0.90, caught


@pytest.mark.parametrize("row, low, high", [
    (("arithmetic", "nll"), 0.7, 0.9),  # a shift keeps the spread: about the stated 80%
    (("arithmetic", "exact_match"), 0.8, 1.0),  # for shares the MDE allows for the spread a drop may add: at least 80%
    (("plural", "exact_match"), 0.8, 1.0),
])
def test_a_drop_the_size_of_the_printed_minimum_detectable_effect_is_caught_with_the_stated_power(row, low, high):
    rng = np.random.default_rng(3)
    mde = np.mean([t["mde"] for _ in range(50) for s, w, m, t in _family(rng) if (s, m, w) == (*row, "all")])
    caught = sum(any(t["degraded"] for s, _, m, t in _family(rng, drop=(*row, mde)) if (s, m) == row)
                 for _ in range(FAMILIES))
    assert low <= caught / FAMILIES <= high, (mde, caught)


def test_the_irregular_slice_gets_an_interval_but_no_verdict():
    rows = _family(np.random.default_rng(4), drop=("plural", "exact_match", 0.5))
    irregular = next(t for s, w, _, t in rows if w == "irregular")
    assert irregular["n"] == 15 and irregular["verdict"] == "too few items" and irregular["p"] is not None


# --------------------------------------------------------------------------- the report's family


def _settings(checkpoints: bool = False, **gate_settings) -> tuple[EvaluateSettings, dict]:
    sets = {"plural": EvalSet(name="plural", data="heldout"),
            "arithmetic": EvalSet(name="arithmetic", data="heldout", guard=True, metrics=["exact_match", "nll"]),
            "wikidata": EvalSet(name="wikidata", data="heldout", guard=True, metrics=["multi_ref_match", "nll"])}
    return EvaluateSettings(sets=list(sets.values()), bootstrap_samples=200, checkpoints=checkpoints, gate=gate_settings), sets


def _predictions(models: dict, seed: int = 5) -> list[dict]:
    """Scorer rows in the quickstart's shape; `models` maps a name to {(set, metric): shift}, added to the base scores."""
    rng = np.random.default_rng(seed)
    base = {k: v[0] for k, v in _scores(rng).items()}
    noise = {k: v[1] - v[0] for k, v in _scores(rng).items()}
    rows = []
    for model, shifts in {"base": None, **models}.items():
        for set_name, n in SIZE.items():
            metrics = [m for s, _, m, _ in ROWS if s == set_name]
            for i in range(n):
                scores = {}
                for m in dict.fromkeys(metrics):
                    x = base[set_name, m][i]
                    if shifts is not None:
                        x = x + noise[set_name, m][i] * 0.2 + shifts.get((set_name, m), 0.0)
                        x = float(np.clip(x, 0, 1)) if m != "nll" else x
                    scores[m] = float(x)
                rows.append({"set": set_name, "model": model, "item_id": f"{set_name}-{i}", "step": None, "scores": scores,
                             "slice": ("regular" if i < 185 else "irregular") if set_name == "plural" else None})
    return rows


def test_the_quickstart_gates_the_student_and_only_reports_the_teacher():
    settings, sets = _settings()
    predictions = _predictions({"student": {("arithmetic", "nll"): 4.92}, "teacher": {("wikidata", "nll"): 3.0}})
    report = build_report(predictions, settings, "base", ["base", "student", "teacher"], sets)
    assert report["gate"]["models"] == ["student"] and report["gate"]["tests"] == 6 and report["gate"]["correction"] == "holm"
    gated = [(s, m, w, c["n"]) for s, e in report["sets"].items() for m, cmp in e["vs_base"]["student"]["metrics"].items()
             for w, c in [("all", cmp["overall"]), *cmp["slices"].items()] if c["verdict"] != "too few items"]
    assert sorted(gated) == sorted((s, m, w, len(range(SIZE[s])[items])) for s, w, m, items in ROWS if w != "irregular")
    assert [(d["model"], d["set"], d["metric"]) for d in report["degraded"]] == [("student", "arithmetic", "nll")]
    d = report["degraded"][0]
    assert d["low"] > d["tolerance"] == 0.1 and 0.99 < d["level"] < 1 and d["p_adjusted"] < 1e-6
    teacher = report["sets"]["wikidata"]["vs_base"]["teacher"]["metrics"]["nll"]["overall"]
    assert teacher["low"] > 2.5 and teacher["verdict"] == "reported only" and not teacher["degraded"]  # worse, not gated
    irregular = report["sets"]["plural"]["vs_base"]["student"]["metrics"]["exact_match"]["slices"]["irregular"]
    assert irregular["verdict"] == "too few items" and irregular["low"] is not None  # an interval, no verdict
    md = render_markdown(report)
    assert "6 tests" in md and "Holm-corrected" in md and "80% power" in md
    assert "| teacher | reference NLL | all | 100 |" in md and md.count("reported only |") == 7  # 3 plural + 4 guard rows
    assert "| **degraded** |" in md


def test_the_teacher_is_gated_when_the_recipe_asks():
    settings, sets = _settings(models=["student", "teacher"])
    predictions = _predictions({"student": {}, "teacher": {("wikidata", "nll"): 3.0}})
    report = build_report(predictions, settings, "base", ["base", "student", "teacher"], sets)
    assert report["gate"]["tests"] == 12
    assert [(d["model"], d["set"], d["metric"]) for d in report["degraded"]] == [("teacher", "wikidata", "nll")]


def test_the_last_checkpoint_is_gated_on_request_and_earlier_ones_are_not():
    settings, sets = _settings(checkpoints=True, models=["student", "last_checkpoint"])
    predictions = _predictions({"student@4": {("arithmetic", "nll"): 2.0}, "student@8": {}, "student": {}})
    for p in predictions:
        p["step"] = {"student@4": 4, "student@8": 8, "student": 8}.get(p["model"])
    report = build_report(predictions, settings, "base", ["base", "student@4", "student@8", "student"], sets)
    assert report["gate"]["models"] == ["student@8", "student"] and report["gate"]["tests"] == 12
    assert not report["degraded"]  # student@4 got worse, but checkpoints before the last are reported only
    assert report["sets"]["arithmetic"]["vs_base"]["student@4"]["metrics"]["nll"]["overall"]["verdict"] == "reported only"


def test_a_guard_set_that_repair_trains_toward_is_marked_and_the_gate_rests_on_the_others():
    """A guard set whose prompts feed on-policy repair passes nearly by construction: the report says so wherever it
    names the set, and the gate's sentence says which guard sets still measure general ability."""
    from distill.evaluate.html import render_html

    settings, sets = _settings()
    predictions = _predictions({"student": {("arithmetic", "nll"): 4.92}})
    report = build_report(predictions, settings, "base", ["base", "student"], sets, repaired=["arithmetic"])
    assert [(n, e["guard"], e["repaired"]) for n, e in report["sets"].items()] == [
        ("plural", False, False), ("arithmetic", True, True), ("wikidata", True, False)]
    assert [(d["set"], d["repaired"]) for d in report["degraded"]] == [("arithmetic", True)]
    md = render_markdown(report)
    assert "## arithmetic (guard set, repaired: on-policy repair trained the student on prompts like its items)" in md
    assert "## wikidata (guard set)" in md and "## plural\n" in md
    assert "- `student` on repaired guard set `arithmetic` (all, n=100), nll:" in md
    assert ("Repaired guard set `arithmetic`: on-policy repair trained the student toward an earlier model on prompts "
            "like its items, so it passes nearly by construction; general ability rests on `wikidata`.") in md
    html = render_html(report, [], "t")
    assert "<h2>arithmetic (guard set, repaired: on-policy repair" in html and "<h2>wikidata (guard set)</h2>" in html
    assert "on repaired guard set <code>arithmetic</code>" in html and "general ability rests on wikidata." in html

    every = render_markdown(build_report(predictions, settings, "base", ["base", "student"], sets,
                                         repaired=["arithmetic", "wikidata"]))
    assert "Repaired guard sets `arithmetic`, `wikidata`: on-policy repair trained the student toward an earlier model " \
           "on prompts like their items, so they pass nearly by construction; no guard set measures general ability " \
           "in this run." in every
    assert "general ability" not in render_markdown(build_report(predictions, settings, "base", ["base", "student"], sets))


def test_tolerances_are_per_metric_and_a_set_can_override_them():
    settings, sets = _settings(tolerance={"nll": 0.5})
    sets["wikidata"] = sets["wikidata"].model_copy(update={"tolerance": {"nll": 1.0}})
    report = build_report(_predictions({"student": {}}), settings, "base", ["base", "student"], sets)
    assert report["sets"]["plural"]["tolerance"] == {"exact_match": 0.02}
    assert report["sets"]["arithmetic"]["tolerance"] == {"exact_match": 0.02, "nll": 0.5}
    assert report["sets"]["wikidata"]["tolerance"] == {"multi_ref_match": 0.02, "nll": 1.0}
    assert report["sets"]["wikidata"]["vs_base"]["student"]["metrics"]["nll"]["overall"]["tolerance"] == 1.0


@pytest.mark.parametrize("evaluate, message", [
    ({"tolerance": 0.02}, "tolerance moved to evaluate.gate.tolerance, one value per metric"),
    ({"min_items": 5}, "min_items moved to evaluate.gate.min_items"),
    ({"models": ["base", "student"], "gate": {"models": ["teacher"]}}, "gate.models names 'teacher', which is not among models"),
    ({"gate": {"models": ["last_checkpoint"]}}, "evaluated only with checkpoints: true"),
    ({"gate": {"correction": "bonferroni"}}, "evaluate.gate.correction: Input should be 'holm', 'bh' or 'none'"),
    ({"gate": {"tolerance": {"nll": -0.1}}}, "evaluate.gate.tolerance.nll: Input should be greater than or equal to 0"),
])
def test_bad_gate_settings_fail_before_any_work(tmp_path, evaluate, message):
    import yaml
    from conftest import TINY_RECIPE, write_recipe

    model = tmp_path / "model"
    model.mkdir()
    path = write_recipe(tmp_path, model, TINY_RECIPE)
    recipe = yaml.safe_load(path.read_text())
    recipe["evaluate"].update(evaluate)
    path.write_text(yaml.safe_dump(recipe))
    from distill.recipe import load_recipe

    with pytest.raises(RecipeError, match=message):
        load_recipe(path)
