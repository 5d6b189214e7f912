"""Dataset and model cards, written by the document stage over a run's files, readable on their own."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import PLURAL, ROOT, write_recipe

from distill import rows as C
from distill.run_dir import write_parquet
from distill.provenance.stage import run_document
from distill.recipe import load_recipe
from distill.run_dir import DATA_MANIFEST, RunDir, write_json, write_text

TEMPLATE_WITH_JINJA = "Answer {{ 7 * 7 }} for {{ input }}"  # recipe text is shown, never evaluated


def _report() -> dict:
    """evaluate/report.json as the evaluate stage writes it (the fields the cards read)."""
    diff = {"delta": 0.45, "low": 0.25, "high": 0.65, "n": 20}
    slices = {"regular": {"score": 0.5, "n": 16}, "irregular": {"score": 0.25, "n": 4}}
    return {
        "baseline": "base", "confidence": 0.95, "metric": "exact_match", "degraded": [],
        "sets": {
            "plural": {"guard": False, "metrics": ["exact_match"], "models": {
                "base": {"score": 0.0, "n": 20, "slices": {"regular": {"score": 0.0, "n": 16}, "irregular": {"score": 0.0, "n": 4}}},
                "student": {"score": 0.45, "n": 20, "slices": slices}},
                "vs_base": {"student": {"overall": diff, "slices": {
                    "regular": {"delta": 0.5, "low": 0.25, "high": 0.75, "n": 16},
                    "irregular": {"delta": 0.25, "low": 0.0, "high": 0.75, "n": 4}}}}},
            "general": {"guard": True, "metrics": ["exact_match"], "models": {
                "base": {"score": 0.6, "n": 10, "slices": {}}, "student": {"score": 0.5, "n": 10, "slices": {}}},
                "vs_base": {"student": {"overall": {"delta": -0.1, "low": -0.3, "high": 0.1, "n": 10}, "slices": {}}}},
        },
    }


@pytest.fixture(scope="module")
def documented(tmp_path_factory, tiny_model):
    """A run whose upstream files are written by hand, then documented by the real document stage."""
    folder = tmp_path_factory.mktemp("cards")
    recipe = load_recipe(write_recipe(folder, tiny_model), [f"generate.template={TEMPLATE_WITH_JINJA}",
                                                             "coverage.targets={irregular: 0.1, regular: 0.9}"])
    run = RunDir(folder / "runs" / "tiny")
    examples = json.loads(PLURAL.read_text())["examples"]
    words = [e["input"] for e in examples]
    rows = [{C.ID: f"r{i}", C.INPUT: w, C.SLICE: "irregular" if i % 10 == 0 else "regular", C.COMPLETION: w + "s",
             C.KEPT: i % 10 != 0 or i < 10, C.REJECTED_BY: None, C.REASON: None} for i, w in enumerate(words[:400:4])]
    for r in rows:
        if not r[C.KEPT]:
            r[C.REJECTED_BY], r[C.REASON] = "regex", "does not match the pattern"
    write_parquet(run.filtered, rows)
    kept = sum(r[C.KEPT] for r in rows)
    funnel = [{"filter": "regex", "in": len(rows), "rejected": len(rows) - kept, "out": kept,
               "top_reasons": [{"reason": "does not match the pattern", "count": len(rows) - kept}]}]
    run.mark_complete("filter", "fp", {"rows": len(rows), "kept": kept, "rejected": len(rows) - kept, "funnel": funnel})
    write_text(run.heldout, "".join(json.dumps({C.INPUT: e["input"], C.REFERENCE: e["target"], C.REFERENCES: [e["target"]]})
                                    + "\n" for e in examples[1:400:8]))
    write_json(run.eval_report, _report())
    write_json(run.adapter / "adapter_config.json", {"r": 4})
    train = run.mark_complete("train", "fp", {"rows": kept, "steps": 5, "first_loss": 6.1, "last_loss": 0.4})
    summary = run_document(recipe, run)
    return run, summary, train


def _split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    header, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def test_dataset_card_has_a_hub_header_and_reads_alone(documented):
    run, _, _ = documented
    header, body = _split((run.root / "dataset_card.md").read_text())
    assert header["pretty_name"] == "tiny: synthetic training data" and "synthetic" in header["tags"]
    for section in ("## How it was generated", "## Models and lineage", "## Filter funnel", "## Decontamination",
                    "## Coverage", "## Synthetic vs real", "## Known limitations"):
        assert section in body
    assert "| regex | 100 | 9 | 91 | does not match the pattern |" in body
    assert "| generator | " in body and "| student | " in body and "| evaluator | metric: exact_match |" in body
    assert TEMPLATE_WITH_JINJA in body and "Answer 49" not in body
    assert "No decontamination filter ran" in body and "[model card](model_card.md)" in body


def test_dataset_card_puts_thin_cells_beside_their_evaluation(documented):
    run, summary, _ = documented
    body = (run.root / "dataset_card.md").read_text()
    # 10 irregular rows generated, 1 kept: 1.1% of kept rows against a 10% target; drop rate and real share shown
    # (this hand-made run recorded no seed pool: its share is n/a)
    line = next(x for x in body.splitlines() if x.startswith("| irregular |"))
    assert "| 10 | 1 | 90.0% | 1.1% | 10.0% | n/a | 1.9% | **under-represented** |" in line
    assert line.endswith("| 4 | 0.250 | 0.000 | +0.250 [+0.000, +0.750] |")
    assert "coverage: cell 'irregular' is under-represented after filtering: 1 of 10 generated rows kept" in body
    assert summary["flagged_cells"] == 1


def test_cards_show_the_chaining_warning(documented):
    run, summary, _ = documented
    expected = "chaining: generator/labeller (teacher) and student are the same model"
    assert summary["chaining_warnings"] == 1
    assert expected in (run.root / "dataset_card.md").read_text() and expected in (run.root / "model_card.md").read_text()
    body = (run.root / "dataset_card.md").read_text()
    assert "Chaining: 1 pair(s) of roles that should be independent share a lineage" in body
    assert "- generator/labeller (teacher) and student: the same weights (sha256 " in body  # which evidence matched
    student = next(x for x in body.splitlines() if x.startswith("| student | "))
    assert "| qwen2 (Qwen2ForCausalLM) |" in student and "(1024) |" in student  # model type, vocabulary size


def test_teacher_answers_like_the_real_references_are_not_flagged(documented):
    run, summary, _ = documented
    check = json.loads((run.stage("document") / "synthetic_vs_real.json").read_text())
    assert check["n_synthetic"] == 91 and check["n_real"] == 50 and not check["flagged"]
    assert check["test"] == "embedding" and summary["synthetic_vs_real_auc"] == pytest.approx(check["auc"], abs=1e-3)
    body = (run.root / "dataset_card.md").read_text()
    assert ("Compared: 91 teacher answers of the kept rows (91 distinct) against 50 reference answers of the held-out "
            "real split (50 distinct).") in body  # which texts, and how many
    assert f"AUC {check['auc']:.3f}" in body


def test_answers_are_not_compared_when_the_heldout_split_has_no_references(documented, tmp_path):
    run = RunDir(shutil.copytree(documented[0].root, tmp_path / "runs" / "tiny"))
    write_text(run.heldout, "".join(json.dumps({C.INPUT: f"word{i}", C.REFERENCE: None, C.REFERENCES: []}) + "\n"
                                    for i in range(50)))
    summary = run_document(load_recipe(documented[0].root.parent.parent / "recipe.yaml"), run)
    assert not summary["synthetic_vs_real_flagged"] and summary["synthetic_vs_real_auc"] is None
    assert ("Not measured (teacher answers of the kept rows against reference answers of the held-out real split): "
            "the held-out split has no references") in (run.root / "dataset_card.md").read_text()


INTENTS = ["add_to_playlist", "book_restaurant", "get_weather", "play_music", "search_screening_event",
           "search_creative_work", "rate_book"]


def test_a_label_run_whose_teacher_gives_one_label_to_nearly_every_row_is_warned_about(documented, tmp_path):
    """A zero-shot SmolLM2-135M teacher put 285 of 300 intent utterances under one intent; the real labels are spread out."""
    run = RunDir(shutil.copytree(documented[0].root, tmp_path / "runs" / "tiny"))
    examples = json.loads((PLURAL.parents[2] / "intent" / "data" / "intent_recognition.json").read_text())["examples"]
    items = [(e["input"], max(e["target_scores"], key=e["target_scores"].get)) for e in examples]
    labels = ["play_music"] * 285 + INTENTS * 2 + ["rate_book"]  # 287 of 300 play_music
    write_parquet(run.filtered, [{C.ID: f"r{i}", C.INPUT: text, C.SLICE: "regular", C.COMPLETION: label, C.KEPT: True,
                                  C.REJECTED_BY: None, C.REASON: None}
                                 for i, ((text, _), label) in enumerate(zip(items[0::2], labels))])
    write_text(run.heldout, "".join(json.dumps({C.INPUT: text, C.REFERENCE: label, C.REFERENCES: [label]}) + "\n"
                                    for text, label in items[1::4][:150]))
    recipe = load_recipe(documented[0].root.parent.parent / "recipe.yaml",
                         ["generate.mode=label", f"generate.label={{choice: [{', '.join(INTENTS)}]}}"])
    summary = run_document(recipe, run)
    check = json.loads((run.stage("document") / "synthetic_vs_real.json").read_text())
    assert check["test"] == "categorical" and check["flagged"] and summary["synthetic_vs_real_flagged"]
    assert summary["synthetic_vs_real_tv"] == pytest.approx(check["tv_distance"], abs=1e-3) and check["tv_distance"] > 0.7
    body = (run.root / "dataset_card.md").read_text()
    assert "Compared: 300 teacher labels of the kept rows (7 distinct) against 150 reference labels of the held-out" in body
    assert "| play_music | 95.7% | " in body and "synthetic vs real: teacher labels of the kept rows against reference" in body
    assert "The teacher labels of the kept rows differ clearly from the reference labels of the held-out real split" in body


def test_model_card_reports_base_adapter_data_link_and_intervals(documented, tiny_model):
    run, _, _ = documented
    header, body = _split((run.root / "model_card.md").read_text())
    # The tiny model's files record no hub id: the hub reads base_model as one, so a local path is left out.
    assert "base_model" not in header and header["library_name"] == "peft"
    results = header["model-index"][0]["results"]
    assert [(r["dataset"]["type"], r["metrics"][0]["value"]) for r in results] == [("plural", 0.45), ("general", 0.5)]
    assert "[dataset card](dataset_card.md)" in body and "| LoRA rank / alpha / dropout | 4 / 8 / 0.0 |" in body
    assert "| student | 0.450 | 20 | +0.450 [+0.250, +0.650] |" in body
    assert "| irregular | 4 | 0.000 | 0.250 | +0.250 [+0.000, +0.750] |" in body
    assert "### general (guard set)" in body and "| student | 0.500 | 10 | -0.100 [-0.300, +0.100] |" in body


def test_manifest_lands_at_the_run_root_and_in_the_adapter_without_staling_train(documented):
    run, summary, train_marker = documented
    manifest = json.loads((run.root / "manifest.json").read_text())
    assert manifest == json.loads((run.adapter / DATA_MANIFEST).read_text())
    assert manifest["content_sha256"].startswith(summary["manifest_sha256"])
    assert manifest["filter"]["kept"] == 91 and manifest["checks"]["coverage_flagged"] == ["irregular"]
    assert manifest["outputs"]["filter"]["files"]["filter/rows.parquet"]
    assert run.is_complete("train", train_marker["fingerprint"])  # the copy does not change train's output hash


def test_decontamination_results_are_shown_when_the_filter_ran(documented, tmp_path):
    run = RunDir(shutil.copytree(documented[0].root, tmp_path / "runs" / "tiny"))
    write_json(run.stage("filter") / "contaminated_items.json", {"plural": ["a", "b"]})
    write_text(run.stage("filter") / "contamination.jsonl", '{"set": "plural", "item_id": "a"}\n' * 3)
    recipe = load_recipe(documented[0].root.parent.parent / "recipe.yaml", ["coverage.synthetic_vs_real.enabled=false"])
    run_document(recipe, run)
    body = (run.root / "dataset_card.md").read_text()
    assert "3 leak(s) recorded" in body and "| plural | 2 |" in body
    assert "turned off" in body


def test_the_model_card_says_how_far_each_evaluated_set_is_from_the_training_data(documented, tmp_path):
    """The held-out split was split off before generation; a guard set read from a file is only as far from the
    training data as decontamination made it, and few-shot examples are never checked against it."""
    arithmetic = ROOT / "recipes" / "quickstart" / "data" / "arithmetic_2_digit_addition.json"
    sets = f"evaluate.sets=[{{name: plural, data: heldout}}, {{name: general, path: {arithmetic}, guard: true}}]"
    recipe = load_recipe(documented[0].root.parent.parent / "recipe.yaml", [sets])
    run = RunDir(shutil.copytree(documented[0].root, tmp_path / "runs" / "tiny"))
    run_document(recipe, run)
    body = (run.root / "model_card.md").read_text()
    assert "`plural`: real items split off before generation, never seeds or few-shot examples." in body
    assert "`general`: read from files, not split from the seed data, and not checked against the seeds or few-shot " \
           "examples (no decontaminate filter)." in body
    write_json(run.stage("filter") / "contaminated_items.json", {})
    run_document(recipe, run)
    body = (run.root / "model_card.md").read_text()
    assert "`general`: read from files, not split from the seed data; the decontaminate filter rejected generated rows " \
           "holding their items (seed inputs included), but few-shot examples drawn from the data were not checked" in body


def test_a_guard_set_whose_file_feeds_repair_is_named_in_the_model_card_as_trained_toward(documented, tmp_path):
    """On-policy repair trains toward `general` (its prompts are that set's file): the card says `wikidata` measures
    general ability and `general` does not; without guard sets it says nothing about them."""
    arithmetic = ROOT / "recipes" / "quickstart" / "data" / "arithmetic_2_digit_addition.json"
    wikidata = ROOT / "recipes" / "quickstart" / "data" / "qa_wikidata.json"
    recipe_path = documented[0].root.parent.parent / "recipe.yaml"
    recipe = load_recipe(recipe_path, [
        "train.objective=on_policy", f"train.on_policy.repair={{path: {arithmetic}}}",
        f"evaluate.sets=[{{name: plural, data: heldout}}, {{name: general, path: {arithmetic}, guard: true}}, "
        f"{{name: wikidata, path: {wikidata}, guard: true}}]"])
    run = RunDir(shutil.copytree(documented[0].root, tmp_path / "runs" / "tiny"))
    report = _report()
    report["sets"]["general"]["repaired"] = True  # as the evaluate stage marks it
    report["sets"]["wikidata"] = {**report["sets"]["general"], "repaired": False}
    report["degraded"] = [{"set": "general", "guard": True, "repaired": True, "model": "student", "metric": "exact_match",
                           "where": "all", "n": 10, "delta": -0.1, "low": -0.3, "high": 0.1}]
    write_json(run.eval_report, report)
    run_document(recipe, run)
    header, body = _split((run.root / "model_card.md").read_text())
    assert "The guard set `wikidata` measures general ability beside the task, so that forgetting shows up. The guard " \
           "set `general` is repaired: on-policy repair trained the student toward an earlier model on prompts like its " \
           "items, so it does not measure general ability." in body
    assert "Guard sets measure general ability" not in body
    assert "### general (guard set, repaired)" in body and "### wikidata (guard set)" in body
    assert "- `student` on repaired guard set `general` (all, n=10)" in body
    kinds = {r["dataset"]["type"]: r["dataset"]["name"] for r in header["model-index"][0]["results"]}
    assert kinds["general"] == "general (repaired guard set, real data)" and kinds["wikidata"] == "wikidata (guard set, real data)"

    report["sets"] = {"plural": report["sets"]["plural"]}
    report["degraded"] = []
    write_json(run.eval_report, report)
    run_document(load_recipe(recipe_path), run)
    assert "guard set" not in (run.root / "model_card.md").read_text().lower()


@pytest.mark.parametrize("summary, line", [
    ({"rows": 91, "steps": 6, "processes": 2, "global_batch": 16, "first_loss": 6.1, "last_loss": 0.4},
     "| epochs, batch size x accumulation x processes | 1.0, 8 x 1 x 2 = 16 rows per update |"),
    ({"objective": "on_policy", "steps": 2, "first_reverse_kl": 0.9, "last_reverse_kl": 0.7,
      "sft_phase": {"rows": 40, "steps": 5, "first_loss": 6.2, "last_loss": 5.9, "seconds": 12.5},
      "cost": {"student_tokens_sampled": 96, "teacher_tokens_scored": 96, "adapter_reloads": 2,
               "seconds": {"sample": 1.0, "score": 1.0, "learn": 1.0, "sync": 0.1}}},
     "| first, SFT on the kept rows: rows, steps, loss first / last, seconds | 40, 5, 6.2 / 5.9, 12.5 |"),
    ({"objective": "on_policy", "steps": 20, "first_reverse_kl": 0.9, "last_reverse_kl": 0.7,
      "cost": {"student_tokens_sampled": 96, "teacher_tokens_scored": 96,
               "adapter_reloads": 2, "seconds": {"sample": 1.0, "score": 1.0, "learn": 1.0, "sync": 0.1}},
      "optimizer": {"name": "AdamW", "learning_rate": 0.0001, "lr_scheduler": "cosine", "warmup_steps": 2,
                    "weight_decay": 0.0, "max_grad_norm": 1.0, "steps": 20}},
     "| optimizer (on-policy steps) | AdamW, learning rate 0.0001, cosine schedule, warm-up 2 of 20 steps, weight "
     "decay 0.0, gradient norm clipped at 1.0 |"),
])
def test_the_model_card_gives_the_training_as_its_summary_records_it(documented, tmp_path, summary, line):
    """The processes of a multi-process launch, the SFT phase before on-policy training and the on-policy optimizer,
    as the train stage records them (tests/test_ddp.py and tests/test_on_policy.py check those records against the runs)."""
    run = RunDir(shutil.copytree(documented[0].root, tmp_path / "runs" / "tiny"))
    run.mark_complete("train", "fp", summary)
    run_document(load_recipe(documented[0].root.parent.parent / "recipe.yaml"), run)
    assert line in (run.root / "model_card.md").read_text()


def test_cards_parse_with_the_hubs_card_classes_without_warnings(documented, caplog):
    import warnings

    from huggingface_hub import DatasetCard, ModelCard

    run, _, _ = documented
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        model = ModelCard.load(run.root / "model_card.md").data
        dataset = DatasetCard.load(run.root / "dataset_card.md").data
    assert not caught and not caplog.records, [str(w.message) for w in caught] + caplog.messages
    assert [(r.dataset_type, r.metric_type, r.metric_value) for r in model.eval_results] == [
        ("plural", "exact_match", 0.45), ("general", "exact_match", 0.5)]
    assert dataset.pretty_name == "tiny: synthetic training data" and dataset.configs[0]["config_name"] == "default"
    # the tiny model's files state no license and the recipe sets none: said plainly, not guessed
    assert model.license == dataset.license == "unknown"


def test_loading_the_dataset_cards_config_gives_the_kept_rows_as_train(documented, tmp_path):
    """The card uploaded as a dataset repo's README.md, with its data files: `datasets` reads the card's config."""
    from datasets import load_dataset

    run, _, _ = documented
    shutil.copy(run.root / "dataset_card.md", tmp_path / "README.md")
    for entry in yaml.safe_load((run.root / "dataset_card.md").read_text().split("---")[1])["configs"][0]["data_files"]:
        (tmp_path / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run.root / entry["path"], tmp_path / entry["path"])
    data = load_dataset(str(tmp_path))
    assert set(data) == {"train", "rejected"}
    # 100 rows written by the fixture: 91 kept, 9 rejected by the regex step.
    assert len(data["train"]) == 91 and all(data["train"][C.KEPT])
    assert len(data["rejected"]) == 9 and set(data["rejected"][C.REJECTED_BY]) == {"regex"}
    assert sorted(data["train"][C.ID]) == sorted(r[C.ID] for r in pq.read_table(run.filtered).to_pylist() if r[C.KEPT])


def test_base_model_is_a_hub_id_where_one_is_known():
    from distill.provenance.cards import hub_base_model

    assert hub_base_model({"name": "packaged:smollm2-135m-instruct", "path": "/cache/smollm2"}) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_base_model({"name": "Qwen/Qwen2.5-0.5B", "path": "/hf/snapshots/abc"}) == "Qwen/Qwen2.5-0.5B"
    recorded = {"name_or_path": ["/home/me/ckpt"], "base_model": ["meta-llama/Llama-3.2-1B"]}
    assert hub_base_model({"name": "/models/x", "path": "/models/x", "recorded_names": recorded}) == "meta-llama/Llama-3.2-1B"
    assert hub_base_model({"name": "/models/x", "path": "/models/x",
                           "recorded_names": {"name_or_path": ["./out/checkpoint-500"], "base_model": []}}) is None


@pytest.mark.parametrize("overrides, lines, header", [
    ([], ["# tiny: LoRA student", "| method | LoRA adapter on the base in its training dtype |",
          "| target modules | q_proj, k_proj, v_proj, o_proj |", "| gradient checkpointing, packing | yes, no |",
          "| other trainer settings (train.trainer_args) | none |"],
     {"library_name": "peft", "tags": ["distill", "distillation", "lora"]}),
    (["train.method=qlora", "train.lora.target_modules=[all-linear]", "train.gradient_checkpointing=true",
      "train.packing=true", "train.trainer_args={optim: adafactor, lr_scheduler_kwargs: {min_lr: 0.0}}"],
     ["# tiny: QLoRA student", "| method | QLoRA: a LoRA adapter on the base loaded in 4 bits (bitsandbytes NF4, double "
      "quantization) |", "| target modules | every linear layer but the output head (all-linear) |",
      "| gradient checkpointing, packing | yes, yes (best-fit, each row kept apart) |",
      '| other trainer settings (train.trainer_args) | `optim="adafactor"`, `lr_scheduler_kwargs={"min_lr": 0.0}` |'],
     {"library_name": "peft", "tags": ["distill", "distillation", "qlora"]}),
    (["train.method=full"], ["# tiny: student (full fine-tuning)", "## Training\n",
                             "| method | full fine-tuning: every weight trained, no adapter |",
                             'model = AutoModelForCausalLM.from_pretrained("'],
     {"library_name": "transformers", "tags": ["distill", "distillation", "full-fine-tune"]}),
])
def test_the_model_card_says_how_the_student_was_trained(documented, tmp_path, overrides, lines, header):
    """train.method, LoRA's target modules, gradient checkpointing, packing and the settings passed to the trainer: all
    shape the weights, so all are on the card; a full fine-tuning run's card describes a model, not an adapter."""
    run = RunDir(shutil.copytree(documented[0].root, tmp_path / "runs" / "tiny"))
    run.mark_complete("train", "fp", {"rows": 91, "steps": 5, "first_loss": 6.1, "last_loss": 0.4, "method": "lora",
                                      "parameters_trained": 4096, "parameters": 1_200_000})
    run_document(load_recipe(documented[0].root.parent.parent / "recipe.yaml", overrides), run)
    card = (run.root / "model_card.md").read_text()
    got, body = _split(card)
    for line in lines + ["| parameters trained | 4,096 of 1,200,000 |"]:
        assert line in body, line
    assert {k: got[k] for k in header} == header and got["license"] == "unknown"
    assert ("LoRA rank" in body) == ("train.method=full" not in overrides)
    assert ("PeftModel" in body) == ("train.method=full" not in overrides)


def _with_card(model, folder, header: dict):
    """A copy of a model folder whose README.md states `header` (a Hub card's YAML header)."""
    shutil.copytree(model, folder)
    write_text(folder / "README.md", "---\n" + yaml.safe_dump(header) + "---\n\n# a model\n")
    return folder


def test_the_cards_carry_the_license_the_models_state(documented, tmp_path, tiny_model):
    """A student carries its base model's license; the data its teacher's (whose terms may bind what it wrote). Where
    a model's files state none the recipe's train.license is used for the student, and else the card says unknown."""
    from huggingface_hub import DatasetCard, ModelCard

    recipe_path = documented[0].root.parent.parent / "recipe.yaml"
    student = _with_card(tiny_model, tmp_path / "student",
                         {"license": "other", "license_name": "tiny-license", "license_link": "LICENSE"})
    teacher = _with_card(tiny_model, tmp_path / "teacher", {"license": "apache-2.0"})
    run = RunDir(shutil.copytree(documented[0].root, tmp_path / "runs" / "tiny"))
    run_document(load_recipe(recipe_path, [f"models.student.path={student}", f"models.teacher.path={teacher}",
                                           "train.license=mit"]), run)
    model, dataset = ModelCard.load(run.root / "model_card.md"), DatasetCard.load(run.root / "dataset_card.md")
    assert (model.data.license, model.data.license_name, model.data.license_link) == ("other", "tiny-license", "LICENSE")
    assert "License: `other` (tiny-license, LICENSE): read from the base model's README.md." in model.text
    assert dataset.data.license == "apache-2.0"
    assert "License: `apache-2.0`: read from the teacher's README.md. The teacher's terms may bind" in dataset.text

    run_document(load_recipe(recipe_path, ["train.license=mit"]), run)  # the tiny model states no license
    model = ModelCard.load(run.root / "model_card.md")
    assert model.data.license == "mit"
    assert "License: `mit`: the recipe's train.license; the base model's files state none." in model.text
    assert DatasetCard.load(run.root / "dataset_card.md").data.license == "unknown"


def test_the_cards_say_which_inputs_the_teacher_wrote_itself_and_that_dev_was_trained_toward(documented, tmp_path):
    """A loop with errors.synthesize: the teacher wrote some of the inputs it answered. The cards' first sentence says
    so, the dataset card counts them and says they are not real data, the model card that dev was trained toward."""
    run = RunDir(shutil.copytree(documented[0].root, tmp_path / "runs" / "tiny"))
    recipe = load_recipe(documented[0].root.parent.parent / "recipe.yaml", [
        "loop={rounds: 2, strategy: errors, budget: {per_round: 10}, dev: {size: 12}, errors: {synthesize: true}}"])
    record = {"strategy": "errors", "total_prompts": 20, "budget": {"per_round": 10}, "dev_size": 12,
              "stopped": "rounds: 2", "final_round": 2, "rounds": [
                  {"round": 1, "strategy": "random", "prompts": 10, "teacher_prompts": 10, "kept": 9,
                   "dev_metric": "exact_match", "dev": {"student": 0.25}, "guard_degraded": []},
                  {"round": 2, "strategy": "errors", "prompts": 7, "teacher_prompts": 17, "written": 7, "kept": 7,
                   "dev_metric": "exact_match", "dev": {"student": 0.5}, "guard_degraded": []}]}
    write_json(run.loop_record, record)
    run.mark_complete("generate", "fp", {"mode": "complete", "teacher_did": "answered real seed inputs, and 7 inputs "
                                         "it wrote itself from the student's dev errors (loop.errors.synthesize)"})
    run_document(recipe, run)
    dataset, model = ((run.root / f"{card}_card.md").read_text() for card in ("dataset", "model"))
    assert "answered real seed inputs, and 7 inputs it wrote itself from the student's dev errors" in dataset
    assert "7 of the inputs the teacher answered it had written itself" in dataset and "not real data" in dataset
    assert "The teacher wrote 7 of its prompts itself" in model and "dev was trained toward" in model
    assert "each round continued the adapter of the round before on its new rows" in model
    write_json(run.loop_record, {**record, "train": "retrain"})  # loop.train: retrain
    run_document(recipe, run)
    assert "each round trained a fresh adapter on the rows of every round so far" in (run.root / "model_card.md").read_text()
