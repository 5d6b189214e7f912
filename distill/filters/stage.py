"""filter: run the recipe's filters in order over generated rows, flag each row, report the funnel."""

from __future__ import annotations

import time
from collections import Counter

import pyarrow.parquet as pq

from distill import rows as C
from distill.errors import UserError
from distill.filters.base import Filter
from distill.filters.dedup import ExactDedup
from distill.filters.heuristics import Length, Regex
from distill.filters.verify import Verifier
from distill.generate.stage import write_parquet
from distill.recipe import Recipe
from distill.run_dir import RunDir, write_text

BUILDERS = {"length": Length, "exact_dedup": ExactDedup, "regex": Regex, "verifier": Verifier}
BATCH = 1024


def build_filters(recipe: Recipe) -> list[Filter]:
    """The recipe's filters in order; a type used twice is labelled by position (regex#1, regex#3)."""
    types = [step.type for step in recipe.filter.steps]
    filters = []
    for i, step in enumerate(recipe.filter.steps):
        f = BUILDERS[step.type](step)
        f.label = step.type if types.count(step.type) == 1 else f"{step.type}#{i}"
        filters.append(f)
    return filters


def apply_filters(rows: list[dict], filters: list[Filter]) -> list[dict]:
    """Add kept / rejected_by / reason to every row; a row is judged by each filter until one rejects it."""
    for row in rows:
        row[C.KEPT], row[C.REJECTED_BY], row[C.REASON] = True, None, None
    for f in filters:
        for column in f.reads:
            if rows and column not in rows[0]:
                raise UserError(f"filter {f.name} reads column {column!r}, which the rows do not have")
        alive = [r for r in rows if r[C.KEPT]]
        for start in range(0, len(alive), BATCH):
            part = alive[start:start + BATCH]
            batch = {k: [r[k] for r in part] for k in part[0]}
            for row, reason in zip(part, f.flags(batch)):
                if reason is not None:
                    row[C.KEPT], row[C.REJECTED_BY], row[C.REASON] = False, f.label, reason
    return rows


def funnel(rows: list[dict], filters: list[Filter]) -> list[dict]:
    steps, remaining = [], len(rows)
    for f in filters:
        rejected = [r for r in rows if r[C.REJECTED_BY] == f.label]
        reasons = Counter(r[C.REASON] for r in rejected).most_common(3)
        steps.append({"filter": f.label, "in": remaining, "rejected": len(rejected), "out": remaining - len(rejected),
                      "top_reasons": [{"reason": r, "count": n} for r, n in reasons]})
        remaining -= len(rejected)
    return steps


def run_filter(recipe: Recipe, run: RunDir) -> dict:
    started = time.time()
    rows = pq.read_table(run.generated).to_pylist()
    filters = build_filters(recipe)
    apply_filters(rows, filters)
    kept = sum(r[C.KEPT] for r in rows)
    steps = funnel(rows, filters)
    write_parquet(run.filtered, rows)
    lines = ["| filter | in | rejected | out | top reason |", "|---|---:|---:|---:|---|"]
    for s in steps:
        top = s["top_reasons"][0]["reason"] if s["top_reasons"] else ""
        lines.append(f"| {s['filter']} | {s['in']} | {s['rejected']} | {s['out']} | {top} |")
    write_text(run.stage("filter") / "funnel.md", "\n".join(lines) + "\n")
    if kept < recipe.filter.min_kept:
        raise UserError(f"filter kept {kept} of {len(rows)} rows, fewer than filter.min_kept = {recipe.filter.min_kept}; see {run.stage('filter') / 'funnel.md'}")
    return {"rows": len(rows), "kept": kept, "rejected": len(rows) - kept, "funnel": steps, "seconds": round(time.time() - started, 1)}
