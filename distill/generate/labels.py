"""Answers that must parse: the constraint sent to the engine (vLLM structured outputs) and the check of each answer.

label mode: a label, a JSON document or a regex match. synthesize mode: a JSON object holding
an input the teacher wrote and (unless a second pass answers it) its answer. The engine
constrains decoding, but an answer can still be unusable (cut off by max_tokens, or a server
that ignores the constraint), so every answer is checked here too.
"""

from __future__ import annotations

import json
import re

from jsonschema import Draft202012Validator

from distill.recipe import GridSettings, LabelSettings


def structured_request(label: LabelSettings) -> dict:
    """The `structured` argument of the engines' generate()."""
    if label.choice is not None:
        return {"choice": list(label.choice)}
    if label.json_schema is not None:
        return {"json": label.json_schema}
    return {"regex": label.regex}


def check_answer(label: LabelSettings, text: str, finish_reason: str | None) -> tuple[str | None, str | None]:
    """(the answer as kept, None) when it is valid, else (None, why not)."""
    cut = " (cut off at max_tokens)" if finish_reason == "length" else ""
    answer = text.strip()
    if label.choice is not None:
        if answer in {c.strip() for c in label.choice}:  # a choice may be written with the space that follows the prompt
            return answer, None
        return None, f"not one of the {len(label.choice)} labels: {answer[:80]!r}{cut}"
    if label.json_schema is not None:
        _, why = _check_json(label.json_schema, answer, cut)
        return (None, why) if why else (answer, None)
    if re.fullmatch(label.regex, answer):
        return answer, None
    return None, f"does not match regex {label.regex!r}: {answer[:80]!r}{cut}"


def _check_json(schema: dict, text: str, cut: str, strict: bool = True) -> tuple[object, str | None]:
    try:
        doc = json.loads(text, strict=strict)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON: {e.msg} at character {e.pos}{cut}"
    errors = sorted(Draft202012Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(document)"
        return None, f"JSON does not fit the schema at {where}: {errors[0].message}"
    return doc, None


def pair_schema(grid: GridSettings, with_output: bool = True) -> dict:
    """synthesize mode: the JSON object the teacher writes, {input_key: ..., output_key: ...} (input only without output)."""
    text = {"type": "string", "minLength": 1, **({"maxLength": grid.max_chars} if grid.max_chars else {})}
    keys = [grid.input_key] + ([grid.output_key] if with_output else [])
    return {"type": "object", "properties": {k: text for k in keys}, "required": keys, "additionalProperties": False}


def check_pair(grid: GridSettings, text: str, finish_reason: str | None,
               with_output: bool = True) -> tuple[tuple[str, str | None] | None, str | None]:
    """((input, output or None), None) when the object parses and both are non-blank, else (None, why not)."""
    cut = " (cut off at max_tokens)" if finish_reason == "length" else ""
    # Not strict: xgrammar lets a raw control character (a tab) into a string; it is still text to train on.
    doc, why = _check_json(pair_schema(grid, with_output), text.strip(), cut, strict=False)
    if why:
        return None, why
    blank = [k for k in doc if not doc[k].strip()]
    if blank:
        return None, f"JSON key {blank[0]!r} holds only whitespace"
    return (doc[grid.input_key], doc[grid.output_key] if with_output else None), None
