"""Exact duplicate removal on a normalised key: the first row of each group is kept."""

from __future__ import annotations

import hashlib
import re

from distill.filters.base import Filter
from distill.recipe import ExactDedupFilter

_SPACE = re.compile(r"\s+")


class ExactDedup(Filter):
    name = "exact_dedup"

    def __init__(self, cfg: ExactDedupFilter):
        self.cfg, self.reads = cfg, tuple(cfg.fields)
        self.first: dict[str, str] = {}  # key hash -> id of the row that kept it

    def _key(self, values) -> str:
        parts = []
        for v in values:
            text = "" if v is None else str(v)
            if self.cfg.normalize:
                text = _SPACE.sub(" ", text.strip().lower())
            parts.append(text)
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def flags(self, batch):
        out = []
        ids = batch.get("id") or [None] * len(batch[self.cfg.fields[0]])
        for i, row_id in enumerate(ids):
            key = self._key(batch[f][i] for f in self.cfg.fields)
            if key in self.first:
                out.append(f"duplicate of {self.first[key]} on {', '.join(self.cfg.fields)}")
            else:
                self.first[key] = row_id
                out.append(None)
        return out
