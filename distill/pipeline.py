"""Stage order, skip / force logic, logs and the run's report.

A stage is skipped when its completion marker records the same fingerprint: a hash of its
settings, the identities of the models it uses, and the content of its inputs (real data
files and the outputs of the stages before it). Partial work left by a killed run is kept
and resumed only while the fingerprint is unchanged.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from distill.errors import StageError, UserError
from distill.models.context import resolved_model
from distill.progress import print_summary
from distill.recipe import Recipe
from distill.run_dir import STAGES, RunDir, hash_file, hash_json, hash_tree, write_json, write_text

STARTED = "_STARTED.json"
UPSTREAM = {"generate": (), "filter": ("generate",), "train": ("filter",), "evaluate": ("generate", "filter", "train"),
            "document": ("generate", "filter", "train", "evaluate")}


def _upstream_hash(run: RunDir, stage: str) -> str:
    marker = run.read_marker(stage)
    if not marker:
        raise UserError(f"stage {stage} has not completed in {run.root}: run it first (distill {stage} ...)")
    return marker["output_hash"]


def _eval_file_hashes(recipe: Recipe) -> dict[str, str]:
    """Content hashes of the evaluation files (a `datasets` folder is hashed as a tree)."""
    return {s.path: (hash_tree if Path(s.path).is_dir() else hash_file)(Path(s.path)) for s in recipe.evaluate.sets if s.path}


def stage_settings(recipe: Recipe, stage: str) -> dict:
    """Everything in the recipe that can change a stage's output."""
    r = recipe
    if stage == "generate":
        return {"data": r.data.model_dump(mode="json"), "generate": r.generate.model_dump(mode="json"),
                "data_sha256": hash_file(Path(r.data.path))}
    if stage == "filter":
        files = [step.function.rpartition(":")[0] for step in r.filter.steps if step.type == "verifier"]
        settings = {"filter": r.filter.model_dump(mode="json"),
                    "verifier_files": {f: hash_file(Path(f)) for f in files if f.endswith(".py")}}
        # the judge's weights, the eval sets decontamination reads and the gold set also shape the output
        for step in r.filter.steps:
            if step.type == "judge" and getattr(r.models, step.model) is not None:
                settings[f"judge_{step.model}"] = resolved_model(r, step.model)[1]["weights_sha256"]
            if step.type == "decontaminate":
                settings["eval_sets"] = [s.model_dump(mode="json") for s in r.evaluate.sets]
                settings["eval_files"] = _eval_file_hashes(r)
        if r.filter.calibration.gold:
            settings["gold_sha256"] = hash_file(Path(r.filter.calibration.gold))
        return settings
    if stage == "train":
        return {"train": r.train.model_dump(mode="json")}
    if stage == "evaluate":
        return {"evaluate": r.evaluate.model_dump(mode="json"), "seed": r.seed,
                "student_format": {"prompt_template": r.train.prompt_template, "chat": r.train.chat},
                "teacher_prompt": {"template": r.generate.template, "few_shot": r.generate.few_shot.model_dump(),
                                   "chat": r.generate.chat, "system_prompt": r.generate.system_prompt},
                "eval_files": _eval_file_hashes(r)}
    if stage == "document":  # the manifest records the whole recipe, so any change redoes it
        return {"recipe": r.model_dump(mode="json"), "data_sha256": hash_file(Path(r.data.path))}
    raise KeyError(stage)


STAGE_MODELS = {"generate": ("teacher",), "filter": (), "train": ("student",), "evaluate": ("student", "teacher"),
                "document": ("teacher", "student")}


def fingerprint(recipe: Recipe, run: RunDir, stage: str) -> str:
    models = {role: resolved_model(recipe, role)[1]["weights_sha256"] for role in STAGE_MODELS[stage]}
    upstream = {u: _upstream_hash(run, u) for u in UPSTREAM[stage]}
    return hash_json({"stage": stage, "settings": stage_settings(recipe, stage), "models": models, "upstream": upstream})


def begin_stage(run: RunDir, stage: str, fp: str, force: bool) -> None:
    """Keep partial work only if it was started under the same fingerprint and not forced."""
    stage_dir = run.stage(stage)
    started = stage_dir / STARTED
    previous = json.loads(started.read_text()).get("fingerprint") if started.is_file() else None
    if stage_dir.exists() and (force or previous != fp):
        shutil.rmtree(stage_dir)
    run.clear_marker(stage)
    write_json(started, {"fingerprint": fp, "started_at": time.time()})


STAGE_FUNCTIONS = {"filter": "distill.filters.stage:run_filter", "train": "distill.train.stage:run_train",
                   "evaluate": "distill.evaluate.stage:run_evaluate", "document": "distill.provenance.stage:run_document"}


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def execute_stage(recipe: Recipe, run: RunDir, stage: str, force: bool = False, shard: tuple[int, int] = (0, 1)) -> dict | None:
    """Run one stage in this process unless it is complete; return its summary."""
    from distill.provenance.lineage import enforce_chaining_policy

    enforce_chaining_policy(recipe)  # allow_chaining: false stops even a single stage before any work
    fp = fingerprint(recipe, run, stage)
    if not force and run.is_complete(stage, fp):
        summary = run.read_marker(stage)["summary"]
        print(f"[{stage}] up to date, skipped ({run.stage(stage)})", flush=True)
        return summary
    if _is_main_process():
        from filelock import FileLock

        run.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(run.root / f".{stage}.lock")):  # shards started together must not wipe each other's work
            begin_stage(run, stage, fp, force and shard == (0, 1))
    if stage == "generate":
        from distill.generate.stage import run_generate

        summary = run_generate(recipe, run, shard)
        if not summary.get("merged"):
            print_summary(stage, summary)
            print(f"[generate] shard {shard[0]}/{shard[1]} finished; other shards are still missing", flush=True)
            return None
    else:
        # import only this stage's module: each stage process pays for its own libraries alone
        module, function = STAGE_FUNCTIONS[stage].split(":")
        summary = getattr(importlib.import_module(module), function)(recipe, run)
    if not _is_main_process():
        return None
    run.mark_complete(stage, fp, summary)
    print_summary(stage, summary)
    write_run_report(run)
    return summary


def save_resolved_recipe(recipe: Recipe, run: RunDir) -> Path:
    """The recipe as resolved (absolute paths, defaults filled in): what child stages and later runs read."""
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    write_text(run.recipe, text)
    return run.recipe


def write_run_report(run: RunDir) -> dict:
    report = {"run_dir": str(run.root), "stages": {}}
    for stage in STAGES:
        marker = run.read_marker(stage)
        report["stages"][stage] = {"complete": bool(marker), "summary": marker["summary"] if marker else None}
    write_json(run.report, report)
    return report


def run_pipeline(recipe: Recipe, run: RunDir, force: tuple[str, ...] = (), stages: tuple[str, ...] = STAGES) -> dict:
    """Each stage in its own process (a clean engine and memory per stage), logs teed to run/logs/."""
    for role in ("teacher", "student"):  # convert / locate models before any work starts
        resolved_model(recipe, role)
    from distill.provenance.lineage import enforce_chaining_policy

    for warning in enforce_chaining_policy(recipe):  # raises instead when the recipe forbids chaining
        print(f"warning: {warning}", flush=True)
    recipe_file = save_resolved_recipe(recipe, run)
    started = time.time()
    for stage in stages:
        fp = None
        try:
            fp = fingerprint(recipe, run, stage)
        except UserError:
            pass  # upstream incomplete: the child will say so
        if fp and stage not in force and run.is_complete(stage, fp):
            print(f"[{stage}] up to date, skipped", flush=True)
            continue
        cmd = [sys.executable, "-m", "distill.cli", stage, str(recipe_file), "--run-dir", str(run.root)]
        if stage in force:
            cmd.append("--force")
        _run_logged(cmd, run.logs / f"{stage}.log", stage)
    report = write_run_report(run)
    print(f"run complete in {time.time() - started:.0f}s: {run.root}", flush=True)
    return report


def _run_logged(cmd: list[str], log: Path, stage: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for chunk in iter(lambda: proc.stdout.read1(4096), b""):
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            f.write(chunk)
        code = proc.wait()
    if code == 2:
        raise UserError(f"stage {stage} stopped on an input error (above); log: {log}")
    if code != 0:
        raise StageError(f"stage {stage} failed with exit code {code}; log: {log}")
