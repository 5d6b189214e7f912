"""Read a recipe's data source as rows: a local file, files matching a glob, a folder written by `datasets`, an
.arrow file, or a Hugging Face Hub dataset.

Every row comes back with `_line` (its line in a text file, its row number elsewhere and across a glob's files) and
`_where`, the place an error names ("data/train.jsonl:12", "hub dataset gsm8k row 7").
"""

from __future__ import annotations

import glob
from pathlib import Path

from distill.data.loaders import check_utf8, detect_format, read_rows
from distill.errors import DataError
from distill.run_dir import hash_file, hash_tree

SOURCE_KEYS = ("_line", "_where")  # what reading adds to a row: never one of the data's columns


def is_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def source_files(path: str) -> list[Path]:
    """The files a `path` names: itself, or a glob's matches in name order."""
    if not is_glob(path):
        return [Path(path)]
    files = [Path(p) for p in sorted(glob.glob(path)) if Path(p).is_file()]
    if not files:
        raise DataError(f"{path}: no file matches")
    return files


def source_format(src) -> str:
    """The format rows are read in: a text format, parquet, arrow, datasets (a saved folder) or hub."""
    if src.hub is not None:
        return "hub"
    first = source_files(src.path)[0]
    if src.format == "datasets" or (src.format == "auto" and first.is_dir()):
        return "datasets"
    if src.format == "arrow" or (src.format == "auto" and first.suffix.lower() == ".arrow"):
        return "arrow"
    return detect_format(first, src.format)


def _numbered(rows: list[dict], where: str) -> list[dict]:
    for i, row in enumerate(rows, start=1):
        row["_line"], row["_where"] = i, f"{where} row {i}"
    return rows


def read_source(src, *, limit: int | None = None, prefer_splits: tuple[str, ...] = ("train",)) -> list[dict]:
    """The source's rows, or its first `limit`. `prefer_splits`: the split read from a Hub dataset or a saved folder
    holding several, when `src.split` names none."""
    from distill.data import hf_datasets

    fmt = source_format(src)
    if fmt == "hub":
        rows = hf_datasets.read_hub(src.hub, config=src.config, split=src.split, revision=src.revision, limit=limit,
                                    prefer=prefer_splits)
        return _numbered(rows, describe(src))
    if fmt == "datasets":
        return _numbered(hf_datasets.read_saved(src.path, split=src.split, limit=limit, prefer=prefer_splits), src.path)
    rows: list[dict] = []
    for path in source_files(src.path):
        left = None if limit is None else limit - len(rows)
        if left == 0:
            break
        if fmt == "arrow":
            part = _numbered(hf_datasets.read_arrow(path, limit=left), str(path))
        else:
            part = read_rows(path, fmt, limit=left)
            for row in part:
                row["_where"] = f"{path}:{row['_line']}" if fmt != "parquet" else f"{path} row {row['_line']}"
        rows.extend(part)
    if is_glob(src.path):  # ids and provenance name a row by its number across the files; messages by file and line
        for i, row in enumerate(rows, start=1):
            row["_line"] = i
    return rows


def check_text(src) -> str:
    """Decode a text source's files whole as UTF-8 (a bad byte named by file and line); returns the format."""
    fmt = source_format(src)
    if fmt in ("jsonl", "csv", "json", "bigbench"):
        for path in source_files(src.path):
            check_utf8(path)
    return fmt


def describe(src) -> str:
    """The source as messages name it."""
    if src.hub is not None:
        return f"hub dataset {src.hub}" + (f" ({src.config})" if src.config else "")
    return src.path


def place(src, line: int) -> str:
    """Where a row of the source is, by its `_line`, as messages name it."""
    text = src.hub is None and not is_glob(src.path) and source_format(src) in ("jsonl", "csv", "json", "bigbench")
    return f"{describe(src)}:{line}" if text else f"{describe(src)} row {line}"


def content_hash(path: str | Path) -> str:
    """sha256 of a file, or of every file under a folder (a `datasets` folder)."""
    path = Path(path)
    return hash_tree(path) if path.is_dir() else hash_file(path)


def identity(src) -> dict:
    """The source by content: its file's (or folder's) hash, each file's for a glob, the dataset's own fingerprint
    for a Hub dataset (the same cached files give the same one on any machine)."""
    if src.hub is not None:
        from distill.data.hf_datasets import hub_fingerprint

        return {"hub": src.hub, "config": src.config, "split": src.split, "revision": src.revision,
                "fingerprint": hub_fingerprint(src.hub, config=src.config, revision=src.revision)}
    files = source_files(src.path)
    if not is_glob(src.path):
        return {"sha256": content_hash(files[0]), "suffix": files[0].suffix.lower()}
    return {"files": {f.name: content_hash(f) for f in files}}


def data_sources(recipe) -> dict[str, object]:
    """Every data source the recipe reads (its data, evaluation sets with a source of their own) by name: a file's
    or folder's sha256, a glob's or a Hub dataset's identity."""
    out = {}
    for src in [recipe.data] + [s for s in recipe.evaluate.sets if s.data is None]:
        ident = identity(src)
        out[describe(src)] = ident.get("sha256", ident)
    return out
