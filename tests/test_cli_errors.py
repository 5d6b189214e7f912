"""User errors through the real command line: one line naming the place, exit code 2, no traceback."""

from __future__ import annotations

from conftest import run_cli, write_recipe


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stdout + result.stderr
    for fragment in fragments:
        assert fragment in result.stdout + result.stderr


def test_a_data_row_missing_a_field_names_its_file_and_line(tmp_path, tiny_model):
    data = tmp_path / "words.jsonl"
    data.write_text("".join(f'{{"input": "w{i}", "target": "w{i}s"}}\n' for i in range(40)) + '{"target": "oops"}\n')
    recipe = write_recipe(tmp_path, tiny_model, data=data)
    result = run_cli("run", recipe, cwd=tmp_path)
    assert_user_error(result, f"{data}:41: row has no 'input' field")


def test_unknown_model_folder_fails_before_any_work(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, tiny_model)
    recipe.write_text(recipe.read_text().replace(f"teacher: {{path: {tiny_model}, dtype: float32}}", "teacher: {path: missing-model}"))
    result = run_cli("run", recipe, cwd=tmp_path)
    assert_user_error(result, "models.teacher.path: folder does not exist")
    assert not (tmp_path / "runs").exists()


def test_bad_override_and_bad_shard(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, tiny_model)
    assert_user_error(run_cli("run", recipe, "train.lora.r=zero", cwd=tmp_path), "override 'train.lora.r=zero'")
    assert run_cli("generate", recipe, "--shard", "3/2", cwd=tmp_path).returncode == 2


def test_a_data_file_that_is_not_utf8_names_its_line_before_any_work(tmp_path, tiny_model):
    data = tmp_path / "words.jsonl"
    lines = [f'{{"input": "w{i}", "target": "w{i}s"}}\n'.encode() for i in range(40)]
    lines[2] = '{"input": "caf\u00e9", "target": "caf\u00e9s"}\n'.encode("latin-1")  # saved by an editor in Latin-1
    data.write_bytes(b"".join(lines))
    recipe = write_recipe(tmp_path, tiny_model, data=data)
    assert_user_error(run_cli("validate", recipe, cwd=tmp_path), f"{data}:3: not UTF-8")
    assert_user_error(run_cli("run", recipe, cwd=tmp_path), f"{data}:3: not UTF-8")
    assert not (tmp_path / "runs").exists()


def test_an_eval_set_in_a_format_distill_does_not_read_is_refused_before_generation(tmp_path, tiny_model):
    import json

    extra = tmp_path / "extra.json"  # rows inside an object, neither a JSON list nor a BIG-bench task
    extra.write_text(json.dumps({"rows": [{"input": "ox", "target": "oxen"}, {"input": "cat", "target": "cats"}]}))
    recipe = write_recipe(tmp_path, tiny_model)
    recipe.write_text(recipe.read_text().replace("    - {name: plural, data: heldout}\n",
                                                 f"    - {{name: plural, data: heldout}}\n    - {{name: extra, path: {extra}}}\n"))
    result = run_cli("validate", recipe, cwd=tmp_path)
    assert_user_error(result, "evaluate.sets.1 ('extra')", f"{extra}: an object without an 'examples' list, not a "
                      "format distill reads", "JSONL", "CSV", "Parquet", "BIG-bench", "save_to_disk", "Hub dataset")
    assert_user_error(run_cli("run", recipe, cwd=tmp_path), f"{extra}: an object without an 'examples' list")
    assert not (tmp_path / "runs").exists()  # refused before generation, not after it

    good = tmp_path / "extra.jsonl"  # the same items, one object per line: validate reads and reports its first rows
    good.write_text("".join(json.dumps(r) + "\n" for r in json.loads(extra.read_text())["rows"]))
    recipe.write_text(recipe.read_text().replace(str(extra), str(good)))
    result = run_cli("validate", recipe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"checked evaluate set 'extra' {good}: jsonl, first 2 rows read" in result.stderr


def test_overrides_after_an_option_are_applied_and_a_stray_word_is_refused(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, tiny_model)
    result = run_cli("validate", recipe, "--run-dir", tmp_path / "elsewhere", "train.lora.r=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "r: 3" in result.stdout
    assert_user_error(run_cli("validate", recipe, "--run-dir", tmp_path / "elsewhere", "stray", cwd=tmp_path),
                      "unrecognized arguments: stray")
