"""The one list of stages. Each stage says what it reads (the stages upstream of it), what shapes its output (its
fingerprint rule and the models it runs), where its code is, how the CLI describes it and which Slurm job runs it.
The run directory, the pipeline, the CLI, Slurm rendering and the manifest all read this list.

A stage's code is named as "module:function" and imported only in the process that runs the stage: each stage
process pays for its own libraries alone, and nothing here imports a stage.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from distill import fingerprint as F
from distill.errors import UserError
from distill.models.context import model_fingerprint
from distill.models.device import process_count
from distill.recipe import Recipe
from distill.run_dir import RunDir, hash_json


@dataclass(frozen=True)
class Stage:
    name: str
    help: str  # one line for `distill --help`
    upstream: tuple[str, ...]  # stages whose outputs it reads: their output hashes are part of its fingerprint
    settings: Callable[[Recipe], dict]  # what in the recipe shapes its output (distill.fingerprint)
    models: Callable[[Recipe], tuple[str, ...]]  # the roles whose models it runs
    entry: str  # "module:function(recipe, run) -> summary"
    slurm_job: str  # the Slurm job that runs it (document runs at the end of the evaluation job)
    in_manifest: bool = True  # the manifest hashes its outputs (document writes the manifest itself)
    # whether it runs its models in vLLM, so their engine settings (max_model_len, quantization) count
    runs_engines: Callable[[Recipe], bool] = lambda r: True
    # Facts of the process launch that shape its output (train: how many processes share the global batch). Not in
    # the fingerprint, which every process must compute alike (`distill run`, `status` and the evaluation job run
    # outside any launcher): a launch with other facts redoes the stage, a process outside a launch takes it as done.
    launch: Callable[[], dict] = dict

    def run(self, recipe: Recipe, run: RunDir, **options) -> dict:
        module, function = self.entry.split(":")
        return getattr(importlib.import_module(module), function)(recipe, run, **options)

    def inputs(self, recipe: Recipe) -> dict:
        """Its settings and the models it runs, as its fingerprint hashes them (without upstream outputs)."""
        return {"stage": self.name, "settings": self.settings(recipe),
                "models": {role: model_fingerprint(recipe, role, self.runs_engines(recipe)) for role in self.models(recipe)}}

    def fingerprint(self, recipe: Recipe, run: RunDir) -> str:
        markers = {u: run.read_marker(u) for u in self.upstream}
        missing = [u for u, marker in markers.items() if not marker]
        if missing:  # the nearest one, whose output this stage reads directly
            raise UserError(f"stage {missing[-1]} has not completed in {run.root}: run it first (distill {missing[-1]} ...)")
        upstream = {u: marker["output_hash"] for u, marker in markers.items()}
        return hash_json({**self.inputs(recipe), "upstream": upstream})


STAGES: tuple[Stage, ...] = (
    Stage("generate", "the teacher writes completions for the seed inputs (vLLM)", (),
          F.generate_settings, lambda r: ("teacher",), "distill.generate.stage:run_generate", "generate"),
    Stage("filter", "flag generated rows with the recipe's filters", ("generate",),
          F.filter_settings, F.judge_roles, "distill.filters.stage:run_filter", "filter"),
    # train reads the kept rows, and generation's own files: the teacher's captures (kd) or the seeds (on_policy)
    Stage("train", "LoRA fine-tuning of the student on the kept rows", ("generate", "filter"),
          F.train_settings, F.trained_roles, "distill.train.stage:run_train", "train",
          runs_engines=lambda r: r.train.runs_the_teacher,  # sft / kd: transformers and PEFT only
          launch=lambda: {"processes": process_count()}),
    Stage("evaluate", "score base student, trained student and teacher on held-out real data (RECIPE or a run "
          "directory)", ("generate", "filter", "train"),
          F.evaluate_settings, F.evaluated_roles, "distill.evaluate.stage:run_evaluate", "evaluate"),
    Stage("document", "write the run's manifest, dataset card and model card (lineage, coverage, synthetic vs real)",
          ("generate", "filter", "train", "evaluate"),
          F.document_settings, F.all_roles, "distill.provenance.stage:run_document", "evaluate", in_manifest=False),
)
NAMES = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    return _BY_NAME[name]


def slurm_jobs() -> tuple[str, ...]:
    """The Slurm jobs of a run, in order: each runs the stages that name it, after the job before it."""
    return tuple(dict.fromkeys(s.slurm_job for s in STAGES))


def stage_settings(recipe: Recipe, name: str) -> dict:
    """Everything in the recipe that can change a stage's output: settings by value, files by content."""
    return stage(name).settings(recipe)


def stage_inputs(recipe: Recipe, name: str) -> dict:
    return stage(name).inputs(recipe)


def fingerprint(recipe: Recipe, run: RunDir, name: str) -> str:
    return stage(name).fingerprint(recipe, run)
