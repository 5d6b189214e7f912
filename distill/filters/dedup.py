"""Duplicate removal: exact (normalised key), near (MinHash LSH) and semantic (sentence embeddings).

Each keeps the first row of a group and rejects the later ones, naming the row they repeat;
state carries across batches, so the whole table is one pass in row order.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from distill import rows as C
from distill.filters.base import Filter
from distill.filters.ngrams import shared_hasher
from distill.recipe import ExactDedupFilter, NearDedupFilter, SemanticDedupFilter

_SPACE = re.compile(r"\s+")
NEAR_DUP_CLUSTER = "near_dup_cluster"
SEMANTIC_DUP_CLUSTER = "semantic_dup_cluster"


def _row_ids(batch: dict[str, list], size: int) -> list:
    return batch.get(C.ID) or [None] * size


def _size(batch: dict[str, list]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


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


class MinHasher:
    """MinHash signatures of many texts at once, in datasketch's `affine32` scheme.

    Shingles are word n-gram hashes (see ngrams.py); the permutations are datasketch's own,
    so the signatures are ordinary datasketch MinHash objects for its LSH index.
    """

    def __init__(self, num_perm: int, shingle: int, seed: int = 1, max_cells: int = 1 << 16):
        from datasketch import MinHash

        self.num_perm, self.shingle, self.seed = num_perm, shingle, seed
        self.a, self.b = (np.asarray(p, dtype=np.uint32) for p in MinHash(num_perm, seed=seed).permutations)
        self.hasher = shared_hasher()
        self.max_cells = max_cells  # shingles x permutations computed at once: small enough to stay in cache

    def signatures(self, texts: list[str]) -> np.ndarray:
        """uint32 array (len(texts), num_perm); an empty text gets the all-max signature."""
        hashes, owner = self.hasher.batch_texts(texts, self.shingle)
        out = np.full((len(texts), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        if not len(hashes):
            return out
        order = np.argsort(owner, kind="stable")
        hv, owner = (hashes[order] >> np.uint64(32)).astype(np.uint32), owner[order]
        step = max(1, self.max_cells // self.num_perm)
        start = 0
        while start < len(hv):
            end = min(len(hv), start + step)
            # do not split one text's shingles between two steps
            if end < len(hv):
                cut = int(np.searchsorted(owner, owner[end - 1], side="left"))
                end = cut if cut > start else int(np.searchsorted(owner, owner[end - 1], side="right"))
            part, who = hv[start:end], owner[start:end]
            phv = np.empty((len(part), self.num_perm), dtype=np.uint32)
            np.multiply(part[:, None], self.a[None, :], out=phv)  # wraps mod 2^32, as datasketch's affine32
            np.add(phv, self.b[None, :], out=phv)
            cuts = np.concatenate(([0], np.nonzero(np.diff(who))[0] + 1))
            out[who[cuts]] = np.minimum(out[who[cuts]], np.minimum.reduceat(phv, cuts, axis=0))
            start = end
        return out


class NearDedup(Filter):
    name = "near_dedup"
    has_score = True
    writes = (NEAR_DUP_CLUSTER,)

    def __init__(self, cfg: NearDedupFilter):
        from datasketch import MinHashLSH

        self.cfg, self.reads = cfg, tuple(cfg.fields)
        self.minhasher = MinHasher(cfg.num_perm, cfg.shingle, cfg.seed)
        # Candidates are checked against the threshold below, so the bands favour recall (few missed pairs)
        # over precision: at Jaccard 0.9 and threshold 0.8 this misses 0.1% of pairs instead of 7%.
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=(0.1, 0.9))
        self.kept_signatures: list[np.ndarray] = []  # by LSH key
        self.kept_ids: list[str] = []
        self.clusters = 0

    def flags(self, batch):
        from datasketch import MinHash

        size = _size(batch)
        ids = _row_ids(batch, size)
        fields = self.cfg.fields
        texts = batch[fields[0]] if len(fields) == 1 else [" ".join("" if batch[f][i] is None else str(batch[f][i]) for f in fields) for i in range(size)]
        sigs = self.minhasher.signatures(texts)
        perms = (self.minhasher.a, self.minhasher.b)
        out, scores, cluster = [], [], []
        for i in range(size):
            m = MinHash(self.cfg.num_perm, seed=self.cfg.seed, hashvalues=sigs[i], permutations=perms, scheme="affine32")
            best, best_key = 0.0, None
            for key in self.lsh.query(m):  # candidates; the estimate below decides
                sim = float(np.count_nonzero(self.kept_signatures[key] == sigs[i])) / self.cfg.num_perm
                if sim > best or (sim == best and best_key is not None and key < best_key):
                    best, best_key = sim, key
            scores.append(round(best, 4))
            if best_key is not None and best >= self.cfg.threshold:
                out.append(f"near duplicate of {self.kept_ids[best_key]} (estimated Jaccard {best:.2f} on {', '.join(self.cfg.fields)})")
                cluster.append(self.kept_ids[best_key])
            else:
                key = len(self.kept_ids)
                self.lsh.insert(key, m, check_duplication=False)
                self.kept_signatures.append(sigs[i])
                self.kept_ids.append(ids[i] if ids[i] is not None else str(key))
                self.clusters += 1
                out.append(None)
                cluster.append(self.kept_ids[key])
        self.last_scores, self.last_columns = scores, {NEAR_DUP_CLUSTER: cluster}
        return out

    def summary(self):
        return {"clusters": self.clusters}


class SemanticDedup(Filter):
    """Cosine similarity of unit embeddings against every row kept so far (exact search, numpy)."""

    name = "semantic_dedup"
    has_score = True
    writes = (SEMANTIC_DUP_CLUSTER,)

    def __init__(self, cfg: SemanticDedupFilter):
        self.cfg, self.reads = cfg, (cfg.field,)
        self.kept: np.ndarray | None = None
        self.kept_ids: list[str] = []

    def flags(self, batch):
        from distill.models.embeddings import embed

        size = _size(batch)
        ids = _row_ids(batch, size)
        vectors = embed(["" if v is None else str(v) for v in batch[self.cfg.field]], self.cfg.embedder).astype(np.float32)
        # similarities to rows kept in earlier batches, then within this batch (earlier rows only)
        old = self.kept @ vectors.T if self.kept is not None else np.zeros((0, size), np.float32)
        within = vectors @ vectors.T
        kept_here: list[int] = []
        out, scores, cluster = [], [], []
        for i in range(size):
            best, match = 0.0, None
            if len(old):
                j = int(np.argmax(old[:, i]))
                best, match = float(old[j, i]), self.kept_ids[j]
            if kept_here:
                sims = within[i, kept_here]
                j = int(np.argmax(sims))
                if float(sims[j]) > best:
                    best, match = float(sims[j]), ids[kept_here[j]]
            scores.append(round(best, 4))
            if match is not None and best >= self.cfg.threshold:
                out.append(f"semantic duplicate of {match} (cosine {best:.3f} on {self.cfg.field})")
                cluster.append(match)
            else:
                kept_here.append(i)
                out.append(None)
                cluster.append(ids[i])
        new_rows = vectors[kept_here]
        self.kept = new_rows if self.kept is None else np.vstack([self.kept, new_rows])
        self.kept_ids.extend(ids[i] for i in kept_here)
        self.last_scores, self.last_columns = scores, {SEMANTIC_DUP_CLUSTER: cluster}
        return out
