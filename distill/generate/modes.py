"""What the teacher is asked, one object per `generate.mode`: the work items, how a chunk of prompts becomes samples,
what each row's provenance adds, what the stage summary counts, and how the dataset card says what the teacher did.
A new mode is one class here (and its name in the recipe schema)."""

from __future__ import annotations

from typing import ClassVar

from distill import rows as C
from distill.generate.labels import check_answer, check_pair, pair_schema, structured_request
from distill.generate.sample import Sample
from distill.generate.sampling import generate_chunk
from distill.generate.score_targets import SCORED_WITH, score_chunk
from distill.generate.work import grid_cells
from distill.prompts.template import PromptTemplate
from distill.recipe import Recipe
from distill.rows import row_id


class Mode:
    name: ClassVar[str]
    card_text: ClassVar[str]  # what the teacher did, completing "The teacher ... " in the dataset card
    reads_prompt_logprobs: ClassVar[bool] = False  # its engine is asked for prompt log-probabilities
    captured_distribution: ClassVar[str] = "raw"  # what generate.logprobs captures (distill.data.captures.DISTRIBUTIONS)

    def __init__(self, recipe: Recipe):
        self.recipe, self.g = recipe, recipe.generate

    def items(self, seeds: list[dict]) -> list[dict]:
        """The prompts to make, each with its id and what the template sees: one per seed."""
        return [{**s, C.CELL: None, "index": 0} for s in seeds]

    def parsed(self):
        """(structured-output request, check(text, finish_reason) -> (kept fields, None) or (None, why), retry
        settings) for modes whose answers must parse, else (None, None, None)."""
        return None, None, None

    def samples(self, engine, prompts: list[str], request_seeds: list[int], items: list[dict], stats,
                answer_prompts=None) -> list[list[Sample]]:
        return generate_chunk(engine, self.g, prompts, request_seeds, stats, answer_prompts, self.parsed())

    def sampling(self) -> dict | None:
        """The sampling settings its rows record."""
        return self.g.sampling.model_dump(mode="json")

    def provenance(self, sample: Sample, prompt: str, answer_template: PromptTemplate | None) -> dict:
        """What a row's provenance adds for this mode."""
        return {}

    def summary(self, tokens: int) -> dict:
        return {"new_tokens": tokens}


class Complete(Mode):
    name = "complete"
    card_text = "answered real seed inputs"


class Label(Mode):
    name = "label"
    card_text = "labelled real inputs under a structured-output constraint"
    captured_distribution = "constrained"  # vLLM applies the grammar's mask before it reads the log-probabilities

    def parsed(self):
        label = self.g.label

        def check(text, finish_reason):
            answer, why = check_answer(label, text, finish_reason)
            return (None if why else {"text": answer}), why

        return structured_request(label), check, label


class Synthesize(Mode):
    name = "synthesize"
    card_text = "wrote inputs and answers for every cell of an attribute grid"

    def items(self, seeds: list[dict]) -> list[dict]:
        """`per_cell` prompts for every cell of the grid: rare cells get their quota instead of being left to chance."""
        return [{C.ID: row_id("cell", *(f"{k}={v}" for k, v in cell.items()), index), C.INPUT: None, C.REFERENCE: None,
                 C.REFERENCES: [], C.SLICE: None, C.CELL: cell, "index": index}
                for cell in grid_cells(self.g.grid) for index in range(self.g.grid.per_cell)]

    def parsed(self):
        grid, with_output = self.g.grid, self.g.answer_template is None

        def check(text, finish_reason):
            pair, why = check_pair(grid, text, finish_reason, with_output)
            return (None if why else {"input": pair[0], "text": pair[1]}), why

        return {"json": pair_schema(grid, with_output)}, check, grid

    def provenance(self, sample: Sample, prompt: str, answer_template: PromptTemplate | None) -> dict:
        return {"synthesis": {
            "raw": sample.raw,  # the teacher's JSON object as written
            "input_prompt": prompt if answer_template else None,
            "input_tokens": sample.input_tokens,
            "answer_seed": sample.answer_seed,
            "answer_template_sha256": answer_template.sha256 if answer_template else None,
        }}


class Score(Mode):
    name = "score"
    card_text = "wrote no text: it scored the real targets of seed inputs, teacher-forced"
    reads_prompt_logprobs = True

    def __init__(self, recipe: Recipe):
        super().__init__(recipe)
        self.template = PromptTemplate(self.g.completion_template, "generate.completion_template")

    def samples(self, engine, prompts: list[str], request_seeds: list[int], items: list[dict], stats,
                answer_prompts=None) -> list[list[Sample]]:
        return score_chunk(engine, self.g, self.template, prompts, items, stats)

    def sampling(self) -> dict | None:
        return None  # nothing is sampled

    def provenance(self, sample: Sample, prompt: str, answer_template: PromptTemplate | None) -> dict:
        return {"scored": {"completion": "the seed's real target", "method": SCORED_WITH,
                           "completion_template_sha256": self.template.sha256}}

    def summary(self, tokens: int) -> dict:
        return {"scored_tokens": tokens, "scored_with": SCORED_WITH}


MODES: dict[str, type[Mode]] = {m.name: m for m in (Complete, Label, Synthesize, Score)}


def mode_for(recipe: Recipe) -> Mode:
    return MODES[recipe.generate.mode](recipe)
