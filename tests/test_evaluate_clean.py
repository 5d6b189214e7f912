"""Did an eval item reach the rows the student was trained on? Those items (true leaks) are reported with the
score on the other items; items the decontaminate filter caught, whose rows were rejected, are reported apart."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from conftest import run_cli
from test_cards import _report, documented  # noqa: F401  (a documented run, as a fixture)

from distill.evaluate.contamination import attach, measure
from distill.evaluate.report import build_report, render_markdown
from distill.recipe import EvalSet, EvaluateSettings, Recipe
from distill.run_dir import RunDir, hash_file, write_json

ITEMS = [{"id": f"i{i}", "input": q, "reference": a, "references": [a], "slice": None} for i, (q, a) in enumerate([
    ("What is the capital city of France?", "Paris"),
    ("Which river flows through Cairo?", "Nile"),
    ("Who painted the ceiling of the Sistine Chapel?", "Michelangelo"),
    ("What is the chemical symbol for gold?", "Au"),
])]


def predictions(model: str, correct: set[int]) -> list[dict]:
    return [{"set": "plural", "model": model, "item_id": f"i{i}", "slice": None, "step": None,
             "scores": {"exact_match": float(i in correct)}} for i in range(10)]


def report(contaminated=None) -> dict:
    s = EvalSet(name="plural", data="heldout")
    settings = EvaluateSettings(sets=[s], models=["base", "student"])
    rows = predictions("base", set()) + predictions("student", {0, 1, 2, 3, 4})
    return build_report(rows, settings, "base", ["base", "student"], {"plural": s}, contaminated=contaminated)


def test_the_clean_part_leaves_out_the_items_that_reached_training():
    # the student "knows" items 0-4, and items 0-3 were in its training rows
    entry = report({"plural": ["i0", "i1", "i2", "i3", "not-an-eval-item"]})["sets"]["plural"]
    assert entry["models"]["student"]["score"] == 0.5
    assert entry["clean"] == {"n": 6, "reached_training": 4, "models": {"base": 0.0, "student": 1 / 6}}


def test_no_leaks_no_clean_section():
    assert "clean" not in report({"plural": []})["sets"]["plural"]
    assert "clean" not in report(None)["sets"]["plural"]
    text = render_markdown(attach(report({"plural": []}), {"trained_on": [{"rows": 5, "rows_file": "r.parquet"}],
                                                           "sets": {"plural": []}, "fields": ["input"], "ngram": 13}, None))
    assert "clean" not in text and "other items" not in text and "decontaminate" not in text


def recipe_dict(tmp_path: Path, model: Path, models: list[str], steps: list[dict] | None = None) -> dict:
    data = Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "data" / "plural_json.json"
    return {
        "name": "leaks", "run_dir": str(tmp_path / "run"),
        "models": {"teacher": {"path": str(model)}, "student": {"path": str(model)}},
        "data": {"path": str(data), "heldout": {"size": 4}}, "generate": {"template": "{{ input }}"}, "filter": {"steps": steps or []},
        "train": {"prompt_template": "Plural of {{ input }}:"},
        "evaluate": {"models": models, "sets": [{"name": "heldout", "data": "heldout"}], "max_tokens": 4},
    }


def recipe(tmp_path: Path, model: Path, models: list[str]) -> Recipe:
    return Recipe.model_validate(recipe_dict(tmp_path, model, models))


def trained_run(tmp_path: Path) -> RunDir:
    """A run whose student was trained on the kept rows: one of them holds item i0 inside a longer input and one
    answers with item i1's question; the rejected rows hold i2 (caught by the filter) and i3 (rejected by another step)."""
    run = RunDir(tmp_path / "run")
    rows = [
        {"id": "kept-i0", "input": "Quiz: what is the capital city of France? Answer in one word.", "completion": "Paris", "kept": True},
        {"id": "kept-i1", "input": "Write a trivia question", "completion": "Which river flows through Cairo?", "kept": True},
        {"id": "kept-same-answer", "input": "Name a painter", "completion": "Michelangelo", "kept": True},
        {"id": "caught-i2", "input": "Who painted the ceiling of the Sistine Chapel?", "completion": "Michelangelo", "kept": False},
        {"id": "dedup-i3", "input": "What is the chemical symbol for gold?", "completion": "Au", "kept": False},
    ]
    run.filtered.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), run.filtered)
    write_json(run.stage("filter") / "contaminated_items.json", {"heldout": ["i2"]})
    run.adapter.mkdir(parents=True)
    write_json(run.adapter / "training_data.json", {"rows_file": str(run.filtered), "rows_sha256": hash_file(run.filtered),
                                                    "rows_used": 3})
    return run


def test_items_in_kept_training_rows_are_true_leaks_and_rejected_rows_are_not(tmp_path, tiny_model):
    run = trained_run(tmp_path)
    measured = measure(recipe(tmp_path, tiny_model, ["base", "student"]), {"heldout": ITEMS}, [run.adapter])
    assert measured["sets"] == {"heldout": ["i0", "i1"]}  # i2 and i3 were only in rejected rows; an equal answer is no leak
    assert measured["trained_on"] == [{"adapter": str(run.adapter), "rows_file": str(run.filtered), "rows": 3}]
    assert {(r["row_id"], r["item_id"], r["field"]) for r in measured["records"]} == {("kept-i0", "i0", "input"),
                                                                                       ("kept-i1", "i1", "completion")}


def test_a_kept_row_left_out_of_a_sampled_training_set_is_no_leak(tmp_path, tiny_model):
    # train.max_rows trained on two of the three kept rows: i0's row was kept but never trained on
    run = trained_run(tmp_path)
    write_json(run.adapter / "training_data.json", {"rows_file": str(run.filtered), "rows_sha256": hash_file(run.filtered),
                                                    "rows_used": 2, "row_ids": ["kept-i1", "kept-same-answer"]})
    measured = measure(recipe(tmp_path, tiny_model, ["base", "student"]), {"heldout": ITEMS}, [run.adapter])
    assert measured["sets"] == {"heldout": ["i1"]}
    assert measured["trained_on"][0]["rows"] == 2


def test_a_paraphrase_caught_in_one_row_and_trained_in_another_counts_as_reached(tmp_path, tiny_model):
    """The filter checks completions only; the same paraphrase of an eval item sits in one row's completion (caught,
    by embedding) and in another row's input (kept, trained on). Evaluation uses the filter's detector, embedding
    check included, so the item counts as reached and leaves the clean score."""
    from distill.data.contamination import eval_items, leak_rule
    from distill.filters.decontam import Decontaminate
    from distill.filters.stage import apply_filters

    boil = {"id": "i-boil", "input": "What is the boiling point of water at sea level in degrees Celsius?",
            "reference": "100", "references": ["100"], "slice": None}
    paraphrase = "At sea level, water boils at what temperature in Celsius?"
    steps = [{"type": "decontaminate", "fields": ["completion"]}]  # embedding_threshold 0.9 by default
    r = Recipe.model_validate(recipe_dict(tmp_path, tiny_model, ["base", "student"], steps))
    cfg = r.filter.steps[0]
    flt = Decontaminate(cfg, items=eval_items("heldout", ITEMS + [boil]))
    flt.label = "decontaminate"
    rows = [{"id": "caught", "input": "Write a quiz question", "completion": paraphrase},
            {"id": "trained", "input": paraphrase, "completion": "100 degrees"},
            {"id": "clean", "input": "Name a colour", "completion": "blue"}]
    filtered = apply_filters(rows, [flt])
    assert [x["kept"] for x in filtered] == [False, True, True]
    assert flt.contaminated_items() == {"heldout": ["i-boil"]}

    run = RunDir(tmp_path / "run")
    run.filtered.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([{k: x[k] for k in ("id", "input", "completion", "kept")} for x in filtered]),
                   run.filtered)
    run.adapter.mkdir(parents=True)
    write_json(run.adapter / "training_data.json", {"rows_file": str(run.filtered), "rows_sha256": hash_file(run.filtered),
                                                    "rows_used": 2})
    measured = measure(r, {"heldout": ITEMS + [boil]}, [run.adapter])
    assert measured["sets"] == {"heldout": ["i-boil"]} and measured["embedding_threshold"] == 0.9
    assert [(x["row_id"], x["field"], x["method"]) for x in measured["records"]] == [("trained", "input", "embedding")]
    assert leak_rule(measured).endswith("or its sentence embedding has cosine similarity of at least 0.9 with the "
                                        "item's input")  # what the report says it checked


def test_the_report_separates_true_leaks_from_items_the_filter_removed(tmp_path, tiny_model):
    run = trained_run(tmp_path)
    measured = measure(recipe(tmp_path, tiny_model, ["base", "student"]), {"heldout": ITEMS}, [run.adapter])
    s = EvalSet(name="heldout", data="heldout")
    rows = [{"set": "heldout", "model": m, "item_id": it["id"], "slice": None, "step": None,
             "scores": {"exact_match": float(m == "student" and it["id"] in ("i0", "i1", "i2"))}} for m in ("base", "student")
            for it in ITEMS]
    out = build_report(rows, EvaluateSettings(sets=[s], models=["base", "student"]), "base", ["base", "student"], {"heldout": s},
                       contaminated=measured["sets"])
    attach(out, measured, {"heldout": ["i2"]})
    entry = out["sets"]["heldout"]
    assert entry["clean"] == {"n": 2, "reached_training": 2, "models": {"base": 0.0, "student": 0.5}}
    assert entry["contamination"] == {"measured": True, "reached_training": 2, "caught_by_filter": 1, "caught_but_reached": 0}
    text = render_markdown(out)
    assert f"2 item(s) appear in the 3 kept rows of {run.filtered} that the student was trained on" in text
    assert "exact match on the 2 other items: base 0.000, student 0.500." in text
    assert "The decontaminate filter found 1 item(s) in generated rows and rejected those rows" in text


def test_without_a_trained_student_nothing_is_measured_and_the_filters_catch_is_still_shown(tmp_path, tiny_model):
    assert measure(recipe(tmp_path, tiny_model, ["base", "teacher"]), {"heldout": ITEMS}, []) is None
    text = render_markdown(attach(report(None), None, {"plural": ["i2", "i3"]}))
    assert "The decontaminate filter found 2 item(s)" in text and "other items" not in text


def test_rows_changed_since_training_are_not_measured_and_the_report_says_why(tmp_path, tiny_model):
    run = trained_run(tmp_path)
    pq.write_table(pa.Table.from_pylist([{"id": "x", "input": "new", "completion": "rows", "kept": True}]), run.filtered)
    measured = measure(recipe(tmp_path, tiny_model, ["base", "student"]), {"heldout": ITEMS}, [run.adapter])
    assert measured["trained_on"] == [] and measured["sets"] == {"heldout": []}
    assert "changed since" in measured["not_measured"][0]
    text = render_markdown(attach(report({"plural": []}), measured, None))
    assert "Not measured which items appear in the rows the student was trained on" in text


def test_evaluate_reports_the_items_its_student_was_trained_on(tmp_path, tiny_model):
    """Through the CLI: the filter checks completions only, so a held-out word in a row's input reaches training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = [{"type": "decontaminate", "fields": ["completion"], "embedding_threshold": None}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe_dict(tmp_path, tiny_model, ["base", "student"], steps), sort_keys=False))
    run = RunDir(tmp_path / "run")
    run.heldout.parent.mkdir(parents=True, exist_ok=True)
    run.heldout.write_text("".join(json.dumps({"id": w, "input": w, "reference": w + "s", "references": [w + "s"], "slice": None})
                                   + "\n" for w in ("lantern", "meadow", "river", "candle")))
    pq.write_table(pa.Table.from_pylist([{"id": "g1", "input": "stone", "completion": "meadow"},  # caught, rejected
                                         {"id": "g2", "input": "lantern", "completion": "lanterns"},  # input not checked
                                         {"id": "g3", "input": "cloud", "completion": "clouds"}]), run.generated)
    run.mark_complete("generate", "prepared-by-test", {"rows": 3})
    result = run_cli("filter", path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert pq.read_table(run.filtered).column("kept").to_pylist() == [False, True, True]
    # a real LoRA adapter (untrained: the measurement reads its training record, not its weights)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(run.adapter)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(run.adapter)
    write_json(run.adapter / "training_data.json", {"rows_file": str(run.filtered), "rows_sha256": hash_file(run.filtered),
                                                    "rows_used": 2})
    run.mark_complete("train", "prepared-by-test", {"rows": 2})
    result = run_cli("evaluate", path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (run.stage("evaluate") / "report.md").read_text()
    assert f"1 item(s) appear in the 2 kept rows of {run.filtered} that the student was trained on" in text
    assert "on the 3 other items: base" in text
    assert "The scores, intervals and gate above include those items." in text
    assert "The decontaminate filter found 1 item(s) in generated rows and rejected those rows" in text
    report = json.loads(run.eval_report.read_text())
    assert report["contamination"]["sets"] == {"heldout": ["lantern"]}
    assert report["contamination"]["caught_by_filter"] == {"heldout": ["meadow"]}


def test_the_cards_give_the_same_numbers(documented, tmp_path):
    """Dataset card: items the filter removed and items in the training rows; model card: the score on the other items."""
    from distill.provenance.stage import run_document
    from distill.recipe import load_recipe

    run = RunDir(shutil.copytree(documented[0].root, tmp_path / "runs" / "tiny"))
    write_json(run.stage("filter") / "contaminated_items.json", {"plural": ["a", "b"]})
    report = _report()
    report["sets"]["plural"]["clean"] = {"n": 17, "reached_training": 3, "models": {"base": 0.0, "student": 0.4}}
    report["contamination"] = {"trained_on": [{"adapter": "a", "rows_file": "runs/tiny/filter/rows.parquet", "rows": 91}],
                               "fields": ["input", "completion"], "ngram": 13, "check_references": True,
                               "sets": {"plural": ["x", "y", "z"], "general": []}, "caught_by_filter": {"plural": ["a", "b"]}}
    write_json(run.eval_report, report)
    recipe = load_recipe(documented[0].root.parent.parent / "recipe.yaml", ["coverage.synthetic_vs_real.enabled=false"])
    run_document(recipe, run)
    dataset, model = (run.root / "dataset_card.md").read_text(), (run.root / "model_card.md").read_text()
    assert "| plural | 2 |" in dataset  # found by the filter, rows rejected
    assert "Evaluation checked the 91 kept rows of runs/tiny/filter/rows.parquet that the student was trained on" in dataset
    assert "| plural | 3 | exact_match on 17: base 0.000, student 0.400 |" in dataset and "| general | 0 |  |" in dataset
    assert "3 item(s) of this set appear in the rows the student was trained on; exact_match on the 17 other items: " \
           "base 0.000, student 0.400. The table above, the degradation gate and the headline value in this card's " \
           "header include those items" in model
    # the card's header: the headline over every item, and the value on the items not in the training rows
    metrics = yaml.safe_load(model.split("---\n")[1])["model-index"][0]["results"][0]["metrics"]
    assert [(m["name"], m["value"]) for m in metrics] == [("exact_match", 0.45),
                                                          ("exact_match on the 17 items not in the training rows", 0.4)]
    assert "Evaluation items appear in the rows the student was trained on (3 of plural)" in model
