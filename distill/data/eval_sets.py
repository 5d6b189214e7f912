"""Evaluation items: the recipe's held-out split, or separate real data (any source distill reads: files, a `datasets`
folder, a Hub dataset). Never synthetic."""

from __future__ import annotations

import json
from pathlib import Path

from distill import rows as C
from distill.data.records import columns, to_item
from distill.data.sources import place, read_source
from distill.errors import DataError, UserError
from distill.recipe import EvalSet, Recipe
from distill.run_dir import DEV_SPLIT, RunDir

EVAL_SPLITS = ("test", "validation")  # the split an evaluation set reads when its source has several and none is named


def source_items(s: EvalSet, rows: list[dict]) -> list[dict]:
    """The items of a set's own source (path or hub), from its rows as read_source gives them: each needs a
    reference."""
    items = []
    for r in rows:
        item = to_item(r, s.input_field, s.target_field, s.slice_field, line_in_id=True)
        if not item[C.REFERENCES]:
            raise DataError(f"{r['_where']}: row has no {s.target_field!r} field (has: {', '.join(columns(r))})")
        items.append(item)
    return items


def load_items(s: EvalSet, heldout: Path | None) -> list[dict]:
    """Items with id, input, reference (the first), references (all acceptable) and slice. `heldout`: the run's
    held-out split file (generate/heldout.jsonl); the loop's dev split lies beside it."""
    if s.data in ("heldout", "dev"):
        split = "held-out" if s.data == "heldout" else "dev (loop.dev)"
        if heldout is not None and s.data == "dev":
            heldout = heldout.with_name(DEV_SPLIT)
        if heldout is None or not heldout.is_file():
            raise UserError(f"evaluate set {s.name!r} uses the {split} split, but {heldout} does not exist: run generate first")
        with open(heldout) as f:
            items = [json.loads(line) for line in f if line.strip()]
        for it in items:
            it[C.REFERENCES] = [r for r in it.get(C.REFERENCES) or [it.get(C.REFERENCE)] if r not in (None, "")]
        unlabelled = sum(not it[C.REFERENCES] for it in items)
        if unlabelled:  # scored against nothing, every model would get 0
            raise UserError(f"evaluate set {s.name!r} scores the held-out split, but {unlabelled} of its {len(items)} items in "
                            f"{heldout} have no reference answer: set data.target_field to the column holding them "
                            f"and run generate again")
    else:
        items = source_items(s, read_source(s, prefer_splits=EVAL_SPLITS))
    return items[: s.limit] if s.limit else items


def require_heldout_references(recipe: Recipe, heldout: list[dict] | None = None) -> None:
    """An eval set on the held-out split scores against the items' references: refuse a split without them before
    any work, instead of scoring every model 0. `heldout`: the split's rows (with source_line), when already made."""
    sets = [(i, s) for i, s in enumerate(recipe.evaluate.sets) if s.data == "heldout"]
    if not sets:
        return
    i, s = sets[0]
    if not recipe.data.target_field:
        raise UserError(f"evaluate.sets.{i} ({s.name!r}) scores the held-out split, but data.target_field is null: the "
                        f"held-out items would have no reference answers; name the column holding them in data.target_field")
    missing = [r for r in heldout or [] if not r.get(C.REFERENCES)]
    if missing:
        raise UserError(f"{place(recipe.data, missing[0].get('source_line'))}: held-out row has no "
                        f"{recipe.data.target_field!r} value ({len(missing)} of the {len(heldout)} held-out rows have "
                        f"none), and evaluate.sets.{i} ({s.name!r}) scores against it: fill them in or drop those rows")


def seed_pool(run: RunDir) -> list[dict]:
    if not run.seeds.is_file():
        return []
    with open(run.seeds) as f:
        return [json.loads(line) for line in f if line.strip()]
