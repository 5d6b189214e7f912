"""Read rows from Hugging Face datasets: a Hub dataset, a folder written by save_to_disk, or one .arrow file.

Rows come back as plain Python dicts, like the rows of distill.data.loaders, each with `_line`: its row number
(1-based), so that a bad row can be named. `datasets` is imported only when one of these is read (it is slow to import).
"""

from __future__ import annotations

import re
from pathlib import Path

from distill.errors import DataError


def choose_split(splits: list[str], split: str | None, where: str, prefer: tuple[str, ...] = ("train",)) -> str:
    """`split` if given and present; else the first of `prefer` present; else the only split; else a DataError."""
    if not splits:
        raise DataError(f"{where}: holds no splits")
    if split is not None:
        if split in splits:
            return split
        raise DataError(f"{where}: no split {split!r}; set split to one of: {', '.join(splits)}")
    for name in prefer:
        if name in splits:
            return name
    if len(splits) == 1:
        return splits[0]
    raise DataError(f"{where}: several splits ({', '.join(splits)}) and none is {' or '.join(prefer)}; "
                    f"set split to one of them")


def is_saved_dataset(path: Path) -> bool:
    """True for a folder that Dataset.save_to_disk or DatasetDict.save_to_disk wrote."""
    path = Path(path)
    return ((path / "dataset_info.json").is_file() and (path / "state.json").is_file()) \
        or (path / "dataset_dict.json").is_file()


def _rows(ds, limit: int | None) -> list[dict]:
    """Plain-Python rows of a Dataset, only the first `limit` converted (a contiguous select is a slice, no copy)."""
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    rows = ds.to_list()
    for i, row in enumerate(rows, start=1):
        row["_line"] = i
    return rows


def _one_line(e: Exception) -> str:
    # datasets' messages run over several lines and end with a Python example; keep the lines that say what is wrong
    lines = [s.strip() for s in str(e).splitlines() if s.strip() and not s[0].isspace()]
    lines = [s for s in lines if not s.endswith("e.g.") and not s.startswith("Example")]
    return "; ".join(lines) or type(e).__name__


def _fetch_command(repo_id: str, config: str | None, revision: str | None) -> str:
    # Offline, load_dataset reads only the Arrow copy a previous load_dataset left in the datasets cache: the files
    # `hf download` puts in the hub cache are not enough, so the command to give is a load_dataset.
    args = [repr(repo_id)] + ([repr(config)] if config else []) + ([f"revision={revision!r}"] if revision else [])
    return f'python -c "import datasets; datasets.load_dataset({", ".join(args)})"'


def _load_hub(repo_id: str, config: str | None, revision: str | None):
    """The Hub dataset's splits (a DatasetDict, memory-mapped) through datasets.load_dataset."""
    import datasets

    where = repo_id + (f" (config {config})" if config else "")
    fetch = _fetch_command(repo_id, config, revision)
    try:
        # No split: a DatasetDict of every split, memory-mapped (load_dataset prepares every split anyway), so the
        # split can be chosen and listed here, and only the rows asked for are converted.
        data = datasets.load_dataset(repo_id, config, revision=revision)
    except ConnectionError as e:  # offline (OfflineModeIsEnabled is one) or no network, and not in the cache
        offline = "offline mode is on (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)"
        why = offline if datasets.config.HF_HUB_OFFLINE else f"the Hub cannot be reached ({e})"
        raise DataError(f"{repo_id}: not in the local datasets cache ({datasets.config.HF_DATASETS_CACHE}) and {why}; "
                        f"fetch it once with network access and the same HF_HOME: {fetch}") from None
    except datasets.exceptions.DatasetNotFoundError as e:  # no such repo, private, gated, or no such revision
        raise DataError(f"{repo_id}: {_one_line(e)}") from None
    except FileNotFoundError as e:  # DataFilesNotFoundError, EmptyDatasetError: the repo holds no data files
        raise DataError(f"{where}: {_one_line(e)}") from None
    except ValueError as e:  # chiefly an unknown or missing config: datasets then lists the ones there are
        hint = "; set config to one of them" if "config" in str(e).lower() else ""
        raise DataError(f"{where}: {_one_line(e)}{hint}") from None
    except datasets.exceptions.DatasetsError as e:  # e.g. a data file that does not parse
        raise DataError(f"{where}: {_one_line(e)}") from None
    return data


def hub_fingerprint(repo_id: str, *, config: str | None = None, revision: str | None = None) -> dict[str, str]:
    """Each split's fingerprint as `datasets` computes it from the cached data: the same files, the same values."""
    return {name: ds._fingerprint for name, ds in _load_hub(repo_id, config, revision).items()}


def read_hub(repo_id: str, *, config: str | None = None, split: str | None = None, revision: str | None = None,
             limit: int | None = None, prefer: tuple[str, ...] = ("train",)) -> list[dict]:
    """Rows of a Hub dataset through datasets.load_dataset: online it downloads; offline (HF_HUB_OFFLINE=1 /
    HF_DATASETS_OFFLINE=1) it reads the local cache. Each row gets _line (row number, 1-based). `prefer`: the splits
    read, in order, when `split` names none."""
    import datasets

    where = repo_id + (f" (config {config})" if config else "")
    fetch = _fetch_command(repo_id, config, revision)
    data = _load_hub(repo_id, config, revision)
    ds = data[choose_split(list(data), split, where, prefer)]
    if revision and datasets.config.HF_HUB_OFFLINE and re.fullmatch(r"[0-9a-f]{40}", revision):
        # Offline, datasets serves the newest cached copy whatever the revision; a copy loaded from the Hub sits in
        # a folder named by its commit, so a pinned commit can at least be checked.
        cached = Path(ds.cache_files[0]["filename"]).parent.name if ds.cache_files else None
        if cached != revision:
            raise DataError(f"{where}: the cached copy is of commit {cached}, not revision {revision}; "
                            f"fetch that revision once with network access: {fetch}")
    return _rows(ds, limit)


def read_saved(path: str | Path, *, split: str | None = None, limit: int | None = None,
               prefer: tuple[str, ...] = ("train",)) -> list[dict]:
    """Rows of a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk (`prefer`: as read_hub's)."""
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: folder not found")
    if not is_saved_dataset(path):
        raise DataError(f"{path}: not a folder written by datasets' save_to_disk (expected dataset_info.json and "
                        f"state.json, or dataset_dict.json)")
    try:
        data = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:  # a listed file is missing, a JSON file does not parse
        raise DataError(f"{path}: cannot read this save_to_disk folder ({_one_line(e)})") from None
    if isinstance(data, datasets.DatasetDict):
        data = data[choose_split(list(data), split, str(path), prefer)]
    elif split is not None and data.split is not None:
        choose_split([str(data.split)], split, str(path))  # a one-split folder that knows its split
    return _rows(data, limit)


def read_arrow(path: str | Path, *, limit: int | None = None) -> list[dict]:
    """Rows of an .arrow file: the Arrow streaming format datasets writes, or the Arrow IPC file format."""
    import datasets
    import pyarrow as pa

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return _rows(datasets.Dataset.from_file(str(path)), limit)  # memory-mapped
    except pa.ArrowInvalid:
        pass  # not the streaming format: try the file format
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    except pa.ArrowInvalid as e:
        raise DataError(f"{path}: not an Arrow file (streaming or IPC file format): {e}") from None
    return _rows(datasets.Dataset(table), limit)
