"""Evaluation serves the models that share one folder from one engine, unless their engine settings differ: a
teacher with the student's weights in another dtype must be scored in its own dtype, as its results claim."""

from __future__ import annotations

import json

from conftest import PLURAL, SHARES_FINISHED_RUN, write_recipe

from distill import rows as C

pytestmark = SHARES_FINISHED_RUN  # one worker builds the shared run (conftest.py)


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


def _plural_items(n_items: int = 12):
    examples = json.loads(PLURAL.read_text())["examples"]
    records = [{C.ID: str(i), C.INPUT: e["input"], C.REFERENCE: e["target"], C.REFERENCES: [e["target"]],
                C.SLICE: e["comment"]} for i, e in enumerate(examples[:40])]
    return records[:n_items], records[n_items:]


def _adapter_that_changes_the_answers(model_dir, out):
    """A LoRA adapter with random A and B (PEFT's init_lora_weights=False): unlike a fresh one, it changes the tiny
    model's answers, so serving it two ways can disagree."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_an_adapter_scored_from_merged_weights_answers_as_it_does_through_lora(tmp_path, tiny_model):
    """On a CPU, vLLM generates through LoRA at about a third of its speed, so evaluation folds the adapter into a
    copy of the base weights: the same answers, the same reference NLL (read from the adapter itself), a cache entry
    of its own, and no copy left behind."""
    from distill.evaluate.cache import EvalCache
    from distill.evaluate.candidates import Candidate
    from distill.evaluate.scoring import score_candidates
    from distill.recipe import load_recipe

    adapter = _adapter_that_changes_the_answers(tiny_model, tmp_path / "adapter")
    nll_set = "evaluate.sets=[{name: plural, data: heldout, metrics: [exact_match, nll]}]"
    items, pool = _plural_items()
    cache = EvalCache(tmp_path / "cache")
    scored = {}
    for way in ("lora", "merged"):
        recipe = load_recipe(write_recipe(tmp_path, tiny_model), [nll_set, f"evaluate.serve_adapters={way}"])
        student = Candidate(name="student", model_dir=tiny_model, spec=recipe.models.student, adapter=adapter)
        work = tmp_path / f"work-{way}"
        rows = score_candidates(recipe, [student], {"plural": (recipe.evaluate.sets[0], items)}, pool, cache, work_dir=work)
        # a result served one way is not reused for the other: the cache key says how the answers were made
        assert not any(r["from_cache"] for r in rows)
        assert not work.exists() or not any(work.iterdir())  # the merged copy is removed once scored
        scored[way] = rows
    assert [r["prediction"] for r in scored["merged"]] == [r["prediction"] for r in scored["lora"]]
    assert [r["scores"]["nll"] for r in scored["merged"]] == [r["scores"]["nll"] for r in scored["lora"]]
    # the adapter changes the answers, so the comparison above could fail
    base = Candidate(name="base", model_dir=tiny_model, spec=recipe.models.student)
    base_rows = score_candidates(recipe, [base], {"plural": (recipe.evaluate.sets[0], items)}, pool)
    assert [r["prediction"] for r in base_rows] != [r["prediction"] for r in scored["lora"]]


def test_the_evaluation_says_how_the_trained_adapter_was_served(finished_run):
    from distill.models.hardware import this_machine

    _, _, run, _, _ = finished_run
    expected = "lora" if this_machine().gpus else "merged"  # serve_adapters: auto
    assert run.read_marker("evaluate")["summary"]["adapters_served"] == expected
    assert json.loads((run.stage("evaluate") / "report.json").read_text())["adapters_served"] == expected
    assert "merged into the base model" in (run.stage("evaluate") / "report.md").read_text() or expected == "lora"
