"""label mode: the constraint sent to the engine (vLLM structured outputs) and the check of each answer.

The engine constrains decoding, but an answer can still be unusable (cut off by max_tokens,
or a server that ignores the constraint), so every answer is checked here too.
"""

from __future__ import annotations

import json
import re

from jsonschema import Draft202012Validator

from distill.recipe import LabelSettings


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
        if answer in label.choice:
            return answer, None
        return None, f"not one of the {len(label.choice)} labels: {answer[:80]!r}{cut}"
    if label.json_schema is not None:
        try:
            doc = json.loads(answer)
        except json.JSONDecodeError as e:
            return None, f"not valid JSON: {e.msg} at character {e.pos}{cut}"
        errors = sorted(Draft202012Validator(label.json_schema).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(document)"
            return None, f"JSON does not fit the schema at {where}: {errors[0].message}"
        return answer, None
    if re.fullmatch(label.regex, answer):
        return answer, None
    return None, f"does not match regex {label.regex!r}: {answer[:80]!r}{cut}"
