"""Reading a recipe file: YAML with each key's line, command-line overrides, errors that name file:line: key."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from distill.errors import RecipeError
from distill.recipe.filter import FilterStep
from distill.recipe.root import Recipe


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that also remembers the line of every key."""


def _key_lines(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            out[path] = key_node.start_mark.line + 1
            _key_lines(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = item.start_mark.line + 1
            _key_lines(item, prefix + (i,), out)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply_override(data: dict, keys: list[str], value: Any, text: str) -> None:
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise RecipeError(f"override {text!r}: {'.'.join(keys[:i + 1])} is not an index of the list")
            node = node[int(key)]
        else:
            node = node.setdefault(key, {})
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"override {text!r}: {'.'.join(keys[:i + 1])} is not a section")
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"override {text!r}: {last} is not an index of the list")
        node[int(last)] = value
    else:
        node[last] = value


def _describe(error: dict) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = error.get("input")
    if kind not in ("model_type",) and not isinstance(got, (dict, list)) and got is not None:
        return f"{msg} (got {got!r})"
    return msg


def _friendly_loc(loc: tuple) -> tuple:
    """Drop pydantic's discriminator tags (e.g. 'length') from union locations."""
    return tuple(part for i, part in enumerate(loc) if not (i > 0 and isinstance(loc[i - 1], int) and isinstance(part, str) and part in _FILTER_TAGS))


# the `type` of every filter step, read from the union itself
_FILTER_TAGS = {tag for step in typing.get_args(typing.get_args(FilterStep)[0])
                for tag in typing.get_args(step.model_fields["type"].annotation)}


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe. Raises RecipeError with file:line: key: problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of sections (name, models, data, ...)")
    lines = _key_lines(node) if node is not None else {}
    overridden: dict[tuple, str] = {}
    for text_override in overrides:
        keys, value = parse_override(text_override)
        _apply_override(data, keys, value, text_override)
        overridden[tuple(keys)] = text_override
    try:
        return Recipe.model_validate(data, context={"base_dir": str(path.parent.resolve())})
    except ValidationError as e:
        problems = []
        for error in e.errors():
            loc = _friendly_loc(tuple(error["loc"]))
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            where = f"{path}"
            for n in range(len(loc), 0, -1):
                if loc[:n] in overridden or tuple(str(p) for p in loc[:n]) in overridden:
                    where = f"override {overridden.get(loc[:n]) or overridden[tuple(str(p) for p in loc[:n])]!r}"
                    break
                if loc[:n] in lines:
                    where = f"{path}:{lines[loc[:n]]}"
                    break
            problems.append(f"{where}: {dotted}: {_describe(error)}")
        raise RecipeError("\n".join(problems)) from None
