"""The teacher's engine where it lives: in this process (vLLM), behind an OpenAI-compatible server someone else runs
(generate.backend: openai), or behind the run's own server job (slurm.teacher_server) when the job script names its
file. Generation asks it to write; on-policy training asks it to score the student's tokens."""

from __future__ import annotations

import os
from pathlib import Path

from distill.models.engine import ScoringEngine
from distill.models.teacher_server import SERVER_FILE_VARIABLE
from distill.recipe import Recipe
from distill.run_dir import RunDir


def teacher_engine(recipe: Recipe, run: RunDir, teacher_dir: Path, *, stage: str, seed: int,
                   max_logprobs: int | None = None, reads_prompt_logprobs: bool = False) -> ScoringEngine:
    """`reads_prompt_logprobs`: the caller reads teacher-forced scores. A server is then checked before any work: it
    must return `max_logprobs` of them and have prefix caching off, or the run stops naming the key that chose it."""
    server = os.environ.get(SERVER_FILE_VARIABLE)
    endpoint, key = None, None
    if server and recipe.slurm.teacher_server is not None:
        from distill.models.teacher_server import wait_for_server

        endpoint, key = wait_for_server(recipe, Path(server), stage), "slurm.teacher_server"
    elif recipe.generate.backend == "openai":
        endpoint, key = recipe.generate.endpoint, "generate.endpoint"
    if endpoint is not None:
        from distill.models.openai_engine import OpenAIEndpoint

        engine = OpenAIEndpoint(teacher_dir, endpoint, recipe.models.teacher)
        if reads_prompt_logprobs:
            try:
                engine.require_exact_scores(max_logprobs or 1, key)
            except BaseException:
                engine.close()
                raise
        return engine
    from distill.models.vllm_engine import VLLMEngine

    return VLLMEngine(teacher_dir, recipe.models.teacher, seed=seed, max_logprobs=max_logprobs, role="teacher",
                      reads_prompt_logprobs=reads_prompt_logprobs)
