"""Cheap per-row checks: length bounds, regular expressions, repetition, JSON schema, refusals."""

from __future__ import annotations

import json
import re

from distill.data.ngrams import words
from distill.filters.base import Filter
from distill.recipe import JsonSchemaFilter, LengthFilter, RefusalFilter, RegexFilter, RepetitionFilter


class Length(Filter):
    name = "length"
    parallel_safe = True

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
    parallel_safe = True

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


class Repetition(Filter):
    """Share of word n-grams that repeat an earlier one: high for loops like 'the cat the cat the cat'."""

    name = "repetition"
    parallel_safe = True
    has_score = True

    def __init__(self, cfg: RepetitionFilter):
        self.cfg, self.reads = cfg, (cfg.field,)

    def flags(self, batch):
        out, scores = [], []
        n = self.cfg.ngram
        for value in batch[self.cfg.field]:
            tokens = words(value)
            grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
            ratio = 1 - len(set(grams)) / len(grams) if grams else 0.0
            scores.append(round(ratio, 4))
            out.append(f"{self.cfg.field} repeats {ratio:.0%} of its {n}-grams, more than {self.cfg.max_ratio:.0%}"
                       if ratio > self.cfg.max_ratio else None)
        self.last_scores = scores
        return out


class JsonSchema(Filter):
    name = "json_schema"
    parallel_safe = True

    def __init__(self, cfg: JsonSchemaFilter):
        import jsonschema

        self.cfg, self.reads = cfg, (cfg.field,)
        self.validator = jsonschema.validators.validator_for(cfg.json_schema)(cfg.json_schema)

    def flags(self, batch):
        out = []
        for value in batch[self.cfg.field]:
            try:
                parsed = json.loads(value or "")
            except json.JSONDecodeError as e:
                out.append(f"{self.cfg.field} is not JSON: {e.msg} at character {e.pos}")
                continue
            error = next(iter(self.validator.iter_errors(parsed)), None)
            where = "/".join(str(p) for p in error.absolute_path) if error else ""
            out.append(None if error is None else f"{self.cfg.field} breaks the schema at '{where or '(root)'}': {error.message[:120]}")
        return out


class Refusal(Filter):
    name = "refusal"
    parallel_safe = True

    def __init__(self, cfg: RefusalFilter):
        self.cfg, self.reads = cfg, (cfg.field,)
        self.pattern = re.compile("|".join(re.escape(p.casefold()) for p in cfg.phrases))

    def flags(self, batch):
        out = []
        for value in batch[self.cfg.field]:
            found = self.pattern.search((value or "").casefold().replace("\u2019", "'"))
            out.append(f"{self.cfg.field} refuses ({found.group(0)!r})" if found else None)
        return out
