"""The recipe: one YAML file that describes a whole run, its sections checked against one another."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from distill.recipe.base import Section
from distill.recipe.coverage import CoverageSettings
from distill.recipe.data import DataSettings
from distill.recipe.evaluate import EvaluateSettings
from distill.recipe.filter import FilterSettings
from distill.recipe.generate import GenerateSettings
from distill.recipe.loop import LoopSettings
from distill.recipe.models import Models
from distill.recipe.slurm import SlurmSettings
from distill.recipe.train import TrainSettings


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name; the run directory is runs/<name>.")
    seed: int = Field(0, description="Global seed.")
    run_dir: str | None = Field(None, description="Where the run's files go (default runs/<name> in the working directory).")
    models: Models = Field(description="Models by role.")
    data: DataSettings = Field(description="Real data: seeds for the teacher and held-out evaluation items.")
    generate: GenerateSettings = Field(description="Teacher generation.")
    filter: FilterSettings = Field(default_factory=FilterSettings, description="Filters over generated rows.")
    train: TrainSettings = Field(description="LoRA fine-tuning of the student.")
    evaluate: EvaluateSettings = Field(description="Evaluation on held-out real data.")
    allow_chaining: bool = Field(
        True, description="Allow one model lineage (the same weights, the same vocabulary, or a recorded name or base "
        "model) in two roles that should be independent (generator and judge, teacher and student): shown as a "
        "warning. false makes it an error before anything runs."
    )
    coverage: CoverageSettings = Field(default_factory=CoverageSettings, description="Coverage audit of attribute cells.")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings, description="Slurm jobs for `distill slurm submit`.")
    loop: LoopSettings | None = Field(None, description="Rounds: the teacher answers only the prompts each round "
                                      "selects where the student is weak, until the budget is spent or the dev score "
                                      "stops rising (distill.loop); null: the teacher answers every seed at once.")

    @model_validator(mode="after")
    def _loop_fits(self) -> "Recipe":
        loop = self.loop
        if loop is None:
            return self
        if not self.data.target_field:
            raise ValueError("loop: each round is measured on a dev split of the data, scored against its references, "
                             "but data.target_field is null")
        if loop.strategy == "slices" and not self.data.slice_field:
            raise ValueError("loop.strategy: slices splits each round across data.slice_field's slices, but "
                             "data.slice_field is null")
        if self.generate.mode == "synthesize":
            raise ValueError("loop: a round chooses seed prompts for the teacher to answer; generate.mode synthesize "
                             "writes new inputs from grid cells instead (use complete, label or score)")
        if loop.errors.synthesize and loop.strategy != "errors":
            raise ValueError(f"loop.errors.synthesize: the teacher writes inputs from the dev errors of strategy "
                             f"errors, but loop.strategy is {loop.strategy}")
        if loop.errors.synthesize and self.generate.mode == "score":
            raise ValueError("loop.errors.synthesize: an input the teacher writes has no real target, and "
                             "generate.mode score only scores real targets (use complete or label)")
        if loop.train == "retrain" and self.train.objective != "sft":
            raise ValueError(f"loop.train: retrain trains each round on the rows of every round so far, with objective "
                             f"sft only, but train.objective is {self.train.objective} (use loop.train: continue)")
        if any(s.name == "dev" and s.data != "dev" for s in self.evaluate.sets):
            raise ValueError("loop: evaluate.sets has a set named 'dev', the name each round gives the loop's dev "
                             "split: rename it")
        return self

    @model_validator(mode="after")
    def _dev_set_needs_loop(self) -> "Recipe":
        if self.loop is None and any(s.data == "dev" for s in self.evaluate.sets):
            raise ValueError("evaluate.sets: data: dev is the loop's dev split, but the recipe has no loop section")
        return self

    @model_validator(mode="after")
    def _judge_models_exist(self) -> "Recipe":
        for i, step in enumerate(self.filter.steps):
            if step.type == "judge" and getattr(self.models, step.model) is None:
                raise ValueError(f"filter.steps.{i} judges with models.{step.model}, which the recipe does not define")
        return self

    @model_validator(mode="after")
    def _score_needs_targets(self) -> "Recipe":
        if self.generate.scores_targets and not self.data.target_field:
            raise ValueError("generate.mode: score scores the real targets, but data.target_field is null")
        return self

    @model_validator(mode="after")
    def _on_policy_scores_right(self) -> "Recipe":
        if self.train.runs_the_teacher:
            if self.generate.answering_template() is None:
                raise ValueError("train.objective on_policy: the teacher scores the student's answer to each seed under "
                                 "the template it answers a real input with, but in synthesize mode generate.template "
                                 "asks for new pairs: set generate.answer_template (reading only input, examples and row)")
            if self.models.teacher.engine.prefix_caching is True:
                raise ValueError("models.teacher.engine.prefix_caching: true, but train.objective on_policy reads the "
                                 "teacher's prompt log-probabilities, which vLLM can return stale with prefix caching "
                                 "(vllm#42019): use auto (off for the scoring engine) or false")
            train = self.slurm.train
            if train.nodes * max(train.gpus_per_node, 1) > 1:
                raise ValueError(f"slurm.train asks for {train.nodes} node(s) x {train.gpus_per_node} GPU(s), but "
                                 "train.objective on_policy trains in one process (its sampler and scorer are vLLM "
                                 "engines beside it): ask for one node and at most one GPU")
            ts = self.slurm.teacher_server
            if ts is not None and any(a.split("=")[0] == "--enable-prefix-caching" for a in ts.vllm_args):
                raise ValueError("slurm.teacher_server.vllm_args: --enable-prefix-caching, but train.objective "
                                 "on_policy has the server score the student's tokens, which vLLM can return stale "
                                 "with prefix caching (vllm#42019): leave it out (the server runs without it)")
        return self

    @model_validator(mode="after")
    def _repaired_guard_sets_are_guard_sets(self) -> "Recipe":
        repair = self.train.on_policy.repair
        guards = [s.name for s in self.evaluate.sets if s.guard]
        for name in repair.guard_sets if repair else ():
            if name not in guards:
                raise ValueError(f"train.on_policy.repair.guard_sets names {name!r}, which is not an evaluate.sets entry "
                                 f"with guard: true (guard sets: {', '.join(guards) or 'none'})")
        return self

    @model_validator(mode="after")
    def _no_prefix_cache_where_scores_are_read(self) -> "Recipe":
        if self.generate.scores_targets and self.models.teacher.engine.prefix_caching is True:
            raise ValueError("models.teacher.engine.prefix_caching: true, but generate.mode: score reads the teacher's "
                             "prompt log-probabilities, which vLLM can return stale with prefix caching on (vllm#42019): "
                             "use auto (off for this engine) or false")
        return self

    @model_validator(mode="after")
    def _teacher_server_serves_the_vllm_teacher(self) -> "Recipe":
        if self.slurm.teacher_server is not None:
            if self.generate.backend != "vllm":
                raise ValueError("slurm.teacher_server serves models.teacher with vLLM for the generation tasks: it "
                                 "replaces generate.backend: openai (a server someone else runs); use one or the other")
            if self.generate.scores_targets:
                raise ValueError("slurm.teacher_server: mode: score reads prompt log-probabilities from the in-process "
                                 "engine, which a server does not return; score with the generation tasks' own engine")
        return self

    @model_validator(mode="after")
    def _kd_needs_captures(self) -> "Recipe":
        if self.train.learns_from_captures:
            if not self.generate.logprobs:
                raise ValueError(f"train.objective {self.train.objective!r} learns the teacher's token distributions: "
                                 "set generate.logprobs (e.g. 20) so the generation pass captures them")
            if self.train.kd.top_k and self.train.kd.top_k > self.generate.logprobs:
                raise ValueError(f"train.kd.top_k = {self.train.kd.top_k} is more than the "
                                 f"generate.logprobs = {self.generate.logprobs} captured")
        return self

    @model_validator(mode="after")
    def _teacher_prompt_for_synthesize(self) -> "Recipe":
        # The teacher is scored with generate.template by default, which in synthesize mode asks for new pairs.
        e = self.evaluate
        if "teacher" not in e.models or e.teacher_template is not None or self.generate.answering_template() is not None:
            return self
        for s in e.sets:
            if s.teacher_template is None and not (s.path and s.prompt_template):
                raise ValueError(f"evaluate.sets: {s.name!r} would prompt the teacher with generate.template, which in "
                                 "synthesize mode writes new pairs instead of answering an input: set "
                                 "evaluate.teacher_template (or a generate.answer_template that reads only input and "
                                 "examples), or leave teacher out of evaluate.models")
        return self

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name
