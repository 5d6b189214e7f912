"""Every shipped recipe run end to end, and its README table reproduced from that run (slow: the real SmolLM2 model,
minutes each; `bash scripts/test.sh -m slow`).

The tables are read from README.md itself, so a figure there is checked against the run, not against a copy."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def readme_table(recipe: str, says: str = "reads:") -> dict[str, list[str]]:
    """The first table after the README line that names `recipe` and says its report reads (or `says`): first cell ->
    the others."""
    text = (ROOT / "README.md").read_text()
    start = text.index(f"`{recipe}`")
    start = text.index(says, start)
    rows, header = {}, None
    for line in text[start:].splitlines()[1:]:
        line = line.strip()  # a table inside a list item is indented
        if not line.startswith("|"):
            if header:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if header is None:  # the table's first line names its columns
            header = cells
        elif not set(cells[0]) <= set("-:"):
            rows[cells[0]] = cells[1:]
    return rows


def run_recipe(path: Path, tmp_path: Path) -> dict:
    proc = run_cli("run", path, f"run_dir={tmp_path / 'run'}", "evaluate.cache=false", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((tmp_path / "run" / "evaluate" / "report.json").read_text())


def check_plural_table(report: dict, table: dict[str, list[str]]) -> None:
    """| model | plural exact match | irregular slice | arithmetic guard, reference NLL (degraded?) |"""
    degraded = {(d["model"], d["set"], d["metric"]) for d in report["degraded"] if d["where"] == "all"}
    plural, arithmetic = report["sets"]["plural"]["models"], report["sets"]["arithmetic"]["models"]
    for model, cells in table.items():
        assert cells[0] == f"{plural[model]['score']:.3f}", (model, cells)
        assert cells[1] == f"{plural[model]['slices']['irregular']['score']:.3f}", (model, cells)
        nll = arithmetic[model]["metrics"]["nll"]["score"]
        assert re.match(rf"^{nll:.2f}\b", cells[2]), (model, cells, nll)
        assert ("degraded" in cells[2]) == ((model, "arithmetic", "nll") in degraded), (model, cells)


def test_the_quickstart_reproduces_its_readme_table(tmp_path):
    table = readme_table("recipes/quickstart/recipe.yaml")
    assert set(table) == {"base", "student", "teacher"}
    check_plural_table(run_recipe(ROOT / "recipes" / "quickstart" / "recipe.yaml", tmp_path), table)


def test_the_white_box_quickstart_reproduces_its_readme_table(tmp_path):
    table = readme_table("recipes/quickstart-kd/recipe.yaml")
    assert set(table) == {"base", "student", "teacher"}
    report = run_recipe(ROOT / "recipes" / "quickstart-kd" / "recipe.yaml", tmp_path)
    check_plural_table(report, table)
    # the fidelity line of the README, from the same run
    text = (ROOT / "README.md").read_text()
    fidelity = report["fidelity"]["sets"]["plural"]["models"]
    line = re.search(r"top-1 agreement with the teacher: base (\d+\.\d+), student (\d+\.\d+); KL per token: "
                     r"base (\d+\.\d+), student (\d+\.\d+)", text)
    assert line, "README states the quickstart-kd fidelity figures"
    assert line.groups() == (f"{fidelity['base']['top1_agreement']:.3f}", f"{fidelity['student']['top1_agreement']:.3f}",
                             f"{fidelity['base']['kl_per_token']:.2f}", f"{fidelity['student']['kl_per_token']:.2f}")


def test_on_policy_repair_undoes_the_guard_set_degradation_of_the_quickstart(tmp_path):
    """quickstart-repair: the quickstart's SFT, then on-policy with a fifth of the prompts like the arithmetic guard
    set's, scored by the base student. The README's table comes from this run; the gate calls nothing degraded."""
    table = readme_table("recipes/quickstart-repair/recipe.yaml")
    assert set(table) == {"base", "student", "teacher"}
    report = run_recipe(ROOT / "recipes" / "quickstart-repair" / "recipe.yaml", tmp_path)
    check_plural_table(report, table)
    assert report["degraded"] == []
    summary = json.loads((tmp_path / "run" / "train" / "_COMPLETE.json").read_text())["summary"]
    assert summary["repair"]["left_out_as_evaluation_items"] == 100  # the guard set's own items stay held out
    card = (tmp_path / "run" / "model_card.md").read_text()
    assert f"| {summary['repair']['prompts']} (100), 0.2, base |" in card
    assert f"| {summary['cost']['repair_tokens_scored']}, " in card


def test_the_white_box_quickstart_trains_an_instruct_student_in_its_chat_format(tmp_path):
    """KD for a chat student: quickstart-kd with the student trained (and evaluated) through its chat template, on the
    teacher's captured tokens as the assistant turn, ending with the template's end-of-turn token."""
    proc = run_cli("run", ROOT / "recipes" / "quickstart-kd" / "recipe.yaml", f"run_dir={tmp_path / 'run'}",
                   "evaluate.cache=false", "train.chat=true", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train" / "_COMPLETE.json").read_text())["summary"]
    targets = summary["teacher_targets"]
    assert targets["rows_with_teacher_targets"] == targets["rows"] == summary["rows"] and not targets["rows_left_out"]
    assert summary["format_check"]["eos_token"] == "<|im_end|>"
    plural = json.loads((tmp_path / "run" / "evaluate" / "report.json").read_text())["sets"]["plural"]["models"]
    assert plural["student"]["score"] > plural["base"]["score"] + 0.3, plural
    # the README's figures for this variant, from the same run
    text = " ".join((ROOT / "README.md").read_text().split())
    line = re.search(r"in its chat format, where it scores (\d\.\d{3}) on the plural set against the teacher's "
                     r"(\d\.\d{3})", text)
    assert line, "README states the chat variant's scores"
    assert line.groups() == (f"{plural['student']['score']:.3f}", f"{plural['teacher']['score']:.3f}")


def test_the_intent_recipe_reproduces_its_readme_table_and_finding(tmp_path):
    """Label mode: a few-shot teacher labels real utterances; the student answers the bare utterance."""
    table = readme_table("recipes/intent/recipe.yaml")
    assert set(table) == {"base", "student", "teacher"}
    proc = run_cli("run", ROOT / "recipes" / "intent" / "recipe.yaml", f"run_dir={tmp_path / 'run'}",
                   "evaluate.cache=false", cwd=tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "evaluate" / "report.json").read_text())
    scores = report["sets"]["intent"]["models"]
    for model, cells in table.items():
        assert cells[0] == f"{scores[model]['score']:.3f}", (model, cells)
    # the README's synthetic-vs-real sentence, from the same run's document stage
    text = (ROOT / "README.md").read_text()
    found = re.search(r"total variation (\d\.\d\d); the teacher labels (\d+\.\d)% of its rows `(\w+)`, where "
                      r"(\d+\.\d)% of the seed utterances are", " ".join(text.split()))
    assert found, "README states the intent recipe's synthetic-vs-real finding"
    tv, ours, label, real = found.groups()
    assert f"total variation distance {tv} " in proc.stdout
    assert f"largest gap '{label}' {ours}% against {real}%" in proc.stdout


def test_the_loop_recipe_spends_the_quickstarts_budget_in_rounds_and_reproduces_its_readme_tables(tmp_path):
    """recipes/loop: the quickstart's 400 teacher prompts spent in rounds of 100 near the dev words the student gets
    wrong. The README's rounds table comes from loop/loop.json, its test table from the run's report."""
    table, rounds = readme_table("recipes/loop/recipe.yaml"), readme_table("recipes/loop/recipe.yaml", "rounds read:")
    assert set(table) == {"base", "student", "teacher"}
    report = run_recipe(ROOT / "recipes" / "loop" / "recipe.yaml", tmp_path)
    check_plural_table(report, table)
    record = json.loads((tmp_path / "run" / "loop" / "loop.json").read_text())
    assert [str(r["round"]) for r in record["rounds"]] == list(rounds)
    for r in record["rounds"]:
        assert rounds[str(r["round"])] == [r["strategy"], f"{r['prompts']} ({r['teacher_prompts']})",
                                           f"{r['dev']['student']:.3f}"], r
    assert record["rounds"][-1]["teacher_prompts"] <= 400
    assert f"stopped after round {record['rounds'][-1]['round']}: {record['stopped']}" in (ROOT / "README.md").read_text()
