"""Deterministic split of real data into held-out evaluation items and seeds."""

from __future__ import annotations

import json
import random
from collections import defaultdict

from distill import rows as C
from distill.data.records import columns, item_id, to_item
from distill.data.sources import describe, read_source
from distill.errors import DataError, UserError
from distill.progress import console
from distill.recipe import Recipe


def _slices(rows: list[dict], order: list[int], slice_field: str) -> dict[str, list[int]]:
    by_slice: dict[str, list[int]] = defaultdict(list)
    for i in order:
        by_slice[str(rows[i].get(slice_field))].append(i)
    return by_slice


def split_heldout(
    rows: list[dict], size: int, seed: int, slice_field: str | None = None, min_per_slice: int = 0
) -> tuple[list[dict], list[dict]]:
    """Return (heldout, rest), with exactly `size` held-out rows. Rare slices get at least `min_per_slice` held-out
    rows when they have them; if that alone needs more than `size` rows, the split is refused rather than enlarged."""
    if size > len(rows):
        raise UserError(f"data.heldout.size = {size} is larger than the data ({len(rows)} rows)")
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    chosen: list[int] = []
    if slice_field and min_per_slice:
        by_slice = _slices(rows, order, slice_field)
        needed = sum(min(min_per_slice, len(m)) for m in by_slice.values())
        if needed > size:
            raise UserError(
                f"data.heldout.min_per_slice = {min_per_slice} over the {len(by_slice)} slices of data.slice_field "
                f"{slice_field!r} needs {needed} held-out rows, more than data.heldout.size = {size}: raise the size "
                f"or lower min_per_slice"
            )
        for members in by_slice.values():
            chosen.extend(members[:min_per_slice])
    taken = set(chosen)
    for i in order:
        if len(chosen) >= size:
            break
        if i not in taken:
            chosen.append(i)
            taken.add(i)
    heldout = [rows[i] for i in sorted(chosen)]
    rest = [rows[i] for i in range(len(rows)) if i not in taken]
    return heldout, rest


def thin_slices(rows: list[dict], slice_field: str | None, min_per_slice: int) -> dict[str, int]:
    """Slices with no more rows than `min_per_slice` (slice -> rows): held out whole, none of them is left as a seed."""
    if not slice_field or not min_per_slice:
        return {}
    sizes = {name: len(m) for name, m in _slices(rows, list(range(len(rows))), slice_field).items()}
    return {name: n for name, n in sorted(sizes.items()) if n <= min_per_slice}


def sample_in_order(rows: list, n: int | None, seed: int) -> list:
    """At most n of `rows`, a reproducible sample kept in file order (the first n of a sorted file would all start
    with 'a')."""
    if n is None or n >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in keep]


def require_example_targets(recipe: Recipe, raw: list[dict], items: list[dict]) -> None:
    """A few-shot example shows its target: with generate.few_shot.k, every row (a seed may become an example) needs
    one; the first without is named."""
    d = recipe.data
    if recipe.generate.few_shot.k and d.target_field:
        missing = next((r for r, it in zip(raw, items) if not it[C.REFERENCES]), None)
        if missing is not None:
            raise DataError(f"{missing['_where']}: row has no {d.target_field!r} field (has: "
                            f"{', '.join(columns(missing))}), and generate.few_shot.k shows seeds with their answers")


def split_data(recipe: Recipe) -> tuple[list[dict], list[dict]]:
    """(held-out items, seeds) of the real data, as the recipe splits it."""
    from distill.data.eval_sets import require_heldout_references

    d = recipe.data
    require_heldout_references(recipe)  # before reading anything: target_field null with a held-out eval set
    raw = read_source(d)
    # every row becomes an item before any split: a row without its input is named, whichever side it falls on
    items = [to_item(r, d.input_field, d.target_field, d.slice_field, d.target_names) for r in raw]
    require_example_targets(recipe, raw, items)
    where = describe(d)
    if d.heldout.size >= len(raw):
        raise UserError(f"data.heldout.size = {d.heldout.size} leaves no seeds: {where} has {len(raw)} rows")
    heldout, rest = split_heldout(raw, d.heldout.size, d.heldout.seed, d.slice_field, d.heldout.min_per_slice)
    thin = thin_slices(raw, d.slice_field, d.heldout.min_per_slice)
    if thin:
        console(f"[generate] warning: {len(thin)} slice(s) of {d.slice_field!r} have no more rows than "
                f"data.heldout.min_per_slice = {d.heldout.min_per_slice}, so all are held out and none is a seed: "
                + ", ".join(f"{name} ({n})" for name, n in list(thin.items())[:5]) + (", ..." if len(thin) > 5 else ""))

    # a held-out id names the source line too: an input repeated in the data stays two items in the report
    item_of = {id(r): it for r, it in zip(raw, items)}  # each row made an item once, above
    heldout_rows = [{**item_of[id(r)], C.ID: item_id(item_of[id(r)], with_line=True)} for r in heldout]
    require_heldout_references(recipe, heldout_rows)
    held_inputs = {r[C.INPUT] for r in heldout_rows}
    # The same input may appear twice in real data: a seed must never equal a held-out item, and a repeated seed
    # gets an id of its own (its line's), or the captures and calibration keyed by row id would keep only one.
    seed_rows, seen = [], set()
    for r in rest:
        row = item_of[id(r)]
        if row[C.INPUT] in held_inputs:
            continue
        if row[C.ID] in seen:
            row = {**row, C.ID: item_id(row, with_line=True)}
        seen.add(row[C.ID])
        seed_rows.append(row)
    return heldout_rows, sample_in_order(seed_rows, d.max_seeds, d.heldout.seed)


def split_dev(recipe: Recipe, seeds: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the loop's dev items, the seed pool left): loop.dev.size seeds set aside, rare slices first as for the
    held-out split. Without a loop: no dev items, every seed in the pool."""
    if recipe.loop is None:
        return [], seeds
    dev = recipe.loop.dev
    if dev.size >= len(seeds):
        raise UserError(f"loop.dev.size = {dev.size} leaves no seed pool: the data has {len(seeds)} seeds after the "
                        f"held-out split{' and data.max_seeds' if recipe.data.max_seeds else ''}")
    slice_field = C.SLICE if recipe.data.slice_field else None
    return split_heldout(seeds, dev.size, dev.seed, slice_field, dev.min_per_slice)


def selected(recipe: Recipe, pool: list[dict]) -> list[dict]:
    """The items the teacher answers: every seed, or those data.answer_only lists (each with its `why`): the pool's
    seeds it names by id, in pool order, then the inputs it carries (a loop round's inputs the teacher wrote), in
    file order. An id with no input that is no seed of the pool is an error: the selection was made for other data."""
    path = recipe.data.answer_only
    if path is None:
        return pool
    why, written = {}, []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    entry = json.loads(line)
                    if C.INPUT in entry:
                        written.append(written_item(entry))
                    else:
                        why[str(entry[C.ID])] = entry.get("why")
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    raise DataError(f"{path}:{n}: expected a JSON object with an \"id\" (and an \"input\" the "
                                    "teacher wrote, or none)") from None
    by_id = {s[C.ID]: s for s in pool}
    unknown = [i for i in why if i not in by_id]
    if unknown:
        raise DataError(f"{path}: {len(unknown)} id(s) are no seed of this data's pool (first: {unknown[0]})")
    return [{**s, C.SELECTION: why[s[C.ID]]} for s in pool if s[C.ID] in why] + written


def written_item(entry: dict) -> dict:
    """A seed item for an input the teacher wrote: no reference, no history, no source row."""
    if not isinstance(entry[C.INPUT], str):
        raise TypeError("input")
    return {C.ID: str(entry[C.ID]), C.INPUT: entry[C.INPUT], C.REFERENCE: None, C.REFERENCES: [],
            C.SLICE: entry.get(C.SLICE), C.HISTORY: None, C.COLUMNS: None, "source_line": None,
            C.SELECTION: entry.get("why")}
