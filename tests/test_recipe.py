"""A bad recipe fails before any work starts, naming the file, the line, the key and what was expected."""

from __future__ import annotations

import shutil

import pytest
from conftest import ROOT, run_cli

from distill.errors import RecipeError
from distill.recipe import load_recipe


def error_of(path, *overrides) -> str:
    with pytest.raises(RecipeError) as e:
        load_recipe(path, overrides)
    return str(e.value)


def edited(tiny_recipe, old: str, new: str):
    text = tiny_recipe.read_text()
    assert old in text
    tiny_recipe.write_text(text.replace(old, new, 1))
    return tiny_recipe


def test_valid_recipe_loads_with_paths_resolved(tiny_recipe, tiny_model):
    recipe = load_recipe(tiny_recipe)
    assert recipe.models.teacher.path == str(tiny_model.resolve())
    assert recipe.data.heldout.size == 24
    assert recipe.models.teacher.trust_remote_code is False  # safe by default


def test_unknown_key_names_file_line_and_key(tiny_recipe):
    edited(tiny_recipe, "  batch_size: 8", "  batch_size: 8\n  learning_rat: 0.1")
    msg = error_of(tiny_recipe)
    line = tiny_recipe.read_text().splitlines().index("  learning_rat: 0.1") + 1
    assert msg == f"{tiny_recipe}:{line}: train.learning_rat: unknown key"


def test_wrong_type_says_what_was_expected(tiny_recipe):
    edited(tiny_recipe, "  batch_size: 8", "  batch_size: eight")
    msg = error_of(tiny_recipe)
    assert "train.batch_size" in msg and "valid integer" in msg and "'eight'" in msg
    assert msg.startswith(f"{tiny_recipe}:")


def test_missing_required_section(tiny_recipe):
    text = tiny_recipe.read_text()
    tiny_recipe.write_text(text[: text.index("evaluate:")])
    assert "evaluate: required key is missing" in error_of(tiny_recipe)


def test_missing_data_file(tiny_recipe):
    edited(tiny_recipe, "plural_json.json", "no_such_file.json")
    msg = error_of(tiny_recipe)
    assert "data.path: no such file or folder" in msg and "no_such_file.json" in msg


def test_missing_model_folder(tiny_recipe, tiny_model):
    text = tiny_recipe.read_text().replace(f"student: {{path: {tiny_model}, dtype: float32}}", "student: {path: ./no/such/model}")
    tiny_recipe.write_text(text)
    msg = error_of(tiny_recipe)
    assert "models.student.path: folder does not exist" in msg


def test_model_needs_exactly_one_source(tiny_recipe, tiny_model):
    edited(tiny_recipe, f"student: {{path: {tiny_model}, dtype: float32}}", f"student: {{path: {tiny_model}, hub: org/model}}")
    assert "models.student: give exactly one of path, hub, packaged (got path, hub)" in error_of(tiny_recipe)


def test_filter_step_errors_point_into_the_list(tiny_recipe):
    edited(tiny_recipe, "{type: length, min_chars: 1, max_chars: 60}", "{type: length, min_chars: -1}")
    msg = error_of(tiny_recipe)
    assert "filter.steps.0.min_chars" in msg and "greater than or equal to 0" in msg
    edited(tiny_recipe, "{type: length, min_chars: -1}", "{type: lenght}")
    assert "filter.steps.0" in error_of(tiny_recipe)


def test_overrides_set_fields_and_are_named_in_errors(tiny_recipe):
    recipe = load_recipe(tiny_recipe, ["train.epochs=2", "generate.sampling.stop=['.']", "evaluate.sets.0.limit=5"])
    assert recipe.train.epochs == 2 and recipe.generate.sampling.stop == ["."] and recipe.evaluate.sets[0].limit == 5
    msg = error_of(tiny_recipe, "train.epochs=many")
    assert msg.startswith("override 'train.epochs=many': train.epochs:")
    assert "expected key.path=value" in error_of(tiny_recipe, "train.epochs")


def test_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodels: [unclosed\n")
    assert error_of(bad).startswith(f"{bad}:")


def test_cli_gives_one_line_and_exit_code_2(tiny_recipe):
    edited(tiny_recipe, "  batch_size: 8", "  batch_size: eight")
    result = run_cli("run", tiny_recipe)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "train.batch_size" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_cli_validate_prints_resolved_recipe(tiny_recipe):
    result = run_cli("validate", tiny_recipe, "train.epochs=3")
    assert result.returncode == 0, result.stderr
    assert "epochs: 3.0" in result.stdout
    assert "warning: chaining: generator/labeller (teacher) and student are the same model" in result.stderr


ARITHMETIC = ROOT / "recipes" / "quickstart" / "data" / "arithmetic_2_digit_addition.json"
WIKIDATA = ROOT / "recipes" / "quickstart" / "data" / "qa_wikidata.json"


def _repairing(guards: dict, *more: str) -> list[str]:
    """Overrides: on-policy training whose repair prompts are the arithmetic file, evaluated on plural and `guards`
    (name: file)."""
    sets = ", ".join(f"{{name: {name}, path: {path}, guard: true}}" for name, path in guards.items())
    return ["train.objective=on_policy", f"train.on_policy.repair={{path: {ARITHMETIC}}}",
            f"evaluate.sets=[{{name: plural, data: heldout}}, {sets}]", *more]


def test_a_guard_set_is_repaired_when_its_file_feeds_repair_or_repair_names_it(tiny_recipe, tmp_path):
    """A guard set read from the repair prompts' file, under any path, is trained toward; so is one repair names."""
    from distill.train.repair import every_guard_set_repaired, repaired_guard_sets

    copy = shutil.copy(ARITHMETIC, tmp_path / "the-same-questions.json")
    guards = {"arithmetic": copy, "wikidata": WIKIDATA}
    recipe = load_recipe(tiny_recipe, _repairing(guards))
    assert repaired_guard_sets(recipe) == ["arithmetic"] and every_guard_set_repaired(recipe) is None
    named = _repairing(guards, "train.on_policy.repair.guard_sets=[wikidata]")
    assert repaired_guard_sets(load_recipe(tiny_recipe, named)) == ["arithmetic", "wikidata"]
    assert repaired_guard_sets(load_recipe(tiny_recipe, named + ["train.objective=sft"])) == []  # no repair runs
    msg = error_of(tiny_recipe, *_repairing(guards, "train.on_policy.repair.guard_sets=[plural]"))
    assert "train.on_policy.repair.guard_sets names 'plural', which is not an evaluate.sets entry with guard: true " \
           "(guard sets: arithmetic, wikidata)" in msg


def test_validate_warns_when_every_guard_set_is_repaired_and_refuses_a_repaired_name_that_is_no_guard_set(tiny_recipe):
    result = run_cli("validate", tiny_recipe, *_repairing({"arithmetic": ARITHMETIC}))
    assert result.returncode == 0, result.stderr
    assert "warning: every guard set (arithmetic) is repaired by train.on_policy.repair: none measures general " \
           "ability; add a guard set the repair prompts are not like" in result.stderr
    result = run_cli("validate", tiny_recipe, *_repairing({"arithmetic": ARITHMETIC}, "train.on_policy.repair.guard_sets=[wiki]"))
    assert result.returncode == 2 and "train.on_policy.repair.guard_sets names 'wiki'" in result.stderr, result.stderr
