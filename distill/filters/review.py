"""The review queue: a stratified sample of filtered rows for people to check, and their verdicts back.

`export` draws rows evenly across strata (filter outcome x attribute cell), so rare outcomes
and rare cells are seen, and writes review/queue.csv with an empty `verdict` column.
`import` reads the filled-in file (keep / reject per row), merges it into
review/verdicts.jsonl and measures each filter against it (calibration.py).
Review files live outside filter/, so editing them never invalidates the filter stage.
"""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from distill import rows as C
from distill.errors import DataError, UserError
from distill.filters.calibration import calibrate, read_verdicts, write_calibration
from distill.run_dir import RunDir, atomic_path, write_text

QUEUE_COLUMNS = ("id", "outcome", "cell", "reason", "scores", "input", "completion", "reference", "verdict", "note")


def review_dir(run: RunDir) -> Path:
    return run.root / "review"


def open_run(target: str | Path, run_dir: str | Path | None = None):
    """(recipe or None, run) from a run directory or a recipe file."""
    from distill.recipe import load_recipe

    target = Path(target)
    if run_dir is not None:
        run = RunDir(Path(run_dir))
        recipe = load_recipe(target) if target.is_file() else None
    elif target.is_dir():
        run = RunDir(target)
        recipe = load_recipe(run.recipe) if run.recipe.is_file() else None
    elif target.is_file():
        recipe = load_recipe(target)
        run = RunDir(recipe.resolved_run_dir())
    else:
        raise UserError(f"{target}: neither a run directory nor a recipe file")
    if not run.filtered.is_file():
        raise UserError(f"{run.root}: no filtered rows ({run.filtered}); run `distill filter` first")
    return recipe, run


def outcome(row: dict) -> str:
    if not row[C.KEPT]:
        return f"rejected:{row[C.REJECTED_BY]}"
    return "flagged" if row.get("flagged") else "kept"


def cell_of(row: dict) -> str:
    cell = row.get(C.CELL)
    if cell:
        return json.dumps(cell, sort_keys=True) if isinstance(cell, dict) else str(cell)
    return "" if row.get(C.SLICE) is None else str(row[C.SLICE])


def stratified_sample(rows: list[dict], size: int, seed: int) -> list[dict]:
    """Round-robin over strata in a fixed order, each stratum shuffled by `seed`: equal shares, rare strata whole."""
    strata: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        strata[(outcome(r), cell_of(r))].append(r)
    rng = random.Random(seed)
    queues = []
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda r: r[C.ID])
        rng.shuffle(members)
        queues.append(members)
    picked: list[dict] = []
    depth = 0
    while len(picked) < size and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(picked) < size:
                picked.append(q[depth])
        depth += 1
    return picked


def export_queue(target: str | Path, size: int = 100, seed: int = 0, out: str | Path | None = None,
                 run_dir: str | Path | None = None) -> dict:
    _, run = open_run(target, run_dir)
    rows = pq.read_table(run.filtered).to_pylist()
    sample = stratified_sample(rows, size, seed)
    path = Path(out) if out else review_dir(run) / "queue.csv"
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=QUEUE_COLUMNS)
            writer.writeheader()
            for r in sample:
                scores = {k: v for k, v in (r.get("scores") or {}).items() if v is not None}
                writer.writerow({"id": r[C.ID], "outcome": outcome(r), "cell": cell_of(r), "reason": r[C.REASON] or r.get("flagged") or "",
                                 "scores": json.dumps(scores) if scores else "", "input": r.get(C.INPUT) or "",
                                 "completion": r.get(C.COMPLETION) or "", "reference": r.get(C.REFERENCE) or "",
                                 "verdict": "", "note": ""})
    strata = sorted({(outcome(r), cell_of(r)) for r in sample})
    print(f"[review] wrote {len(sample)} of {len(rows)} rows from {len(strata)} strata to {path}; "
          f"fill the 'verdict' column with keep or reject, then run `distill review import`", flush=True)
    return {"rows": len(sample), "strata": len(strata), "path": str(path)}


def import_verdicts(target: str | Path, file: str | Path, run_dir: str | Path | None = None) -> dict:
    """Merge a reviewed file into review/verdicts.jsonl and write review/calibration.{json,md}."""
    from distill.filters.base import filter_labels

    recipe, run = open_run(target, run_dir)
    new = read_verdicts(file)
    if not new:
        raise DataError(f"{file}: no verdicts filled in (the 'verdict' column is empty)")
    ids = set(pq.read_table(run.filtered, columns=[C.ID]).column(C.ID).to_pylist())
    unknown = [i for i in new if i not in ids]
    if unknown:
        raise DataError(f"{file}: id {unknown[0]} is not a row of {run.filtered} ({len(unknown)} unknown ids): "
                        "was this file exported from another run?")
    store = review_dir(run) / "verdicts.jsonl"
    verdicts = read_verdicts(store) if store.is_file() else {}
    verdicts.update(new)
    write_text(store, "".join(json.dumps({"id": i, "verdict": "reject" if v else "keep"}) + "\n" for i, v in sorted(verdicts.items())))
    rows = pq.read_table(run.filtered, columns=[C.ID, C.KEPT, C.REJECTED_BY]).to_pylist()
    labels = filter_labels(recipe) if recipe else list(dict.fromkeys(r[C.REJECTED_BY] for r in rows if r[C.REJECTED_BY]))
    min_kappa = recipe.filter.calibration.min_kappa if recipe else 0.4
    result = calibrate(rows, labels, verdicts, min_kappa)
    write_calibration(result, review_dir(run))
    print(f"[review] {len(new)} verdicts read, {len(verdicts)} in {store}", flush=True)
    for name, m in result["agreement"].items():
        kappa = "n/a" if m["kappa"] is None else f"{m['kappa']:.2f}"
        acc = "n/a" if m["accuracy"] is None else f"{m['accuracy']:.2f}"
        print(f"[review] {name}: n={m['n']} accuracy={acc} kappa={kappa}", flush=True)
    for w in result["warnings"]:
        print(f"[review] warning: {w}", flush=True)
    return {"verdicts": len(verdicts), "new": len(new), **result}
