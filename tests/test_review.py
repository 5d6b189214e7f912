"""Human review: a stratified queue out, verdicts back in, and the filters' agreement with the humans."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from conftest import run_cli
from test_filters import prepared_run, row

from distill.filters.calibration import PIPELINE, calibrate


def test_calibration_figures_on_a_hand_made_gold_set():
    # r1, r3 rejected by length; r2, r4 by refusal; humans reject r1, r2, r5
    decisions = {"r1": "length", "r2": "refusal", "r3": "length", "r4": "refusal"}
    rows = [{"id": f"r{i}", "kept": f"r{i}" not in decisions, "rejected_by": decisions.get(f"r{i}")} for i in range(1, 11)]
    gold = {f"r{i}": i in (1, 2, 5) for i in range(1, 11)}
    result = calibrate(rows, ["length", "refusal"], gold | {"not-a-row": True}, min_kappa=0.4)
    everything, length, refusal = (result["agreement"][k] for k in (PIPELINE, "length", "refusal"))
    # all filters: TP 2, FP 2, FN 1, TN 5 -> kappa = (0.7 - 0.54) / 0.46
    assert (everything["n"], everything["accuracy"], everything["precision"], everything["recall"]) == (10, 0.7, 0.5, 0.6667)
    assert everything["kappa"] == pytest.approx(0.16 / 0.46, abs=1e-4)
    # each filter is measured on its own rejections plus the rows every filter kept (r5..r10):
    # length: r1 r3 + kept -> TP 1, FP 1 (r3), FN 1 (r5), TN 5 -> kappa = (0.75 - 0.625) / 0.375
    assert (length["n"], length["accuracy"], length["precision"], length["recall"]) == (8, 0.75, 0.5, 0.5)
    assert length["kappa"] == pytest.approx(1 / 3, abs=1e-4)
    # refusal: r2 r4 + kept -> TP 1 (r2), FP 1 (r4), FN 1 (r5), TN 5
    assert (refusal["n"], refusal["accuracy"], refusal["kappa"]) == (8, 0.75, pytest.approx(1 / 3, abs=1e-4))
    assert len(result["warnings"]) == 4 and any("length agrees with the human verdicts at Cohen's kappa 0.33" in w for w in result["warnings"])
    assert result["unknown_ids"] == 1


@pytest.fixture(scope="module")
def filtered_run(tmp_path_factory, tiny_model):
    """40 rows in two slices through length, exact dedup and refusal, via `distill filter`."""
    folder = tmp_path_factory.mktemp("review")
    rows = []
    for i in range(40):
        text = ["a fine answer number %d" % i, "x", "a fine answer number 0", "I cannot answer that"][i % 4] if i % 5 else "good %d" % i
        rows.append(row(f"r{i:02d}", text, slice=["common", "rare"][i % 2]))
    steps = [{"type": "length", "min_chars": 2}, {"type": "exact_dedup", "fields": ["completion"]}, {"type": "refusal"}]
    recipe, run = prepared_run(folder, tiny_model, rows, steps)
    result = run_cli("filter", recipe)
    assert result.returncode == 0, result.stderr[-2000:]
    return folder, recipe, run


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_export_draws_every_outcome_and_cell_evenly(filtered_run):
    folder, recipe, run = filtered_run
    result = run_cli("review", "export", run.root, "--size", "16")
    assert result.returncode == 0, result.stderr[-2000:]
    queue = read_csv(run.root / "review" / "queue.csv")
    assert len(queue) == 16 and all(q["verdict"] == "" for q in queue)
    strata = {(q["outcome"], q["cell"]) for q in queue}
    assert {o for o, _ in strata} == {"kept", "rejected:length", "rejected:exact_dedup", "rejected:refusal"}
    assert {c for _, c in strata} == {"common", "rare"}
    assert all(q["reason"] for q in queue if q["outcome"].startswith("rejected"))
    again = run_cli("review", "export", recipe, "--size", "16", "--out", folder / "again.csv")  # from the recipe, same seed
    assert again.returncode == 0 and read_csv(folder / "again.csv") == queue


def test_import_reads_verdicts_back_and_measures_each_filter(filtered_run):
    folder, recipe, run = filtered_run
    queue = read_csv(run.root / "review" / "queue.csv")
    for q in queue:  # the humans agree with every filter but refusal, whose rejections they overturn
        q["verdict"] = "keep" if q["outcome"] in ("kept", "rejected:refusal") else "reject"
    reviewed = folder / "reviewed.csv"
    with open(reviewed, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(queue[0]))
        writer.writeheader()
        writer.writerows(queue)
    result = run_cli("review", "import", run.root, reviewed)
    assert result.returncode == 0, result.stderr[-2000:]
    calibration = json.loads((run.root / "review" / "calibration.json").read_text())
    agreement = calibration["agreement"]
    assert calibration["gold_rows"] == 16
    assert agreement["length"]["kappa"] == 1.0 and agreement["exact_dedup"]["accuracy"] == 1.0
    assert agreement["refusal"]["precision"] == 0.0 and agreement["refusal"]["recall"] is None
    assert any(w.startswith("refusal agrees with the human verdicts") for w in calibration["warnings"])
    assert "[review] warning: refusal agrees" in result.stdout
    assert not any(w.startswith(("length", "exact_dedup")) for w in calibration["warnings"])
    stored = [json.loads(line) for line in (run.root / "review" / "verdicts.jsonl").read_text().splitlines()]
    assert len(stored) == 16 and {s["verdict"] for s in stored} == {"keep", "reject"}
    assert "| refusal |" in (run.root / "review" / "calibration.md").read_text()


def test_the_filter_stage_reports_agreement_with_a_gold_set_from_the_recipe(filtered_run):
    folder, recipe, run = filtered_run
    gold = run.root / "review" / "verdicts.jsonl"
    data = yaml.safe_load(recipe.read_text())
    data["filter"]["calibration"] = {"gold": str(gold), "min_kappa": 0.5}
    with_gold = folder / "with_gold.yaml"
    with_gold.write_text(yaml.safe_dump(data))
    result = run_cli("filter", with_gold)
    assert result.returncode == 0, result.stderr[-2000:]
    calibration = json.loads((run.stage("filter") / "calibration.json").read_text())
    assert calibration["gold_rows"] == 16 and calibration["min_kappa"] == 0.5
    summary = json.loads(run.marker("filter").read_text())["summary"]
    assert summary["calibration"]["agreement"]["length"]["kappa"] == 1.0


def test_bad_review_files_are_one_line_errors(filtered_run):
    folder, _, run = filtered_run
    bad = folder / "bad.csv"
    bad.write_text("id,verdict\nr00,keep\nr01,maybe\n")
    result = run_cli("review", "import", run.root, bad)
    assert result.returncode == 2 and "bad.csv:3: verdict 'maybe' is neither keep nor reject" in result.stderr
    bad.write_text("id,verdict\nsomeone-else,keep\n")
    result = run_cli("review", "import", run.root, bad)
    assert result.returncode == 2 and "id someone-else is not a row of" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("review", "export", folder / "nowhere")
    assert result.returncode == 2 and "neither a run directory nor a recipe file" in result.stderr
