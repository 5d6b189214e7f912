"""Deterministic split of real data into held-out evaluation items and seeds."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict

from distill.errors import UserError


def row_id(*parts: object) -> str:
    """A stable id from the row's content: the same input always gets the same id."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


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
