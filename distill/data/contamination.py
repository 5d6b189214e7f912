"""The leak detector: which items of the evaluation sets a text holds. One detector (LeakDetector), with the recipe's
decontaminate settings, for both places that ask: the filter stage, which rejects generated rows that leak an item,
and evaluation, which measures which items reached the rows a student was trained on.

A text leaks an eval item when it holds the item's question:
- the item's input, and its input and reference read as one text, when they have at least `ngram` words (13 by
  default, as lm-eval): a shared word n-gram;
- a shorter input: the whole normalised input inside the text, at word boundaries (or equal to it);
- a reference alone only when it has at least `ngram` words: labels, numbers and one-word answers repeat across
  items by nature, so an equal short answer is no leak;
- with `embedding_threshold`, a text whose sentence embedding is that close to the item's input (a paraphrase).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill import rows as C
from distill.data.ngrams import NgramHasher, shared_hasher, words

CONTAMINATION_FILE = "contamination.jsonl"


CONTAMINATED_ITEMS_FILE = "contaminated_items.json"


PARTS = ("input", "reference", "input+reference")  # which text of an item a row matched, most specific first


@dataclass
class EvalItem:
    set: str
    id: str
    texts: list[str]  # input, then references


@dataclass(frozen=True)
class Leak:
    method: str  # "13-gram" (shared n-grams), "contained" (whole short item inside the text), "exact" (equal)
    part: str  # one of PARTS
    count: int  # shared n-grams (1 for a short item)

    def label(self) -> str:
        return self.method if self.part == "input" else f"{self.method} of its {self.part}"


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros(0, np.int8)


def _sorted_unique(hashes: np.ndarray, items: np.ndarray, parts: np.ndarray):
    """Sorted by hash; one entry per (hash, item), naming the most specific part that has the hash."""
    order = np.lexsort((parts, items, hashes))
    hashes, items, parts = hashes[order], items[order], parts[order]
    if len(hashes) > 1:
        first = np.ones(len(hashes), bool)
        first[1:] = (hashes[1:] != hashes[:-1]) | (items[1:] != items[:-1])
        hashes, items, parts = hashes[first], items[first], parts[first]
    return hashes, items, parts


def _match(hashes: np.ndarray, owner: np.ndarray, index: tuple, n_items: int):
    """(text, item, part, count) of every text that shares a hash with an item, counted per distinct position."""
    index_h, index_item, index_part = index
    if not len(hashes) or not len(index_h):
        return []
    pos = np.searchsorted(index_h, hashes)
    hit = index_h[np.minimum(pos, len(index_h) - 1)] == hashes
    if not hit.any():
        return []
    lo, h, o = pos[hit], hashes[hit], owner[hit]
    span = np.searchsorted(index_h, h, "right") - lo  # several items can share a hash
    entry = np.repeat(lo - np.cumsum(span) + span, span) + np.arange(int(span.sum()))
    text, item, part = np.repeat(o, span), index_item[entry], index_part[entry]
    keys, first, counts = np.unique(text * n_items + item, return_index=True, return_counts=True)
    return [(int(k // n_items), int(k % n_items), int(part[f]), int(c)) for k, f, c in zip(keys, first, counts)]


class EvalIndex:
    """Every eval item's question texts, hashed once, looked up for a batch of row texts at a time."""

    def __init__(self, items: list[EvalItem], n: int, hasher: NgramHasher | None = None):
        self.items, self.n = items, n
        self.hasher = hasher or shared_hasher()
        long_texts, long_item, long_part = [], [], []
        short: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
        for k, item in enumerate(items):
            question = self.hasher.text_hashes(item.texts[0]) if item.texts else np.zeros(0, np.uint64)
            texts = [(0, question)]
            for ref in item.texts[1:]:
                answer = self.hasher.text_hashes(ref)
                if len(answer) and len(question) + len(answer) >= n:
                    texts.append((2, np.concatenate([question, answer])))
                if len(answer) >= n:
                    texts.append((1, answer))
            for part, hashes in texts:
                if len(hashes) >= n:
                    long_texts.append(hashes)
                    long_item.append(k)
                    long_part.append(part)
                elif len(hashes):  # only an input can be short: the longer texts above need n words
                    short[len(hashes)].append((k, hashes))
        hashes, text_of = self.hasher.ngrams(long_texts, n, short_whole=False)
        self.long = (_sorted_unique(hashes, np.asarray(long_item, np.int64)[text_of], np.asarray(long_part, np.int8)[text_of])
                     if len(text_of) else _empty())
        # a short input is one run of its own length: hashed exactly as the rows' runs are
        self.short: dict[int, tuple] = {}
        if short:
            flat = [(size, k, h) for size, entries in short.items() for k, h in entries]
            for size, run_hashes, owner in self.hasher.runs([h for _, _, h in flat], set(short)):
                mine = np.array([flat[o][0] == size for o in owner.tolist()], bool)
                items_of = np.array([flat[o][1] for o in owner[mine].tolist()], np.int64)
                self.short[size] = _sorted_unique(run_hashes[mine], items_of, np.zeros(len(items_of), np.int8))

    def leaks(self, texts: list) -> list[dict[int, Leak]]:
        """Per text: {eval item index: the leak found}, exact and contained matches before shared n-grams."""
        out: list[dict[int, Leak]] = [dict() for _ in texts]
        sizes = set(self.short) | ({self.n} if len(self.long[0]) else set())
        if not sizes:
            return out
        arrays = [self.hasher.text_hashes(t) for t in texts]
        for size, hashes, owner in self.hasher.runs(arrays, sizes):
            if size in self.short:
                for t, k, _, _ in _match(hashes, owner, self.short[size], len(self.items)):
                    out[t].setdefault(k, Leak("exact" if len(arrays[t]) == size else "contained", "input", 1))
            if size == self.n:
                for t, k, part, count in _match(hashes, owner, self.long, len(self.items)):
                    out[t].setdefault(k, Leak(f"{self.n}-gram", PARTS[part], count))
        return out

    def leaks_in(self, batch: dict[str, list], fields) -> list[dict[int, tuple[str, Leak]]]:
        """Per row of a columnar batch: {eval item index: (field, leak)}, the first field listed that leaks it."""
        size = len(batch[fields[0]]) if fields else 0
        found: list[dict[int, tuple[str, Leak]]] = [dict() for _ in range(size)]
        for f in fields:
            for i, leaks in enumerate(self.leaks(batch[f])):
                for k, leak in leaks.items():
                    found[i].setdefault(k, (f, leak))
        return found


class LeakDetector:
    """What both places call a leak, with one set of settings (the recipe's decontaminate step): the n-gram index
    above and, with `embedding_threshold`, a row text whose sentence embedding is that close to an item's input (a
    paraphrase). The embedding check finds the nearest item per row text."""

    def __init__(self, items: list[EvalItem], cfg, embed=None):
        """`embed(texts, embedder) -> unit vectors` (distill.models.embeddings.embed): needed with
        cfg.embedding_threshold."""
        self.items, self.cfg, self.embed = items, cfg, embed
        self.index = EvalIndex(items, cfg.ngram)
        self.item_vectors = None
        if cfg.embedding_threshold is not None and items:
            if embed is None:
                raise ValueError("LeakDetector: embedding_threshold is set but no embed function was given")
            self.item_vectors = embed([it.texts[0] for it in items], cfg.embedder).astype(np.float32)
            too_short = [len(words(it.texts[0])) < cfg.embedding_min_words for it in items]
            self.item_vectors[too_short] = 0.0  # never a near match

    def leaks_in(self, batch: dict[str, list], fields) -> tuple[list[dict[int, tuple[str, str, float]]], list[float]]:
        """(per row {eval item index: (field, method, strength)}, per row the highest embedding similarity to any
        item, 0 without the embedding check). Shared n-grams and whole inputs come before embeddings."""
        size = len(batch[fields[0]]) if fields else 0
        found: list[dict[int, tuple[str, str, float]]] = [dict() for _ in range(size)]
        for i, leaks in enumerate(self.index.leaks_in(batch, fields)):
            for k, (f, leak) in leaks.items():
                found[i][k] = (f, leak.label(), float(leak.count))
        best = [0.0] * size
        if self.item_vectors is None:
            return found, best
        for f in fields:
            texts = ["" if v is None else str(v) for v in batch[f]]
            long_enough = [i for i, t in enumerate(texts) if len(words(t)) >= self.cfg.embedding_min_words]
            if not long_enough:
                continue
            sims = self.embed([texts[i] for i in long_enough], self.cfg.embedder).astype(np.float32) @ self.item_vectors.T
            for row, i in enumerate(long_enough):
                k = int(np.argmax(sims[row]))
                s = float(sims[row, k])
                best[i] = max(best[i], s)
                if s >= self.cfg.embedding_threshold:
                    found[i].setdefault(k, (f, "embedding", round(s, 4)))
        return found, best


def eval_items(set_name: str, items: list[dict], check_references: bool = True) -> list[EvalItem]:
    """Loaded eval items (see distill.data.eval_sets) as the detector reads them."""
    out = []
    for it in items:
        refs = [r for r in (it.get(C.REFERENCES) or [it.get(C.REFERENCE)]) if r] if check_references else []
        out.append(EvalItem(set_name, it[C.ID], [str(it[C.INPUT])] + [str(r) for r in refs]))
    return out


def load_eval_items(recipe, run, check_references: bool = True) -> list[EvalItem]:
    """The items of every evaluation set of the recipe, as the evaluate stage will read them."""
    from distill.data.eval_sets import load_items

    items = []
    for s in recipe.evaluate.sets:
        if s.data is not None and not Path(run.heldout if s.data == "heldout" else run.dev).is_file():
            continue
        items += eval_items(s.name, load_items(s, run.heldout), check_references)
    return items


TRAINED_FIELDS = (C.INPUT, C.COMPLETION)  # what the student is shown in training


def trained_on_text(contamination: dict) -> str:
    """Which rows were measured, in words: 'the 300 kept rows of runs/x/filter/rows.parquet that the student was trained on'."""
    parts = [f"the {t['rows']} kept rows of {t['rows_file']}"
             + (f" and {', '.join(t['added_rows_files'])}" if t.get("added_rows_files") else "")
             for t in contamination.get("trained_on", [])]
    who = "the student was" if len(parts) == 1 else "the compared students were"
    return " and ".join(parts) + f" that {who} trained on" if parts else "no training rows"


def leak_rule(measured: dict) -> str:
    """What counts as a leak, in words (the definition above)."""
    n = measured.get("ngram", 13)
    texts = "its input, its input and reference, or a reference of at least {n} words" if measured.get("check_references", True) \
        else "its input"
    rule = (f"a row's {' or '.join(measured.get('fields', TRAINED_FIELDS))} holds the item's input whole "
            f"or shares a {n}-word sequence with " + texts.format(n=n))
    threshold = measured.get("embedding_threshold")
    if threshold is not None:
        rule += f", or its sentence embedding has cosine similarity of at least {threshold} with the item's input"
    return rule
