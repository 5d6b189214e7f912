"""Coverage audit: kept rows per attribute cell against target shares, the seed pool and the real data.

Filters often drop rare cells hardest, so a grid that asked for every cell equally can
come out of filtering with a cell nearly empty. The audit reports, per cell, how many rows
were generated and kept, the drop rate, the kept share beside its target and the real
data's share, and flags cells whose kept share falls below target x (1 - tolerance).
"""

from __future__ import annotations

from collections import Counter

from distill import rows as C
from distill.recipe import CoverageSettings

UNDER = "under-represented"
MISSING = "missing"
OK = "ok"


def cell_name(value) -> str | None:
    """One name per cell: a grid cell {a: x, b: y} is 'a=x, b=y' (attribute order kept); a slice is itself."""
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        value = dict(value)  # a parquet map column reads back as (key, value) pairs
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if v is not None)
    return str(value)


def cell_column(rows: list[dict], column: str) -> str:
    """'auto' picks the grid's cell column when rows carry one, else the real data's slice."""
    if column != "auto":
        return column
    return C.CELL if any(r.get(C.CELL) is not None for r in rows) else C.SLICE


def _share(count: int, total: int) -> float | None:
    return count / total if total else None


def audit_coverage(rows: list[dict], settings: CoverageSettings, real_counts: dict[str, int] | None = None,
                   seed_counts: dict[str, int] | None = None) -> dict:
    """Per cell: generated, kept, drop rate, kept share, target share, seed share, real share, status.

    `rows` are filtered rows (with `kept`); when the cells are real slices, `seed_counts` is the count per cell in the
    seed pool the teacher was given and `real_counts` in the whole real data. Without recipe targets the seed pool
    sets them: the held-out split takes its rows first (data.heldout.min_per_slice over-represents rare slices there),
    so the seeds under-represent those slices, and a gap the split made is not the teacher's or the filters'.
    """
    column = cell_column(rows, settings.column)
    generated = Counter(cell_name(r.get(column)) for r in rows)
    kept = Counter(cell_name(r.get(column)) for r in rows if r[C.KEPT])
    unassigned = generated.pop(None, 0)
    kept.pop(None, None)
    total_generated, total_kept = sum(generated.values()), sum(kept.values())
    total_real = sum(real_counts.values()) if real_counts else 0
    total_seeds = sum(seed_counts.values()) if seed_counts else 0
    if settings.targets:
        targets, source = dict(settings.targets), "recipe"
    elif seed_counts:
        targets, source = {c: n / total_seeds for c, n in seed_counts.items()}, "seed pool the teacher was given"
    elif real_counts:
        targets, source = {c: n / total_real for c, n in real_counts.items()}, "real data"
    else:
        targets, source = {c: n / total_generated for c, n in generated.items()} if total_generated else {}, "generated rows"

    names = list(dict.fromkeys([*generated, *targets, *(seed_counts or {}), *(real_counts or {})]))
    cells = []
    for name in names:
        g, k, target = generated.get(name, 0), kept.get(name, 0), targets.get(name)
        kept_share = _share(k, total_kept)
        if target and k == 0:
            status = MISSING
        elif target and (kept_share or 0.0) < target * (1 - settings.tolerance):
            status = UNDER
        else:
            status = OK
        cells.append({"cell": name, "generated": g, "kept": k, "drop_rate": None if not g else 1 - k / g,
                      "kept_share": kept_share, "target_share": target,
                      "seed_share": _share(seed_counts.get(name, 0), total_seeds) if seed_counts else None,
                      "real_share": _share(real_counts.get(name, 0), total_real) if real_counts else None,
                      "status": status})
    overall_drop = None if not total_generated else 1 - total_kept / total_generated
    return {"column": column, "target_source": source, "tolerance": settings.tolerance, "generated": total_generated,
            "kept": total_kept, "unassigned_rows": unassigned, "overall_drop_rate": overall_drop, "cells": cells,
            "flagged": [c["cell"] for c in cells if c["status"] != OK]}


def link_eval_slices(audit: dict, eval_report: dict | None) -> dict:
    """Put each cell's per-slice evaluation (student, base, difference with its interval) beside it."""
    if not eval_report:
        return audit
    for set_name, entry in eval_report.get("sets", {}).items():
        models = entry.get("models", {})
        slice_names = {s for m in models.values() for s in m.get("slices", {})}
        if not any(c["cell"] in slice_names for c in audit["cells"]):
            continue
        for cell in audit["cells"]:
            if cell["cell"] not in slice_names or "eval" in cell:
                continue
            scores = {m: v["slices"][cell["cell"]] for m, v in models.items() if cell["cell"] in v.get("slices", {})}
            diff = entry.get("vs_base", {}).get("student", {}).get("slices", {}).get(cell["cell"])
            cell["eval"] = {"set": set_name, "n": max(s["n"] for s in scores.values()),
                            "scores": {m: s["score"] for m, s in scores.items()}, "student_vs_base": diff}
    return audit


def real_slice_counts(rows: list[dict], slice_field: str) -> dict[str, int]:
    """How often each slice occurs in real rows (the data file's, or `slice` of the seed pool's)."""
    return dict(Counter(str(r.get(slice_field)) for r in rows if r.get(slice_field) is not None))
