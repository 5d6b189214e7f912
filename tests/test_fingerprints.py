"""Does a finished stage run again exactly when something that shapes its output changed?

A stage is skipped when its fingerprint is unchanged. These tests call the fingerprint on a
recipe (with the same `key=value` overrides a user types) and a run directory whose upstream
stages are marked complete, so no model runs; one test goes through the real command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import PLURAL, ROOT, run_cli, write_recipe

from distill.generate.stage import fingerprint_settings
from distill.stages import fingerprint
from distill.recipe import load_recipe
from distill.run_dir import RunDir

ARITHMETIC = ROOT / "recipes" / "quickstart" / "data" / "arithmetic_2_digit_addition.json"
GUARD_SET = f"evaluate.sets=[{{name: plural, data: heldout}}, {{name: arithmetic, path: {ARITHMETIC}, guard: true}}]"


def copy_model(tiny_model: Path, to: Path) -> Path:
    shutil.copytree(tiny_model, to)
    return to


def stage_fp(recipe_file: Path, stage: str, *overrides: str, run: RunDir | None = None) -> str:
    recipe = load_recipe(recipe_file, list(overrides))
    return fingerprint(recipe, run or RunDir(recipe_file.parent / "run"), stage)


def upstream_done(run: RunDir, *stages: str) -> RunDir:
    """Mark earlier stages complete with a fixed output, as a finished run leaves them."""
    for stage in stages:
        run.stage(stage).mkdir(parents=True, exist_ok=True)
        (run.stage(stage) / "out.txt").write_text(f"{stage} output")
        run.mark_complete(stage, "done-earlier", {})
    return run


@pytest.fixture
def recipe(tmp_path, tiny_model) -> Path:
    """The tiny recipe over its own copy of the model (teacher and student)."""
    return write_recipe(tmp_path, copy_model(tiny_model, tmp_path / "model"))


# --------------------------------------------------------------------------- the teacher's settings


@pytest.mark.parametrize("override", [
    "models.teacher.dtype=bfloat16",  # the quickstart model garbles answers in bf16
    "models.teacher.engine.max_model_len=64",  # a longer prompt is refused or cut
    "models.teacher.engine.quantization=fp8",
    "models.teacher.trust_remote_code=true",
    "models.teacher.revision=v2.0",
])
def test_a_teacher_setting_that_changes_its_answers_reruns_generate(recipe, override):
    assert stage_fp(recipe, "generate", override) != stage_fp(recipe, "generate")


@pytest.mark.parametrize("override", [
    "models.teacher.engine.gpu_memory_utilization=0.5",
    "models.teacher.engine.kv_cache_gb=4",
    "models.teacher.engine.max_num_seqs=8",
    "models.teacher.engine.enforce_eager=false",
    "models.teacher.engine.tensor_parallel_size=2",
    "generate.chunk_size=5",  # prompts written at once: rows and their seeds are per item
])
def test_engine_capacity_and_scheduling_do_not_rerun_generate(recipe, override):
    assert stage_fp(recipe, "generate", override) == stage_fp(recipe, "generate")


# --------------------------------------------------------------------------- the teacher's files


def _edit_json(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def _swap_two_tokens(model: Path) -> None:
    def swap(doc):
        vocab = doc["model"]["vocab"]
        a, b = sorted(vocab)[100:102]
        vocab[a], vocab[b] = vocab[b], vocab[a]
    _edit_json(model / "tokenizer.json", swap)


def _new_weights(model: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 2
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})


EDITS = {
    "tokenizer.json": _swap_two_tokens,
    "chat template": lambda m: (m / "chat_template.jinja").write_text(
        (m / "chat_template.jinja").read_text().replace("<|im_start|>assistant", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant")),
    "config.json": lambda m: _edit_json(m / "config.json", lambda d: d.update(rope_theta=500.0)),
    "generation_config.json": lambda m: _edit_json(m / "generation_config.json", lambda d: d.update(repetition_penalty=1.3)),
    "weights": _new_weights,
    "remote code": lambda m: (m / "modeling_custom.py").write_text("# code trust_remote_code would run\n"),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_a_changed_file_of_the_teacher_reruns_generate(tmp_path, tiny_model, edit):
    same = write_recipe(tmp_path, copy_model(tiny_model, tmp_path / "a"), name="a.yaml")
    moved = write_recipe(tmp_path, copy_model(tiny_model, tmp_path / "b"), name="b.yaml")
    # the same files in another folder are the same model
    assert stage_fp(moved, "generate") == stage_fp(same, "generate")
    edited = write_recipe(tmp_path, copy_model(tiny_model, tmp_path / "c"), name="c.yaml")
    EDITS[edit](tmp_path / "c")
    assert stage_fp(edited, "generate") != stage_fp(same, "generate")


def test_config_rewritten_by_another_transformers_version_is_the_same_model(tmp_path, tiny_model):
    same = write_recipe(tmp_path, copy_model(tiny_model, tmp_path / "a"), name="a.yaml")
    resaved = write_recipe(tmp_path, copy_model(tiny_model, tmp_path / "b"), name="b.yaml")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["transformers_version"] = "0.0.1"
    (tmp_path / "b" / "config.json").write_text(json.dumps(dict(reversed(list(config.items()))), indent=4))
    assert stage_fp(resaved, "generate") == stage_fp(same, "generate")


# --------------------------------------------------------------------------- data files: by content, not path


def test_moved_data_and_eval_files_rerun_nothing_changed_bytes_rerun_generate(tmp_path, tiny_model):
    model = copy_model(tiny_model, tmp_path / "model")
    here = write_recipe(tmp_path, model, name="here.yaml")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data = shutil.copy(PLURAL, elsewhere / PLURAL.name)
    arithmetic = shutil.copy(ARITHMETIC, elsewhere / ARITHMETIC.name)
    there = write_recipe(tmp_path, model, name="there.yaml", data=Path(data))
    moved_guard = GUARD_SET.replace(str(ARITHMETIC), str(arithmetic))

    assert stage_fp(there, "generate") == stage_fp(here, "generate")
    # an interrupted run keeps its chunks too
    assert fingerprint_settings(load_recipe(there)) == fingerprint_settings(load_recipe(here))
    run = upstream_done(RunDir(tmp_path / "run"), "generate", "filter", "train")
    assert stage_fp(there, "evaluate", moved_guard, run=run) == stage_fp(here, "evaluate", GUARD_SET, run=run)
    assert stage_fp(there, "filter", "filter.steps=[{type: decontaminate}]", moved_guard, run=run) == \
        stage_fp(here, "filter", "filter.steps=[{type: decontaminate}]", GUARD_SET, run=run)

    doc = json.loads(Path(data).read_text())
    doc["examples"] = doc["examples"][:-1]
    Path(data).write_text(json.dumps(doc))
    assert stage_fp(there, "generate") != stage_fp(here, "generate")
    doc = json.loads(Path(arithmetic).read_text())
    doc["examples"] = doc["examples"][:-1]
    Path(arithmetic).write_text(json.dumps(doc))
    assert stage_fp(there, "evaluate", moved_guard, run=run) != stage_fp(here, "evaluate", GUARD_SET, run=run)


# --------------------------------------------------------------------------- filter


def test_verifier_code_counts_by_content_and_worker_count_not_at_all(tmp_path, recipe):
    run = upstream_done(RunDir(tmp_path / "run"), "generate")
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "check.py").write_text("def ok(row):\n    return bool(row['completion'])\n")
    step = "filter.steps=[{{type: verifier, function: {}/check.py:ok}}]"
    here = stage_fp(recipe, "filter", step.format(tmp_path / "a"), run=run)
    assert stage_fp(recipe, "filter", step.format(tmp_path / "b"), run=run) == here
    assert stage_fp(recipe, "filter", step.format(tmp_path / "a"), "filter.num_proc=2", run=run) == here
    (tmp_path / "b" / "check.py").write_text("def ok(row):\n    return len(row['completion']) > 3\n")
    assert stage_fp(recipe, "filter", step.format(tmp_path / "b"), run=run) != here


def test_the_judges_dtype_reruns_filter(tmp_path, recipe):
    run = upstream_done(RunDir(tmp_path / "run"), "generate")
    judge = "filter.steps=[{type: judge, model: teacher, rubric: 'Is {{ completion }} a plural?'}]"
    assert stage_fp(recipe, "filter", judge, "models.teacher.dtype=bfloat16", run=run) != stage_fp(recipe, "filter", judge, run=run)


# --------------------------------------------------------------------------- train and evaluate


def test_train_reruns_for_what_shapes_the_adapter_not_for_logging(tmp_path, recipe):
    run = upstream_done(RunDir(tmp_path / "run"), "generate", "filter")
    before = stage_fp(recipe, "train", run=run)
    assert stage_fp(recipe, "train", "train.logging_steps=5", run=run) == before
    assert stage_fp(recipe, "train", "train.report_to=[tensorboard]", run=run) == before
    assert stage_fp(recipe, "train", "models.teacher.dtype=bfloat16", run=run) == before  # train never runs the teacher
    for override in ("train.learning_rate=0.001", "train.save_steps=2", "models.student.dtype=bfloat16"):
        assert stage_fp(recipe, "train", override, run=run) != before, override
    # another run's rows trained on beside this run's (a retrained loop round): by content
    other = tmp_path / "other.parquet"
    other.write_bytes(b"rows of another run")
    added = stage_fp(recipe, "train", f"train.add_rows=[{other}]", run=run)
    assert added != before
    other.write_bytes(b"other rows of another run")
    assert stage_fp(recipe, "train", f"train.add_rows=[{other}]", run=run) not in (before, added)


def test_a_train_stage_finished_under_a_launch_is_done_for_every_process_and_redone_by_another_launch(
        tmp_path, recipe, monkeypatch):
    """Four processes make a four times larger global batch: another adapter. The count is a fact of the launch, not
    of the recipe: every process computes the same fingerprint (`distill run` and `status` outside any launcher, the
    launched ranks inside), a stage finished under four processes is done for a process outside any launcher, and a
    launch with another count starts it over."""
    from distill.pipeline import execute_stage

    run = upstream_done(RunDir(tmp_path / "run"), "generate", "filter")
    one = stage_fp(recipe, "train", run=run)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert stage_fp(recipe, "train", run=run) == one
    run.stage("train").mkdir(parents=True)
    (run.stage("train") / "adapter.txt").write_text("trained by four processes")
    run.mark_complete("train", one, {"processes": 4}, {"processes": 4})
    r = load_recipe(recipe)
    assert execute_stage(r, run, "train") == {"processes": 4}  # the same launch: done
    monkeypatch.delenv("WORLD_SIZE")
    assert execute_stage(r, run, "train") == {"processes": 4}  # no launcher: done
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Exception):  # begun again (and stopped here: the upstream outputs are placeholders)
        execute_stage(r, run, "train")
    assert run.read_marker("train") is None
    assert (run.stale.is_dir() and any(run.stale.iterdir()))  # the four-process work is moved aside, not deleted


@pytest.mark.parametrize("override", [
    "models.student.engine.max_model_len=64",  # the student's vLLM engine: evaluation only
    "models.student.engine.quantization=fp8",
    "train.max_truncated_share=0.5",  # thresholds that refuse a run, never shape an adapter
    "train.kd.max_mismatch_share=0.5",
])
def test_settings_that_cannot_change_the_adapter_do_not_retrain_it(tmp_path, recipe, override):
    run = upstream_done(RunDir(tmp_path / "run"), "generate", "filter", "train")
    assert stage_fp(recipe, "train", override, run=run) == stage_fp(recipe, "train", run=run)
    if "engine" in override:  # evaluation runs the student in vLLM
        assert stage_fp(recipe, "evaluate", override, run=run) != stage_fp(recipe, "evaluate", run=run)


def test_on_policy_training_samples_in_vllm_so_the_students_engine_counts(tmp_path, recipe):
    run = upstream_done(RunDir(tmp_path / "run"), "generate", "filter")
    on_policy = ("train.objective=on_policy",)
    assert stage_fp(recipe, "train", *on_policy, "models.student.engine.max_model_len=64", run=run) != \
        stage_fp(recipe, "train", *on_policy, run=run)


def test_evaluate_reruns_for_the_teachers_dtype_only_when_the_teacher_is_evaluated(tmp_path, recipe):
    run = upstream_done(RunDir(tmp_path / "run"), "generate", "filter", "train")
    bf16 = "models.teacher.dtype=bfloat16"
    assert stage_fp(recipe, "evaluate", bf16, run=run) != stage_fp(recipe, "evaluate", run=run)
    without = "evaluate.models=[base, student]"
    assert stage_fp(recipe, "evaluate", without, bf16, run=run) == stage_fp(recipe, "evaluate", without, run=run)


# --------------------------------------------------------------------------- through the command line


def test_finished_generate_reruns_after_a_dtype_change_and_not_after_moving_its_data(tmp_path, tiny_model):
    model = copy_model(tiny_model, tmp_path / "model")
    recipe = write_recipe(tmp_path, model)
    few = ("data.max_seeds=8", "generate.chunk_size=8")
    first = run_cli("generate", recipe, *few, cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]

    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(PLURAL, moved / PLURAL.name)
    again = run_cli("generate", write_recipe(tmp_path, model, name="moved.yaml", data=moved / PLURAL.name), *few, cwd=tmp_path)
    assert again.returncode == 0 and "[generate] up to date, skipped" in again.stdout, again.stdout[-2000:] + again.stderr[-2000:]

    bf16 = run_cli("generate", recipe, *few, "models.teacher.dtype=bfloat16", cwd=tmp_path)
    assert bf16.returncode == 0, bf16.stdout[-2000:] + bf16.stderr[-2000:]
    assert "up to date" not in bf16.stdout and "chunks_this_run=1" in bf16.stdout


def test_the_repair_prompts_count_by_content(tmp_path, tiny_model):
    """Rewriting the repair prompts file retrains on-policy; the file moved elsewhere with the same bytes does not."""
    from distill.fingerprint import train_settings
    from distill.recipe import load_recipe

    first, moved = tmp_path / "a" / "repair.jsonl", tmp_path / "b" / "repair.jsonl"
    for path in (first, moved):
        path.parent.mkdir()
        path.write_text('{"input": "What is 1 plus 2?"}\n')
    recipe = write_recipe(tmp_path, tiny_model)

    def settings(path):
        return train_settings(load_recipe(recipe, ["train.objective=on_policy", f"train.on_policy.repair={{path: {path}}}"]))

    before = settings(first)
    assert settings(moved)["repair"] == before["repair"]
    first.write_text('{"input": "What is 2 plus 2?"}\n')
    assert settings(first)["repair"] != before["repair"]
