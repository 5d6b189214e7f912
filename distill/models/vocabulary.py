"""Whether teacher and student share token ids: KD and fidelity read the teacher's ids as the student's."""

from __future__ import annotations

from distill.errors import UserError
from distill.models.identity import ids_that_differ, vocabulary
from distill.recipe import Recipe


def check_shared_vocabulary(recipe: Recipe, setting: str | None = None, instead: str | None = None,
                            both_ways: bool = False) -> dict:
    """Every teacher token must have the same id in the student's vocabulary, or the captured ids mean other strings
    to the student; with `both_ways` (the teacher reads the student's tokens too, on-policy) every student token must
    have the same id in the teacher's. Raises a UserError (exit 2) naming both tokenizers. `setting` names what needs
    it (default the training objective), `instead` what to do otherwise."""
    from distill.models.context import resolved_model

    setting = setting or f"train.objective {recipe.train.objective!r}"
    instead = instead or "Use train.objective: sft to train on the teacher's text instead"

    teacher_dir, teacher = resolved_model(recipe, "teacher")
    student_dir, student = resolved_model(recipe, "student")
    tv, sv = vocabulary(teacher_dir), vocabulary(student_dir)
    if tv is None or sv is None:
        missing = teacher if tv is None else student
        raise UserError(f"{setting}: cannot read the vocabulary of {missing} (no tokenizer.json, vocab.json or "
                        f"sentencepiece model) to check that teacher and student share token ids. {instead}")
    differ = ids_that_differ(tv, sv)
    if differ:
        example = differ[0]
        raise UserError(
            f"{setting} needs teacher and student to share a vocabulary, but "
            f"{len(differ)} of the teacher's {len(tv)} tokens have another id (or none) in the student's: e.g. "
            f"{example!r} is {tv[example]} in {teacher} and {sv.get(example)} in {student}. {instead}"
        )
    differ = ids_that_differ(sv, tv) if both_ways else []
    if differ:
        example = differ[0]
        raise UserError(
            f"{setting} needs teacher and student to share a vocabulary, but "
            f"{len(differ)} of the student's {len(sv)} tokens have another id (or none) in the teacher's: e.g. "
            f"{example!r} is {sv[example]} in {student} and {tv.get(example)} in {teacher}. {instead}"
        )
    return {"teacher_tokens": len(tv), "student_tokens": len(sv)}


def stop_token_ids(model_dir, trust_remote_code: bool = False, tokenizer=None) -> set[int]:
    """The ids that end a model's answer: its tokenizer's EOS and its generation_config.json's eos_token_id (vLLM
    stops at either). An instruct teacher stops with its end-of-turn token where its base student has another EOS.
    `tokenizer`: the model's, when already loaded."""
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    ids = set()
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    eos = tokenizer.eos_token_id
    if eos is not None:
        ids.add(int(eos))
    config = Path(model_dir) / "generation_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("eos_token_id")
        ids.update(int(i) for i in (value if isinstance(value, list) else [value]) if i is not None)
    return ids
