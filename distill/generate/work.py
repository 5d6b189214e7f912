"""What the teacher is asked, per mode: one work item per prompt, in a fixed order that chunks and shards cut.

complete and label: one item per real seed row. synthesize: one item per (cell, index) of
the attribute grid, `per_cell` per cell, so every cell gets its quota however rare; its input
is not known until the teacher writes it.
"""

from __future__ import annotations

import itertools

from distill.errors import RecipeError
from distill.recipe import GridSettings

RESERVED_VARIABLES = ("input", "examples", "row", "cell", "index")


def grid_cells(grid: GridSettings) -> list[dict[str, str]]:
    """Every combination of attribute values, in the order the recipe declares them."""
    names = list(grid.attributes)
    clash = [n for n in names if n in RESERVED_VARIABLES]
    if clash:
        raise RecipeError(f"generate.grid.attributes: {clash[0]!r} is a template variable already; rename the attribute")
    return [dict(zip(names, values)) for values in itertools.product(*(grid.attributes[n] for n in names))]



