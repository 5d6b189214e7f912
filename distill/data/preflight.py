"""Read every data source's format and first rows, and render every template over them, before any work starts.

`distill validate` and the start of `distill run` / `distill generate` call `preflight`, so that a data or evaluation
source distill cannot read, a row without the fields the run reads, or a template naming a column the rows do not
have stops the run with one line naming the source and row, instead of after generation. Text files are also
decoded whole as UTF-8 (in blocks, constant memory): a bad byte anywhere is named by its line.
"""

from __future__ import annotations

from distill import rows as C
from distill.data.records import columns, is_conversation, to_item
from distill.data.sources import check_text, describe, read_source
from distill.data.split import require_example_targets
from distill.errors import DataError, UserError
from distill.prompts.student import render_student
from distill.prompts.template import PromptTemplate, row_variables
from distill.recipe import Recipe

PEEK_ROWS = 100


def _render_each(template: PromptTemplate, raw: list[dict], items: list[dict], render) -> None:
    """Render `template` over each item; a failure names the row it failed on and the columns it has."""
    for r, item in zip(raw, items):
        try:
            render(template, item)
        except UserError as e:
            raise DataError(f"{e}, rendering {r['_where']} (its columns: {', '.join(columns(r))})") from None


def _teacher_render(recipe: Recipe, items: list[dict]):
    from distill.prompts.teacher import teacher_prompts

    def render(template: PromptTemplate, item: dict) -> None:
        teacher_prompts(recipe, template, [item], items, lambda text, system=None, history=None: text)
    return render


def _student_render(template: PromptTemplate, item: dict) -> None:
    render_student(template, item)


def _check_templates(recipe: Recipe, raw: list[dict], items: list[dict]) -> None:
    """Every template that reads the data's rows, over its first rows."""
    g, t = recipe.generate, recipe.train
    if not g.writes_inputs:  # synthesize mode's prompts are grid cells, not rows
        _render_each(PromptTemplate(g.template, "generate.template"), raw, items, _teacher_render(recipe, items))
    if g.scores_targets:
        _render_each(PromptTemplate(g.completion_template, "generate.completion_template"), raw, items,
                     lambda tpl, it: tpl.render(**{**row_variables(it), "target": it[C.REFERENCE] or ""}))
    _render_each(PromptTemplate(t.prompt_template, "train.prompt_template"), raw, items, _student_render)
    _render_each(PromptTemplate(t.completion_template, "train.completion_template"), raw, items,
                 lambda tpl, it: tpl.render(**{**row_variables(it), "completion": it[C.REFERENCE] or ""}))


def _check_conversations(recipe: Recipe, items: list[dict], raw: list[dict], what: str, teacher: bool) -> None:
    """A conversation is read only through chat templates: refuse one the recipe would flatten."""
    first = next((r for r, it in zip(raw, items) if is_conversation(it)), None)
    if first is None:
        return
    off = [key for key, on in (("generate.chat", recipe.generate.chat or not teacher), ("train.chat", recipe.train.chat))
           if not on]
    if off:
        raise DataError(f"{first['_where']}: {what} holds chat messages, read only through chat templates: set "
                        f"{' and '.join(off)} to true (the teacher answers the last user turn after the turns before "
                        f"it, the student learns it in its own chat format)")


def preflight(recipe: Recipe, rows: int = PEEK_ROWS) -> list[str]:
    """Check the recipe's data source and each evaluation set's: format, UTF-8, the first `rows` rows with the fields
    the run reads, and every template rendered over them. Raises DataError on the first problem; returns one line
    per source checked."""
    from distill.data.eval_sets import EVAL_SPLITS, source_items

    d = recipe.data
    fmt = check_text(d)
    raw = read_source(d, limit=rows)
    if not raw:
        raise DataError(f"{describe(d)}: no rows")
    items = [to_item(r, d.input_field, d.target_field, d.slice_field, d.target_names) for r in raw]
    require_example_targets(recipe, raw, items)
    heldout_scored = any(s.data == "heldout" for s in recipe.evaluate.sets)
    if heldout_scored and d.target_field and not any(it[C.REFERENCES] for it in items):
        raise DataError(f"{describe(d)}: none of the first {len(raw)} rows has a {d.target_field!r} value (has: "
                        f"{', '.join(columns(raw[0]))}), and the held-out split is scored against "
                        f"data.target_field: name the column holding the reference answers")
    _check_conversations(recipe, items, raw, f"data.input_field {d.input_field!r}", teacher=True)
    _check_templates(recipe, raw, items)
    checked = [f"data {describe(d)}: {fmt}, first {len(raw)} rows read, templates rendered over them"]
    for i, s in enumerate(recipe.evaluate.sets):
        if s.data is not None:
            continue
        try:
            set_fmt = check_text(s)
            set_raw = read_source(s, limit=rows, prefer_splits=EVAL_SPLITS)
            set_items = source_items(s, set_raw)
            _check_conversations(recipe, set_items, set_raw, f"evaluate.sets.{i}.input_field {s.input_field!r}",
                                 teacher="teacher" in recipe.evaluate.models and s.teacher_template is None)
            own = s.prompt_template or recipe.train.prompt_template
            _render_each(PromptTemplate(own, f"evaluate.sets.{i}.prompt_template"), set_raw, set_items, _student_render)
            if s.teacher_template:
                _render_each(PromptTemplate(s.teacher_template, f"evaluate.sets.{i}.teacher_template"), set_raw,
                             set_items, _student_render)
        except DataError as e:
            raise DataError(f"evaluate.sets.{i} ({s.name!r}): {e}") from None
        checked.append(f"evaluate set {s.name!r} {describe(s)}: {set_fmt}, first {len(set_items)} rows read")
    return checked
