"""The run directory: where each stage's files live, atomic writes, fingerprints, completion markers.

Stages talk only through these files. A stage is complete when its marker exists and
records the fingerprint of the settings and inputs it was run with; anything written
without a marker is treated as unfinished and redone.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

STAGES = ("generate", "filter", "train", "evaluate", "document")
MARKER = "_COMPLETE.json"
# Written into the adapter folder by the document stage after train completed: not part of train's output hash.
DATA_MANIFEST = "data_manifest.json"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def finite(obj: Any) -> Any:
    """`obj` with every NaN or infinite float (a mean of no items, say) replaced by None, so it is strict JSON."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if isinstance(obj, numbers.Integral):  # numpy's integer types too
        return int(obj)
    if isinstance(obj, numbers.Real):  # float, and numpy's floating types
        value = float(obj)
        return value if math.isfinite(value) else None
    return obj


def write_json(target: Path, obj: Any) -> None:
    """Strict JSON (no NaN or Infinity, which many parsers refuse): non-finite floats are written as null."""
    write_text(target, json.dumps(finite(obj), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n")


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def hash_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(root: Path, skip: tuple[str, ...] = (MARKER, DATA_MANIFEST)) -> str:
    """Content hash of every file under `root` (names and bytes), in a stable order."""
    root = Path(root)
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name not in skip and not p.name.startswith("."))
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(hash_file(p).encode())
    return h.hexdigest()


class RunDir:
    """Paths of one run. Every path a stage reads or writes is named here."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def stage(self, name: str) -> Path:
        return self.root / name

    # inputs and outputs, by stage
    @property
    def recipe(self) -> Path:
        return self.root / "recipe.yaml"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def seeds(self) -> Path:
        return self.stage("generate") / "seeds.jsonl"

    @property
    def heldout(self) -> Path:
        return self.stage("generate") / "heldout.jsonl"

    @property
    def generated(self) -> Path:
        return self.stage("generate") / "rows.parquet"

    @property
    def chunks(self) -> Path:
        return self.stage("generate") / "chunks"

    @property
    def filtered(self) -> Path:
        return self.stage("filter") / "rows.parquet"

    @property
    def adapter(self) -> Path:
        return self.stage("train") / "adapter"

    @property
    def predictions(self) -> Path:
        return self.stage("evaluate") / "predictions.parquet"

    @property
    def eval_report(self) -> Path:
        return self.stage("evaluate") / "report.json"

    # completion markers
    def marker(self, stage: str) -> Path:
        return self.stage(stage) / MARKER

    def read_marker(self, stage: str) -> dict | None:
        path = self.marker(stage)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def is_complete(self, stage: str, fingerprint: str) -> bool:
        marker = self.read_marker(stage)
        return bool(marker) and marker.get("fingerprint") == fingerprint and marker.get("output_hash") == hash_tree(self.stage(stage))

    def mark_complete(self, stage: str, fingerprint: str, summary: dict) -> dict:
        marker = {"stage": stage, "fingerprint": fingerprint, "output_hash": hash_tree(self.stage(stage)), "summary": summary}
        write_json(self.marker(stage), marker)
        return marker

    def clear_marker(self, stage: str) -> None:
        self.marker(stage).unlink(missing_ok=True)
