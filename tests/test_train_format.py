"""Does every training row still end with EOS after max_length, and are the rows that do not counted and refused?

The trainer is TRL's SFTTrainer on the tiny model, built exactly as the train stage builds it; nothing is trained
except in the one run through the CLI.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_cli
from test_filters import recipe_dict, row

from distill.errors import UserError
from distill.recipe import Recipe
from distill.run_dir import RunDir
from distill.train.formats import check_stop_learned, training_examples
from distill.train.stage import build_trainer

SHORT = ["cats", "dogs", "boxes", "churches", "leaves", "mice", "geese", "feet"]
LONG = "the plural of this word is written out here at great length so that it cannot fit " * 3


def recipe_for(tiny_model, **train) -> Recipe:
    d = recipe_dict(tiny_model, [])
    d["train"] = {"prompt_template": "Plural of {{ input }}:", "max_length": 24, "batch_size": 4, "lora": {"r": 2, "alpha": 4}, **train}
    return Recipe.model_validate(d)


def check(recipe: Recipe, completions: list[str], tmp_path):
    rows = [row(i, c, inp=f"word{i}") for i, c in enumerate(completions)]
    examples = training_examples(recipe, rows)
    trainer, tokenizer = build_trainer(recipe, recipe.models.student.path, examples, tmp_path / "ckpt")
    t = recipe.train
    return check_stop_learned(trainer, tokenizer, ["\n"], len(examples), t.max_length, t.max_truncated_share)


def test_rows_cut_by_max_length_are_counted_wherever_they_are(tiny_model, tmp_path):
    # the cut rows are not the first: the old check looked at row 0 only
    recipe = recipe_for(tiny_model, max_truncated_share=0.5)
    result = check(recipe, SHORT + [LONG, LONG], tmp_path)
    assert result["rows_checked"] == 10 and result["rows_without_eos"] == 2 and result["rows_dropped_by_max_length"] == 0
    assert result["example_completion"] == " cats"
    assert check(recipe, SHORT, tmp_path)["rows_without_eos"] == 0


def test_too_many_rows_without_eos_refuse_training(tiny_model, tmp_path):
    with pytest.raises(UserError, match=r"2 of 10 training rows \(20.0%\) lose their EOS label to train.max_length = 24 "
                                        r"\(2 cut, 0 .*train.max_truncated_share = 0.1"):
        check(recipe_for(tiny_model, max_truncated_share=0.1), SHORT + [LONG, LONG], tmp_path)
    # a prompt that alone fills max_length leaves nothing to learn: TRL drops the row, and it is counted too
    recipe = recipe_for(tiny_model, max_length=4, max_truncated_share=0.0)
    with pytest.raises(UserError, match="lose their EOS label"):
        check(recipe, SHORT, tmp_path)


def test_a_chat_student_learns_to_end_its_turn(tiny_model, tmp_path):
    """train.chat: the answer is the assistant turn, ending with the template's end-of-turn token; the newline the
    template writes after it is learned too, and the turn still counts as ended."""
    recipe = recipe_for(tiny_model, chat=True, max_length=48)
    result = check(recipe, SHORT, tmp_path)
    assert result["eos_token"] == "<|im_end|>" and result["example_completion"] == "cats"
    assert result["rows_without_eos"] == 0


def test_the_check_reads_thousands_of_rows_in_seconds(tiny_model, tmp_path):
    recipe = recipe_for(tiny_model, max_truncated_share=0.5)
    rows = [row(i, SHORT[i % 8] if i % 10 else LONG, inp=f"word{i}") for i in range(5000)]
    trainer, tokenizer = build_trainer(recipe, recipe.models.student.path, training_examples(recipe, rows), tmp_path / "ckpt")
    started = time.time()
    result = check_stop_learned(trainer, tokenizer, [], 5000, 24, 0.5)
    seconds = time.time() - started
    assert result["rows_without_eos"] == 500
    assert seconds < 20, seconds


def test_the_train_stage_stops_before_training_when_rows_lose_eos(tiny_model, tmp_path):
    run = RunDir(tmp_path / "run")
    d = recipe_for(tiny_model).model_dump(mode="json")
    d["run_dir"] = str(run.root)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(d, sort_keys=False))
    rows = [{**row(i, c, inp=f"word{i}"), "kept": True} for i, c in enumerate(SHORT + [LONG])]
    run.generated.parent.mkdir(parents=True)
    run.mark_complete("generate", "prepared-by-test", {})
    run.filtered.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), run.filtered)
    run.mark_complete("filter", "prepared-by-test", {})
    result = run_cli("train", recipe)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "1 of 9 training rows (11.1%) lose their EOS label" in result.stderr and "Traceback" not in result.stderr
    assert not run.adapter.exists() and not list(run.stage("train").rglob("checkpoint-*")) and not run.marker("train").exists()
