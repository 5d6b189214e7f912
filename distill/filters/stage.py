"""filter: run the recipe's filters in order over generated rows, flag each row, report the funnel.

Rows live in a `datasets.Dataset`; each filter is one batched `map` that only looks at the
rows still kept. A row is judged by each filter until one rejects it. Nothing is deleted:
`kept`, `rejected_by` and `reason` say what happened, `scores` holds what filters measured,
`flagged` marks kept rows worth a human look.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from distill import rows as C
from distill.errors import UserError
from distill.filters.base import Filter, filter_classes, filter_labels
from distill.filters.report import funnel, write_funnel
from distill.recipe import Recipe
from distill.run_dir import RunDir, atomic_path

BATCH = 1024
SCORES = "scores"
FLAGGED = "flagged"


@dataclass
class FilterContext:
    """What a filter may need besides its rows: the recipe (models, eval sets) and the run directory."""

    recipe: Recipe | None
    run: RunDir | None


def build_filters(recipe: Recipe) -> list[Filter]:
    """The recipe's filters in order."""
    filters, classes = [], filter_classes()
    for step, label in zip(recipe.filter.steps, filter_labels(recipe)):
        f = classes[step.type](step)
        f.label = label
        filters.append(f)
    return filters


def _with_filter_columns(table: pa.Table, filters: list[Filter]) -> pa.Table:
    """Add the columns every filter writes, typed up front so that each map keeps one schema."""
    n = table.num_rows
    drop = [c for c in (C.KEPT, C.REJECTED_BY, C.REASON, FLAGGED, SCORES) if c in table.column_names]
    table = table.drop_columns(drop)
    table = table.append_column(C.KEPT, pa.array([True] * n, pa.bool_()))
    for name in (C.REJECTED_BY, C.REASON, FLAGGED):
        table = table.append_column(name, pa.nulls(n, pa.string()))
    scored = [f.label for f in filters if f.has_score]
    if scored:
        struct = pa.struct([(label, pa.float64()) for label in scored])
        table = table.append_column(SCORES, pa.array([{label: None for label in scored}] * n, struct))
    for f in filters:
        for name in f.writes:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(n, pa.string()))
    return table


def _step(f: Filter, names: list[str], outputs: list[str]):
    """The batched map function of one filter: flag the rows still kept, leave the others alone."""

    def step(*columns):
        batch = dict(zip(names, columns))
        alive = [i for i, k in enumerate(batch[C.KEPT]) if k]
        result = {c: list(batch[c]) for c in outputs}
        if not alive:
            return result
        part = {c: [batch[c][i] for i in alive] for c in names}
        f.last_scores = f.last_columns = f.last_flagged = None
        reasons = f.flags(part)
        if len(reasons) != len(alive):
            raise UserError(f"filter {f.label} returned {len(reasons)} verdicts for {len(alive)} rows")
        for j, (i, reason) in enumerate(zip(alive, reasons)):
            if reason is not None:
                result[C.KEPT][i], result[C.REJECTED_BY][i], result[C.REASON][i] = False, f.label, reason
            if f.last_flagged and f.last_flagged[j] is not None:
                result[FLAGGED][i] = f.last_flagged[j]
            if f.last_scores is not None:
                result[SCORES][i] = {**result[SCORES][i], f.label: f.last_scores[j]}
            for name, values in (f.last_columns or {}).items():
                result[name][i] = values[j]
        return result

    return step


def filter_table(table: pa.Table, filters: list[Filter], context: FilterContext | None = None,
                 batch_size: int = BATCH, num_proc: int = 1) -> pa.Table:
    """The table with kept / rejected_by / reason / flagged / scores (and filters' own columns)."""
    import datasets

    from distill.run_dir import hash_json

    context = context or FilterContext(None, None)
    table = _with_filter_columns(table, filters)
    ds = datasets.Dataset(table)
    datasets.disable_caching()
    for position, f in enumerate(filters):
        missing = [c for c in f.reads if c not in ds.column_names]
        if missing:
            raise UserError(f"filter {f.label} reads column {missing[0]!r}, which the rows do not have "
                            f"(they have: {', '.join(ds.column_names)})")
        f.prepare(context)
        outputs = [C.KEPT, C.REJECTED_BY, C.REASON, FLAGGED] + ([SCORES] if SCORES in ds.column_names else []) + list(f.writes)
        # a filter that names no columns (a user verifier) or asks for them (the judge's rubric) sees whole rows
        whole = not f.reads or getattr(f, "whole_rows", False)
        names = ds.column_names if whole else list(dict.fromkeys(([C.ID] if C.ID in ds.column_names else []) + list(f.reads) + outputs))
        try:
            ds = ds.map(
                _step(f, names, outputs), input_columns=names, batched=True,
                batch_size=max(1, len(ds)) if f.needs_all_rows else batch_size,
                num_proc=num_proc if f.parallel_safe and num_proc > 1 else None, features=ds.features, keep_in_memory=True,
                load_from_cache_file=False, new_fingerprint=hash_json([position, f.label, time.time()])[:40], desc=f.label,
            )
        finally:
            f.close()
    return ds.data.table


def apply_filters(rows: list[dict], filters: list[Filter], context: FilterContext | None = None) -> list[dict]:
    """List-of-rows form of `filter_table`, for small inputs and tests."""
    if not rows:
        return rows
    return filter_table(pa.Table.from_pylist(rows), filters, context).to_pylist()


def run_filter(recipe: Recipe, run: RunDir) -> dict:
    from distill.filters.calibration import calibrate_run

    started = time.time()
    table = pq.read_table(run.generated)
    filters = build_filters(recipe)
    from distill.filters.generation_failure import GenerationFailure, Truncated

    # always first: failed generations, then answers cut at max_tokens (label mode checks and retries its own)
    if (C.FINISH_REASON in table.column_names and not recipe.filter.keep_truncated
            and not recipe.generate.retries_cut_answers):
        filters.insert(0, Truncated(recipe.generate.sampling.max_tokens))
    if C.FAILURE in table.column_names:
        filters.insert(0, GenerationFailure())
    out = filter_table(table, filters, FilterContext(recipe, run), num_proc=recipe.filter.num_proc)
    with atomic_path(run.filtered) as tmp:
        pq.write_table(out.replace_schema_metadata(None), tmp)
    kept_column = out.column(C.KEPT).to_pylist()
    kept = sum(kept_column)
    steps = funnel(out, [f.label for f in filters])
    write_funnel(run.stage("filter"), steps, out.num_rows, kept)
    summary: dict[str, Any] = {"rows": out.num_rows, "kept": kept, "rejected": out.num_rows - kept, "funnel": steps,
                               "flagged": out.num_rows - out.column(FLAGGED).null_count}
    details = {f.label: f.summary() for f in filters if f.summary()}
    if details:
        summary["filters"] = details
    if recipe.filter.calibration.gold:
        summary["calibration"] = calibrate_run(recipe, run, recipe.filter.calibration.gold, run.stage("filter"))
    if kept < recipe.filter.min_kept:
        raise UserError(f"filter kept {kept} of {out.num_rows} rows, fewer than filter.min_kept = {recipe.filter.min_kept}; see {run.stage('filter') / 'funnel.md'}")
    summary["seconds"] = round(time.time() - started, 1)
    return summary
