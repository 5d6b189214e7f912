"""The evaluation cache: one model's answers and per-item scores on one set, stored under a hash of everything
that determines them, so that a model scored before on the same items with the same prompts and settings is
never scored again (on this machine, or by anyone sharing the cache folder).

One file per key, written under a temporary name and renamed: a reader sees a whole entry or none, and two
processes writing the same key write the same content, the last rename winning.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from distill.evaluate.candidates import Candidate
from distill.metrics import METRICS_DIR
from distill.run_dir import hash_file, hash_json, hash_tree, write_text

# `distill run --no-cache` reaches the evaluate stage's own process through its environment.
NO_CACHE_ENV = "DISTILL_NO_EVAL_CACHE"
# Libraries whose version can change an answer or a score.
LIBRARIES = ("vllm", "transformers", "peft", "torch", "evaluate")


def default_dir() -> Path:
    from distill.models.resolve import cache_dir

    return cache_dir() / "eval"


class EvalCache:
    """Results per (model, set) under a content key; an unreadable or mismatched entry is a miss."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str, item_ids: list[str]) -> dict | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return entry if entry.get("item_ids") == item_ids else None

    def has(self, key: str, item_ids: list[str]) -> bool:
        return self.get(key, item_ids) is not None

    def put(self, key: str, entry: dict) -> None:
        try:
            write_text(self._path(key), json.dumps({**entry, "created_at": time.time()}))
        except OSError as e:  # a full or read-only cache costs a rescore later, never the evaluation
            from distill.progress import console

            console(f"[evaluate] warning: could not write the evaluation cache ({e})")


def open_cache(recipe) -> EvalCache | None:
    """The recipe's cache (evaluate.cache), or None when it is off (evaluate.cache: false, or --no-cache)."""
    setting = recipe.evaluate.cache
    if setting is False or os.environ.get(NO_CACHE_ENV):
        return None
    return EvalCache(Path(setting) if isinstance(setting, str) else default_dir())


def library_versions() -> dict:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@lru_cache(maxsize=None)
def metric_code() -> str:
    """The metric modules (and the helpers they share) by content: a changed metric rescores."""
    return hash_json([(p.name, hash_file(p)) for p in sorted(METRICS_DIR.glob("*.py"))])


@lru_cache(maxsize=None)
def _folder_identity(folder: Path) -> dict:
    from distill.models.identity import model_identity

    return model_identity(folder, str(folder))


def model_key(cand: Candidate) -> dict:
    """What the candidate computes, as the evaluate stage's fingerprint counts a model (model_fingerprint): its
    files by content and the settings that change outputs, not where it lives or its engine's capacity; plus
    its adapter's files by content. Any model folder, not only the recipe's roles (compare scores others)."""
    from distill.models.context import spec_fingerprint

    folder = Path(cand.model_dir).resolve()
    return {**spec_fingerprint(cand.spec, _folder_identity(folder), cand.role, folder),
            "adapter": hash_tree(cand.adapter) if cand.adapter is not None else None}


def cache_record(cache: EvalCache | None, predictions: list[dict]) -> dict:
    """For report.json: the cache folder (null when off) and, per model, the sets whose results came from it."""
    used: dict[str, list[str]] = {}
    for row in predictions:
        if row.get("from_cache") and row["set"] not in used.setdefault(row["model"], []):
            used[row["model"]].append(row["set"])
    return {"dir": str(cache.root) if cache is not None else None, "from_cache": {m: s for m, s in used.items() if s}}
