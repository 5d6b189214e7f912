"""How a round chooses its prompts, as small pure functions: each takes the unanswered seeds (and what was measured
about them) and returns the chosen seeds in order, each with the record of why it was chosen."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

import numpy as np

from distill import rows as C
from distill.evaluate.metrics.normalize import normalize

Chosen = list[tuple[dict, dict]]  # (seed item, why it was chosen)


def pick_random(items: list[dict], n: int, seed: int) -> Chosen:
    """n seeds drawn uniformly: the control every other strategy is measured against."""
    chosen = random.Random(seed).sample(range(len(items)), min(n, len(items)))
    return [(items[i], {"strategy": "random"}) for i in sorted(chosen)]


def disagreement(answers: list[str]) -> float:
    """The share of answers that differ from the most common one: 0 when all agree."""
    folded = [normalize(a, ignore_case=True) for a in answers]
    return 1.0 - Counter(folded).most_common(1)[0][1] / len(folded)


def pick_uncertain(items: list[dict], uncertainty: dict[str, float], n: int, seed: int, measure: str) -> Chosen:
    """The n seeds the student is least sure of (highest uncertainty); ties, common with a few samples, broken at
    random rather than by file order."""
    tiebreak = random.Random(seed)
    order = sorted(items, key=lambda it: (-uncertainty[it[C.ID]], tiebreak.random()))
    return [(it, {"strategy": "uncertainty", "measure": measure, "score": round(uncertainty[it[C.ID]], 4)})
            for it in order[:n]]


def pick_near_errors(items: list[dict], item_vectors: np.ndarray, errors: list[dict], error_vectors: np.ndarray,
                     n: int) -> Chosen:
    """Unanswered seeds nearest (cosine, unit vectors) to the dev items the student got wrong, taken in turns: each
    error's nearest seed, then each error's next, so that one cluster of errors cannot take the whole round."""
    if not errors or not items:
        return []
    similarity = error_vectors @ item_vectors.T  # errors x items
    ranked = np.argsort(-similarity, axis=1, kind="stable")
    taken: set[int] = set()
    chosen: Chosen = []
    depth = 0
    while len(chosen) < min(n, len(items)) and depth < len(items):
        for e in range(len(errors)):
            i = int(ranked[e, depth])
            if i in taken:
                continue
            taken.add(i)
            chosen.append((items[i], {"strategy": "errors", "near": errors[e][C.ID],
                                      "similarity": round(float(similarity[e, i]), 4)}))
            if len(chosen) >= n:
                break
        depth += 1
    return chosen


def slice_weights(student: dict[str, float], teacher: dict[str, float] | None, weight: str) -> dict[str, float]:
    """A weight per slice: its dev gap to the teacher (never below 0), or the student's p(1-p)."""
    if weight == "gap":
        return {s: max(0.0, (teacher or {}).get(s, 1.0) - p) for s, p in student.items()}
    return {s: p * (1.0 - p) for s, p in student.items()}


def allocate(n: int, weights: dict[str, float], available: dict[str, int], floor: float) -> dict[str, int]:
    """n prompts split across slices in proportion to their weights (each slice with prompts left gets at least
    `floor` of the total weight), never more than a slice has; what a full slice cannot take goes to the others.
    Largest remainders round the shares to whole prompts."""
    open_slices = [s for s in available if available[s] > 0]
    counts = {s: 0 for s in available}
    left = min(n, sum(available[s] for s in open_slices))
    while left > 0 and open_slices:
        raw = {s: weights.get(s, 0.0) for s in open_slices}
        total = sum(raw.values())
        share = {s: (raw[s] / total if total > 0 else 1.0 / len(open_slices)) for s in open_slices}
        share = {s: max(v, floor) for s, v in share.items()}
        norm = sum(share.values())
        exact = {s: left * share[s] / norm for s in open_slices}
        give = {s: min(math.floor(exact[s]), available[s] - counts[s]) for s in open_slices}
        rest = left - sum(give.values())
        for s in sorted(open_slices, key=lambda s: exact[s] - math.floor(exact[s]), reverse=True):
            if rest <= 0:
                break
            if give[s] < available[s] - counts[s]:
                give[s] += 1
                rest -= 1
        for s in open_slices:
            counts[s] += give[s]
        left -= sum(give.values())
        open_slices = [s for s in open_slices if counts[s] < available[s]]
        if not any(give.values()):
            break
    return counts


def pick_by_slices(items: list[dict], n: int, weights: dict[str, float], floor: float, seed: int) -> Chosen:
    """n seeds split across slices by `weights` (see allocate), drawn at random within each slice."""
    by_slice: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        by_slice[str(it.get(C.SLICE))].append(it)
    counts = allocate(n, weights, {s: len(v) for s, v in by_slice.items()}, floor)
    rng = random.Random(seed)
    chosen: Chosen = []
    for s in sorted(by_slice):
        for it in rng.sample(by_slice[s], counts[s]):
            chosen.append((it, {"strategy": "slices", "slice": s, "weight": round(weights.get(s, 0.0), 4)}))
    return chosen
