"""The models of a recipe, resolved to folders with their identities (computed once per process)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from distill.models.identity import model_identity
from distill.models.resolve import resolve_model
from distill.recipe import ModelSpec, Recipe


def spec_name(spec: ModelSpec) -> str:
    return spec.path or spec.hub or f"packaged:{spec.packaged}"


@lru_cache(maxsize=None)
def _resolve(spec: ModelSpec) -> tuple[Path, dict]:
    folder = resolve_model(spec)
    return folder, model_identity(folder, spec_name(spec), spec.revision)


def resolved_model(recipe: Recipe, role: str) -> tuple[Path, dict]:
    """(folder, identity) of the model playing `role` (teacher, student, judge)."""
    spec = getattr(recipe.models, role)
    if spec is None:
        raise KeyError(role)
    folder, identity = _resolve(spec)
    return folder, {"role": role, **identity}
