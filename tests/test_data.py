"""Real data files: every format reads, a bad row names its file and line, the split is deterministic."""

from __future__ import annotations

import json

import pytest

from conftest import PLURAL
from distill.data.loaders import read_rows
from distill.data.split import split_heldout
from distill.errors import DataError


def test_bigbench_rows_carry_their_line():
    rows = read_rows(PLURAL, required=("input", "target"))
    assert len(rows) == 1702
    lines = PLURAL.read_text().splitlines()
    assert '"ability"' in lines[rows[0]["_line"] - 1]
    assert f'"{rows[500]["input"]}"' in lines[rows[500]["_line"] - 1]


def test_jsonl_row_missing_a_field_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "cat", "target": "cats"}\n\n{"input": "dog"}\n')
    with pytest.raises(DataError) as e:
        read_rows(path, required=("input", "target"))
    assert str(e.value).startswith(f"{path}:3: row has no 'target' field")


def test_bigbench_row_missing_a_field_names_its_line(tmp_path):
    path = tmp_path / "task.json"
    path.write_text(json.dumps({"examples": [{"input": "a", "target": "b"}, {"input": "c"}]}, indent=2))
    with pytest.raises(DataError) as e:
        read_rows(path, required=("input", "target"))
    line = path.read_text().splitlines().index('      "input": "c"') + 1
    assert str(e.value).startswith(f"{path}:{line - 1}:")


def test_broken_json_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"input": "cat"}\n{"input": \n')
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        read_rows(path)


def test_csv_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("input,target\ncat,cats\n,x\n")
    with pytest.raises(DataError, match=r"d.csv:3: row has no 'input'"):
        read_rows(tmp_path / "d.csv", required=("input",))
    pq.write_table(pa.Table.from_pylist([{"input": "cat", "target": "cats"}]), tmp_path / "d.parquet")
    assert read_rows(tmp_path / "d.parquet")[0]["target"] == "cats"


def test_heldout_split_is_deterministic_disjoint_and_covers_rare_slices():
    rows = read_rows(PLURAL)
    held, rest = split_heldout(rows, 200, seed=0, slice_field="comment", min_per_slice=15)
    again, _ = split_heldout(rows, 200, seed=0, slice_field="comment", min_per_slice=15)
    assert [r["input"] for r in held] == [r["input"] for r in again]
    assert len(held) == 200 and len(held) + len(rest) == len(rows)
    assert not {r["_line"] for r in held} & {r["_line"] for r in rest}
    assert sum(r["comment"] == "irregular" for r in held) >= 15
