"""Metric modules shipped with distill, loaded offline by path through `evaluate`, scored per item;
and the recipe's evaluation settings."""

from __future__ import annotations

import math

import pytest
from conftest import PLURAL, write_recipe

from distill.errors import DataError, RecipeError
from distill.evaluate.metrics import METRICS, compute
from distill.data.eval_sets import load_items
from distill.recipe import load_recipe

GUARDS = PLURAL.parent


def test_exact_match_folds_only_whitespace_and_the_normalised_variant_folds_more():
    preds, refs = ["  dogs ", "The Dogs!", "cats"], [["dogs"], ["dogs"], ["dogs", "kittens"]]
    assert compute("exact_match", preds, refs)["scores"] == [1.0, 0.0, 0.0]
    assert compute("exact_match_normalized", preds, refs)["scores"] == [1.0, 1.0, 0.0]


def test_multi_reference_match_accepts_any_reference_inside_the_answer():
    preds = ["The genre is parody.", "comedy", "tragedy"]
    refs = [["comedy", "parody"], ["comedy", "parody"], ["comedy", "parody"]]
    assert compute("multi_ref_match", preds, refs)["scores"] == [1.0, 1.0, 0.0]
    assert compute("exact_match", preds, refs)["scores"] == [0.0, 1.0, 0.0]


def test_accuracy_takes_the_first_reference_as_the_label():
    assert compute("accuracy", ["Yes", "no"], [["yes", "no"], ["yes", "no"]])["scores"] == [1.0, 0.0]


def test_token_f1_gives_partial_credit():
    scores = compute("token_f1", ["new york city", "paris"], [["New York"], ["London"]])["scores"]
    assert scores[0] == pytest.approx(0.8) and scores[1] == 0.0


def test_reference_nll_and_perplexity_from_token_logprobs():
    result = compute("nll", [[-1.0, -3.0], [-0.5]], ["two tokens", "one"])
    assert result["scores"] == [2.0, 0.5]
    assert result["nll"] == pytest.approx(1.25)  # each item weighs alike
    assert result["token_perplexity"] == pytest.approx(math.exp(4.5 / 3))  # each token weighs alike
    assert not METRICS["nll"].higher_is_better and METRICS["nll"].needs_logprobs


def test_guard_sets_load_from_the_vendored_bigbench_files(tmp_path):
    recipe = load_recipe(_recipe_with_sets(tmp_path, f"""\
    - {{name: wikidata, path: {GUARDS / 'qa_wikidata.json'}, guard: true, metrics: [multi_ref_match, token_f1]}}
    - {{name: arithmetic, path: {GUARDS / 'arithmetic_2_digit_addition.json'}, guard: true, limit: 30}}"""))
    wikidata, arithmetic = recipe.evaluate.sets
    items = load_items(wikidata, None)
    assert len(items) == 300 and items[0]["references"] == ["comedy", "parody"]
    assert len({it["id"] for it in items}) == len(items)
    assert len(load_items(arithmetic, None)) == 30 and arithmetic.guard


def test_sets_load_from_csv_parquet_and_a_datasets_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"question": "2+2", "answer": "4", "kind": "add"}, {"question": "3*3", "answer": "9", "kind": "mul"}]
    Dataset.from_list(rows).to_csv(str(tmp_path / "q.csv"))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "q.parquet"))
    DatasetDict({"train": Dataset.from_list(rows[:1]), "test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "q_ds"))
    fields = "input_field: question, target_field: answer, slice_field: kind"
    recipe = load_recipe(_recipe_with_sets(tmp_path, f"""\
    - {{name: csv, path: q.csv, {fields}}}
    - {{name: parquet, path: q.parquet, {fields}}}
    - {{name: ds, path: q_ds, {fields}}}"""))
    for s in recipe.evaluate.sets:
        items = load_items(s, None)
        assert [(it["input"], it["reference"], it["slice"]) for it in items] == [("2+2", "4", "add"), ("3*3", "9", "mul")], s.name


def test_missing_target_names_file_and_row(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"input": "a", "target": "b"}\n{"input": "c"}\n')
    recipe = load_recipe(_recipe_with_sets(tmp_path, "    - {name: bad, path: bad.jsonl}"))
    with pytest.raises(DataError, match=r"bad.jsonl:2: row has no 'target' field"):
        load_items(recipe.evaluate.sets[0], None)


@pytest.mark.parametrize("sets, extra, message", [
    ("    - {name: p, data: heldout, metrics: [bleu]}", "", "evaluate.sets.0.metrics.0: Input should be"),
    ("    - {name: p, data: heldout, metrics: [nll, nll]}", "", "each metric once"),
    ("    - {name: p, data: heldout}", "  baseline: teacher\n  models: [base, student]\n", "baseline 'teacher' is not among models"),
    ("    - {name: p, data: heldout}", "  gate:\n    tolerance:\n      nll: -0.1\n", "evaluate.gate.tolerance.nll: Input should be greater than or equal to 0"),
])
def test_bad_evaluate_settings_fail_before_any_work(tmp_path, sets, extra, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(_recipe_with_sets(tmp_path, sets, extra))


def _recipe_with_sets(folder, sets: str, extra: str = ""):
    from conftest import TINY_RECIPE

    head = TINY_RECIPE[: TINY_RECIPE.index("evaluate:")]
    text = head + "evaluate:\n  sets:\n" + sets.replace("{", "{{").replace("}", "}}") + "\n" + extra
    model = folder / "model"
    model.mkdir(exist_ok=True)
    return write_recipe(folder, model, text)
