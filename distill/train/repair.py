"""On-policy repair: the prompts like a guard set's, and the earlier model that scores the student's answers to them
(train.on_policy.repair).

Task training can break what the student knew beside its task (a guard set's score degrades). Repair samples the
student on prompts of that kind and pulls its answers toward an earlier model's, with the same per-token reverse KL
as the rest of the loop. The prompts never include an evaluation set's items: the gate reads those, untouched.
"""

from __future__ import annotations

from pathlib import Path

from distill import rows as C
from distill.data.eval_sets import load_items
from distill.data.records import to_item
from distill.data.sources import describe, read_source
from distill.errors import UserError
from distill.recipe import Recipe, RepairSettings
from distill.run_dir import RunDir, hash_file


def _key(text: str) -> str:
    return " ".join(str(text).split()).lower()


def _same_content(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve() or (a.stat().st_size == b.stat().st_size and hash_file(a) == hash_file(b))


def repaired_guard_sets(recipe: Recipe) -> list[str]:
    """The guard sets on-policy repair trains toward, in the recipe's order: those read from the repair prompts' own
    file (by content, under any name) and those repair.guard_sets names. The student is pulled toward an earlier model
    on prompts like their items, so they pass the gate nearly by construction and no longer measure general ability."""
    r = recipe.train.on_policy.repair if recipe.train.uses("on_policy") else None
    if r is None:
        return []
    prompts = Path(r.path)
    return [s.name for s in recipe.evaluate.sets if s.guard and (
        s.name in r.guard_sets or (s.path is not None and Path(s.path).is_file() and _same_content(Path(s.path), prompts)))]


def every_guard_set_repaired(recipe: Recipe) -> str | None:
    """A warning when repair trains toward every guard set the recipe has: then none measures general ability."""
    guards = [s.name for s in recipe.evaluate.sets if s.guard]
    if not guards or repaired_guard_sets(recipe) != guards:
        return None
    return (f"every guard set ({', '.join(guards)}) is repaired by train.on_policy.repair: none measures general "
            "ability; add a guard set the repair prompts are not like")


def repair_prompts(recipe: Recipe, run: RunDir) -> tuple[list[dict], int]:
    """(the repair prompts as items, each with an id and its input; how many rows were left out because their input
    is an item of an evaluation set, compared without case and spacing)."""
    r: RepairSettings = recipe.train.on_policy.repair
    held_out = {_key(item[C.INPUT]) for s in recipe.evaluate.sets for item in load_items(s, run.heldout)}
    items, left_out, seen = [], 0, set()
    for row in read_source(r, limit=r.limit):
        item = to_item(row, r.input_field, None)
        key = _key(item[C.INPUT])
        if key in held_out:
            left_out += 1
        elif key not in seen:
            seen.add(key)
            items.append({**item, C.ID: f"repair-{row['_line']}"})
    if not items:
        raise UserError(f"train.on_policy.repair: no prompt of {describe(r)} is left once the evaluation sets' items "
                        f"are taken out ({left_out} were items of an evaluation set)")
    return items, left_out


def repair_teacher_folder(recipe: Recipe, student_dir: Path, scratch: Path) -> Path:
    """The model folder that scores the repair prompts: the base student, or an earlier adapter merged into it (an
    engine with LoRA cannot return batched prompt log-probabilities on vLLM's CPU build)."""
    from distill.models.dtype import model_dtype
    from distill.models.merge import merge_adapter

    teacher = recipe.train.on_policy.repair.teacher
    if teacher == "base":
        return student_dir
    spec = recipe.models.student
    return merge_adapter(student_dir, Path(teacher), model_dtype(spec, "student", student_dir).dtype, scratch,
                         spec.trust_remote_code)
