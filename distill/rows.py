"""Column names of the tables that stages exchange, named once.

generate writes: id, input, reference, slice, cell, history, columns, prompt, completion, sample_index, finish_reason, failure, provenance
filter adds:     kept, rejected_by, reason
evaluate writes: set, model, item_id, input, reference, slice, prompt, prediction, score
"""

import hashlib
import json

ID = "id"
INPUT = "input"
REFERENCE = "reference"
REFERENCES = "references"  # every acceptable answer of a real item
SLICE = "slice"
CELL = "cell"  # attribute values of a generation grid cell
HISTORY = "history"  # a conversation's turns before the input (chat messages), else null
COLUMNS = "columns"  # every column of the source row, for templates (JSON text in Parquet tables)
PROMPT = "prompt"
COMPLETION = "completion"
SAMPLE_INDEX = "sample_index"
FINISH_REASON = "finish_reason"
FAILURE = "failure"  # why a generated row is unusable (e.g. a label that did not parse), else null
PROVENANCE = "provenance"
SELECTION = "selection"  # a seed's record of why a loop round chose it (kept in its rows' provenance)

KEPT = "kept"
REJECTED_BY = "rejected_by"
REASON = "reason"

GENERATED_COLUMNS = (ID, INPUT, REFERENCE, SLICE, CELL, HISTORY, COLUMNS, PROMPT, COMPLETION, SAMPLE_INDEX, FINISH_REASON, FAILURE, PROVENANCE)
FILTER_COLUMNS = (KEPT, REJECTED_BY, REASON)


def row_id(*parts: object) -> str:
    """A stable id from the row's content: the same input always gets the same id."""
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def columns_of(item: dict) -> dict | None:
    """An item's source columns (stored as JSON text in Parquet tables), or None for an item with no source row (a
    grid cell)."""
    value = item.get(COLUMNS)
    return json.loads(value) if isinstance(value, str) else value
