"""Load real data rows from a local file: JSONL, CSV, Parquet, a JSON list of objects, or a BIG-bench task.json.

Each row comes back with `_line`, the line of the file it was read from, so that a bad
row can be named by file and line.
"""

from __future__ import annotations

import codecs
import csv
import json
from pathlib import Path

from distill.errors import DataError

FORMATS = ("jsonl", "csv", "parquet", "json", "bigbench")
# What a refused file is told it could be instead.
READABLE = ("JSONL (.jsonl: one JSON object per line), CSV (.csv, with a header row), Parquet (.parquet), JSON (.json: a "
            "list of objects, or a BIG-bench task: an object with an 'examples' list), an .arrow file, a folder written "
            "by datasets' save_to_disk, or a Hub dataset (hub:)")


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
        return "json"  # a list of objects, or a BIG-bench task: told apart by what the file holds
    raise DataError(f"{path}: cannot tell the format from the file name; set format to one of {', '.join(FORMATS)}")


def check_utf8(path: Path, block: int = 1 << 20) -> None:
    """Decode the whole file as UTF-8 in blocks (constant memory); a bad byte is named by file and line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as e:
                # e.start can be negative when the bad sequence began in the previous block
                line += data.count(b"\n", 0, max(e.start, 0))
                raise DataError(f"{path}:{line}: not UTF-8; save the file as UTF-8") from None
            if not data:
                return
            line += data.count(b"\n")


def _json_array_lines(text: str, key: str | None) -> list[int]:
    """Line number of each element of the top-level array `key` in a JSON document (None: the document is the
    array)."""
    decoder = json.JSONDecoder()
    start = text.find(f'"{key}"') if key is not None else 0
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


def _read_json(path: Path, limit: int | None = None) -> list[dict]:
    """A JSON document: a list of row objects (alpaca_data.json), or a BIG-bench task (an object with 'examples')."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values: most often one object per line
            raise DataError(f"{path}:{e.lineno}: a .json file is read as one JSON document, but this one holds several "
                            f"JSON values (JSON Lines?): rename it to .jsonl or set its format to jsonl") from None
        raise DataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if isinstance(doc, list):
        examples, lines = doc, _json_array_lines(text, None)
    elif isinstance(doc, dict) and isinstance(doc.get("examples"), list):
        examples, lines = doc["examples"], _json_array_lines(text, "examples")
    else:
        what = "an object without an 'examples' list" if isinstance(doc, dict) else "a JSON scalar"
        raise DataError(f"{path}: {what}, not a format distill reads; distill reads {READABLE}")
    rows = []
    for example, line in zip(examples, lines):
        if not isinstance(example, dict):
            raise DataError(f"{path}:{line}: each row must be a JSON object")
        row = dict(example)
        if "target" not in row and isinstance(row.get("target_scores"), dict):
            # multiple choice: the answer is the choice with the top score
            row["target"] = max(row["target_scores"], key=row["target_scores"].get)
        row["_line"] = line
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def _read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    # newline="\n": lines end at "\n" only, as check_utf8 counts them
    with open(path, encoding="utf-8-sig", newline="\n") as f:
        for line_no, line in enumerate(f, start=1):
            if limit is not None and len(rows) >= limit:
                break
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


def _read_csv(path: Path, limit: int | None = None) -> list[dict]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        rows = []
        try:
            for row in reader:
                if limit is not None and len(rows) >= limit:
                    break
                row = dict(row)
                row["_line"] = reader.line_num
                rows.append(row)
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV: {e}") from None
    return rows


def _read_parquet(path: Path, limit: int | None = None) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if limit is None:
            rows = pq.read_table(path).to_pylist()
        else:
            batch = next(pq.ParquetFile(path).iter_batches(batch_size=limit), None)
            rows = batch.to_pylist() if batch is not None else []
    except pa.ArrowException as e:
        raise DataError(f"{path}: not a Parquet file distill can read ({e})") from None
    for i, row in enumerate(rows):
        row["_line"] = i + 1  # parquet has no lines: the row number stands in
    return rows


def read_rows(path: str | Path, fmt: str = "auto", required: tuple[str, ...] = (), limit: int | None = None) -> list[dict]:
    """Read every row (or the first `limit`); fail on the first row that lacks a required field, naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet, "json": _read_json, "bigbench": _read_json}
    try:
        rows = reader[detect_format(path, fmt)](path, limit)
    except UnicodeDecodeError:
        check_utf8(path)  # text is decoded in blocks: find the line of the bad byte, and name it
        raise
    for row in rows:
        for field in required:
            if row.get(field) is None or row.get(field) == "":
                what = "row" if path.suffix != ".parquet" else "row number"
                raise DataError(f"{path}:{row['_line']}: {what} has no '{field}' field (has: {', '.join(k for k in row if k != '_line')})")
    return rows
