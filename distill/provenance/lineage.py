"""Lineage of roles in a run, and chaining: one model family in two roles that should be independent.

A judge tends to prefer text written by its own family, and a student trained on its own
family's outputs inherits that family's blind spots unseen. Neither is always wrong (the
quickstart distils a model into itself on purpose), so chaining is a warning by default and
an error when the recipe sets `allow_chaining: false`.
"""

from __future__ import annotations

from distill.errors import RecipeError
from distill.models.context import resolved_model
from distill.recipe import Recipe

# Pairs of recipe models whose roles should be independent, and why.
INDEPENDENT = (
    ("teacher", "judge", "a judge tends to favour text from its own family"),
    ("teacher", "student", "the student learns from its own family's outputs, so shared blind spots go unseen"),
)


def _judge_model(recipe: Recipe) -> str | None:
    """Which recipe model judges rows: a judge filter names it; else models.judge when set."""
    for step in recipe.filter.steps:
        if step.type == "judge":
            return getattr(step, "model", "judge")
    return "judge" if recipe.models.judge is not None else None


def lineage(recipe: Recipe) -> list[dict]:
    """Every role of the run with the model (or metric) that plays it."""
    judge = _judge_model(recipe)
    roles = [("generator", "teacher"), ("labeller", "teacher"), ("judge", judge), ("student", "student")]
    out = []
    for role, model in roles:
        if model is None:
            continue
        _, identity = resolved_model(recipe, model)
        out.append({"role": role, "model": model, "name": identity["name"], "family": identity["family"],
                    "architectures": identity["architectures"], "weights_sha256": identity["weights_sha256"]})
    metrics = sorted({m for s in recipe.evaluate.sets for m in s.metrics})
    out.append({"role": "evaluator", "model": None, "name": f"metric: {', '.join(metrics)}", "family": None,
                "architectures": None, "weights_sha256": None})
    return out


def chaining_findings(recipe: Recipe) -> list[dict]:
    """Pairs of roles that should be independent but are played by the same model or the same family."""
    judge = _judge_model(recipe)
    findings = []
    for a, b, why in INDEPENDENT:
        b_model = judge if b == "judge" else b
        if b_model is None:
            continue
        _, ia = resolved_model(recipe, a)
        _, ib = resolved_model(recipe, b_model)
        roles_a = "generator/labeller (teacher)" if a == "teacher" else a
        roles_b = "judge" + ("" if b_model == "judge" else f" ({b_model})") if b == "judge" else b
        if ia["weights_sha256"] == ib["weights_sha256"]:
            kind, what = "same_weights", f"the same model ({ia['name']}, weights sha256 {ia['weights_sha256'][:12]})"
        elif ia["family"] and ia["family"] == ib["family"]:
            kind, what = "same_family", f"of the same family {ia['family']!r} ({ia['name']} and {ib['name']})"
        else:
            continue
        findings.append({"roles": [roles_a, roles_b], "models": [a, b_model], "kind": kind, "family": ia["family"],
                         "message": f"chaining: {roles_a} and {roles_b} are {what}: {why}"})
    return findings


def enforce_chaining_policy(recipe: Recipe) -> list[str]:
    """The chaining warnings of this recipe; a RecipeError instead when the recipe forbids chaining."""
    messages = [f["message"] for f in chaining_findings(recipe)]
    if messages and not recipe.allow_chaining:
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        raise RecipeError(f"allow_chaining is false but {messages[0]}{more}")
    return messages
