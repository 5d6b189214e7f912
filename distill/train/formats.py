"""How the student sees a row, and the checks that training and evaluation agree on it.

The most expensive silent failure in distillation is a student trained in one format and
evaluated in another, or trained without an end-of-sequence label so that it never stops.
These checks run before any training step.
"""

from __future__ import annotations

from distill import rows as C
from distill.errors import UserError
from distill.generate.prompts import PromptTemplate
from distill.recipe import Recipe


def student_prompt(recipe: Recipe, template: PromptTemplate, row: dict, tokenizer) -> str:
    """The exact text the student is prompted with, in training and in evaluation."""
    text = template.render(input=row[C.INPUT], row=row)
    if recipe.train.chat:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return text


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


def check_eval_agreement(recipe: Recipe) -> None:
    """The student must be evaluated with the prompt it was trained on."""
    for i, s in enumerate(recipe.evaluate.sets):
        if s.data == "heldout" and s.prompt_template is not None and s.prompt_template != recipe.train.prompt_template:
            raise UserError(
                f"evaluate.sets.{i}.prompt_template differs from train.prompt_template: the student would be "
                f"evaluated in a format it was not trained on ({s.prompt_template!r} vs {recipe.train.prompt_template!r})"
            )


def check_stop_learned(trainer, tokenizer, stop: list[str]) -> dict:
    """Tokenize one training example exactly as the trainer will and check its last label is EOS.

    If the EOS label is missing (or masked because pad == eos), the student never learns to
    stop and every evaluated answer runs to max_tokens.
    """
    if tokenizer.eos_token_id is None:
        raise UserError("the student's tokenizer has no eos_token: it could never learn where an answer ends")
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = [t for t in batch["labels"][0].tolist() if t != -100]
    if not labels:
        raise UserError("the first training example has no completion tokens to learn (is max_length too small?)")
    if labels[-1] != tokenizer.eos_token_id:
        raise UserError(
            f"training labels end with token {labels[-1]} ({tokenizer.decode([labels[-1]])!r}), not EOS "
            f"{tokenizer.eos_token!r}: the student would never learn to stop (raise train.max_length?)"
        )
    completion = tokenizer.decode(labels[:-1])
    inner_stops = [s for s in stop if s and s in completion]
    return {"eos_token": tokenizer.eos_token, "eos_id": tokenizer.eos_token_id, "example_completion": completion,
            "stop_strings_inside_completion": inner_stops}
