"""Verifiers: a user function, comparison with a reference, and agreement across a prompt's candidates."""

from __future__ import annotations

import importlib
import importlib.util
import math
import re
from collections import Counter, defaultdict
from pathlib import Path

from distill.data.ngrams import normalize_text
from distill.errors import UserError
from distill.filters.base import Filter
from distill.recipe import MajorityVoteFilter, ReferenceMatchFilter, VerifierFilter


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


_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def first_number(text: str | None) -> float | None:
    match = _NUMBER.search(text or "")
    if not match:
        return None
    try:
        return float(match.group(0).replace(",", ""))
    except ValueError:
        return None


class ReferenceMatch(Filter):
    """The answer must equal the reference: normalised text, or the first number within a relative tolerance."""

    name = "reference_match"
    parallel_safe = True

    def __init__(self, cfg: ReferenceMatchFilter):
        self.cfg, self.reads = cfg, (cfg.field, cfg.reference_field)

    def flags(self, batch):
        out = []
        for answer, ref in zip(batch[self.cfg.field], batch[self.cfg.reference_field]):
            if ref is None or str(ref).strip() == "":
                out.append(None)  # nothing to compare with
            elif self.cfg.mode == "numeric":
                a, r = first_number(answer), first_number(str(ref))
                if r is None:
                    out.append(None)
                elif a is None:
                    out.append(f"{self.cfg.field} has no number (reference {r:g})")
                else:
                    ok = math.isclose(a, r, rel_tol=self.cfg.tolerance, abs_tol=self.cfg.tolerance)
                    out.append(None if ok else f"{self.cfg.field} gives {a:g}, reference is {r:g}")
            else:
                ok = normalize_text(answer) == normalize_text(str(ref))
                out.append(None if ok else f"{self.cfg.field} {str(answer).strip()[:40]!r} differs from reference {str(ref)[:40]!r}")
        return out


class MajorityVote(Filter):
    """Self-consistency: among the candidates of one prompt, keep those giving the most common answer.

    Its score is the vote margin: the top answer's share minus the runner-up's (1.0 when unanimous).
    Needs every candidate of a prompt at once, so the stage gives it all rows in one batch.
    """

    name = "majority_vote"
    has_score = True
    needs_all_rows = True

    def __init__(self, cfg: MajorityVoteFilter):
        self.cfg, self.reads = cfg, (cfg.field, cfg.group_field)

    def flags(self, batch):
        answers = [normalize_text(a) for a in batch[self.cfg.field]]
        groups: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(batch[self.cfg.group_field]):
            if g is None:
                # Pooling every row without a value would make unrelated prompts vote against each other.
                raise UserError(f"filter majority_vote: column {self.cfg.group_field!r} is empty on some rows, so it cannot "
                                f"say which prompt they answer; group by `prompt` (group_field: prompt)")
            groups[str(g)].append(i)
        out: list[str | None] = [None] * len(answers)
        scores: list[float | None] = [None] * len(answers)
        for members in groups.values():
            votes = Counter(answers[i] for i in members).most_common()
            top, top_n = votes[0]
            second = votes[1][1] if len(votes) > 1 else 0
            margin = round((top_n - second) / len(members), 4)
            for i in members:
                scores[i] = margin
                if margin < self.cfg.min_margin or (len(votes) > 1 and top_n == second):
                    out[i] = f"no clear majority among {len(members)} candidates (margin {margin:.2f})"
                elif answers[i] != top:
                    out[i] = f"minority answer: {top_n} of {len(members)} candidates say {top[:40]!r}"
        self.last_scores = scores
        return out
