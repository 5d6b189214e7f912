"""Decontamination: reject generated rows that leak items of the recipe's evaluation sets.

A row leaks an eval item when the item's question appears in a field the step reads:
- the item's input, and its input and reference read as one text, when they have at least
  `ngram` words (13 by default, as lm-eval): a shared word n-gram;
- a shorter input: the whole normalised input inside the field, at word boundaries (or equal to it);
- a reference alone only when it has at least `ngram` words: labels, numbers and one-word
  answers repeat across items by nature, so an equal short answer is no leak;
- optionally, a row's embedding is a near match of an eval input (paraphrases).
The detector (distill.data.contamination) is the one evaluation uses to measure which items reached
the rows a student was trained on. The leaks are written to
filter/contamination.jsonl and the leaked item ids, per eval set, to filter/contaminated_items.json.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from distill import rows as C
from distill.data.contamination import CONTAMINATED_ITEMS_FILE, CONTAMINATION_FILE, EvalIndex, EvalItem, load_eval_items
from distill.data.ngrams import words
from distill.filters.base import Filter
from distill.recipe import DecontaminateFilter


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
        for i, leaks in enumerate(self.index.leaks_in(batch, self.cfg.fields)):
            for k, (f, leak) in leaks.items():
                found[i][k] = (leak.label(), f, float(leak.count))
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
