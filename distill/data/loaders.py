"""Load real data rows from JSONL, CSV, Parquet or a BIG-bench task.json.

Each row comes back with `_line`, the line of the file it was read from, so that a bad
row can be named by file and line.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from distill.errors import DataError

FORMATS = ("jsonl", "csv", "parquet", "bigbench")


def detect_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".json":
        return "bigbench"
    raise DataError(f"{path}: cannot tell the format from the file name; set format to one of {', '.join(FORMATS)}")


def _json_array_lines(text: str, key: str) -> list[int]:
    """Line number of each element of the top-level array `key` in a JSON document."""
    decoder = json.JSONDecoder()
    start = text.find(f'"{key}"')
    start = text.find("[", start) + 1
    lines, pos, line = [], start, text.count("\n", 0, start) + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            if text[pos] == "\n":
                line += 1
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return lines
        lines.append(line)
        _, end = decoder.raw_decode(text, pos)
        line += text.count("\n", pos, end)
        pos = end


def _read_bigbench(path: Path) -> list[dict]:
    text = path.read_text()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("examples"), list):
        raise DataError(f"{path}: expected a BIG-bench task with an 'examples' list")
    rows = []
    for example, line in zip(doc["examples"], _json_array_lines(text, "examples")):
        if not isinstance(example, dict):
            raise DataError(f"{path}:{line}: an example must be a JSON object")
        row = dict(example)
        if "target" not in row and isinstance(row.get("target_scores"), dict):
            # multiple choice: the answer is the choice with the top score
            row["target"] = max(row["target_scores"], key=row["target_scores"].get)
        row["_line"] = line
        rows.append(row)
    return rows


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON: {e.msg}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{line_no}: each line must be a JSON object")
            row["_line"] = line_no
            rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = []
        for row in reader:
            row = dict(row)
            row["_line"] = reader.line_num
            rows.append(row)
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    rows = pq.read_table(path).to_pylist()
    for i, row in enumerate(rows):
        row["_line"] = i + 1  # parquet has no lines: the row number stands in
    return rows


def read_rows(path: str | Path, fmt: str = "auto", required: tuple[str, ...] = ()) -> list[dict]:
    """Read every row; fail on the first row that lacks a required field, naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet, "bigbench": _read_bigbench}
    rows = reader[detect_format(path, fmt)](path)
    for row in rows:
        for field in required:
            if row.get(field) is None or row.get(field) == "":
                what = "row" if path.suffix != ".parquet" else "row number"
                raise DataError(f"{path}:{row['_line']}: {what} has no '{field}' field (has: {', '.join(k for k in row if k != '_line')})")
    return rows
