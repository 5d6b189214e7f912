"""The student of a loop round answering seed prompts through its own vLLM engine, as evaluation serves it: the
prompt it was trained on, its learned stop, its adapter per request or merged into its base (evaluate.serve_adapters)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from distill.models.context import resolved_model
from distill.models.dtype import model_dtype
from distill.models.engine import Completion
from distill.models.merge import adapter_serving, merge_adapter
from distill.prompts.student import student_prompt, student_stop_id
from distill.prompts.template import PromptTemplate
from distill.recipe import Recipe


class StudentAnswers:
    def __init__(self, recipe: Recipe, adapter: Path | None):
        self.recipe, self.adapter = recipe, adapter
        self.scratch = None
        self.engine = None

    def __enter__(self) -> "StudentAnswers":
        from distill.evaluate.candidates import adapter_rank
        from distill.models.vllm_engine import VLLMEngine

        recipe, spec = self.recipe, self.recipe.models.student
        folder, _ = resolved_model(recipe, "student")
        rank, self.lora = None, None
        if self.adapter is not None and adapter_serving(recipe.evaluate.serve_adapters) == "merged":
            self.scratch = tempfile.TemporaryDirectory(prefix="merged-")
            folder = merge_adapter(folder, self.adapter, model_dtype(spec, "student", folder).dtype,
                                   Path(self.scratch.name), spec.trust_remote_code)
        elif self.adapter is not None:
            rank, self.lora = adapter_rank(self.adapter), Path(self.adapter).resolve()
        self.engine = VLLMEngine(folder, spec, seed=recipe.seed, max_lora_rank=rank, max_logprobs=1, role="student")
        return self

    def __exit__(self, *exc) -> None:
        if self.engine is not None:
            self.engine.close()
        if self.scratch is not None:
            self.scratch.cleanup()

    def sample(self, items: list[dict], n: int, temperature: float, logprobs: int | None = None) -> list[list[Completion]]:
        """n answers per item (item i sampled with the recipe's seed + i), as long and stopped as its evaluation's."""
        r, e = self.recipe, self.recipe.evaluate
        template = PromptTemplate(r.train.prompt_template, "train.prompt_template")
        tok = self.engine.tokenizer
        prompts = [student_prompt(r, template, item, tok) for item in items]
        stop_id = student_stop_id(r, tok)
        return self.engine.generate(prompts, seeds=[r.seed + i for i in range(len(prompts))], n=n,
                                    temperature=temperature, max_tokens=e.max_tokens, stop=e.stop or None,
                                    stop_token_ids=[stop_id] if stop_id is not None else None, adapter=self.lora,
                                    logprobs=logprobs)
