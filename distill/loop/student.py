"""The student of a loop round answering seed prompts through its own vLLM engine, as evaluation serves it: the
prompt it was trained on, its learned stop, its adapter per request or merged into its base (evaluate.serve_adapters)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from distill.models.context import resolved_model
from distill.models.dtype import model_dtype
from distill.models.engine import Completion
from distill.models.merge import adapter_engine, adapter_serving
from distill.prompts.student import student_prompt, student_stop_id
from distill.prompts.template import PromptTemplate
from distill.recipe import Recipe


class StudentAnswers:
    def __init__(self, recipe: Recipe, adapter: Path | None):
        self.recipe, self.adapter = recipe, adapter
        self.serving = ExitStack()
        self.engine, self.lora = None, None

    def __enter__(self) -> "StudentAnswers":
        recipe, spec = self.recipe, self.recipe.models.student
        folder, _ = resolved_model(recipe, "student")
        merged = self.adapter is not None and adapter_serving(recipe.evaluate.serve_adapters) == "merged"
        if self.adapter is not None and not merged:
            self.lora = Path(self.adapter).resolve()
        self.engine, _ = self.serving.enter_context(adapter_engine(
            folder, spec, "student", model_dtype(spec, "student", folder).dtype, recipe.seed,
            merged=Path(self.adapter) if merged else None, adapters=(self.lora,) if self.lora else (), max_logprobs=1))
        return self

    def __exit__(self, *exc) -> None:
        self.serving.close()

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
