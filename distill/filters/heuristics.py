"""Cheap per-row checks: length bounds and regular expressions."""

from __future__ import annotations

import re

from distill.filters.base import Filter
from distill.recipe import LengthFilter, RegexFilter


class Length(Filter):
    name = "length"

    def __init__(self, cfg: LengthFilter):
        self.cfg, self.reads = cfg, (cfg.field,)

    def flags(self, batch):
        out = []
        for value in batch[self.cfg.field]:
            size = len((value or "").strip())
            if size < self.cfg.min_chars:
                out.append(f"{self.cfg.field} has {size} chars, fewer than {self.cfg.min_chars}")
            elif self.cfg.max_chars is not None and size > self.cfg.max_chars:
                out.append(f"{self.cfg.field} has {size} chars, more than {self.cfg.max_chars}")
            else:
                out.append(None)
        return out


class Regex(Filter):
    name = "regex"

    def __init__(self, cfg: RegexFilter):
        self.cfg, self.reads = cfg, (cfg.field,)
        self.must = re.compile(cfg.must_match) if cfg.must_match else None
        self.must_not = re.compile(cfg.must_not_match) if cfg.must_not_match else None

    def flags(self, batch):
        out = []
        for value in batch[self.cfg.field]:
            value = value or ""
            if self.must and not self.must.search(value):
                out.append(f"{self.cfg.field} does not match {self.cfg.must_match!r}")
            elif self.must_not and self.must_not.search(value):
                out.append(f"{self.cfg.field} matches forbidden {self.cfg.must_not_match!r}")
            else:
                out.append(None)
        return out
