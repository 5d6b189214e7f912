"""The teacher answering work items: their prompts, its samples, and the rows and captures these become.

The generate stage cuts the items into chunks and writes each chunk's rows; anything that needs the teacher's
answers to some items (a subset chosen later, say) makes the same rows with the same two calls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

from distill import rows as C
from distill.data.captures import LOGPROBS_MODE
from distill.generate.modes import Mode
from distill.generate.sample import Sample
from distill.generate.sampling import ChunkStats
from distill.prompts.teacher import teacher_prompts
from distill.prompts.template import PromptTemplate
from distill.recipe import Recipe
from distill.rows import row_id


@dataclass
class Answered:
    """Items with their prompts, request seeds and samples (per item, n of them), and what making them cost."""

    items: list[dict]
    prompts: list[str]
    seeds: list[int]
    samples: list[list[Sample]]
    stats: ChunkStats


class Answering:
    """The teacher's engine with what every row it makes records: the recipe's mode and templates, the seeds that
    few-shot examples are drawn from, the teacher's identity, the backend and the shard."""

    def __init__(self, recipe: Recipe, mode: Mode, engine, seeds: list[dict], teacher: dict, shard: tuple[int, int]):
        g = recipe.generate
        self.recipe, self.g, self.mode, self.engine, self.pool, self.teacher = recipe, g, mode, engine, seeds, teacher
        self.shard = f"{shard[0]}/{shard[1]}"
        self.template = PromptTemplate(g.template, "generate.template")
        self.answer_template = PromptTemplate(g.answer_template, "generate.answer_template") if g.answer_template else None
        self.backend = engine.describe()
        self.sampling = mode.sampling()

    def _prompts(self, template: PromptTemplate, items: list[dict]) -> list[str]:
        return teacher_prompts(self.recipe, template, items, self.pool, self.engine.apply_chat_template)

    def answer(self, items: list[dict], first: int) -> Answered:
        """The teacher's samples for `items`, the first of which is item number `first` of the run (its request seed
        is the sampling seed plus that number)."""
        prompts = self._prompts(self.template, items)
        seeds = [self.g.sampling.seed + first + i for i in range(len(items))]
        answer_prompts = None if self.answer_template is None else (
            lambda idx, inputs: self._prompts(self.answer_template, [{**items[i], C.INPUT: x} for i, x in zip(idx, inputs)]))
        stats = ChunkStats()  # one per call: chunks in flight run in threads
        samples = self.mode.samples(self.engine, prompts, seeds, items, stats, answer_prompts)
        return Answered(items, prompts, seeds, samples, stats)

    def rows(self, answered: Answered, chunk: int) -> tuple[list[dict], list[dict]]:
        """(the rows, the captures keyed by row id) of the answers, each row with its provenance."""
        now = datetime.now(timezone.utc).isoformat()
        rows, captures = [], []
        for item, prompt, seed, sample_list in zip(answered.items, answered.prompts, answered.seeds, answered.samples):
            for k, s in enumerate(sample_list):
                if s.capture is not None:
                    captures.append(s.capture.record(row_id(item[C.ID], k)))
                rows.append({
                    C.ID: row_id(item[C.ID], k),
                    C.INPUT: s.input if s.input is not None else item[C.INPUT],  # synthesize: the input it wrote
                    C.REFERENCE: item[C.REFERENCE],
                    C.SLICE: item[C.SLICE],
                    C.CELL: item[C.CELL],
                    C.HISTORY: item.get(C.HISTORY),
                    # JSON text: columns differ in type from data set to data set, and a Parquet column may not
                    C.COLUMNS: None if item.get(C.COLUMNS) is None else json.dumps(item[C.COLUMNS], default=str),
                    C.PROMPT: s.prompt if s.prompt is not None else prompt,  # answer_template: the prompt answered
                    C.COMPLETION: s.text,
                    C.SAMPLE_INDEX: k,
                    C.FINISH_REASON: s.finish_reason,
                    C.FAILURE: s.failure,
                    C.PROVENANCE: {**self._provenance(s, prompt, seed, chunk, now),
                                   **({C.SELECTION: item[C.SELECTION]} if item.get(C.SELECTION) else {})},
                })
        return rows, captures

    def _provenance(self, s: Sample, prompt: str, seed: int, chunk: int, now: str) -> dict:
        g = self.g
        return {
            "mode": self.mode.name,
            "teacher": self.teacher,
            "backend": self.backend,
            "template_sha256": self.template.sha256,
            "sampling": self.sampling,
            "seed": seed,
            "attempts": s.attempts,
            "retry_seed": s.retry_seed,
            "completion_tokens": s.tokens,
            "shard": self.shard,
            "chunk": chunk,
            "created_at": now,
            **({"logprobs": {"k": g.logprobs, "mode": LOGPROBS_MODE, "distribution": self.mode.captured_distribution,
                             "captured": s.capture is not None}} if g.logprobs else {}),
            **self.mode.provenance(s, prompt, self.answer_template),
            **({"reasoning": s.reasoning} if s.reasoning is not None else {}),
        }
