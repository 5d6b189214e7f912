"""A model's identity: what it is (family, architecture) and exactly which weights (hashes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from distill.models.resolve import CHAT_TEMPLATES_DIR, TOKENIZER_FILES, cache_dir
from distill.run_dir import hash_file, hash_json, write_json

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
SHA256 = re.compile(r"[0-9a-f]{64}")
# Keys of a JSON config that record who wrote the file and from where, not how the model computes.
WRITER_KEYS = ("transformers_version", "_name_or_path")
# The identity keys that say what a model computes, by content: a fingerprint uses these, never the folder's path.
CONTENT_KEYS = ("weights_sha256", "tokenizer_sha256", "config_sha256", "generation_config_sha256", "code_sha256")


def hub_cache_sha256(path: Path) -> str | None:
    """The sha256 the Hugging Face cache already names this file by, or None. A snapshot's files are links to
    blobs/NAME, where NAME is the sha256 of the content for every file stored in LFS (all weights); small files
    kept in git are named by their git sha1 (40 hex digits) instead, and are hashed as any other file."""
    path = Path(path)
    if not path.is_symlink():
        return None
    blob = path.resolve()
    if blob.parent.name == "blobs" and SHA256.fullmatch(blob.name) and blob.is_file():
        return blob.name
    return None


def _cached_hash(path: Path) -> str:
    """sha256 of a file: the name the hub cache stores it under, else hashed once and cached by path, size and mtime
    (weights are large; a 140 GB teacher takes minutes to hash, on a login node too)."""
    known = hub_cache_sha256(path)
    if known:
        return known
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
    """The tokenizer files and every chat template, by content."""
    folder = Path(folder)
    files = [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if (folder / CHAT_TEMPLATES_DIR).is_dir():
        files += sorted((folder / CHAT_TEMPLATES_DIR).glob("*.jinja"))
    return hash_json([(str(p.relative_to(folder)), hash_file(p)) for p in files]) if files else None


def json_config_hash(path: Path) -> str | None:
    """config.json or generation_config.json by its settings: key order, spacing and writer stamps do not count."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return hash_file(path)  # unreadable as JSON: its bytes are all there is to compare
    if isinstance(doc, dict):
        doc = {k: v for k, v in doc.items() if k not in WRITER_KEYS}
    return hash_json(doc)


def code_hash(folder: Path) -> str | None:
    """The Python files shipped with the model: what trust_remote_code runs."""
    files = sorted(p for p in Path(folder).glob("*.py") if p.is_file())
    return hash_json([(p.name, hash_file(p)) for p in files]) if files else None


def folder_hash(folder: Path) -> str:
    """Every file under a folder by name and content (large files hashed once, see _cached_hash)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return hash_json([(str(p.relative_to(folder)), _cached_hash(p)) for p in files])


def vocabulary(folder: Path) -> dict[str, int] | None:
    """The tokenizer's token -> id map (added tokens included), read from its files without loading it."""
    folder = Path(folder)
    vocab: dict[str, int] = {}
    if (folder / "tokenizer.json").is_file():
        doc = json.loads((folder / "tokenizer.json").read_text())
        model_vocab = (doc.get("model") or {}).get("vocab") or {}
        if isinstance(model_vocab, list):  # Unigram: [[piece, score], ...], the id is the position
            vocab = {piece: i for i, (piece, *_rest) in enumerate(model_vocab)}
        else:
            vocab = dict(model_vocab)
        vocab.update({t["content"]: t["id"] for t in doc.get("added_tokens") or []})
    elif (folder / "vocab.json").is_file():
        vocab = json.loads((folder / "vocab.json").read_text())
        if (folder / "added_tokens.json").is_file():
            vocab.update(json.loads((folder / "added_tokens.json").read_text()))
    elif (folder / "tokenizer.model").is_file():
        try:
            import sentencepiece
        except ImportError:
            return None
        sp = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    return vocab or None


def ids_that_differ(teacher: dict[str, int], other: dict[str, int]) -> list[str]:
    """The teacher's tokens that have another id (or none) in `other`: where its token ids would mean other strings."""
    return [t for t, i in teacher.items() if other.get(t) != i]


def _card_base_models(folder: Path) -> list[str]:
    """`base_model` from the YAML header of the folder's model card (README.md)."""
    import yaml

    card = folder / "README.md"
    if not card.is_file():
        return []
    text = card.read_text(errors="replace")
    if not text.startswith("---"):
        return []
    try:
        header = yaml.safe_load(text[3:].split("\n---", 1)[0]) or {}
    except yaml.YAMLError:
        return []
    base = header.get("base_model") if isinstance(header, dict) else None
    return [str(b) for b in ([base] if isinstance(base, str) else base or []) if b]


def recorded_names(folder: Path, config: dict) -> dict[str, list[str]]:
    """Names the model's own files give it or its base: config.json `_name_or_path`, the model card's
    `base_model`, a PEFT adapter's `base_model_name_or_path`. Empty lists where a file says nothing."""
    folder = Path(folder)
    adapter = folder / "adapter_config.json"
    adapter_base = json.loads(adapter.read_text()).get("base_model_name_or_path") if adapter.is_file() else None
    own = config.get("_name_or_path")
    return {"name_or_path": [str(own)] if own and str(own) not in (".", "./") else [],
            "base_model": _card_base_models(folder) + ([str(adapter_base)] if adapter_base else [])}


def model_identity(folder: Path, name: str, revision: str | None = None) -> dict:
    """Identity of the model in `folder`; `name` is how the recipe called it."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    try:
        vocab = vocabulary(folder)
    except (ValueError, KeyError, TypeError, AttributeError):  # a tokenizer file of an unknown layout: no vocabulary evidence
        vocab = None
    return {
        "name": name,
        "path": str(folder),
        "revision": revision,
        "family": config.get("model_type"),
        "architectures": config.get("architectures"),
        "weights_sha256": weights_hash(folder),
        "tokenizer_sha256": tokenizer_hash(folder),
        "config_sha256": json_config_hash(folder / "config.json"),
        "generation_config_sha256": json_config_hash(folder / "generation_config.json"),
        "code_sha256": code_hash(folder),
        # Lineage evidence beside model_type (an architecture shared by unrelated families): see provenance/lineage.py.
        "vocab_sha256": hash_json(vocab) if vocab else None,
        "vocab_size": len(vocab) if vocab else None,
        "recorded_names": recorded_names(folder, config),
    }
