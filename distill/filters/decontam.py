"""Decontamination: reject generated rows that leak items of the recipe's evaluation sets.

Three checks, each naming the eval items a row leaked:
- a long text shares a word n-gram (13 by default) with an eval input or reference;
- a short text (fewer words than n) equals one after normalisation;
- optionally, a row's embedding is a near match of an eval input (paraphrases).
The leaks are written to filter/contamination.jsonl and the leaked item ids, per eval set,
to filter/contaminated_items.json, so evaluation can also report the clean part.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distill import rows as C
from distill.filters.base import Filter
from distill.filters.ngrams import NgramHasher, shared_hasher, words
from distill.recipe import DecontaminateFilter

CONTAMINATION_FILE = "contamination.jsonl"
CONTAMINATED_ITEMS_FILE = "contaminated_items.json"


@dataclass
class EvalItem:
    set: str
    id: str
    texts: list[str]  # input, then references


@dataclass
class EvalIndex:
    """Every eval item's n-gram hashes, looked up by hash."""

    items: list[EvalItem]
    n: int
    hasher: NgramHasher = field(default_factory=shared_hasher)

    def __post_init__(self):
        texts, owner = [], []
        for k, item in enumerate(self.items):
            for t in item.texts:
                texts.append(words(t))
                owner.append(k)
        hashes, text_of = self.hasher.batch(texts, self.n)
        item_of = np.asarray(owner, dtype=np.int64)[text_of] if len(text_of) else np.zeros(0, np.int64)
        order = np.argsort(hashes, kind="stable")
        self.hashes, self.item_of = hashes[order], item_of[order]

    def leaks(self, texts: list) -> list[dict[int, int]]:
        """Per text: {eval item index: number of shared n-grams (or 1 for a short exact match)}."""
        out: list[dict[int, int]] = [dict() for _ in texts]
        if not len(self.hashes):
            return out
        hashes, owner = self.hasher.batch_texts(texts, self.n)
        hit = np.isin(hashes, self.hashes)
        for h, row in zip(hashes[hit], owner[hit]):
            lo, hi = np.searchsorted(self.hashes, h, "left"), np.searchsorted(self.hashes, h, "right")
            for k in set(self.item_of[lo:hi].tolist()):
                out[row][k] = out[row].get(k, 0) + 1
        return out


def load_eval_items(recipe, run, check_references: bool = True) -> list[EvalItem]:
    """The items of every evaluation set of the recipe, as the evaluate stage will read them."""
    from distill.evaluate.stage import load_items

    items = []
    for s in recipe.evaluate.sets:
        if s.data == "heldout" and not Path(run.heldout).is_file():
            continue
        for it in load_items(recipe, run, s):
            refs = [r for r in (it.get(C.REFERENCES) or [it.get(C.REFERENCE)]) if r] if check_references else []
            items.append(EvalItem(s.name, it[C.ID], [str(it[C.INPUT])] + [str(r) for r in refs]))
    return items


class Decontaminate(Filter):
    name = "decontaminate"
    has_score = True

    def __init__(self, cfg: DecontaminateFilter, items: list[EvalItem] | None = None):
        self.cfg, self.reads = cfg, tuple(cfg.fields)
        self.items = items
        self.index: EvalIndex | None = None
        self.item_vectors: np.ndarray | None = None
        self.records: list[dict] = []
        self.out_dir: Path | None = None

    def prepare(self, context) -> None:
        if self.items is None:
            self.items = load_eval_items(context.recipe, context.run, self.cfg.check_references)
        self.out_dir = context.run.stage("filter") if context.run is not None else None

    def _ready(self) -> None:
        if self.index is None:
            self.index = EvalIndex(self.items or [], self.cfg.ngram)
            if self.cfg.embedding_threshold is not None and self.items:
                from distill.models.embeddings import embed

                self.item_vectors = embed([it.texts[0] for it in self.items], self.cfg.embedder).astype(np.float32)
                too_short = [len(words(it.texts[0])) < self.cfg.embedding_min_words for it in self.items]
                self.item_vectors[too_short] = 0.0  # never a near match

    def flags(self, batch):
        self._ready()
        size = len(batch[self.cfg.fields[0]])
        ids = batch.get(C.ID) or [str(i) for i in range(size)]
        found: list[dict[int, tuple[str, str, float]]] = [dict() for _ in range(size)]  # item -> (method, field, strength)
        for f in self.cfg.fields:
            for i, leaks in enumerate(self.index.leaks(batch[f])):
                for k, count in leaks.items():
                    short = len(self.index.hasher.text_hashes(batch[f][i])) < self.cfg.ngram
                    method = "exact" if short else f"{self.cfg.ngram}-gram"
                    found[i].setdefault(k, (method, f, float(count)))
        best_sim = [0.0] * size
        if self.item_vectors is not None:
            from distill.models.embeddings import embed

            for f in self.cfg.fields:
                texts = ["" if v is None else str(v) for v in batch[f]]
                long_enough = [i for i, t in enumerate(texts) if len(words(t)) >= self.cfg.embedding_min_words]
                if not long_enough:
                    continue
                vectors = embed([texts[i] for i in long_enough], self.cfg.embedder).astype(np.float32)
                sims = np.full((size, len(self.items)), -1.0, dtype=np.float32)
                sims[long_enough] = vectors @ self.item_vectors.T
                for i in long_enough:
                    k = int(np.argmax(sims[i]))
                    s = float(sims[i, k])
                    best_sim[i] = max(best_sim[i], s)
                    if s >= self.cfg.embedding_threshold:
                        found[i].setdefault(k, ("embedding", f, round(s, 4)))
        out, scores = [], []
        for i in range(size):
            scores.append(round(best_sim[i], 4) if self.item_vectors is not None else float(len(found[i])))
            if not found[i]:
                out.append(None)
                continue
            for k, (method, f, strength) in sorted(found[i].items()):
                item = self.items[k]
                self.records.append({"row_id": ids[i], "field": f, "set": item.set, "item_id": item.id,
                                     "method": method, "strength": strength})
            k, (method, f, _) = sorted(found[i].items())[0]
            more = f" and {len(found[i]) - 1} more" if len(found[i]) > 1 else ""
            out.append(f"{f} leaks {self.items[k].set} item {self.items[k].id} ({method}){more}")
        self.last_scores = scores
        return out

    def contaminated_items(self) -> dict[str, list[str]]:
        by_set: dict[str, set[str]] = defaultdict(set)
        for r in self.records:
            by_set[r["set"]].add(r["item_id"])
        return {s: sorted(ids) for s, ids in sorted(by_set.items())}

    def close(self) -> None:
        if self.out_dir is None:
            return
        from distill.run_dir import write_json, write_text

        write_text(self.out_dir / CONTAMINATION_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))
        write_json(self.out_dir / CONTAMINATED_ITEMS_FILE, self.contaminated_items())

    def summary(self):
        items = self.contaminated_items()
        return {"eval_items": len(self.items or []), "leaked_items": {s: len(v) for s, v in items.items()}}
