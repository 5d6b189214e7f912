"""`distill compare` on real checkpoints of a tiny model trained with the project's own train stage.

The tiny model is first taught English plurals (a short full fine-tune on real BIG-bench
words), so that it has something to lose. A student is then trained with LoRA on
deliberately corrupted labels (every plural spelled backwards). On held-out real words the
corrupted student assigns the true plurals a far higher NLL, and compare flags it as
degraded; the base model compared with itself is not flagged.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import PLURAL, run_cli, write_recipe

from distill import rows as C
from distill.run_dir import write_parquet
from distill.stages import fingerprint
from distill.pipeline import save_resolved_recipe
from distill.recipe import load_recipe
from distill.run_dir import RunDir

GUARD = PLURAL.parent / "arithmetic_2_digit_addition.json"

RECIPE = """\
name: {name}
seed: 0
models:
  teacher: {{path: {model}}}
  student: {{path: {model}}}
data:
  path: {data}
  slice_field: comment
  heldout: {{size: 24}}
generate:
  template: "Plural of {{{{ input }}}}:"
train:
  prompt_template: "Plural of {{{{ input }}}}:"
  lora: {{r: 8, alpha: 16, target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]}}
  epochs: 2
  batch_size: 16
  learning_rate: 3.0e-3
  max_length: 32
  save_steps: 4
evaluate:
  models: [base, student]
  sets:
    - name: plural
      path: {heldout}
      slice_field: comment
      metrics: [nll, exact_match]
    - name: arithmetic
      path: {guard}
      guard: true
      limit: 12
      prompt_template: "{{{{ input }}}}"
      metrics: [nll]
  max_tokens: 6
  gate: {{tolerance: {{nll: 0.05}}}}
  checkpoints: true
  bootstrap_samples: 1000
"""


def _split_real_words(folder):
    """Held-out real words for evaluation (both slices), the rest for training."""
    examples = json.loads(PLURAL.read_text())["examples"]
    irregular = [e for e in examples if e["comment"] == "irregular"]
    regular = [e for e in examples if e["comment"] == "regular"]
    heldout = regular[::12][:30] + irregular[::3][:10]
    held_words = {e["input"] for e in heldout}
    train = [e for e in examples if e["input"] not in held_words]
    path = folder / "heldout.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in heldout))
    return path, train


def _teach_plurals(folder, train: list[dict]):
    """A tiny model that knows plurals: a short, seeded full fine-tune on the training words only."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.models.tiny import build_tiny_model

    path = build_tiny_model(folder / "plural-model", "qwen2")
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lines = [f"Plural of {e['input']}: {e['target']}{tok.eos_token}" for e in train]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(120):
        batch = tok([lines[i] for i in torch.randint(0, len(lines), (32,)).tolist()], return_tensors="pt", padding=True)
        loss = model(**batch, labels=batch.input_ids.masked_fill(batch.attention_mask == 0, -100)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(path)
    return path


def _train_student(folder, model, name, heldout, labels):
    """The real train stage on hand-made kept rows: (input, label) pairs."""
    from distill.train.stage import run_train

    recipe_path = folder / f"{name}.yaml"
    recipe_path.write_text(RECIPE.format(name=name, model=model, data=PLURAL, heldout=heldout, guard=GUARD))
    recipe = load_recipe(recipe_path)
    run = RunDir(folder / "runs" / name)
    save_resolved_recipe(recipe, run)
    rows = [{C.ID: str(i), C.INPUT: word, C.COMPLETION: label, C.KEPT: True} for i, (word, label) in enumerate(labels)]
    write_parquet(run.filtered, rows)
    run_train(recipe, run)
    return recipe_path, run


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compare")
    heldout, train = _split_real_words(folder)
    model = _teach_plurals(folder, train)
    corrupt_labels = [(e["input"], e["target"][::-1]) for e in train[:96]]
    recipe, corrupted = _train_student(folder, model, "corrupted", heldout, corrupt_labels)
    checkpoints = sorted((corrupted.stage("train") / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    out = folder / "report"
    result = run_cli("compare", "base", *checkpoints[:2], corrupted.root, "base", "--out", out, "--fail-on-degradation",
                     cwd=folder)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None
    return folder, recipe, result, out, report


def test_corrupted_labels_are_flagged_as_degraded(compared):
    _, _, result, _, report = compared
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    nll = report["sets"]["plural"]["vs_base"]["corrupted"]["metrics"]["nll"]["overall"]
    assert nll["verdict"] == "degraded" and nll["low"] > 0.05, nll  # the true plurals became less likely
    assert nll["gate_low"] > nll["tolerance"] == 0.05 and nll["p_adjusted"] <= 0.05
    # compare gates every target but the baseline: 4 models x plural (nll, exact match) x (all 40, regular 30)
    assert report["gate"]["models"] == ["checkpoint-4", "checkpoint-8", "corrupted", "base#2"]
    assert report["gate"]["tests"] == 16 and report["gate"]["correction"] == "holm"
    assert report["sets"]["plural"]["models"]["base"]["metrics"]["nll"]["score"] < 6.0  # it had learned something (uniform: 6.9)
    assert any(d["model"] == "corrupted" and d["set"] == "plural" and d["where"] == "all" for d in report["degraded"])
    assert "degraded" in (compared[3] / "report.md").read_text()


def test_the_same_model_is_not_flagged_against_itself(compared):
    _, _, _, _, report = compared
    assert report["baseline"] == "base" and report["models"] == ["base", "checkpoint-4", "checkpoint-8", "corrupted", "base#2"]
    for set_name, entry in report["sets"].items():
        for metric, cmp in entry["vs_base"]["base#2"]["metrics"].items():
            assert cmp["overall"]["delta"] == pytest.approx(0.0, abs=1e-6), (set_name, metric)
            # the 12-item guard set is under evaluate.gate.min_items (30): an interval, no verdict
            assert cmp["overall"]["verdict"] == ("no clear change" if set_name == "plural" else "too few items")
    assert not any(d["model"] == "base#2" for d in report["degraded"])


def test_slices_and_guard_sets_are_reported_with_their_n(compared):
    _, _, _, out, report = compared
    plural = report["sets"]["plural"]
    assert plural["models"]["base"]["slices"]["irregular"]["n"] == 10
    assert plural["models"]["base"]["slices"]["regular"]["n"] == 30
    irregular = plural["vs_base"]["corrupted"]["metrics"]["nll"]["slices"]["irregular"]
    regular = plural["vs_base"]["corrupted"]["metrics"]["nll"]["slices"]["regular"]
    assert irregular["n"] == 10 and irregular["high"] - irregular["low"] > regular["high"] - regular["low"]
    guard = report["sets"]["arithmetic"]
    assert guard["guard"] and guard["models"]["corrupted"]["n"] == 12
    assert guard["models"]["base"]["metrics"]["nll"]["item_perplexity"] > 1
    md = (out / "report.md").read_text()
    assert "## arithmetic (guard set)" in md and "| irregular | 10 |" in md


def test_three_checkpoints_render_table_json_png_and_html(compared):
    _, _, _, out, report = compared
    for name in ("report.md", "report.json", "report.png", "report.html", "predictions.parquet"):
        assert (out / name).is_file(), name
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html and "checkpoint-8" in html
    assert "src=\"http" not in html  # self-contained
    md = (out / "report.md").read_text()
    assert (out / "curve.png").is_file()  # checkpoints give a curve over training steps
    for model in ("checkpoint-4", "checkpoint-8", "corrupted"):
        assert f"| {model} |" in md
    table = pq.read_table(out / "predictions.parquet").to_pylist()
    assert len(table) == 5 * (40 + 12)
    assert {"score_nll", "score_exact_match", "prediction", "prompt"} <= set(table[0])
    assert report["targets"]["corrupted"]["adapter"].endswith("adapter")


def test_bad_target_is_a_one_line_error(compared):
    folder, recipe, *_ = compared
    result = run_cli("compare", "base", folder / "nowhere", "--recipe", recipe, cwd=folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "nowhere: not a run directory" in result.stderr


def test_an_adapter_is_not_served_on_another_base_model(compared, tiny_model):
    folder, *_ = compared
    other = write_recipe(folder / "other", tiny_model) if (folder / "other").mkdir() is None else None
    result = run_cli("compare", "base", folder / "runs" / "corrupted" / "train" / "adapter", "--recipe", other, cwd=folder)
    assert result.returncode == 2 and "trained on another base model" in result.stderr, result.stderr[-2000:]


@pytest.fixture(scope="module")
def evaluated_run(compared):
    """`distill evaluate RUN` on the corrupted run, its earlier stages recorded as complete."""
    folder, recipe_path, *_ = compared
    run = RunDir(folder / "runs" / "corrupted")
    recipe = load_recipe(run.recipe)
    (run.stage("generate")).mkdir(parents=True, exist_ok=True)
    run.heldout.write_text((folder / "heldout.jsonl").read_text())
    for stage, summary in (("generate", {}), ("filter", {}), ("train", {"steps": 12})):
        run.mark_complete(stage, fingerprint(recipe, run, stage), summary)
    result = run_cli("evaluate", run.root, "--fail-on-degradation", cwd=folder)
    return run, result


def test_evaluate_a_run_directory_gates_on_degradation_with_exit_code_3(evaluated_run):
    run, result = evaluated_run
    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-2000:]
    assert "degraded" in result.stderr
    report = json.loads(run.eval_report.read_text())
    assert report["baseline"] == "base" and report["any_degraded"]
    assert report["sets"]["plural"]["vs_base"]["student"]["metrics"]["nll"]["overall"]["verdict"] == "degraded"
    # evaluate gates the trained student only; its checkpoints are reported with intervals, not judged
    assert report["gate"]["models"] == ["student"] and {d["model"] for d in report["degraded"]} == {"student"}
    early = report["sets"]["plural"]["vs_base"]["student@4"]["metrics"]["nll"]["overall"]
    assert early["verdict"] == "reported only" and early["low"] is not None
    assert "reported only" in (run.stage("evaluate") / "report.md").read_text()
    again = run_cli("evaluate", run.root, cwd=run.root.parent)  # up to date: no gate without the flag
    assert again.returncode == 0 and "up to date, skipped" in again.stdout


def test_evaluate_checkpoints_gives_a_curve(evaluated_run):
    run, _ = evaluated_run
    report = json.loads(run.eval_report.read_text())
    assert report["models"] == ["base", "student@4", "student@8", "student@12", "student"]
    assert report["steps"]["student@8"] == 8 and report["steps"]["student"] == 12
    folder = run.stage("evaluate")
    for name in ("report.md", "report.png", "curve.png", "report.html", "predictions.parquet"):
        assert (folder / name).is_file(), name
