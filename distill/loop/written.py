"""LLM2LLM: the teacher writes new inputs modelled on the dev items the student got wrong (loop.errors.synthesize).

Each write request shows the teacher one dev error (its input, reference and the student's answer) through
loop.errors.template; the round's prompts are spread evenly over the errors. What comes back is checked before it
costs an answer: an empty input, one cut off at errors.max_tokens, or a copy of an input the run already has (dev,
test, the pool, an earlier written one) is dropped, with the reason counted, and written again by the next error in
turn (a few passes at most), so that the round takes its prompts. The written inputs become selection
entries that carry their input (data.answer_only reads them beside the pool's ids); each one's `why` names the dev
item it was written from, never its text, so that no dev text reaches the rows.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from distill import rows as C
from distill.evaluate.metrics.normalize import normalize
from distill.prompts.template import PromptTemplate, row_seed, row_variables
from distill.recipe import Recipe
from distill.rows import row_id


WRITE_PASSES = 4  # a teacher that keeps writing copies of known inputs is asked at most this many times per round


@dataclass
class Writing:
    """What the round's writing made: selection entries and why the rest was dropped, and the tokens it cost."""

    entries: list[tuple[dict, dict]] = field(default_factory=list)  # (item with its written input, why)
    dropped: Counter = field(default_factory=Counter)
    tokens: int = 0


def plan_writes(errors: list[dict], n: int, seed: int) -> list[tuple[dict, int]]:
    """(dev error, its j-th write) for n writes spread evenly over the errors: each error's first, then each one's
    second, the errors in a seeded order (with more errors than writes, n of them at random)."""
    order = random.Random(seed).sample(errors, len(errors))
    return [(order[i % len(order)], i // len(order)) for i in range(n)] if order else []


def accept(text: str, finish_reason: str | None, known: set[str], start: str = "") -> str | None:
    """Why a written input (`text` after the given `start`) is dropped, or None to keep it. `known`: the run's inputs,
    normalised (grows as inputs are kept, so that two equal writes make one prompt)."""
    if not text.strip():
        return "empty"
    if finish_reason == "length":
        return "cut off at errors.max_tokens"
    if normalize(start + text, ignore_case=True) in known:
        return "a copy of an input the run already has"
    return None


def write_requests(recipe: Recipe, template: PromptTemplate, k: int, plan: list[tuple[dict, int]],
                   render_chat) -> tuple[list[str], list[int]]:
    """(the teacher's prompt, its request seed) for each planned write, from loop.errors.template."""
    prompts, seeds = [], []
    for error, j in plan:
        text = template.render(**{**row_variables(error), "input": error[C.INPUT], "reference": error[C.REFERENCE],
                                  "references": error.get(C.REFERENCES) or [error[C.REFERENCE]],
                                  "student_answer": error["prediction"] or "", "slice": error.get(C.SLICE)})
        prompts.append((render_chat(text) if recipe.generate.chat else text) + recipe.loop.errors.start)
        seeds.append(row_seed(recipe.seed, f"loop round {k} write {error[C.ID]} {j}"))
    return prompts, seeds


def write_inputs(engine, recipe: Recipe, k: int, errors: list[dict], n: int, known: set[str]) -> Writing:
    """Round k's written inputs: n writes over `errors` (dev items with the student's `prediction`), checked against
    the `known` inputs (normalised; kept ones are added). What is dropped is written again, by the errors next in
    turn, in up to WRITE_PASSES passes in all, so that the round takes its prompts."""
    e = recipe.loop.errors
    template = PromptTemplate(e.template, "loop.errors.template")
    seed = row_seed(recipe.seed, f"loop round {k} writes")
    made, asked = Writing(), 0
    for _ in range(WRITE_PASSES):
        missing = n - len(made.entries)
        if missing <= 0 or not errors:
            break
        plan = plan_writes(errors, asked + missing, seed)[asked:]  # the writes after those already asked for
        asked += missing
        prompts, seeds = write_requests(recipe, template, k, plan, engine.apply_chat_template)
        outs = engine.generate(prompts, seeds=seeds, temperature=e.temperature, max_tokens=e.max_tokens,
                               stop=e.stop or None)
        for (error, j), request_seed, (out,) in zip(plan, seeds, outs):
            made.tokens += out.num_tokens
            why = accept(out.text, out.finish_reason, known, e.start)
            if why:
                made.dropped[why] += 1
                continue
            written = (e.start + out.text).strip()
            known.add(normalize(written, ignore_case=True))
            item = {C.ID: row_id("written", k, error[C.ID], j), C.INPUT: written, C.SLICE: error.get(C.SLICE)}
            made.entries.append((item, {"strategy": "errors", "written_from": error[C.ID], "write_seed": request_seed,
                                        "write_tokens": out.num_tokens, "template_sha256": template.sha256}))
    return made
