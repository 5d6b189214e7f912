"""The teacher's prompt for an item: its template, few-shot examples drawn from the seeds, its chat template. Used
where the teacher is asked (generation) and where it is measured (evaluation), so both ask the same way."""

from __future__ import annotations

from distill import rows as C
from distill.prompts.template import PromptTemplate, draw_examples, row_seed, row_variables
from distill.recipe import Recipe


def template_variables(item: dict, examples: list[dict]) -> dict:
    """What a prompt template sees: the row's columns by name and as `row`, then distill's own names, which win (a
    column named `input` is row.input). A grid item without an input yet has no `input` variable: reading it is an
    error, not the word None in the prompt."""
    cell = item.get(C.CELL)
    variables = {**row_variables(item), **(cell or {}), "examples": examples, "cell": cell, "index": item.get("index", 0)}
    if item[C.INPUT] is not None or cell is None:
        variables["input"] = item[C.INPUT]
    return variables


def teacher_prompts(recipe: Recipe, template: PromptTemplate, items: list[dict], pool: list[dict], render_chat=None,
                    never_itself: bool = False) -> list[str]:
    """The teacher's prompt for each item, few-shot examples drawn from `pool` (seeds only). `never_itself`: an item
    found among a fixed draw gets a draw of its own without it (the teacher scoring an answer to a seed must not read
    that seed's target among its examples); score mode always does so."""
    g = recipe.generate
    fixed = None if g.few_shot.per_row else draw_examples(pool, g.few_shot.k, g.few_shot.seed)
    prompts = []
    for item in items:
        examples = fixed if fixed is not None else draw_examples(pool, g.few_shot.k, row_seed(g.few_shot.seed, item[C.ID]), item[C.ID])
        if (g.scores_targets or never_itself) and any(e[C.ID] == item[C.ID] for e in examples):
            # scored on its own target, the teacher must not find it among the examples
            examples = draw_examples(pool, g.few_shot.k, row_seed(g.few_shot.seed, item[C.ID]), item[C.ID])
        examples = [{"input": e[C.INPUT], "target": e[C.REFERENCE]} for e in examples]
        text = template.render(**template_variables(item, examples))
        prompts.append(render_chat(text, g.system_prompt, history=item.get(C.HISTORY)) if g.chat else text)
    return prompts
