"""What every recipe section shares: a frozen section that refuses unknown keys, paths resolved against the recipe's
folder, the variables a template reads.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationInfo

PACKAGED_MODELS = ("smollm2-135m-instruct",)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def recipe_relative(value: str, info: ValidationInfo) -> Path:
    """A path as the recipe names it, resolved relative to the recipe's folder."""
    return (Path((info.context or {}).get("base_dir", ".")) / Path(value).expanduser()).resolve()


def resolve_existing(value: str | None, info: ValidationInfo, *, folder: bool) -> str | None:
    """Resolve a path relative to the recipe's folder and check that it exists."""
    if value is None:
        return None
    path = recipe_relative(value, info)
    if folder and not path.is_dir():
        raise ValueError(f"folder does not exist: {path}")
    if not folder and not path.is_file():
        raise ValueError(f"file does not exist: {path}")
    return str(path)


def template_variables(text: str, key: str) -> set[str]:
    """The variables a Jinja template reads (parsed only, never rendered)."""
    from jinja2 import Environment, TemplateSyntaxError, meta

    try:
        return meta.find_undeclared_variables(Environment().parse(text))
    except TemplateSyntaxError as e:
        raise ValueError(f"{key}: bad template: {e}") from None
