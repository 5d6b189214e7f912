"""Decontamination: reject generated rows that leak items of the recipe's evaluation sets.

A row leaks an eval item when the item's question appears in a field the step reads:
- the item's input, and its input and reference read as one text, when they have at least
  `ngram` words (13 by default, as lm-eval): a shared word n-gram;
- a shorter input: the whole normalised input inside the field, at word boundaries (or equal to it);
- a reference alone only when it has at least `ngram` words: labels, numbers and one-word
  answers repeat across items by nature, so an equal short answer is no leak;
- optionally, a row's embedding is a near match of an eval input (paraphrases).
The detector (distill.data.contamination.LeakDetector), with these settings, is the one evaluation uses to measure
which items reached the rows a student was trained on. The leaks are written to
filter/contamination.jsonl and the leaked item ids, per eval set, to filter/contaminated_items.json.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from distill import rows as C
from distill.data.contamination import CONTAMINATED_ITEMS_FILE, CONTAMINATION_FILE, EvalItem, LeakDetector, load_eval_items
from distill.filters.base import Filter
from distill.recipe import DecontaminateFilter


class Decontaminate(Filter):
    name = "decontaminate"
    has_score = True

    def __init__(self, cfg: DecontaminateFilter, items: list[EvalItem] | None = None):
        self.cfg, self.reads = cfg, tuple(cfg.fields)
        self.items = items
        self.detector: LeakDetector | None = None
        self.records: list[dict] = []
        self.out_dir: Path | None = None

    def prepare(self, context) -> None:
        if self.items is None:
            self.items = load_eval_items(context.recipe, context.run, self.cfg.check_references)
        self.out_dir = context.run.stage("filter") if context.run is not None else None

    def flags(self, batch):
        if self.detector is None:
            from distill.models.embeddings import embed

            self.detector = LeakDetector(self.items or [], self.cfg, embed)
        size = len(batch[self.cfg.fields[0]])
        ids = batch.get(C.ID) or [str(i) for i in range(size)]
        found, best_sim = self.detector.leaks_in(batch, self.cfg.fields)
        out, scores = [], []
        for i in range(size):
            scores.append(round(best_sim[i], 4) if self.detector.item_vectors is not None else float(len(found[i])))
            if not found[i]:
                out.append(None)
                continue
            for k, (f, method, strength) in sorted(found[i].items()):
                item = self.items[k]
                self.records.append({"row_id": ids[i], "field": f, "set": item.set, "item_id": item.id,
                                     "method": method, "strength": strength})
            k, (f, method, _) = sorted(found[i].items())[0]
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
