"""How the student sees a row, and the checks that training and evaluation agree on it.

The most expensive silent failure in distillation is a student trained in one format and
evaluated in another, or trained without an end-of-sequence label so that it never stops.
These checks run before any training step.
"""

from __future__ import annotations

from distill import rows as C
from distill.errors import UserError
from distill.prompts.student import render_student
from distill.prompts.template import PromptTemplate, conversation, row_variables, takes_system
from distill.recipe import Recipe


def training_examples(recipe: Recipe, rows: list[dict], tokenizer=None) -> list[dict]:
    """prompt / completion pairs (plain text or chat messages, as TRL's SFTTrainer takes them). `tokenizer`: the
    student's, whose chat template may have no system role (a system message then opens the first user turn, as
    the student's prompts in evaluation and sampling have it)."""
    system_role = tokenizer is None or not recipe.train.chat or takes_system(tokenizer)
    prompt_t = PromptTemplate(recipe.train.prompt_template, "train.prompt_template")
    completion_t = PromptTemplate(recipe.train.completion_template, "train.completion_template")
    examples = []
    for row in rows:
        prompt = render_student(prompt_t, row)
        completion = completion_t.render(**{**row_variables(row), "completion": (row[C.COMPLETION] or "").strip()})
        if recipe.train.chat:  # the conversation's history and system prompt, then the user turn
            example = {"prompt": conversation(prompt, recipe.train.system_prompt, row.get(C.HISTORY), system_role),
                       "completion": [{"role": "assistant", "content": completion.strip()}]}
            if recipe.models.student.chat_template_kwargs:  # TRL passes them to the chat template, per example
                example["chat_template_kwargs"] = dict(recipe.models.student.chat_template_kwargs)
            examples.append(example)
        else:
            examples.append({"prompt": prompt, "completion": completion})
    return examples


def _learned_labels(trainer, batch_size: int = 512):
    """Per training example as the trainer will see it (its processed dataset through its collator): its length in
    tokens and the labels it learns (not -100), in order."""
    data = trainer.train_dataset
    for start in range(0, len(data), batch_size):
        part = data[start:start + batch_size]
        n = len(part["input_ids"])
        batch = trainer.data_collator([{k: v[i] for k, v in part.items()} for i in range(n)])
        labels = batch["labels"]
        for i in range(n):
            yield len(part["input_ids"][i]), [int(t) for t in labels[i] if t != -100]


def _stop_at(learned: list[int], eos: int, tokenizer) -> int | None:
    """Where the learned labels stop: the index of the last EOS label when nothing but whitespace is learned after
    it (a chat template's newline after its end-of-turn token), else None."""
    if eos not in learned:
        return None
    at = len(learned) - 1 - learned[::-1].index(eos)
    after = learned[at + 1:]
    return at if not after or not tokenizer.decode(after).strip() else None


def check_stop_learned(trainer, tokenizer, stop: list[str], rows: int, max_length: int, max_truncated_share: float,
                       eos: int | None = None) -> dict:
    """Check that every training example ends with the EOS label, exactly as the trainer tokenizes and collates it (in
    the chat format the template's end-of-turn token, which the template may follow with whitespace).

    A row cut by max_length loses its EOS label (the student learns to run on past it); TRL drops a row left with no
    completion token at all. Both are counted; above `max_truncated_share` of the rows training is refused. A row
    shorter than max_length without the EOS label means the format itself is wrong (e.g. EOS masked because
    pad == eos): the student would never learn to stop, and that is always refused.
    """
    eos = tokenizer.eos_token_id if eos is None else eos  # `eos`: the stop the student learns (student_stop_id)
    if eos is None:
        raise UserError("the student's tokenizer has no eos_token: it could never learn where an answer ends")
    eos_token = tokenizer.convert_ids_to_tokens(eos)
    dropped = rows - len(trainer.train_dataset)  # TRL drops examples with no completion token left after truncation
    cut, example = 0, None
    for length, learned in _learned_labels(trainer):
        at = _stop_at(learned, eos, tokenizer)
        if at is not None:
            example = example if example is not None else learned[:at + 1]
        elif length < max_length:
            last = learned[-1] if learned else None
            what = "no completion token" if last is None else f"token {last} ({tokenizer.decode([last])!r})"
            raise UserError(
                f"a training example of {length} tokens ends with {what}, not the EOS label {eos_token!r}: "
                f"the student would never learn to stop (check train.completion_template and the tokenizer's pad token)"
            )
        else:
            cut += 1
    lost = cut + dropped
    share = lost / rows if rows else 0.0
    if share > max_truncated_share or example is None:
        raise UserError(
            f"{lost} of {rows} training rows ({share:.1%}) lose their EOS label to train.max_length = {max_length} "
            f"({cut} cut, {dropped} left with no completion token and dropped), more than train.max_truncated_share = "
            f"{max_truncated_share}: raise train.max_length, or reject long rows with a length filter"
        )
    completion = tokenizer.decode(example[:-1])
    inner_stops = [s for s in stop if s and s in completion]
    return {"eos_token": eos_token, "eos_id": eos, "example_completion": completion,
            "stop_strings_inside_completion": inner_stops, "rows_checked": rows, "rows_without_eos": cut,
            "rows_dropped_by_max_length": dropped}
