"""Deterministic split of real data into held-out evaluation items and seeds."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict


def row_id(*parts: object) -> str:
    """A stable id from the row's content: the same input always gets the same id."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def split_heldout(
    rows: list[dict], size: int, seed: int, slice_field: str | None = None, min_per_slice: int = 0
) -> tuple[list[dict], list[dict]]:
    """Return (heldout, rest). Rare slices get at least `min_per_slice` held-out rows when they have them."""
    if size > len(rows):
        raise ValueError(f"held-out size {size} is larger than the data ({len(rows)} rows)")
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    chosen: list[int] = []
    if slice_field and min_per_slice:
        by_slice: dict[str, list[int]] = defaultdict(list)
        for i in order:
            by_slice[str(rows[i].get(slice_field))].append(i)
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
