"""A model's identity: what it is (family, architecture) and exactly which weights (hashes)."""

from __future__ import annotations

import json
from pathlib import Path

from distill.models.resolve import cache_dir
from distill.run_dir import hash_file, hash_json, write_json

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model", "special_tokens_map.json")


def _cached_hash(path: Path) -> str:
    """sha256 of a file, cached by path, size and mtime (weights are large; hashing is repeated often)."""
    stat = path.stat()
    key = hash_json([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    memo = cache_dir() / "hashes" / f"{key}.json"
    if memo.is_file():
        return json.loads(memo.read_text())["sha256"]
    digest = hash_file(path)
    write_json(memo, {"path": str(path), "sha256": digest})
    return digest


def weights_hash(folder: Path) -> str:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    return hash_json([(p.name, _cached_hash(p)) for p in files])


def tokenizer_hash(folder: Path) -> str | None:
    files = [Path(folder) / name for name in TOKENIZER_FILES if (Path(folder) / name).is_file()]
    return hash_json([(p.name, hash_file(p)) for p in files]) if files else None


def model_identity(folder: Path, name: str, revision: str | None = None) -> dict:
    """Identity of the model in `folder`; `name` is how the recipe called it."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    return {
        "name": name,
        "path": str(folder),
        "revision": revision,
        "family": config.get("model_type"),
        "architectures": config.get("architectures"),
        "weights_sha256": weights_hash(folder),
        "tokenizer_sha256": tokenizer_hash(folder),
    }
