"""Lineage of roles in a run, and chaining: one lineage in two roles that should be independent.

A judge tends to prefer text written by its own lineage, and a student trained on its own
lineage's outputs inherits its blind spots unseen. Neither is always wrong (the quickstart
distils a model into itself on purpose), so chaining is a warning by default and an error
when the recipe sets `allow_chaining: false`.

Lineage is read from what the model folders hold, not from `model_type` (an architecture:
SmolLM2 and Llama 3 are both "llama", Qwen2.5 and Qwen3 are not the same type). Evidence,
strongest first: the same weights; the same tokenizer vocabulary (token -> id map); a name
one model's files record (config.json `_name_or_path`, the model card's `base_model`, an
adapter's base) that is the other's name or recorded name. Each finding says which matched.
"""

from __future__ import annotations

import re

from distill.errors import RecipeError
from distill.models.context import resolved_model
from distill.recipe import Recipe
from distill.run_dir import hash_json

# Pairs of recipe models whose roles should be independent, and why.
INDEPENDENT = (
    ("teacher", "judge", "a judge tends to favour text written by its own lineage"),
    ("teacher", "student", "the student learns from its own lineage's outputs, so shared blind spots go unseen"),
)
NO_WEIGHTS = hash_json([])  # weights_hash of a folder without weight files: says nothing about lineage


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
        out.append({"role": role, "model": model, "name": identity["name"], "model_type": identity["family"],
                    "architectures": identity["architectures"], "weights_sha256": identity["weights_sha256"],
                    "vocab_sha256": identity.get("vocab_sha256"), "vocab_size": identity.get("vocab_size"),
                    "recorded_names": _recorded(identity)})
    metrics = sorted({m for s in recipe.evaluate.sets for m in s.metrics})
    out.append({"role": "evaluator", "model": None, "name": f"metric: {', '.join(metrics)}", "model_type": None,
                "architectures": None, "weights_sha256": None, "vocab_sha256": None, "vocab_size": None,
                "recorded_names": []})
    return out


def _recorded(identity: dict) -> list[str]:
    names = identity.get("recorded_names") or {}
    return list(dict.fromkeys(names.get("name_or_path", []) + names.get("base_model", [])))


def _norm(name: str) -> str:
    """A name as compared: case and trailing slashes ignored; a Hugging Face cache folder read as its repo id."""
    name = name.strip().rstrip("/")
    cached = re.search(r"models--([^/]+?)--([^/]+)(/snapshots/[^/]+)?$", name)
    return (f"{cached.group(1)}/{cached.group(2)}" if cached else name).lower()


def _name_matches(a_role: str, ia: dict, b_role: str, ib: dict) -> list[str]:
    """Names that tie a and b: a recorded name or base of one that is the other's name, or a base both record."""
    def names(identity: dict) -> dict[str, str]:  # normalized -> as written; the recipe's name and the recorded one
        own = [identity["name"]] + (identity.get("recorded_names") or {}).get("name_or_path", [])
        return {_norm(n): n for n in own}

    def bases(identity: dict) -> dict[str, str]:
        return {_norm(n): n for n in (identity.get("recorded_names") or {}).get("base_model", [])}

    found = []
    na, nb, ba, bb = names(ia), names(ib), bases(ia), bases(ib)
    for key in sorted(set(na) & set(nb)):
        found.append(f"both carry the name {na[key]!r} (in the recipe or config.json `_name_or_path`)")
    for key in sorted(set(bb) & set(na)):
        found.append(f"the {b_role}'s recorded base model {bb[key]!r} is the {a_role}")
    for key in sorted(set(ba) & set(nb)):
        found.append(f"the {a_role}'s recorded base model {ba[key]!r} is the {b_role}")
    for key in sorted(set(ba) & set(bb)):
        found.append(f"both record the base model {ba[key]!r}")
    return found


def lineage_evidence(a_role: str, ia: dict, b_role: str, ib: dict) -> list[tuple[str, str]]:
    """(kind, what matched) for every piece of evidence that a and b share a lineage, strongest first."""
    out = []
    if ia["weights_sha256"] == ib["weights_sha256"] and ia["weights_sha256"] != NO_WEIGHTS:
        out.append(("same_weights", f"the same weights (sha256 {ia['weights_sha256'][:12]})"))
    if ia.get("vocab_sha256") and ia.get("vocab_sha256") == ib.get("vocab_sha256"):
        out.append(("same_vocabulary", f"the same tokenizer vocabulary ({ia['vocab_size']} tokens, "
                                       f"sha256 {ia['vocab_sha256'][:12]})"))
    out += [("recorded_name", what) for what in _name_matches(a_role, ia, b_role, ib)]
    return out


def chaining_findings(recipe: Recipe) -> list[dict]:
    """Pairs of roles that should be independent but share a lineage, with the evidence that matched."""
    judge = _judge_model(recipe)
    findings = []
    for a, b, why in INDEPENDENT:
        b_model = judge if b == "judge" else b
        if b_model is None:
            continue
        _, ia = resolved_model(recipe, a)
        _, ib = resolved_model(recipe, b_model)
        evidence = lineage_evidence(a, ia, b_model, ib)
        if not evidence:
            continue
        roles_a = "generator/labeller (teacher)" if a == "teacher" else a
        roles_b = "judge" + ("" if b_model == "judge" else f" ({b_model})") if b == "judge" else b
        kind = evidence[0][0]
        if kind == "same_weights":  # the rest (vocabulary, names) follows from it
            what = f"are the same model ({ia['name']}, weights sha256 {ia['weights_sha256'][:12]})"
        else:
            what = f"share a lineage ({ia['name']} and {ib['name']}): " + "; ".join(w for _, w in evidence)
        findings.append({"roles": [roles_a, roles_b], "models": [a, b_model], "kind": kind,
                         "matched": list(dict.fromkeys(k for k, _ in evidence)), "evidence": [w for _, w in evidence],
                         "model_types": [ia["family"], ib["family"]],
                         "message": f"chaining: {roles_a} and {roles_b} {what}: {why}"})
    return findings


def enforce_chaining_policy(recipe: Recipe) -> list[str]:
    """The chaining warnings of this recipe; a RecipeError instead when the recipe forbids chaining."""
    messages = [f["message"] for f in chaining_findings(recipe)]
    if messages and not recipe.allow_chaining:
        more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
        raise RecipeError(f"allow_chaining is false but {messages[0]}{more}")
    return messages
