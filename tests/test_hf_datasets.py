"""Hugging Face datasets as data: a Hub dataset read offline from the local cache, save_to_disk folders, .arrow files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.data.hf_datasets import (
    choose_split,
    is_saved_dataset,
    read_arrow,
    read_hub,
    read_saved,
)
from distill.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "f" * 40


def _messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]


def _rows(prefix: str, n: int) -> list[dict]:
    return [{"instruction": f"{prefix}-{i}", "messages": _messages(i)} for i in range(n)]


@pytest.fixture(autouse=True)
def _no_real_cache(tmp_path, monkeypatch):
    """Whatever datasets would cache in this process goes under tmp_path (its paths are read at import, hence setattr)."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", tmp_path / "hf-datasets" / "downloads")


# ---- the Hub, offline -------------------------------------------------------------------------------------------

README = """---
configs:
- config_name: en
  data_files:
  - {split: train, path: en/train-*}
  - {split: test, path: en/test-*}
- config_name: fr
  data_files:
  - {split: train, path: fr/train-*}
  - {split: test, path: fr/test-*}
---
# alpaca-mini
"""

# Each case is one read_hub call, all made in one subprocess (datasets reads its cache paths and the offline switch
# from the environment at import): its rows, or the message of its DataError.
CASES = {
    "en": {"config": "en"},
    "fr_test": {"config": "fr", "split": "test", "limit": 1},
    "en_limit": {"config": "en", "limit": 2},
    "pinned": {"config": "en", "revision": COMMIT},
    "other_commit": {"config": "en", "revision": OTHER},
    "no_config": {},
    "bad_config": {"config": "de"},
    "bad_split": {"config": "en", "split": "validation"},
    "absent": {"repo_id": "someuser/absent", "config": "main"},
}
SCRIPT = """
import json, sys
from distill.data.hf_datasets import read_hub
from distill.errors import DataError
out = {}
for name, kwargs in json.loads(sys.argv[1]).items():
    try:
        out[name] = read_hub(**{"repo_id": "someuser/alpaca-mini", **kwargs})
    except DataError as e:
        out[name] = "DataError: " + str(e)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> dict:
    """What read_hub returned for each of CASES, offline, from a datasets cache holding someuser/alpaca-mini.

    The cache is what an online `load_dataset("someuser/alpaca-mini", config)` leaves, and all that datasets 5 reads
    offline (it never looks at the hub cache `hf download` fills): Arrow files and dataset_info.json under
    {HF_DATASETS_CACHE}/someuser___alpaca-mini/<config>/0.0.0/<commit>/. load_dataset on the same repo checked out
    locally writes exactly that, but under alpaca-mini/<config>/0.0.0/<content hash>/: renamed to the Hub's names."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("hub")
    repo, cache = root / "alpaca-mini", root / "hf" / "datasets"
    for config, n in (("en", 5), ("fr", 3)):
        (repo / config).mkdir(parents=True)
        for split in ("train", "test"):
            table = pa.Table.from_pylist(_rows(f"{config}-{split}", n))
            pq.write_table(table, repo / config / f"{split}-00000-of-00001.parquet")
    (repo / "README.md").write_text(README)
    for config in ("en", "fr"):
        datasets.load_dataset(str(repo), config, cache_dir=str(cache))
    (cache / "alpaca-mini").rename(cache / "someuser___alpaca-mini")
    for built in (cache / "someuser___alpaca-mini").glob("*/0.0.0/*"):
        if built.is_dir():
            built.rename(built.with_name(COMMIT))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(root / "hf"), HF_HUB_CACHE=str(root / "hf" / "hub"), HF_DATASETS_CACHE=str(cache),
               XDG_CACHE_HOME=str(root / "xdg"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(CASES)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_hub_dataset_reads_offline_from_the_local_cache(hub):
    assert [r["instruction"] for r in hub["en"]] == [f"en-train-{i}" for i in range(5)]  # train is the default split
    assert [r["_line"] for r in hub["en"]] == [1, 2, 3, 4, 5]
    assert hub["en"][3]["messages"] == _messages(3)  # a chat column comes back as a list of dicts
    assert hub["fr_test"] == [{"instruction": "fr-test-0", "messages": _messages(0), "_line": 1}]
    assert [r["instruction"] for r in hub["en_limit"]] == ["en-train-0", "en-train-1"]


def test_hub_revision_offline_is_checked_against_the_cached_commit(hub):
    assert [r["instruction"] for r in hub["pinned"]] == [f"en-train-{i}" for i in range(5)]
    assert hub["other_commit"].startswith(
        f"DataError: someuser/alpaca-mini (config en): the cached copy is of commit {COMMIT}, not revision {OTHER}")
    assert f"revision='{OTHER}'" in hub["other_commit"]


def test_hub_dataset_not_cached_offline_says_how_to_fetch_it(hub):
    message = hub["absent"]
    assert message.startswith("DataError: someuser/absent: not in the local datasets cache")
    assert "offline mode is on (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)" in message
    assert message.endswith("""python -c "import datasets; datasets.load_dataset('someuser/absent', 'main')\"""")
    assert "\n" not in message


def test_hub_config_and_split_errors_list_the_choices(hub):
    assert "en, fr" in hub["no_config"] and "set config" in hub["no_config"]
    assert "config 'de'" in hub["bad_config"] and "['en', 'fr']" in hub["bad_config"]
    assert hub["bad_split"] == ("DataError: someuser/alpaca-mini (config en): no split 'validation'; "
                                "set split to one of: train, test")
    assert not any("\n" in hub[k] for k in ("no_config", "bad_config", "bad_split"))


# ---- save_to_disk folders and .arrow files ----------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path) -> Path:
    from datasets import Dataset, DatasetDict

    splits = {"test": Dataset.from_list(_rows("test", 2)), "train": Dataset.from_list(_rows("train", 4))}
    DatasetDict(splits).save_to_disk(tmp_path / "dict")
    Dataset.from_list(_rows("only", 3)).save_to_disk(tmp_path / "one")
    return tmp_path


def test_saved_dataset_dict_chooses_a_split(saved):
    rows = read_saved(saved / "dict")  # train is preferred, though test was saved first
    assert [r["instruction"] for r in rows] == [f"train-{i}" for i in range(4)]
    assert [r["_line"] for r in rows] == [1, 2, 3, 4]
    assert rows[1]["messages"] == _messages(1)
    assert [r["instruction"] for r in read_saved(saved / "dict", split="test")] == ["test-0", "test-1"]
    assert len(read_saved(saved / "dict", limit=2)) == 2
    with pytest.raises(DataError, match=r"dict: no split 'validation'; set split to one of: test, train$"):
        read_saved(saved / "dict", split="validation")


def test_saved_single_dataset(saved):
    rows = read_saved(saved / "one", limit=2)
    assert rows == [{"instruction": f"only-{i}", "messages": _messages(i), "_line": i + 1} for i in range(2)]
    assert len(read_saved(saved / "one")) == 3


def test_folder_that_is_not_a_saved_dataset(saved, tmp_path):
    assert is_saved_dataset(saved / "dict") and is_saved_dataset(saved / "one") and is_saved_dataset(saved / "dict" / "train")
    (tmp_path / "plain").mkdir()
    assert not is_saved_dataset(tmp_path / "plain")
    with pytest.raises(DataError, match="not a folder written by datasets' save_to_disk .expected dataset_info.json"):
        read_saved(tmp_path / "plain")
    with pytest.raises(DataError, match="folder not found"):
        read_saved(tmp_path / "missing")


def test_arrow_file_written_by_datasets(saved):
    (arrow,) = (saved / "dict" / "train").glob("*.arrow")
    rows = read_arrow(arrow)
    assert [r["instruction"] for r in rows] == [f"train-{i}" for i in range(4)]
    assert rows[2]["messages"] == _messages(2) and rows[2]["_line"] == 3
    assert [r["_line"] for r in read_arrow(arrow, limit=1)] == [1]


def test_arrow_ipc_file_format_and_a_file_that_is_not_arrow(tmp_path):
    import pyarrow as pa

    table = pa.Table.from_pylist(_rows("ipc", 3))
    with pa.ipc.new_file(tmp_path / "rows.arrow", table.schema) as writer:
        writer.write_table(table)
    assert read_arrow(tmp_path / "rows.arrow", limit=2) == [
        {"instruction": f"ipc-{i}", "messages": _messages(i), "_line": i + 1} for i in range(2)]
    (tmp_path / "bad.arrow").write_text("not arrow")
    with pytest.raises(DataError, match="bad.arrow: not an Arrow file"):
        read_arrow(tmp_path / "bad.arrow")


def test_choose_split():
    assert choose_split(["test", "train"], None, "w") == "train"
    assert choose_split(["test", "validation"], None, "w", prefer=("validation", "test")) == "validation"
    assert choose_split(["only"], None, "w") == "only"
    assert choose_split(["a", "b"], "b", "w") == "b"
    with pytest.raises(DataError, match=r"^data.hub x/y: several splits \(a, b\) and none is train; set split to one of them$"):
        choose_split(["a", "b"], None, "data.hub x/y")


def test_read_hub_in_process_offline(monkeypatch):
    """In this process too (its cache redirected to tmp_path above): a repo not cached offline is a DataError."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read from the environment at import
    with pytest.raises(DataError, match="someuser/never-cached: not in the local datasets cache"):
        read_hub("someuser/never-cached")
