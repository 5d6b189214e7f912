"""Provenance: the manifest's hashes, chaining between roles, the coverage audit, the synthetic-vs-real check."""

from __future__ import annotations

import json
import random

import pytest

from conftest import PLURAL, run_cli, write_recipe
from distill import rows as C
from distill.errors import RecipeError
from distill.provenance.coverage import audit_coverage, link_eval_slices
from distill.provenance.lineage import chaining_findings, enforce_chaining_policy, lineage
from distill.provenance.manifest import build_manifest
from distill.provenance.two_sample import synthetic_vs_real
from distill.recipe import CoverageSettings, SyntheticVsRealSettings, load_recipe
from distill.run_dir import RunDir


@pytest.fixture(scope="module")
def other_models(tmp_path_factory):
    """A second qwen2 model with other weights (same family), and a llama model (another family)."""
    from distill.models.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("other-models")
    return {"qwen2": build_tiny_model(root / "qwen2-b", "qwen2", seed=1), "llama": build_tiny_model(root / "llama", "llama")}


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
    assert finding["message"].startswith("chaining: generator/labeller (teacher) and student are the same model")
    assert enforce_chaining_policy(recipe) == [finding["message"]]  # allowed by default: a warning
    roles = [r["role"] for r in lineage(recipe)]
    assert roles == ["generator", "labeller", "student", "evaluator"]


def test_same_family_with_other_weights_is_chaining_and_another_family_is_not(tiny_recipe, other_models):
    same_family = load_recipe(tiny_recipe, [f"models.student.path={other_models['qwen2']}"])
    [finding] = chaining_findings(same_family)
    assert finding["kind"] == "same_family" and "family 'qwen2'" in finding["message"]
    independent = load_recipe(tiny_recipe, [f"models.student.path={other_models['llama']}"])
    assert chaining_findings(independent) == []
    assert enforce_chaining_policy(load_recipe(tiny_recipe, [f"models.student.path={other_models['llama']}",
                                                             "allow_chaining=false"])) == []


def test_a_judge_of_the_generators_family_is_chaining(tiny_recipe, other_models):
    recipe = load_recipe(tiny_recipe, [f"models.student.path={other_models['llama']}",
                                       f"models.judge.path={other_models['qwen2']}"])
    [finding] = chaining_findings(recipe)
    assert finding["models"] == ["teacher", "judge"] and finding["kind"] == "same_family"
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


def test_two_sample_check_needs_enough_distinct_inputs(plural_words):
    result = synthetic_vs_real(plural_words[:3] * 10, plural_words[:50], SyntheticVsRealSettings(), seed=0)
    assert result["skipped"].startswith("fewer than 10 distinct inputs") and not result["flagged"]
