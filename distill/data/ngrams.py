"""Word n-gram hashes of many texts at once, stable across processes (numpy, no per-n-gram Python).

Each distinct word gets a 64-bit hash once (blake2b, cached); the hash of an n-gram is a
polynomial of its word hashes, computed for a whole batch of texts in n vectorised steps.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

_WORD = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial hash


def normalize_text(text: str | None) -> str:
    """Case-folded, accent-stripped words joined by single spaces: the key of 'same text'."""
    if not text:
        return ""
    text = str(text)
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return " ".join(_WORD.findall(text.casefold()))


def words(text: str | None) -> list[str]:
    return normalize_text(text).split()


class NgramHasher:
    """Word hashes, cached per word and (up to `max_cached_words` words in all) per whole text.

    Filters that share one hasher (near dedup, decontamination) tokenise each text once.
    """

    def __init__(self, max_cached_words: int = 20_000_000):
        self._words: dict[str, int] = {}
        self._texts: dict[str, np.ndarray] = {}
        self._cached_words, self.max_cached_words = 0, max_cached_words

    def word_hashes(self, tokens: list[str]) -> np.ndarray:
        cache = self._words
        out = [cache.get(w) for w in tokens]
        if None in out:
            for k, w in enumerate(tokens):
                if out[k] is None:
                    h = cache.get(w)
                    if h is None:
                        h = cache[w] = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                    out[k] = h
        return np.array(out, dtype=np.uint64)

    def text_hashes(self, text: str | None) -> np.ndarray:
        """The hashes of the text's normalised words, in order."""
        key = "" if text is None else str(text)
        found = self._texts.get(key)
        if found is not None:
            return found
        hashes = self.word_hashes(words(key))
        if self._cached_words + len(hashes) <= self.max_cached_words:
            self._texts[key] = hashes
            self._cached_words += len(hashes)
        return hashes

    def batch_texts(self, texts: list, n: int, short_whole: bool = True) -> tuple[np.ndarray, np.ndarray]:
        return self.ngrams([self.text_hashes(t) for t in texts], n, short_whole)

    @staticmethod
    def ngrams(arrays: list[np.ndarray], n: int, short_whole: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, owner): the n-gram hashes of every text and the index of the text each belongs to.

        A text with fewer than n words contributes one hash of all its words when `short_whole`
        (so short texts still compare), nothing otherwise; an empty text contributes nothing.
        """
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.uint64)
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if len(lengths) else np.zeros(0, np.int64)
        owner_of_word = np.repeat(np.arange(len(arrays)), lengths)
        hashes, owners = [], []
        if len(flat) >= n:
            m = len(flat) - n + 1
            acc = np.zeros(m, dtype=np.uint64)
            with np.errstate(over="ignore"):
                for j in range(n):
                    acc = acc * _MULT + flat[j:j + m]
            # keep n-grams that start and end inside the same text
            valid = owner_of_word[:m] == owner_of_word[n - 1:]
            hashes.append(acc[valid])
            owners.append(owner_of_word[:m][valid])
        if short_whole:
            short = np.nonzero((lengths > 0) & (lengths < n))[0]
            if len(short):
                whole = np.zeros(len(short), dtype=np.uint64)
                with np.errstate(over="ignore"):
                    for k, i in enumerate(short):
                        acc = np.uint64(lengths[i])  # distinguishes lengths from n-grams
                        for h in flat[starts[i]:starts[i] + lengths[i]]:
                            acc = acc * _MULT + h
                        whole[k] = acc
                hashes.append(whole)
                owners.append(short)
        if not hashes:
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        return np.concatenate(hashes), np.concatenate(owners).astype(np.int64)

    @staticmethod
    def runs(arrays: list[np.ndarray], sizes: set[int]):
        """Yield (size, hashes, owner) for each wanted size in increasing order: the hashes of every
        run of `size` consecutive words inside one text, and the index of that text.

        One pass serves every size: the hash of a run of L words extends the run of L - 1, so all
        sizes up to the largest cost what that largest alone costs. Hashes are comparable only
        between runs of the same size.
        """
        if not sizes or not arrays:
            return
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate(arrays)
        owner_of_word = np.repeat(np.arange(len(arrays)), lengths)
        acc = np.zeros(len(flat), dtype=np.uint64)
        for size in range(1, max(sizes) + 1):
            m = len(flat) - size + 1
            if m <= 0:
                return
            with np.errstate(over="ignore"):
                acc = acc[:m] * _MULT + flat[size - 1:size - 1 + m]
            if size in sizes:
                valid = owner_of_word[:m] == owner_of_word[size - 1:]  # starts and ends in the same text
                yield size, acc[valid], owner_of_word[:m][valid]


_shared: NgramHasher | None = None


def shared_hasher() -> NgramHasher:
    """One hasher per process, so that the filters of a stage tokenise each text once."""
    global _shared
    if _shared is None:
        _shared = NgramHasher()
    return _shared
