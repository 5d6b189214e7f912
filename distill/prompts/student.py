"""The student's prompt for a row, the same in training and in evaluation, and the check that they agree."""

from __future__ import annotations

from distill import rows as C
from distill.errors import UserError
from distill.prompts.template import PromptTemplate, chat_prompt, end_of_turn_id, row_variables
from distill.recipe import Recipe


def student_prompt(recipe: Recipe, template: PromptTemplate, row: dict, tokenizer) -> str:
    """The exact text the student is prompted with, in training and in evaluation."""
    text = render_student(template, row)
    if recipe.train.chat:
        return chat_prompt(tokenizer, text, recipe.train.system_prompt, row.get(C.HISTORY),
                           **recipe.models.student.chat_template_kwargs)
    return text


def render_student(template: PromptTemplate, row: dict) -> str:
    """The student's prompt template over a row: its columns by name, `row`, and `input`."""
    return template.render(**{**row_variables(row), "input": row[C.INPUT]})


def student_stop_id(recipe: Recipe, tokenizer) -> int | None:
    """The token the student learns to end its answer with: its EOS, or in the chat format its template's end-of-turn
    token."""
    return end_of_turn_id(tokenizer) if recipe.train.chat else tokenizer.eos_token_id


def check_eval_agreement(recipe: Recipe) -> None:
    """The student must be evaluated with the prompt it was trained on."""
    for i, s in enumerate(recipe.evaluate.sets):
        if s.data == "heldout" and s.prompt_template is not None and s.prompt_template != recipe.train.prompt_template:
            raise UserError(
                f"evaluate.sets.{i}.prompt_template differs from train.prompt_template: the student would be "
                f"evaluated in a format it was not trained on ({s.prompt_template!r} vs {recipe.train.prompt_template!r})"
            )
