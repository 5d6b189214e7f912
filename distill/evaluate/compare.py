"""`distill compare A B C ...`: runs, adapter folders or model folders on the same real items,
each measured against the first (or --baseline) with paired bootstrap intervals. The gate's family is
every compared model other than the baseline: each was named on purpose, so each one's drop counts."""

from __future__ import annotations

import time
from pathlib import Path

from distill.data.eval_sets import load_items, seed_pool
from distill.errors import UserError
from distill.evaluate.cache import cache_record, open_cache
from distill.evaluate.candidates import resolve_candidates
from distill.evaluate.contamination import attach, measure
from distill.evaluate.fidelity import measure_fidelity
from distill.evaluate.outputs import write_outputs
from distill.evaluate.report import build_report
from distill.evaluate.scoring import score_candidates
from distill.recipe import load_recipe
from distill.run_dir import RunDir
from distill.tracking import check_installed, log_report
from distill.train.repair import repaired_guard_sets


def _recipe_and_run(targets: list[str], recipe_path: str | None, run_dir: str | None, overrides: list[str]):
    """The recipe says which sets and metrics; the run (if any) holds the held-out split and seeds."""
    runs = [Path(t) for t in targets if (Path(t) / "recipe.yaml").is_file()]
    if recipe_path is None:
        if not runs:
            raise UserError("compare needs --recipe RECIPE when no run directory is among the targets")
        recipe_path = str(runs[0] / "recipe.yaml")
    recipe = load_recipe(recipe_path, overrides)
    root = Path(run_dir) if run_dir else (runs[0] if runs else recipe.resolved_run_dir())
    return recipe, RunDir(root)


def run_compare(targets: list[str], out: str, recipe_path: str | None = None, run_dir: str | None = None,
                baseline: str | None = None, overrides: list[str] | None = None) -> dict:
    started = time.time()
    recipe, run = _recipe_and_run(targets, recipe_path, run_dir, overrides or [])
    check_installed(recipe)
    candidates = resolve_candidates(targets, recipe)
    names = [c.name for c in candidates]
    baseline = baseline or names[0]
    if baseline not in names:
        raise UserError(f"--baseline {baseline!r} is not among the compared models ({', '.join(names)})")
    sets = {s.name: (s, load_items(s, run.heldout)) for s in recipe.evaluate.sets}
    # true leaks: items in the rows any compared adapter was trained on (where its training_data.json names them)
    measured = measure(recipe, {n: items for n, (_, items) in sets.items()}, [c.adapter for c in candidates if c.adapter])
    cache = open_cache(recipe)
    targets: dict = {}
    pool = seed_pool(run)
    predictions = score_candidates(recipe, candidates, sets, pool, cache, targets)
    report = build_report(predictions, recipe.evaluate, baseline, names, {n: s for n, (s, _) in sets.items()}, seed=recipe.seed,
                          gated=[n for n in names if n != baseline], contaminated=measured["sets"] if measured else None,
                          repaired=repaired_guard_sets(recipe))
    attach(report, measured, None)
    fidelity = measure_fidelity(recipe, candidates, sets, targets, pool, cache)  # when a teacher is compared
    if fidelity:
        report["fidelity"] = fidelity
    report["cache"] = cache_record(cache, predictions)
    report["targets"] = {c.name: {"model": str(c.model_dir), "adapter": str(c.adapter) if c.adapter else None, "role": c.role}
                         for c in candidates}
    paths = write_outputs(Path(out), report, predictions, f"compare: {', '.join(names)} (baseline {baseline})")
    log_report(recipe, run, report, "compare")
    print(f"[compare] {len(candidates)} models, {len(sets)} sets, {len(report['degraded'])} degraded, "
          f"{time.time() - started:.0f}s: {paths['report.html']}", flush=True)
    return report
