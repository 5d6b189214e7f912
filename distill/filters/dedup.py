"""Duplicate removal: exact (normalised key), near (MinHash LSH) and semantic (sentence embeddings).

Each keeps the first row of a group and rejects the later ones, naming the row they repeat;
state carries across batches, so the whole table is one pass in row order.
"""

from __future__ import annotations

import hashlib

import numpy as np

from distill import rows as C
from distill.data.ngrams import shared_hasher
from distill.filters.base import Filter
from distill.recipe import ExactDedupFilter, NearDedupFilter, SemanticDedupFilter

NEAR_DUP_CLUSTER = "near_dup_cluster"
SEMANTIC_DUP_CLUSTER = "semantic_dup_cluster"
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the band hash


def _row_ids(batch: dict[str, list], size: int) -> list:
    return batch.get(C.ID) or [None] * size


def _size(batch: dict[str, list]) -> int:
    return len(next(iter(batch.values()))) if batch else 0


class ExactDedup(Filter):
    name = "exact_dedup"

    def __init__(self, cfg: ExactDedupFilter):
        self.cfg, self.reads = cfg, tuple(cfg.fields)
        self.first: dict[bytes, str] = {}  # key hash -> id of the row that kept it

    def _key(self, values) -> bytes:
        parts = []
        for v in values:
            text = "" if v is None else str(v)
            if self.cfg.normalize:
                # str.split() breaks on the same characters as the regex \s+, several times faster
                text = " ".join(text.lower().split())
            parts.append(text)
        return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).digest()

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


def lsh_bands(threshold: float, num_perm: int, false_positive_weight: float = 0.1,
              false_negative_weight: float = 0.9) -> tuple[int, int]:
    """(bands, rows per band) of an LSH index: the split that minimises the weighted area of false
    positives below the threshold and false negatives above it, as datasketch's MinHashLSH chooses."""
    lo, hi = np.linspace(0.0, threshold, 1025), np.linspace(threshold, 1.0, 1025)

    def area(y, x):
        return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)

    best, best_error = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            error = (false_positive_weight * area(1 - (1 - lo ** r) ** b, lo)
                     + false_negative_weight * area((1 - hi ** r) ** b, hi))
            if error < best_error:
                best, best_error = (b, r), error
    return best


class _BandIndex:
    """LSH buckets of the kept rows: each band of a signature hashes to one 64-bit key; a bucket holds
    the key of its only kept row or a list of them. rensa's RMinHashLSH names candidates only for
    RMinHash objects, which it builds from str/bytes tokens, not from a digest matrix (for which it
    answers yes/no), and the filter must name the kept row: hence this dict."""

    def __init__(self, bands: int, rows: int):
        self.bands, self.rows = bands, rows
        self.buckets: dict[int, int | list[int]] = {}
        self.keys: list[list[int]] = []

    def batch(self, sigs: np.ndarray) -> None:
        s = sigs[:, :self.bands * self.rows].astype(np.uint64).reshape(len(sigs), self.bands, self.rows)
        acc = np.broadcast_to(np.arange(1, self.bands + 1, dtype=np.uint64), (len(sigs), self.bands)).copy()
        with np.errstate(over="ignore"):
            for j in range(self.rows):
                acc = acc * _MULT + s[:, :, j]
        self.keys = acc.tolist()

    def query(self, i: int) -> set[int]:
        found: set[int] = set()
        if self.buckets.keys().isdisjoint(self.keys[i]):  # most rows: one C-level check
            return found
        get = self.buckets.get
        for k in self.keys[i]:
            v = get(k)
            if v is not None:
                if type(v) is int:
                    found.add(v)
                else:
                    found.update(v)
        return found

    def insert(self, i: int, key: int, fresh: bool = False) -> None:
        """`fresh`: no band of row i is in the index yet (its query found nothing), so all buckets are new."""
        buckets = self.buckets
        if fresh:
            buckets.update(dict.fromkeys(self.keys[i], key))
            return
        for k in self.keys[i]:
            v = buckets.get(k)
            if v is None:
                buckets[k] = key
            elif type(v) is int:
                buckets[k] = [v, key]
            else:
                v.append(key)


class _DatasketchIndex:
    """datasketch's MinHashLSH over MinHash objects that carry the given signatures."""

    def __init__(self, threshold: float, num_perm: int, seed: int, permutations):
        from datasketch import MinHashLSH

        self.num_perm, self.seed, self.permutations = num_perm, seed, permutations
        # Candidates are checked against the threshold, so the bands favour recall (few missed pairs)
        # over precision: at Jaccard 0.9 and threshold 0.8 this misses 0.1% of pairs instead of 7%.
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=(0.1, 0.9))
        self.sigs, self.last = None, (None, None)

    def batch(self, sigs: np.ndarray) -> None:
        self.sigs, self.last = sigs, (None, None)

    def _minhash(self, i: int):
        from datasketch import MinHash

        if self.last[0] != i:  # a kept row is queried, then inserted
            self.last = (i, MinHash(self.num_perm, seed=self.seed, hashvalues=self.sigs[i], permutations=self.permutations, scheme="affine32"))
        return self.last[1]

    def query(self, i: int):
        return self.lsh.query(self._minhash(i))

    def insert(self, i: int, key: int, fresh: bool = False) -> None:
        self.lsh.insert(key, self._minhash(i), check_duplication=False)


def rensa_signatures(hashes: np.ndarray, owner: np.ndarray, texts: int, num_perm: int, seed: int) -> np.ndarray:
    """uint32 array (texts, num_perm): rensa's R-MinHash of each text's shingle hashes (a text without
    shingles gets the all-max signature). Shingle hashes are stable across processes, and so is rensa
    for a given seed, so a table split into batches or runs gets the same signatures."""
    from rensa import RMinHash

    order = np.argsort(owner, kind="stable")
    offsets = np.zeros(texts + 1, dtype=np.uint64)
    np.cumsum(np.bincount(owner, minlength=texts), out=offsets[1:])
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(hashes[order], offsets, num_perm, seed)
    return np.array(matrix.to_rows(), dtype=np.uint32).reshape(texts, num_perm)


class NearDedup(Filter):
    name = "near_dedup"
    has_score = True
    writes = (NEAR_DUP_CLUSTER,)

    def __init__(self, cfg: NearDedupFilter):
        self.cfg, self.reads = cfg, tuple(cfg.fields)
        self.hasher = shared_hasher()
        if cfg.backend == "rensa":
            self.index = _BandIndex(*lsh_bands(cfg.threshold, cfg.num_perm))
        else:
            self.minhasher = MinHasher(cfg.num_perm, cfg.shingle, cfg.seed)
            self.index = _DatasketchIndex(cfg.threshold, cfg.num_perm, cfg.seed, (self.minhasher.a, self.minhasher.b))
        self.kept_signatures = np.empty((0, cfg.num_perm), dtype=np.uint32)  # by kept key; grows by doubling
        self.kept_ids: list[str] = []
        self.clusters = 0

    def signatures(self, texts: list) -> np.ndarray:
        if self.cfg.backend == "datasketch":
            return self.minhasher.signatures(texts)
        hashes, owner = self.hasher.batch_texts(texts, self.cfg.shingle)
        return rensa_signatures(hashes, owner, len(texts), self.cfg.num_perm, self.cfg.seed)

    def flags(self, batch):
        size = _size(batch)
        ids = _row_ids(batch, size)
        fields, num_perm = self.cfg.fields, self.cfg.num_perm
        texts = batch[fields[0]] if len(fields) == 1 else [" ".join("" if batch[f][i] is None else str(batch[f][i]) for f in fields) for i in range(size)]
        sigs = self.signatures(texts)
        self.index.batch(sigs)
        base = len(self.kept_ids)  # keys from here on are rows of this batch, stored after the loop
        kept, kept_here = self.kept_signatures, []
        out, scores, cluster = [], [], []
        for i in range(size):
            best, best_key = 0.0, None
            candidates = self.index.query(i)
            for key in candidates:  # the estimate below decides
                sig = kept[key] if key < base else sigs[kept_here[key - base]]
                sim = float(np.count_nonzero(sig == sigs[i])) / num_perm
                if sim > best or (sim == best and best_key is not None and key < best_key):
                    best, best_key = sim, key
            scores.append(round(best, 4))
            if best_key is not None and best >= self.cfg.threshold:
                out.append(f"near duplicate of {self.kept_ids[best_key]} (estimated Jaccard {best:.2f} on {', '.join(fields)})")
                cluster.append(self.kept_ids[best_key])
            else:
                key = len(self.kept_ids)
                kept_here.append(i)
                self.index.insert(i, key, fresh=not candidates)
                self.kept_ids.append(ids[i] if ids[i] is not None else str(key))
                out.append(None)
                cluster.append(self.kept_ids[key])
        need = base + len(kept_here)
        if need > len(kept):
            self.kept_signatures = np.empty((max(need, 2 * len(kept)), num_perm), dtype=np.uint32)
            self.kept_signatures[:base] = kept[:base]
        self.kept_signatures[base:need] = sigs[kept_here]
        self.clusters = need
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
