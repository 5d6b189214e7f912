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
    recipe.write_text(recipe.read_text().replace(f"teacher: {{path: {tiny_model}}}", "teacher: {path: missing-model}"))
    result = run_cli("run", recipe, cwd=tmp_path)
    assert_user_error(result, "models.teacher.path: folder does not exist")
    assert not (tmp_path / "runs").exists()


def test_bad_override_and_bad_shard(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, tiny_model)
    assert_user_error(run_cli("run", recipe, "train.lora.r=zero", cwd=tmp_path), "override 'train.lora.r=zero'")
    assert run_cli("generate", recipe, "--shard", "3/2", cwd=tmp_path).returncode == 2
