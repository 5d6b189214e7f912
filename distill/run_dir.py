"""The run directory: where each stage's files live, atomic writes, fingerprints, completion markers.

Stages talk only through these files. A stage is complete when its marker exists and
records the fingerprint of the settings and inputs it was run with; anything written
without a marker is treated as unfinished and redone.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import numbers
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

MARKER = "_COMPLETE.json"
DEV_SPLIT = "dev.jsonl"  # the loop's dev split, written by generate beside heldout.jsonl
# Written into the adapter folder by the document stage after train completed: not part of train's output hash.
DATA_MANIFEST = "data_manifest.json"


def fsync_dir(folder: Path) -> None:
    """Make a rename or new file in `folder` durable: without it a crash can lose the rename though the data is on disk."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some network file systems refuse fsync on a directory: nothing more can be done there
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _create_temp(target: Path) -> Path:
    """A new empty file beside `target`, created with mode 0666 so the umask (and a default ACL) decide its
    permissions, as for any file the user writes; mkstemp's 0600 would hide outputs from a shared group."""
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it over `target` only on success, then fsync the folder."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _create_temp(target)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        fsync_dir(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# --------------------------------------------------------------------------- locks shared by processes and nodes

LOCK_ENV = "DISTILL_LOCK"  # "flock" or "soft" forces the kind; unset: flock where the file system supports it
_lock_kinds: dict[Path, tuple[str, str | None]] = {}


def _mount_of(folder: Path) -> tuple[str, set[str]] | None:
    """File system type and mount options of the mount holding `folder` (Linux /proc/self/mounts)."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    folder_s, best = str(folder.resolve()), None
    for line in lines:
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = folder_s == point or folder_s.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[2], set(fields[3].split(",")))
    return None if best is None else (best[1], best[2])


def _flock_problem(folder: Path) -> str | None:
    """Why flock cannot exclude processes of other nodes in `folder`, or None where it can (as far as can be told)."""
    import fcntl

    probe = folder / ".lock-probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):  # those mean another process holds it
            return f"flock fails there ({os.strerror(e.errno)})"
    finally:
        os.close(fd)
    mount = _mount_of(folder)
    if mount is None:
        return None
    fstype, options = mount
    # mounted so that flock succeeds but only excludes processes on the same node
    local = {"nfs": {"nolock", "local_lock=flock", "local_lock=all"}, "nfs4": {"local_lock=flock", "local_lock=all"},
             "lustre": {"localflock"}}.get(fstype, set()) & options
    if local:
        return f"the {fstype} file system is mounted with {sorted(local)[0]}: flock excludes only processes on one node"
    return None


def lock_kind(folder: Path) -> tuple[str, str | None]:
    """("flock", None), or ("soft", why) where flock cannot be trusted; probed once per folder."""
    folder = Path(folder)
    forced = os.environ.get(LOCK_ENV, "").strip().lower()
    if forced in ("flock", "soft"):
        return forced, f"{LOCK_ENV}={forced}" if forced == "soft" else None
    if folder not in _lock_kinds:
        problem = _flock_problem(folder)
        _lock_kinds[folder] = ("soft", problem) if problem else ("flock", None)
        if problem:
            from distill.progress import console

            console(f"warning: {folder}: {problem}; locking with files made by atomic create instead (a process "
                    f"killed on another node leaves its *.lock-soft file behind: remove it once no distill process "
                    f"of this run is left)")
    return _lock_kinds[folder]


def run_lock(path: Path, timeout: float = -1):
    """A lock on `path` that excludes other processes, on other nodes too where the file system allows: flock where
    it works, else a lock file created with O_CREAT | O_EXCL (left behind by a killed holder; one of a dead process
    on the same host is removed by the next taker). `timeout` seconds, -1: wait for ever."""
    from filelock import SoftFileLock, UnixFileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind, _ = lock_kind(path.parent)
    if kind == "soft":
        return SoftFileLock(str(path) + "-soft", timeout=timeout)
    return UnixFileLock(str(path), timeout=timeout)


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
    def dev(self) -> Path:
        return self.stage("generate") / DEV_SPLIT

    @property
    def loop(self) -> Path:
        return self.root / "loop"  # a loop's rounds, each a run directory (distill.loop.layout)

    @property
    def loop_record(self) -> Path:
        return self.loop / "loop.json"  # every round's figures and why the loop stopped

    @property
    def generated(self) -> Path:
        return self.stage("generate") / "rows.parquet"

    @property
    def teacher_logprobs(self) -> Path:
        return self.stage("generate") / "teacher_logprobs.parquet"

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

    def mark_complete(self, stage: str, fingerprint: str, summary: dict, launch: dict | None = None) -> dict:
        marker = {"stage": stage, "fingerprint": fingerprint, "output_hash": hash_tree(self.stage(stage)), "summary": summary,
                  **({"launch": launch} if launch else {})}
        write_json(self.marker(stage), marker)
        return marker

    def clear_marker(self, stage: str) -> None:
        self.marker(stage).unlink(missing_ok=True)

    # work that no longer matches its settings: moved aside, never deleted unasked
    @property
    def stale(self) -> Path:
        return self.root / ".stale"

    def move_aside(self, path: Path, label: str) -> Path:
        """Rename `path` to .stale/<label>-<UTC time>/ in this run (the same file system: no copy) and return it."""
        import time

        self.stale.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for n in range(1000):
            dest = self.stale / (f"{label}-{stamp}" + (f"-{n}" if n else ""))
            if not dest.exists():
                os.rename(path, dest)
                fsync_dir(self.stale)
                fsync_dir(Path(path).parent)
                return dest
        raise FileExistsError(f"{self.stale}: no free name for {label}-{stamp}")

    def stale_folders(self) -> list[Path]:
        """Work moved aside, oldest first."""
        return sorted(self.stale.iterdir(), key=lambda p: p.stat().st_mtime) if self.stale.is_dir() else []


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)
