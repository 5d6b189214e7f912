"""What a source row becomes: an item with its input, its chat history, its references, its slice and every column.

A row's input is one column, several joined (Alpaca's instruction and input), or a conversation: a column of chat
messages (OpenAI's role/content, or ShareGPT's from/value), whose last user turn is the input and whose earlier
turns (a system message among them) are its history. Every column is kept (`columns`), so that a template can read
any of them by name.
"""

from __future__ import annotations

import json

from distill import rows as C
from distill.data.sources import SOURCE_KEYS
from distill.errors import DataError
from distill.rows import row_id

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "bing": "assistant", "chatgpt": "assistant", "tool": "tool", "function": "tool"}
ROLES = ("system", "user", "assistant", "tool")


def _content(value, where: str) -> str:
    """A message's content as text; OpenAI's list of parts is joined when every part is text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)
    raise DataError(f"{where}: a message's content must be text (or a list of text parts), got {type(value).__name__}")


def as_conversation(value, where: str) -> list[dict] | None:
    """The value as chat messages ({role, content}), or None when it is no list of messages."""
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return None
    if all("role" in m and "content" in m for m in value):
        messages = [{"role": str(m["role"]), "content": _content(m["content"], where)} for m in value]
    elif all("from" in m and "value" in m for m in value):
        messages = [{"role": SHAREGPT_ROLES.get(str(m["from"]).lower(), str(m["from"])),
                     "content": _content(m["value"], where)} for m in value]
    else:
        return None
    odd = next((m["role"] for m in messages if m["role"] not in ROLES), None)
    if odd is not None:
        raise DataError(f"{where}: a message has the role {odd!r}; expected one of {', '.join(ROLES)}")
    return messages


def split_conversation(messages: list[dict], where: str) -> tuple[list[dict], str, str | None]:
    """(history: the turns before the last user turn, that turn's text, the assistant's answer after it if any)."""
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
    if last_user is None:
        raise DataError(f"{where}: the conversation has no user turn to answer")
    after = messages[last_user + 1:]
    answer = next((m["content"] for m in after if m["role"] == "assistant"), None)
    return messages[:last_user], messages[last_user]["content"], answer


def _text(value, field: str, where: str) -> str:
    if isinstance(value, (list, dict)):
        what = "chat messages" if as_conversation(value, where) is not None else f"a {type(value).__name__}"
        raise DataError(f"{where}: column {field!r} holds {what}, where text is expected"
                        + ("; as an input, a conversation is read from one column of its own" if what == "chat messages"
                           else ""))
    return str(value)


def _missing(row: dict, field: str) -> DataError:
    return DataError(f"{row['_where']}: row has no {field!r} field (has: {', '.join(columns(row))})")


def read_input(row: dict, field: str | list[str]) -> tuple[str, list[dict] | None]:
    """(the input text, the conversation's history or None when the input is no conversation)."""
    where = row["_where"]
    if isinstance(field, list):
        parts = [_text(row[f], f, where) for f in field if row.get(f) not in (None, "")]
        if not parts:
            raise _missing(row, " / ".join(field))
        return "\n\n".join(parts), None
    value = row.get(field)
    if value in (None, "", []):
        raise _missing(row, field)
    messages = as_conversation(value, where)
    if messages is not None:
        history, text, _ = split_conversation(messages, where)
        return text, history
    return _text(value, field, where), None


def read_references(row: dict, field: str | None) -> list[str]:
    """The acceptable answers: a string, a list of strings, or a conversation's assistant answer to its last user turn."""
    value = row.get(field) if field else None
    if value in (None, ""):
        return []
    messages = as_conversation(value, row["_where"])
    if messages is not None:
        answer = split_conversation(messages, row["_where"])[2]
        return [answer] if answer else []
    values = value if isinstance(value, (list, tuple)) else [value]
    return [_text(v, field, row["_where"]) for v in values if v not in (None, "")]


def columns(row: dict) -> dict:
    """The row's own columns, as the source has them; values JSON has no type for (a date, bytes) as text, so that
    the run directory's files hold them."""
    return json.loads(json.dumps({k: v for k, v in row.items() if k not in SOURCE_KEYS}, default=str))


def to_item(row: dict, input_field: str | list[str], target_field: str | None, slice_field: str | None = None,
            target_names: dict[str, str] | None = None, line_in_id: bool = False) -> dict:
    """The item a source row becomes. `line_in_id`: the id names the row's place too (an input repeated in the
    data stays two items)."""
    text, history = read_input(row, input_field)
    refs = [(target_names or {}).get(r, r) for r in read_references(row, target_field)]
    slice_value = row.get(slice_field) if slice_field else None
    item = {C.ID: None, C.INPUT: text, C.REFERENCE: refs[0] if refs else None, C.REFERENCES: refs,
            C.SLICE: None if not slice_field else str(slice_value), C.HISTORY: history, C.COLUMNS: columns(row),
            "source_line": row["_line"]}
    item[C.ID] = item_id(item, line_in_id)
    return item


def item_id(item: dict, with_line: bool = False) -> str:
    """An item's id from its content (input, and a conversation's history); `with_line`: its source line too."""
    history = item[C.HISTORY]
    key = [item[C.INPUT]] if history is None else [item[C.INPUT], json.dumps(history, sort_keys=True)]
    return row_id(*key, *([item["source_line"]] if with_line else []))


def is_conversation(item: dict) -> bool:
    return item.get(C.HISTORY) is not None
