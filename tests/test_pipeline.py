"""`distill run` end to end through the CLI on a tiny model, with the real vLLM engine and real LoRA training."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import SHARES_FINISHED_RUN, run_cli, write_recipe

from distill.models.identity import weights_hash
from distill.run_dir import RunDir

pytestmark = SHARES_FINISHED_RUN  # one worker builds the shared run (conftest.py)

CHANGED = "filter.steps.0.max_chars=20"  # the tests after the one that makes this change keep it


def test_run_writes_every_stage_output(finished_run):
    _, _, run, result, _ = finished_run
    for path in (run.recipe, run.heldout, run.seeds, run.generated, run.filtered, run.adapter / "adapter_config.json",
                 run.stage("train") / "loss.png", run.stage("train") / "log.json", run.eval_report,
                 run.stage("evaluate") / "report.md", run.predictions, run.report, run.logs / "train.log"):
        assert path.exists(), path
    report = json.loads(run.report.read_text())
    assert all(s["complete"] for s in report["stages"].values())
    assert "[evaluate] done" in result.stdout


def test_outputs_load_with_datasets(finished_run):
    from datasets import Dataset

    _, _, run, _, _ = finished_run
    generated = Dataset.from_parquet(str(run.generated))
    filtered = Dataset.from_parquet(str(run.filtered))
    assert len(generated) == 40 and len(filtered) == 40
    assert {"kept", "rejected_by", "reason"} <= set(filtered.column_names)


def test_heldout_items_are_never_seeds(finished_run):
    _, _, run, _, _ = finished_run
    held = {json.loads(line)["input"] for line in run.heldout.read_text().splitlines()}
    seeds = {json.loads(line)["input"] for line in run.seeds.read_text().splitlines()}
    assert len(held) == 24 and not held & seeds
    few_shot_prompts = pq.read_table(run.generated).column("prompt").to_pylist()
    assert not any(f"'{word}'" in prompt for word in held for prompt in few_shot_prompts)


def test_every_generated_row_has_its_provenance(finished_run, tiny_model):
    _, recipe_path, run, _, _ = finished_run
    rows = pq.read_table(run.generated).to_pylist()
    expected_weights = weights_hash(tiny_model)
    import hashlib

    from distill.recipe import load_recipe

    template = load_recipe(recipe_path).generate.template
    for i, row in enumerate(rows):
        p = row["provenance"]
        assert p["teacher"]["path"] == str(tiny_model.resolve())
        assert p["teacher"]["weights_sha256"] == expected_weights
        assert p["teacher"]["family"] == "qwen2"
        assert p["template_sha256"] == hashlib.sha256(template.encode()).hexdigest()
        assert p["sampling"]["max_tokens"] == 6 and p["sampling"]["stop"] == ["\n"]
        assert p["seed"] == i  # seed + index: each request is reproducible alone
        assert p["shard"] == "0/1" and p["chunk"] == i // 16 and p["created_at"]
        assert row["prompt"].endswith(f"Q: plural of '{row['input']}'? A:")
    assert len({r["id"] for r in rows}) == len(rows)


def test_evaluation_report_has_all_models_and_slices(finished_run):
    _, _, run, _, _ = finished_run
    report = json.loads(run.eval_report.read_text())
    entry = report["sets"]["plural"]
    assert set(entry["models"]) == {"base", "student", "teacher"}
    for m in entry["models"].values():
        assert m["n"] == 24 and set(m["slices"]) == {"regular", "irregular"}
        assert m["slices"]["irregular"]["n"] >= 4
    cmp = entry["vs_base"]["student"]["overall"]
    assert cmp["low"] <= cmp["delta"] <= cmp["high"]
    assert "| irregular |" in (run.stage("evaluate") / "report.md").read_text()


def test_student_learned_to_stop(finished_run):
    _, _, run, _, _ = finished_run
    summary = json.loads(run.marker("train").read_text())["summary"]
    assert summary["format_check"]["eos_token"] == "<|im_end|>"
    assert summary["steps"] == 5  # 40 rows / batch 8
    assert summary["last_loss"] < summary["first_loss"]


def test_document_stage_writes_manifest_and_cards(finished_run):
    _, _, run, result, _ = finished_run
    # Teacher and student are the same model: a warning before any work starts, and in both cards.
    assert result.stdout.index("warning: chaining: generator/labeller (teacher) and student") < result.stdout.index("[generate]")
    manifest = json.loads((run.root / "manifest.json").read_text())
    assert manifest["outputs"]["train"]["output_hash"] == run.read_marker("train")["output_hash"]
    assert manifest["filter"]["kept"] == 40 and manifest["models"]["student"]["family"] == "qwen2"
    assert json.loads((run.adapter / "data_manifest.json").read_text()) == manifest  # the student carries its data's record
    for card in ("dataset_card.md", "model_card.md"):
        text = (run.root / card).read_text()
        assert text.startswith("---\n") and "chaining: generator/labeller (teacher) and student are the same model" in text
    # coverage per slice: every seed of a slice generated one row and kept it
    seeds = [json.loads(line) for line in run.seeds.read_text().splitlines()]
    card = (run.root / "dataset_card.md").read_text()
    for slice_name in ("regular", "irregular"):
        n = sum(s["slice"] == slice_name for s in seeds)
        if n:
            assert f"| {slice_name} | {n} | {n} | 0.0% |" in card


def test_second_run_skips_everything(finished_run):
    folder, recipe, run, _, _ = finished_run
    result = run_cli("run", recipe, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("up to date, skipped") == 5


def test_changed_setting_reruns_that_stage_and_later_ones(finished_run):
    folder, recipe, run, _, _ = finished_run
    before = {s: run.read_marker(s)["fingerprint"] for s in ("generate", "filter", "train", "evaluate")}
    result = run_cli("run", recipe, CHANGED, cwd=folder)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "[generate] up to date, skipped" in result.stdout
    for stage in ("filter", "train", "evaluate"):
        assert f"[{stage}] done" in result.stdout
        assert run.read_marker(stage)["fingerprint"] != before[stage]


def test_force_redoes_one_stage(finished_run):
    folder, recipe, run, _, _ = finished_run
    result = run_cli("run", recipe, CHANGED, "--force", "evaluate", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("up to date, skipped") == 3 and "[evaluate] done" in result.stdout


def test_half_written_output_is_not_taken_as_complete(finished_run):
    folder, recipe, run, _, _ = finished_run
    # A stage whose output changed after its marker was written (e.g. a killed rewrite) is redone.
    report = run.stage("evaluate") / "report.md"
    report.write_text("truncated")
    result = run_cli("run", recipe, CHANGED, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "[evaluate] done" in result.stdout and report.read_text() != "truncated"


def test_stage_alone_needs_its_inputs(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, tiny_model)
    result = run_cli("train", recipe, cwd=tmp_path)
    assert result.returncode == 2 and "stage filter has not completed" in result.stderr


# distill export: the tests below read the run as the tests above left it (complete, documented).


def _heldout_prompts(run: RunDir):
    from transformers import AutoTokenizer

    from distill.prompts.student import student_prompt
    from distill.prompts.template import PromptTemplate
    from distill.recipe import load_recipe

    recipe = load_recipe(run.recipe)
    tokenizer = AutoTokenizer.from_pretrained(recipe.models.student.path)
    template = PromptTemplate(recipe.train.prompt_template, "train.prompt_template")
    items = [json.loads(line) for line in run.heldout.read_text().splitlines()]
    return recipe, tokenizer, [student_prompt(recipe, template, item, tokenizer) for item in items]


def _greedy(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    import torch

    answers = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            answers.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return answers


def test_merged_export_answers_the_heldout_items_like_the_adapter(finished_run):
    import torch
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder, _, run, _, _ = finished_run
    result = run_cli("export", run.root, "--merge", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    merged = (run.root / "export" / "merged").resolve()
    assert f"merged model: {merged}" in result.stdout and f"serve: vllm serve {merged} " in result.stdout
    recipe, tokenizer, prompts = _heldout_prompts(run)
    base = AutoModelForCausalLM.from_pretrained(recipe.models.student.path, dtype=torch.float32)
    adapter = PeftModel.from_pretrained(base, str(run.adapter)).eval()
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    assert model.dtype == torch.float32 and not (merged / "adapter_config.json").exists()  # the base's dtype, no PEFT

    max_tokens = recipe.evaluate.max_tokens
    assert len(prompts) == 24 and _greedy(model, tokenizer, prompts, max_tokens) == _greedy(adapter, tokenizer, prompts, max_tokens)
    # The same logits up to float rounding, while the adapter moved them away from the base: a merge that dropped
    # the adapter would give the base's.
    batch = tokenizer(prompts[:4], return_tensors="pt", padding=True)
    with torch.no_grad():
        merged_logits, adapter_logits = model(**batch).logits, adapter(**batch).logits
        with adapter.disable_adapter():
            base_logits = adapter(**batch).logits
    assert (merged_logits - adapter_logits).abs().max() < 1e-4 < (adapter_logits - base_logits).abs().max()

    card = ModelCard.load(merged / "README.md")
    assert card.data.library_name == "transformers" and card.data.to_dict()["base_model_relation"] == "finetune"
    report = json.loads(run.eval_report.read_text())
    assert [(r.dataset_type, r.metric_value) for r in card.data.eval_results] == [
        ("plural", round(report["sets"]["plural"]["models"]["student"]["score"], 4))]  # the run's evaluation travels


def test_vllm_serves_the_merged_export_as_evaluation_served_the_adapter(finished_run):
    import pyarrow.compute as pc

    from distill.models.vllm_engine import VLLMEngine
    from distill.recipe import load_recipe

    _, _, run, _, _ = finished_run
    merged = run.root / "export" / "merged"
    if not merged.is_dir():
        pytest.skip("needs the merged export of the test above")
    recipe = load_recipe(run.recipe)
    predictions = pq.read_table(run.predictions)
    student = predictions.filter(pc.equal(predictions.column("model"), "student")).to_pylist()
    engine = VLLMEngine(merged, recipe.models.student, seed=recipe.seed)
    try:
        outs = engine.generate([p["prompt"] for p in student], seeds=[recipe.seed + i for i in range(len(student))],
                               temperature=0.0, max_tokens=recipe.evaluate.max_tokens, stop=list(recipe.evaluate.stop))
    finally:
        engine.close()
    assert [o[0].text.strip() for o in outs] == [p["prediction"] for p in student]


def test_adapter_export_is_what_vllm_enable_lora_loads(finished_run):
    from pathlib import Path

    from huggingface_hub import ModelCard

    folder, _, run, _, _ = finished_run
    result = run_cli("export", run.adapter, cwd=folder)  # the adapter folder of a run: the run is found above it
    assert result.returncode == 0, result.stderr[-3000:]
    out = (run.root / "export" / "adapter").resolve()
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    assert not (out / "training_args.bin").exists()
    config = json.loads((out / "adapter_config.json").read_text())
    from distill.recipe import load_recipe

    base = load_recipe(run.recipe).models.student.path
    assert config["base_model_name_or_path"] == str(Path(base).resolve()) and config["r"] == 4
    serve = next(line for line in result.stdout.splitlines() if line.startswith("serve: "))
    assert serve == (f"serve: vllm serve {Path(base).resolve()} --dtype float32 --enable-lora --max-lora-rank 8 "
                     f"--lora-modules tiny-student={out}")
    assert ModelCard.load(out / "README.md").data.library_name == "peft"
    # A folder the command did not write is never replaced.
    stranger = folder / "mine"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("keep")
    result = run_cli("export", run.root, "--out", stranger, cwd=folder)
    assert result.returncode == 2 and "was not written by `distill export`" in result.stderr
    assert (stranger / "notes.txt").read_text() == "keep"
