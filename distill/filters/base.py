"""A filter reads some columns of a batch and returns, per row, None (keep) or the reason to reject.

Filters that measure something also leave, for the batch they were last given, a score per
row (`last_scores`, stored under the filter's label in the `scores` column) and any extra
columns they fill (`last_columns`, e.g. the near-duplicate cluster). A filter may keep state
across batches (dedup remembers what it has seen); `close()` frees what it holds.
"""

from __future__ import annotations

from typing import ClassVar

from distill.recipe import Recipe


class Filter:
    name: ClassVar[str]
    label: str = ""  # how reports and the rejected_by column name this step
    reads: tuple[str, ...] = ()
    has_score: ClassVar[bool] = False
    writes: ClassVar[tuple[str, ...]] = ()  # extra string columns this filter fills
    parallel_safe: ClassVar[bool] = False  # judges each row on its own: batches may go to several processes
    needs_all_rows: ClassVar[bool] = False  # must see every row at once (e.g. all candidates of a prompt)

    last_scores: list[float | None] | None = None
    last_columns: dict[str, list] | None = None
    last_flagged: list[str | None] | None = None  # kept but worth a human look (e.g. an unreadable judge answer)

    def flags(self, batch: dict[str, list]) -> list[str | None]:
        """One entry per row of the columnar `batch`: None keeps the row, a string says why it goes."""
        raise NotImplementedError

    def prepare(self, context) -> None:
        """Called once before the first batch with the stage context (recipe, run); most filters need nothing."""

    def close(self) -> None:
        """Release engines or indexes once every batch has been seen."""

    def summary(self) -> dict:
        """Figures for the stage summary beyond rows in and out (e.g. leaked eval items)."""
        return {}


def filter_labels(recipe: Recipe) -> list[str]:
    """How each step is named in reports; a type used twice is labelled by position (regex#1, regex#3)."""
    types = [step.type for step in recipe.filter.steps]
    return [t if types.count(t) == 1 else f"{t}#{i}" for i, t in enumerate(types)]


# Modules of this package that hold no filter step.
_NOT_FILTERS = {"base", "stage", "report", "calibration", "review"}


def filter_classes() -> dict[str, type[Filter]]:
    """Each filter class by the `type` a recipe step names it with (its `name`): every module of this package is a
    filter's, so a new filter is one module here plus its settings in the recipe schema."""
    import importlib
    import pkgutil

    import distill.filters as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _NOT_FILTERS:
            importlib.import_module(f"{package.__name__}.{module.name}")
    found, todo = {}, list(Filter.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if "name" in cls.__dict__:
            found[cls.name] = cls
    return found
