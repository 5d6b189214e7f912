"""Evaluation items: the recipe's held-out split, or separate real data (JSONL, CSV, Parquet,
BIG-bench task.json, a `datasets` folder). Never synthetic."""

from __future__ import annotations

import json
from pathlib import Path

from distill import rows as C
from distill.data.loaders import read_rows
from distill.errors import DataError, UserError
from distill.recipe import EvalSet, Recipe
from distill.rows import row_id
from distill.run_dir import RunDir


def _open_datasets_folder(s: EvalSet):
    """The split of a `datasets` folder the set reads (memory-mapped: nothing is read yet)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        data = load_from_disk(s.path)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{s.path}: not a folder saved by datasets' save_to_disk ({e})") from None
    if isinstance(data, DatasetDict):
        split = s.split or next((k for k in ("test", "validation") if k in data), None)
        if split is None and len(data) == 1:
            split = next(iter(data))
        if split not in data:
            raise DataError(f"{s.path}: split {split!r} not found; set evaluate.sets.{s.name}.split to one of {', '.join(data)}")
        data = data[split]
    assert isinstance(data, Dataset)
    return data


def _read_datasets_folder(s: EvalSet, limit: int | None = None) -> list[dict]:
    data = _open_datasets_folder(s)
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    rows = data.to_list()
    for i, row in enumerate(rows):
        row["_line"] = i + 1
        for field in (s.input_field, s.target_field):
            if row.get(field) in (None, ""):
                raise DataError(f"{s.path}: row number {i + 1} has no '{field}' field (has: {', '.join(k for k in row if k != '_line')})")
    return rows


def _references(target, where: str) -> list[str]:
    refs = [str(t) for t in target] if isinstance(target, (list, tuple)) else [str(target)]
    if not refs:
        raise DataError(f"{where}: empty list of references")
    return refs


def _path_items(s: EvalSet, limit: int | None = None) -> list[dict]:
    """Items of a set read from `path`: all, or the first `limit` rows."""
    path = Path(s.path)
    if s.format == "datasets" or (s.format == "auto" and path.is_dir()):
        rows = _read_datasets_folder(s, limit)
    else:
        rows = read_rows(path, s.format, required=(s.input_field, s.target_field), limit=limit)
    items = []
    for r in rows:
        refs = _references(r[s.target_field], f"{path}:{r['_line']}")
        slice_value = r.get(s.slice_field) if s.slice_field else None
        items.append({C.ID: row_id(r[s.input_field], r["_line"]), C.INPUT: str(r[s.input_field]), C.REFERENCE: refs[0],
                      C.REFERENCES: refs, C.SLICE: None if slice_value is None else str(slice_value)})
    return items


def peek_items(s: EvalSet, limit: int) -> list[dict]:
    """The first `limit` items of a `path` set, read and checked as load_items reads them: a file in a format
    distill does not read, or a row without the set's fields, is refused before any work, not after generation."""
    return _path_items(s, limit)


def load_items(s: EvalSet, heldout: Path | None) -> list[dict]:
    """Items with id, input, reference (the first), references (all acceptable) and slice."""
    if s.data == "heldout":
        if heldout is None or not heldout.is_file():
            raise UserError(f"evaluate set {s.name!r} uses the held-out split, but {heldout} does not exist: run generate first")
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
        items = _path_items(s)
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
        raise UserError(f"{recipe.data.path}:{missing[0].get('source_line')}: held-out row has no "
                        f"{recipe.data.target_field!r} value ({len(missing)} of the {len(heldout)} held-out rows have "
                        f"none), and evaluate.sets.{i} ({s.name!r}) scores against it: fill them in or drop those rows")


def seed_pool(run: RunDir) -> list[dict]:
    if not run.seeds.is_file():
        return []
    with open(run.seeds) as f:
        return [json.loads(line) for line in f if line.strip()]
