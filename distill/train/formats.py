"""How the student sees a row, and the checks that training and evaluation agree on it.

The most expensive silent failure in distillation is a student trained in one format and
evaluated in another, or trained without an end-of-sequence label so that it never stops.
These checks run before any training step.
"""

from __future__ import annotations

from distill import rows as C
from distill.errors import UserError
from distill.prompts.template import PromptTemplate
from distill.recipe import Recipe


def training_examples(recipe: Recipe, rows: list[dict]) -> list[dict]:
    """prompt / completion pairs (plain text or chat messages, as TRL's SFTTrainer takes them)."""
    prompt_t = PromptTemplate(recipe.train.prompt_template, "train.prompt_template")
    completion_t = PromptTemplate(recipe.train.completion_template, "train.completion_template")
    examples = []
    for row in rows:
        prompt = prompt_t.render(input=row[C.INPUT], row=row)
        completion = completion_t.render(completion=(row[C.COMPLETION] or "").strip(), row=row)
        if recipe.train.chat:
            examples.append({"prompt": [{"role": "user", "content": prompt}],
                             "completion": [{"role": "assistant", "content": completion.strip()}]})
        else:
            examples.append({"prompt": prompt, "completion": completion})
    return examples


def _last_labels(trainer, batch_size: int = 512):
    """Per training example as the trainer will see it (its processed dataset through its collator): its length in
    tokens, the last label that is learned (not -100, None when no token is learned) and its labels up to it."""
    import torch

    data = trainer.train_dataset
    for start in range(0, len(data), batch_size):
        part = data[start:start + batch_size]
        n = len(part["input_ids"])
        batch = trainer.data_collator([{k: v[i] for k, v in part.items()} for i in range(n)])
        labels = batch["labels"]
        positions = torch.arange(labels.shape[1]).expand_as(labels)
        last = torch.where(labels != -100, positions, -1).max(dim=1).values
        tokens = labels.gather(1, last.clamp(min=0).unsqueeze(1)).squeeze(1)
        for i in range(n):
            yield len(part["input_ids"][i]), (int(tokens[i]) if last[i] >= 0 else None), labels[i][: int(last[i]) + 1]


def check_stop_learned(trainer, tokenizer, stop: list[str], rows: int, max_length: int, max_truncated_share: float) -> dict:
    """Check that every training example ends with the EOS label, exactly as the trainer tokenizes and collates it.

    A row cut by max_length loses its EOS label (the student learns to run on past it); TRL drops a row left with no
    completion token at all. Both are counted; above `max_truncated_share` of the rows training is refused. A row
    shorter than max_length without the EOS label means the format itself is wrong (e.g. EOS masked because
    pad == eos): the student would never learn to stop, and that is always refused.
    """
    if tokenizer.eos_token_id is None:
        raise UserError("the student's tokenizer has no eos_token: it could never learn where an answer ends")
    eos = tokenizer.eos_token_id
    dropped = rows - len(trainer.train_dataset)  # TRL drops examples with no completion token left after truncation
    cut, example = 0, None
    for length, last, labels in _last_labels(trainer):
        if last == eos:
            example = example if example is not None else [t for t in labels.tolist() if t != -100]
        elif length < max_length:
            what = "no completion token" if last is None else f"token {last} ({tokenizer.decode([last])!r})"
            raise UserError(
                f"a training example of {length} tokens ends with {what}, not the EOS label {tokenizer.eos_token!r}: "
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
    return {"eos_token": tokenizer.eos_token, "eos_id": eos, "example_completion": completion,
            "stop_strings_inside_completion": inner_stops, "rows_checked": rows, "rows_without_eos": cut,
            "rows_dropped_by_max_length": dropped}
