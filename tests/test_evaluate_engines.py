"""Evaluation serves the models that share one folder from one engine, unless their engine settings differ: a
teacher with the student's weights in another dtype must be scored in its own dtype, as its results claim."""

from __future__ import annotations

import json

from conftest import PLURAL, write_recipe

from distill import rows as C


def _score(recipe, candidates, items, pool):
    from distill.evaluate.scoring import score_candidates

    plural = recipe.evaluate.sets[0]
    return score_candidates(recipe, candidates, {"plural": (plural, items)}, pool)


def test_a_teacher_in_another_dtype_than_the_student_is_scored_in_its_own(tmp_path, tiny_model):
    from distill.evaluate.candidates import Candidate
    from distill.recipe import load_recipe

    path = write_recipe(tmp_path, tiny_model)
    recipe = load_recipe(path, ["models.teacher.dtype=bfloat16", "evaluate.sets=[{name: plural, data: heldout, "
                                "metrics: [exact_match, nll]}]"])
    examples = json.loads(PLURAL.read_text())["examples"]
    records = [{C.ID: str(i), C.INPUT: e["input"], C.REFERENCE: e["target"], C.REFERENCES: [e["target"]],
                C.SLICE: e["comment"]} for i, e in enumerate(examples[:40])]
    items, pool = records[:12], records[12:]
    base = Candidate(name="base", model_dir=tiny_model, spec=recipe.models.student)
    teacher = Candidate(name="teacher", model_dir=tiny_model, spec=recipe.models.teacher, role="teacher")

    def nll(rows):
        return [r["scores"]["nll"] for r in rows if r["model"] == "teacher"]

    alone = nll(_score(recipe, [teacher], items, pool))
    beside_the_student = nll(_score(recipe, [base, teacher], items, pool))  # base's float32 engine comes first
    assert beside_the_student == alone
    teacher32 = Candidate(name="teacher", model_dir=tiny_model, spec=recipe.models.student, role="teacher")
    in_float32 = nll(_score(recipe, [base, teacher32], items, pool))
    assert in_float32 != alone  # the dtype shows in the figures: the comparison above could fail
