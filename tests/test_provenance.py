"""Provenance: the manifest's hashes, chaining between roles, the coverage audit, the synthetic-vs-real check."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from conftest import PLURAL, run_cli, write_recipe

from distill import rows as C
from distill.errors import RecipeError
from distill.provenance.coverage import audit_coverage, link_eval_slices
from distill.provenance.lineage import chaining_findings, enforce_chaining_policy, lineage
from distill.provenance.manifest import build_manifest
from distill.provenance.two_sample import check_synthetic_vs_real, gap_text, synthetic_vs_real
from distill.recipe import CoverageSettings, SyntheticVsRealSettings, load_recipe
from distill.run_dir import RunDir


def _renumber_vocabulary(folder: Path) -> Path:
    """Give a model's tokenizer another token -> id map (two ordinary tokens swap ids): another vocabulary."""
    path = folder / "tokenizer.json"
    doc = json.loads(path.read_text())
    vocab = doc["model"]["vocab"]
    a, b = [t for t, i in vocab.items() if i in (500, 501)]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    path.write_text(json.dumps(doc))
    return folder


def _record(folder: Path, name_or_path: str | None = None, base_model: str | None = None) -> Path:
    """Write the names a model's own files record: config.json `_name_or_path`, the model card's `base_model`."""
    if name_or_path:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "_name_or_path": name_or_path}))
    if base_model:
        (folder / "README.md").write_text(f"---\nbase_model: {base_model}\nlicense: apache-2.0\n---\n# A fine-tune\n")
    return folder


@pytest.fixture(scope="module")
def other_models(tmp_path_factory):
    """Tiny models beside the session's qwen2 `tiny_model` (all built with the same tokenizer unless renumbered):
    qwen2 with other weights and the same vocabulary; qwen2 and llama with other weights and another vocabulary;
    a teacher and a student whose files record a shared Hub name."""
    from distill.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("other-models")
    return {
        "qwen2": build_tiny_model(root / "qwen2-b", "qwen2", seed=1),
        "qwen2_other_vocab": _renumber_vocabulary(build_tiny_model(root / "qwen2-c", "qwen2", seed=2)),
        "llama": _renumber_vocabulary(build_tiny_model(root / "llama", "llama")),
        "named_teacher": _renumber_vocabulary(_record(build_tiny_model(root / "named-teacher", "qwen2", seed=3),
                                                      name_or_path="HuggingFaceTB/SmolLM2-360M-Instruct")),
        "finetune_of_teacher": _record(build_tiny_model(root / "finetune", "llama", seed=4),
                                       base_model="huggingfacetb/SmolLM2-360M-Instruct"),
    }


# --------------------------------------------------------------------------- manifest


def test_manifest_hashes_change_when_an_input_or_output_changes(tmp_path, tiny_model):
    data = tmp_path / "plural.json"
    data.write_bytes(PLURAL.read_bytes())
    recipe_path = write_recipe(tmp_path, tiny_model, data=data)
    run = RunDir(tmp_path / "runs" / "tiny")
    rows = run.stage("generate") / "rows.parquet"
    rows.parent.mkdir(parents=True)
    rows.write_bytes(b"first rows")

    first = build_manifest(load_recipe(recipe_path), run)
    again = build_manifest(load_recipe(recipe_path), run)
    assert again["content_sha256"] == first["content_sha256"]  # nothing changed: the same manifest

    data.write_text(data.read_text().replace('"input": "ability"', '"input": "abilities"', 1))
    changed_input = build_manifest(load_recipe(recipe_path), run)
    assert changed_input["inputs"][str(data.resolve())] != first["inputs"][str(data.resolve())]
    assert changed_input["content_sha256"] != first["content_sha256"]
    assert changed_input["models"] == first["models"]

    rows.write_bytes(b"other rows")
    changed_output = build_manifest(load_recipe(recipe_path), run)
    key = "generate/rows.parquet"
    assert changed_output["outputs"]["generate"]["files"][key] != changed_input["outputs"]["generate"]["files"][key]
    assert changed_output["content_sha256"] != changed_input["content_sha256"]


def test_manifest_records_models_by_role_templates_sampling_and_libraries(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe)
    m = build_manifest(recipe, RunDir(tmp_path / "runs" / "tiny"))
    for role in ("teacher", "student"):
        identity = m["models"][role]
        assert identity["family"] == "qwen2" and identity["architectures"] == ["Qwen2ForCausalLM"]
        assert len(identity["weights_sha256"]) == 64 and len(identity["tokenizer_sha256"]) == 64
    assert set(m["templates"]) >= {"generate.template", "train.prompt_template", "train.completion_template"}
    assert m["sampling"]["generate"]["max_tokens"] == 6
    assert m["recipe"]["resolved"]["name"] == "tiny" and m["libraries"]["transformers"]
    assert not m["outputs"]["filter"]["complete"] and m["filter"] is None  # nothing has run yet
    json.dumps(m)  # plain JSON


# --------------------------------------------------------------------------- chaining


def test_teacher_as_its_own_student_is_chaining(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    [finding] = chaining_findings(recipe)
    assert finding["kind"] == "same_weights" and finding["models"] == ["teacher", "student"]
    assert finding["matched"] == ["same_weights", "same_vocabulary", "recorded_name"]  # one path: one name too
    assert finding["message"].startswith("chaining: generator/labeller (teacher) and student are the same model")
    assert enforce_chaining_policy(recipe) == [finding["message"]]  # allowed by default: a warning
    roles = [r["role"] for r in lineage(recipe)]
    assert roles == ["generator", "labeller", "student", "evaluator"]


def test_other_weights_with_the_same_vocabulary_is_chaining(tiny_recipe, other_models):
    recipe = load_recipe(tiny_recipe, [f"models.student.path={other_models['qwen2']}"])
    [finding] = chaining_findings(recipe)
    assert finding["kind"] == "same_vocabulary" and finding["matched"] == ["same_vocabulary"]
    assert "share a lineage" in finding["message"] and "the same tokenizer vocabulary (1024 tokens" in finding["message"]


def test_two_models_that_only_share_a_model_type_are_not_chaining(tiny_recipe, other_models):
    recipe = load_recipe(tiny_recipe, [f"models.student.path={other_models['qwen2_other_vocab']}"])
    rows = {r["role"]: r for r in lineage(recipe)}
    assert rows["generator"]["model_type"] == rows["student"]["model_type"] == "qwen2"  # same architecture...
    assert rows["generator"]["vocab_sha256"] != rows["student"]["vocab_sha256"]  # ...but nothing real in common
    assert chaining_findings(recipe) == []
    assert enforce_chaining_policy(load_recipe(tiny_recipe, [f"models.student.path={other_models['qwen2_other_vocab']}",
                                                             "allow_chaining=false"])) == []


def test_a_recorded_base_model_naming_the_teacher_is_chaining_across_model_types(tiny_recipe, other_models):
    # The teacher's config.json records its Hub name; the student (another vocabulary, model type llama) is a
    # fine-tune whose model card names that model as base_model, in other letter case.
    recipe = load_recipe(tiny_recipe, [f"models.teacher.path={other_models['named_teacher']}",
                                       f"models.student.path={other_models['finetune_of_teacher']}"])
    [finding] = chaining_findings(recipe)
    assert finding["kind"] == "recorded_name" and finding["model_types"] == ["qwen2", "llama"]
    assert finding["evidence"] == ["the student's recorded base model 'huggingfacetb/SmolLM2-360M-Instruct' is the teacher"]
    rows = {r["role"]: r for r in lineage(recipe)}
    assert rows["generator"]["recorded_names"] == ["HuggingFaceTB/SmolLM2-360M-Instruct"]


def test_a_judge_with_the_generators_vocabulary_is_chaining(tiny_recipe, other_models):
    recipe = load_recipe(tiny_recipe, [f"models.student.path={other_models['llama']}",
                                       f"models.judge.path={other_models['qwen2']}"])
    [finding] = chaining_findings(recipe)
    assert finding["models"] == ["teacher", "judge"] and finding["kind"] == "same_vocabulary"
    assert [r["role"] for r in lineage(recipe)] == ["generator", "labeller", "judge", "student", "evaluator"]


def test_allow_chaining_false_is_an_error_before_anything_runs(tiny_recipe, tmp_path):
    with pytest.raises(RecipeError, match="allow_chaining is false but chaining: generator/labeller"):
        enforce_chaining_policy(load_recipe(tiny_recipe, ["allow_chaining=false"]))
    result = run_cli("run", tiny_recipe, "allow_chaining=false", cwd=tmp_path)
    assert result.returncode == 2 and "error: allow_chaining is false" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs").exists()
    result = run_cli("generate", tiny_recipe, "allow_chaining=false", cwd=tmp_path)
    assert result.returncode == 2 and "error: allow_chaining is false" in result.stderr
    assert not (tmp_path / "runs" / "tiny" / "generate").exists()


# --------------------------------------------------------------------------- coverage


def grid_rows(kept_per_cell: dict[tuple[str, str], int], generated: int = 30) -> list[dict]:
    rows = []
    for (topic, level), kept in kept_per_cell.items():
        for i in range(generated):
            rows.append({C.CELL: {"topic": topic, "level": level}, C.SLICE: None, C.KEPT: i < kept})
    return rows


def test_a_starved_grid_cell_is_flagged_with_its_drop_rate():
    rows = grid_rows({("math", "easy"): 28, ("math", "hard"): 25, ("poetry", "easy"): 27, ("poetry", "hard"): 3})
    audit = audit_coverage(rows, CoverageSettings())
    assert audit["column"] == "cell" and audit["target_source"] == "generated rows"
    cells = {c["cell"]: c for c in audit["cells"]}
    assert list(cells) == ["topic=math, level=easy", "topic=math, level=hard", "topic=poetry, level=easy",
                           "topic=poetry, level=hard"]
    starved = cells["topic=poetry, level=hard"]
    assert starved["status"] == "under-represented" and starved["drop_rate"] == pytest.approx(0.9)
    assert starved["kept_share"] == pytest.approx(3 / 83) and starved["target_share"] == pytest.approx(0.25)
    assert audit["flagged"] == ["topic=poetry, level=hard"]
    assert audit["overall_drop_rate"] == pytest.approx(1 - 83 / 120)


def test_explicit_targets_and_tolerance_decide_what_is_flagged():
    rows = grid_rows({("math", "easy"): 30, ("poetry", "easy"): 10})
    strict = CoverageSettings(targets={"topic=math, level=easy": 0.5, "topic=poetry, level=easy": 0.5,
                                       "topic=prose, level=easy": 0.0}, tolerance=0.2)
    audit = audit_coverage(rows, strict)
    assert audit["target_source"] == "recipe" and audit["flagged"] == ["topic=poetry, level=easy"]  # 25% < 50% x 0.8
    lenient = strict.model_copy(update={"tolerance": 0.6})
    assert audit_coverage(rows, lenient)["flagged"] == []  # 25% >= 50% x 0.4


def test_an_unbiased_teacher_on_a_stratified_split_is_not_flagged(tmp_path, tiny_model):
    """data.heldout.min_per_slice holds a rare slice out first, so the seed pool under-represents it. A teacher that
    answers every seed exactly as the data does is judged against the seed pool it was given: nothing is flagged,
    while the whole data (coverage) and the held-out split (synthetic vs real) would blame it for the split's mix."""
    from distill.data.split import split_data
    from distill.provenance.stage import coverage_audit, synthetic_vs_real_check

    data = tmp_path / "labels.jsonl"
    data.write_text("".join(json.dumps({"input": f"request number {i}", "target": kind, "kind": kind}) + "\n"
                            for i, kind in enumerate(["rare" if i % 20 == 0 else "common" for i in range(400)])))
    recipe = load_recipe(write_recipe(tmp_path, tiny_model), [
        f"data.path={data}", "data.slice_field=kind", "data.heldout={size: 40, min_per_slice: 15}", "data.max_seeds=null"])
    held, seeds = split_data(recipe)
    assert sum(s["slice"] == "rare" for s in seeds) == 5 and sum(h["slice"] == "rare" for h in held) == 15
    unbiased = [{C.ID: s["id"], C.INPUT: s["input"], C.SLICE: s["slice"], C.CELL: None, C.COMPLETION: s["reference"],
                 C.KEPT: True} for s in seeds]

    audit = coverage_audit(recipe, unbiased, None, seeds)
    assert audit["target_source"] == "seed pool the teacher was given" and audit["flagged"] == []
    rare = next(c for c in audit["cells"] if c["cell"] == "rare")
    assert rare["seed_share"] == pytest.approx(5 / 360) and rare["real_share"] == pytest.approx(20 / 400)
    assert coverage_audit(recipe, unbiased, None)["flagged"] == ["rare"]  # against the whole data

    check = synthetic_vs_real_check(recipe, unbiased, held, seeds)
    assert check["real_texts"] == "reference answers of the seed pool the teacher was given"
    assert check["tv_distance"] == 0 and not check["flagged"]
    assert synthetic_vs_real_check(recipe, unbiased, held)["flagged"]  # against the held-out split


def test_real_slices_are_compared_with_the_real_distribution_and_their_evaluation():
    rows = [{C.SLICE: "regular", C.KEPT: True} for _ in range(95)] + [{C.SLICE: "irregular", C.KEPT: i < 1} for i in range(5)]
    audit = audit_coverage(rows, CoverageSettings(), real_counts={"regular": 900, "irregular": 100})
    cells = {c["cell"]: c for c in audit["cells"]}
    assert audit["column"] == "slice" and audit["target_source"] == "real data"
    assert cells["irregular"]["real_share"] == pytest.approx(0.1) and cells["irregular"]["status"] == "under-represented"
    assert cells["irregular"]["drop_rate"] == pytest.approx(0.8) and cells["regular"]["status"] == "ok"
    report = {"sets": {"plural": {
        "models": {"base": {"score": 0.1, "n": 30, "slices": {"irregular": {"score": 0.0, "n": 10}}},
                   "student": {"score": 0.8, "n": 30, "slices": {"irregular": {"score": 0.2, "n": 10}}}},
        "vs_base": {"student": {"overall": {"delta": 0.7, "low": 0.5, "high": 0.9, "n": 30},
                                "slices": {"irregular": {"delta": 0.2, "low": 0.0, "high": 0.5, "n": 10}}}}}}}
    linked = {c["cell"]: c for c in link_eval_slices(audit, report)["cells"]}
    assert linked["irregular"]["eval"] == {"set": "plural", "n": 10, "scores": {"base": 0.0, "student": 0.2},
                                           "student_vs_base": {"delta": 0.2, "low": 0.0, "high": 0.5, "n": 10}}
    assert "eval" not in linked["regular"]  # no slice of that name was evaluated


def test_target_shares_must_be_shares():
    with pytest.raises(ValueError, match="add up to 1.200"):
        CoverageSettings(targets={"a": 0.6, "b": 0.6})


# --------------------------------------------------------------------------- synthetic vs real


@pytest.fixture(scope="module")
def plural_words() -> list[str]:
    words = [e["input"] for e in json.loads(PLURAL.read_text())["examples"]]
    random.Random(0).shuffle(words)
    return words[:240]


def test_two_sample_check_tells_apart_clearly_different_sets(plural_words):
    rng = random.Random(1)
    arithmetic = [f"What is {rng.randint(2, 99)} + {rng.randint(2, 99)}?" for _ in range(120)]
    result = synthetic_vs_real(arithmetic, plural_words[:120], SyntheticVsRealSettings(), seed=0)
    assert result["flagged"] and result["auc"] > 0.95 and result["p_value"] < 0.01


def test_two_sample_check_does_not_flag_two_halves_of_one_set(plural_words):
    result = synthetic_vs_real(plural_words[:120], plural_words[120:], SyntheticVsRealSettings(), seed=0)
    assert not result["flagged"] and result["auc"] < 0.7 and result["p_value"] > 0.05


def test_two_sample_check_needs_enough_texts(plural_words):
    result = synthetic_vs_real(plural_words[:9], plural_words[:50], SyntheticVsRealSettings(), seed=0)
    assert result["skipped"].startswith("fewer than 10 non-empty texts on a side") and not result["flagged"]


def test_a_teacher_that_writes_one_answer_over_and_over_is_flagged(plural_words):
    # Repeats are kept: 3 distinct answers written 40 times each are not 3 rows, they are a collapsed teacher.
    result = synthetic_vs_real(plural_words[:3] * 40, plural_words[120:], SyntheticVsRealSettings(), seed=0)
    assert result["n_synthetic"] == 120 and result["distinct_synthetic"] == 3 and result["flagged"]


@pytest.fixture(scope="module")
def plural_examples() -> list[dict]:
    examples = json.loads(PLURAL.read_text())["examples"]
    random.Random(0).shuffle(examples)
    return examples


def _rows(inputs: list[str], completions: list[str]) -> list[dict]:
    return [{C.INPUT: i, C.COMPLETION: c, C.KEPT: True} for i, c in zip(inputs, completions)]


def _heldout(items: list[tuple[str, str | None]]) -> list[dict]:
    return [{C.INPUT: i, C.REFERENCE: r, C.REFERENCES: [] if r is None else [r]} for i, r in items]


def test_complete_mode_flags_a_teacher_whose_answers_differ_from_the_real_references(plural_examples):
    seeds, held = plural_examples[:200], plural_examples[200:300]
    heldout = _heldout([(e["input"], e["target"]) for e in held])
    # The inputs are real seeds either way: only the answers can tell these two teachers apart.
    chatty = _rows([e["input"] for e in seeds], [f"Sure! The plural of \"{e['input']}\" is \"{e['target']}\"." for e in seeds])
    result = check_synthetic_vs_real("complete", None, chatty, heldout, SyntheticVsRealSettings(), seed=0)
    assert result["test"] == "embedding" and result["why_test"] == "free text"
    assert result["synthetic_texts"] == "teacher answers of the kept rows"
    assert result["real_texts"] == "reference answers of the held-out real split"
    assert (result["n_synthetic"], result["n_real"]) == (200, 100)
    assert result["flagged"] and result["auc"] > 0.95 and result["p_value"] < 0.01
    assert "a classifier tells them apart with AUC" in gap_text(result)

    copier = _rows([e["input"] for e in seeds], [e["target"] for e in seeds])
    result = check_synthetic_vs_real("complete", None, copier, heldout, SyntheticVsRealSettings(), seed=0)
    assert not result["flagged"] and result["auc"] < 0.7


def test_answers_cannot_be_compared_when_the_heldout_split_has_no_references(plural_examples):
    rows = _rows([e["input"] for e in plural_examples[:50]], [e["target"] for e in plural_examples[:50]])
    heldout = _heldout([(e["input"], None) for e in plural_examples[50:100]])
    for mode in ("complete", "label"):
        result = check_synthetic_vs_real(mode, None, rows, heldout, SyntheticVsRealSettings(), seed=0)
        assert result["skipped"].startswith("the held-out split has no references") and not result["flagged"]


INTENTS = ["add_to_playlist", "book_restaurant", "get_weather", "play_music", "search_screening_event",
           "search_creative_work", "rate_book"]


@pytest.fixture(scope="module")
def intent_items() -> list[tuple[str, str]]:
    examples = json.loads((PLURAL.parents[2] / "intent" / "data" / "intent_recognition.json").read_text())["examples"]
    items = [(e["input"], max(e["target_scores"], key=e["target_scores"].get)) for e in examples]
    random.Random(0).shuffle(items)  # the file is not in random order; seeds and held-out items are a random split
    return items


def test_label_mode_flags_a_teacher_that_gives_nearly_every_row_one_label(intent_items):
    seeds, held = intent_items[:300], intent_items[300:450]
    heldout = _heldout(held)
    # 285 of 300 rows one label, as a zero-shot SmolLM2-135M teacher labelled these utterances.
    skewed = _rows([i for i, _ in seeds], ["play_music"] * 285 + [t for _, t in seeds[:15]])
    result = check_synthetic_vs_real("label", INTENTS, skewed, heldout, SyntheticVsRealSettings(), seed=0)
    assert result["test"] == "categorical" and result["why_test"] == "label mode with a fixed set of 7 labels"
    assert result["synthetic_texts"] == "teacher labels of the kept rows"
    assert (result["n_synthetic"], result["n_real"]) == (300, 150)
    shares = {s["value"]: s for s in result["shares"]}
    assert list(shares)[0] == "play_music" and set(shares) == set(INTENTS)
    assert shares["play_music"]["synthetic"] > 0.95 and shares["play_music"]["real"] < 0.25
    assert result["tv_distance"] > 0.7 and result["p_value"] < 0.01 and result["flagged"]
    assert "total variation distance" in gap_text(result) and "'play_music'" in gap_text(result)

    copier = _rows([i for i, _ in seeds], [t for _, t in seeds])
    result = check_synthetic_vs_real("label", INTENTS, copier, heldout, SyntheticVsRealSettings(), seed=0)
    assert result["tv_distance"] < 0.2 and not result["flagged"]


def test_short_answers_with_few_distinct_values_are_compared_as_categories(intent_items, plural_examples):
    seeds, held = intent_items[:300], intent_items[300:450]
    copier = _rows([i for i, _ in seeds], [t for _, t in seeds])
    result = check_synthetic_vs_real("complete", None, copier, _heldout(held), SyntheticVsRealSettings(), seed=0)
    assert result["test"] == "categorical" and "take only 7 distinct values" in result["why_test"]
    assert not result["flagged"]
    # Free-text references (every plural distinct) are embedded instead.
    heldout = _heldout([(e["input"], e["target"]) for e in plural_examples[:100]])
    result = check_synthetic_vs_real("complete", None, _rows(["x"] * 50, [e["target"] for e in plural_examples[100:150]]),
                                     heldout, SyntheticVsRealSettings(), seed=0)
    assert result["test"] == "embedding"


def test_synthesize_mode_compares_the_inputs_the_teacher_wrote(plural_words, plural_examples):
    rng = random.Random(1)
    arithmetic = [f"What is {rng.randint(2, 99)} + {rng.randint(2, 99)}?" for _ in range(120)]
    heldout = _heldout([(w, None) for w in plural_words[120:]])  # no references needed for inputs
    rows = _rows(arithmetic, [e["target"] for e in plural_examples[:120]])  # answers look real, inputs do not
    result = check_synthetic_vs_real("synthesize", None, rows, heldout, SyntheticVsRealSettings(), seed=0)
    assert result["synthetic_texts"] == "inputs the teacher wrote in the kept rows"
    assert result["real_texts"] == "inputs of the held-out real split" and result["flagged"]
    rows = _rows(plural_words[:120], ["?"] * 120)
    assert not check_synthetic_vs_real("synthesize", None, rows, heldout, SyntheticVsRealSettings(), seed=0)["flagged"]
