"""Task verifiers: a user function judges each row (e.g. checks an answer's format or value)."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from distill.errors import UserError
from distill.filters.base import Filter
from distill.recipe import VerifierFilter


def load_function(ref: str):
    target, _, name = ref.rpartition(":")
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"distill_verifier_{Path(target).stem}", target)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise UserError(f"filter verifier {ref!r}: cannot import {target}: {e}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise UserError(f"filter verifier {ref!r}: {target} has no function {name}")
    return fn


class Verifier(Filter):
    name = "verifier"

    def __init__(self, cfg: VerifierFilter):
        self.cfg = cfg
        self.fn = load_function(cfg.function)

    def flags(self, batch):
        columns = list(batch)
        out = []
        for i in range(len(batch[columns[0]])):
            verdict = self.fn({c: batch[c][i] for c in columns})
            ok, reason = verdict if isinstance(verdict, tuple) else (bool(verdict), None)
            out.append(None if ok else (reason or f"rejected by {self.cfg.function.rpartition(':')[2]}"))
        return out
