"""White-box distillation: the teacher's captured top-K distributions as training targets beside its text.

The student trains on the teacher's tokens as generated (the captured ids, not a re-tokenisation of the text), so every
completion token has the teacher's distribution at it; a row whose kept text is not its captured tokens is left out
and counted. The loss is computed on the teacher's top-K support (plus a tail bucket), never on vocabulary-sized
copies of the teacher side.
"""

from __future__ import annotations

from distill.data.captures import captured_completion, read_captures
from distill.errors import UserError
from distill.recipe import Recipe
from distill.train.stops import stop_as_eos

TEACHER_COLUMNS = ["teacher_positions", "teacher_ids", "teacher_logprobs"]


def kd_example(prompt_ids: list[int], capture: dict, completion: list[int], teacher_eos: bool, eos: int,
               top_k: int | None, stops: set[int] | None = None) -> dict:
    """The training sequence on the teacher's own tokens, and the teacher's top-K at each of them: the student's EOS
    label gets the teacher's distribution only where the teacher itself stopped. `stops`: the teacher's stop ids,
    read as the student's EOS at every position (stop_as_eos) when they are not the student's own."""
    targets = len(completion) + (1 if teacher_eos else 0)
    k = top_k or len(capture["top_ids"][0])
    rows = [(list(i[:k]), list(lp[:k])) for i, lp in zip(capture["top_ids"][:targets], capture["top_logprobs"][:targets])]
    if stops and stops != {eos}:
        rows = [stop_as_eos(i, lp, stops, eos) for i, lp in rows]
    return {"input_ids": prompt_ids + completion + [eos],
            "completion_mask": [0] * len(prompt_ids) + [1] * (len(completion) + 1),
            "teacher_positions": list(range(len(prompt_ids), len(prompt_ids) + targets)),
            "teacher_ids": [i for i, _ in rows],
            "teacher_logprobs": [lp for _, lp in rows]}


def kd_examples(recipe: Recipe, rows: list[dict], tokenizer, captures_path,
                teacher_stops: set[int] | None = None) -> tuple[list[dict], dict, list[str]]:
    """(tokenized training examples on the teacher's captured tokens, counts, the ids of the rows they come from): the
    rows whose capture lines up with their text; the others are counted with the reason and left out. Refuses (UserError) when more than
    train.kd.max_mismatch_share of the rows are left out. Also counts the rows whose text the student's tokenizer
    would split otherwise than the teacher generated it (trained on the teacher's tokens either way).
    `teacher_stops`: the ids that end the teacher's answers (default the student's EOS); where they are not the
    student's EOS, the teacher's stop is read as the student's EOS."""
    from distill import rows as C
    from distill.prompts.student import student_prompt, student_stop_id
    from distill.prompts.template import PromptTemplate, row_variables
    from distill.prompts.tokens import prompt_ids

    kd = recipe.train.kd
    prompt_t = PromptTemplate(recipe.train.prompt_template, "train.prompt_template")
    captures = {r["id"]: r for r in read_captures(captures_path, {r[C.ID] for r in rows})}
    eos = student_stop_id(recipe, tokenizer)  # in the chat format, the template's end-of-turn token
    stops = set(teacher_stops) if teacher_stops else {eos}
    completion_t = PromptTemplate(recipe.train.completion_template, "train.completion_template")
    examples, used, left_out, retokenized_differ = [], [], {}, 0
    for row in rows:
        text = row[C.COMPLETION] or ""
        if completion_t.render(**{**row_variables(row), "completion": text.strip()}).strip() != text.strip():
            raise UserError(f"train.completion_template adds text around the completion ({recipe.train.completion_template!r}): "
                            f"objective {recipe.train.objective!r} trains on the teacher's tokens as generated, so the "
                            "template may only be the completion itself")
        found, why = captured_completion(captures.get(row[C.ID]), text, tokenizer, stops)
        if found is None:
            left_out[why] = left_out.get(why, 0) + 1
            continue
        completion, teacher_eos = found
        prompt = student_prompt(recipe, prompt_t, row, tokenizer)
        head = prompt_ids(tokenizer, prompt)  # as the student's vLLM engine is handed it: one BOS
        written = tokenizer.decode(completion, skip_special_tokens=True)  # the text with any space a label lost
        retokenized_differ += prompt_ids(tokenizer, prompt + written) != head + completion
        examples.append(kd_example(head, captures[row[C.ID]], completion, teacher_eos, eos, kd.top_k, stops))
        used.append(row[C.ID])
    lacking = len(rows) - len(examples)
    share = lacking / len(rows) if rows else 0.0
    if share > kd.max_mismatch_share:
        detail = ", ".join(f"{n}: {why}" for why, n in sorted(left_out.items()))
        raise UserError(
            f"train.objective {recipe.train.objective!r}: {lacking} of {len(rows)} training rows ({share:.1%}; {detail}) "
            f"have no captured teacher tokens matching their text, more than train.kd.max_mismatch_share = "
            f"{kd.max_mismatch_share} (a filter step that rewrote completions?); "
            "or use objective sft"
        )
    return examples, {"rows": len(rows), "rows_with_teacher_targets": len(examples), "rows_left_out": left_out,
                      "rows_the_student_would_tokenize_otherwise": retokenized_differ,
                      **({"teacher_stop_read_as_student_eos": sorted(stops - {eos})} if stops != {eos} else {}),
                      "target_tokens": sum(len(e["teacher_positions"]) for e in examples)}, used


class TeacherTargetCollator:
    """The trainer's collator, plus the teacher's top-K as dense [batch, length, K] tensors and a mask of the
    positions that carry one."""

    def __init__(self, base, k: int):
        self.base, self.k = base, k

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        teacher = [{c: e.pop(c) for c in TEACHER_COLUMNS} for e in examples]
        batch = self.base(examples)
        b, length = batch["labels"].shape
        ids = torch.zeros(b, length, self.k, dtype=torch.long)
        lps = torch.full((b, length, self.k), float("-inf"))
        mask = torch.zeros(b, length, dtype=torch.bool)
        for row, t in enumerate(teacher):
            for pos, top_ids, top_lps in zip(t["teacher_positions"], t["teacher_ids"], t["teacher_logprobs"]):
                if pos < length:
                    ids[row, pos, :len(top_ids)] = torch.tensor(top_ids)
                    lps[row, pos, :len(top_lps)] = torch.tensor(top_lps)
                    mask[row, pos] = True
        batch.update(teacher_ids=ids, teacher_logprobs=lps, teacher_mask=mask)
        return batch
