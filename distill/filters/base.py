"""A filter reads some columns of a batch and returns, per row, None (keep) or the reason to reject."""

from __future__ import annotations

from typing import ClassVar


class Filter:
    name: ClassVar[str]
    label: str = ""  # how reports and the rejected_by column name this step
    reads: tuple[str, ...] = ()

    def flags(self, batch: dict[str, list]) -> list[str | None]:
        """One entry per row of the columnar `batch`: None keeps the row, a string says why it goes."""
        raise NotImplementedError
