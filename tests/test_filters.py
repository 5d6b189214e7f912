"""Filters flag rows with a reason (never delete them): dedup, decontamination, heuristics, verifiers, the funnel."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import run_cli

from distill.rows import row_id
from distill.filters.decontam import Decontaminate
from distill.data.contamination import EvalItem
from distill.filters.stage import apply_filters, build_filters, filter_table
from distill.recipe import DecontaminateFilter, Recipe
from distill.run_dir import RunDir

VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti", "va", "ze") for b in ("bar", "dun", "fel", "gim", "hox", "jut", "kel", "lum")]


def sentence(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def recipe_dict(model: Path, steps: list[dict], **filter_extra) -> dict:
    """A valid recipe around the given filter steps (models and data are only read by stages that need them)."""
    data = Path(__file__).resolve().parents[1] / "recipes" / "quickstart" / "data" / "plural_json.json"
    return {
        "name": "filters", "models": {"teacher": {"path": str(model)}, "student": {"path": str(model)}},
        "data": {"path": str(data), "heldout": {"size": 24}},
        "generate": {"template": "Q: {{ input }} A:"},
        "filter": {"steps": steps, **filter_extra},
        "train": {"prompt_template": "{{ input }}"},
        "evaluate": {"sets": [{"name": "heldout", "data": "heldout"}]},
    }


def filters_for(model: Path, steps: list[dict]):
    return build_filters(Recipe.model_validate(recipe_dict(model, steps)))


def prepared_run(folder: Path, model: Path, rows: list[dict], steps: list[dict], heldout: list[dict] = (), **extra) -> tuple[Path, RunDir]:
    """A run whose generate stage is complete with the given rows, and a recipe with the given filters."""
    run = RunDir(folder / "run")
    recipe = recipe_dict(model, steps, **extra)
    recipe["run_dir"] = str(run.root)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run.generated.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), run.generated)
    run.heldout.write_text("".join(json.dumps(h) + "\n" for h in heldout))
    run.mark_complete("generate", "prepared-by-test", {"rows": len(rows)})
    return path, run


def row(i: int | str, completion: str, inp: str = "q", **extra) -> dict:
    return {"id": str(i), "input": inp, "reference": extra.pop("reference", None), "completion": completion, **extra}


# --------------------------------------------------------------------------- dedup


@pytest.fixture(scope="module")
def planted():
    """300 distinct texts, then near copies (1-3 words changed) and exact copies (case / spacing changed)."""
    rng = random.Random(7)
    originals = [row(f"o{i}", sentence(rng)) for i in range(300)]
    near, exact = [], []
    for k, i in enumerate(range(0, 60, 6)):
        words = originals[i]["completion"].split()
        for j in rng.sample(range(len(words)), 1 + k % 3):
            words[j] = "zzz"
        near.append((row(f"near{i}", " ".join(words)), f"o{i}"))
    for i in range(100, 105):
        exact.append((row(f"exact{i}", "  " + originals[i]["completion"].upper() + " "), f"o{i}"))
    rows = originals + [r for r, _ in near] + [r for r, _ in exact]
    return rows, near, exact


@pytest.mark.parametrize("backend", ["rensa", "datasketch"])
def test_planted_duplicates_are_flagged_with_the_row_they_repeat(planted, tiny_model, backend):
    rows, near, exact = planted
    filters = filters_for(tiny_model, [{"type": "exact_dedup", "fields": ["completion"]},
                                       {"type": "near_dedup", "threshold": 0.5, "shingle": 3, "backend": backend}])
    out = {r["id"]: r for r in apply_filters([dict(r) for r in rows], filters)}
    assert len(out) == len(rows)  # flagged, never deleted
    for r, original in exact:
        assert out[r["id"]]["rejected_by"] == "exact_dedup" and original in out[r["id"]]["reason"]
    for r, original in near:
        got = out[r["id"]]
        assert got["rejected_by"] == "near_dedup", got["reason"]
        assert got["near_dup_cluster"] == original and original in got["reason"]
        assert 0.5 <= got["scores"]["near_dedup"] < 1.0
    assert all(out[f"o{i}"]["kept"] for i in range(300))  # no distinct text is lost
    assert out["o0"]["near_dup_cluster"] == "o0"


@pytest.mark.parametrize("backend", ["rensa", "datasketch"])
def test_near_dedup_state_carries_across_batches(planted, tiny_model, backend, tmp_path):
    rows = planted[0]
    steps = [{"type": "near_dedup", "threshold": 0.5, "shingle": 3, "backend": backend}]
    columns = ["reason", "near_dup_cluster", "scores"]
    whole = filter_table(pa.Table.from_pylist(rows), filters_for(tiny_model, steps)).select(columns).to_pylist()
    small = filter_table(pa.Table.from_pylist(rows), filters_for(tiny_model, steps), batch_size=7).select(columns).to_pylist()
    assert whole == small and sum(r["reason"] is not None for r in whole) == 15
    # a rerun in another process (its own hash seed) finds the same clusters with the same scores
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    script = ("import sys, json, pyarrow.parquet as pq; sys.path.insert(0, sys.argv[1]); from test_filters import filters_for; "
              "from distill.filters.stage import filter_table; from pathlib import Path; "
              "print(json.dumps(filter_table(pq.read_table(sys.argv[2]), filters_for(Path(sys.argv[3]), json.loads(sys.argv[4])))"
              ".select(sys.argv[5].split(',')).to_pylist()))")
    proc = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent), str(tmp_path / "rows.parquet"), str(tiny_model),
                           json.dumps(steps), ",".join(columns)], capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == whole


def test_semantic_dedup_catches_a_paraphrase(tiny_model):
    rows = [row("a", "What is the boiling point of water at sea level in degrees Celsius?"),
            row("b", "Write a short poem about autumn leaves falling."),
            row("c", "At sea level, water boils at what temperature in Celsius?"),
            row("d", "List three prime numbers greater than ten.")]
    out = apply_filters(rows, filters_for(tiny_model, [{"type": "semantic_dedup", "threshold": 0.9}]))
    assert [r["kept"] for r in out] == [True, True, False, True]
    assert out[2]["semantic_dup_cluster"] == "a" and out[2]["scores"]["semantic_dedup"] > 0.9


# --------------------------------------------------------------------------- decontamination

LONG_EVAL = ("the committee approved the new budget after a long debate about funding for public schools "
             "and the repair of old bridges across the northern district")
INTENT = Path(__file__).resolve().parents[1] / "recipes" / "intent" / "data" / "intent_recognition.json"


def eval_items() -> list[EvalItem]:
    return [EvalItem("qa", "item-long", [LONG_EVAL, "yes"]),
            EvalItem("qa", "item-capital", ["What is the capital city of France?", "Paris"]),
            EvalItem("qa", "item-boil", ["What is the boiling point of water at sea level in degrees Celsius?", "100"])]


def decontaminate(items: list[EvalItem], **settings) -> Decontaminate:
    f = Decontaminate(DecontaminateFilter(type="decontaminate", **settings), items=items)
    f.label = "decontaminate"
    return f


def intent_examples() -> list[dict]:
    """Real BIG-bench intent utterances with their intent label."""
    examples = json.loads(INTENT.read_text())["examples"]
    return [{"input": e["input"], "label": next(k for k, v in e["target_scores"].items() if v == 1)} for e in examples]


def test_decontamination_finds_exact_embedded_and_paraphrased_leaks():
    leaked_13gram = "Summary: " + " ".join(LONG_EVAL.split()[3:18]).upper() + " and then some unrelated words follow here"
    rows = [row("r-ngram", leaked_13gram, inp="summarise the news"),
            row("r-exact", "ok", inp="what is the capital city of   FRANCE"),
            row("r-inside", "Paris, of course.", inp="Quiz night! What is the capital city of France? One word please."),
            row("r-para", "hot", inp="At sea level, water boils at what temperature in Celsius?"),
            row("r-clean", "Photosynthesis turns light into chemical energy in plants.", inp="explain photosynthesis"),
            row("r-12gram", " ".join(LONG_EVAL.split()[:12]), inp="other"),
            row("r-part", "the capital city of France is lovely", inp="tell me about Paris")]
    f = decontaminate(eval_items())
    out = {r["id"]: r for r in apply_filters(rows, [f])}
    assert not out["r-ngram"]["kept"] and "item-long" in out["r-ngram"]["reason"] and "13-gram" in out["r-ngram"]["reason"]
    assert not out["r-exact"]["kept"] and "item-capital (exact)" in out["r-exact"]["reason"]
    # a 7-word question inside a longer row: no 13-gram to share, found by containment
    assert not out["r-inside"]["kept"] and "item-capital (contained)" in out["r-inside"]["reason"]
    assert not out["r-para"]["kept"] and "item-boil (embedding)" in out["r-para"]["reason"]
    assert out["r-clean"]["kept"] and out["r-12gram"]["kept"]  # 12 shared words are not a 13-gram
    assert out["r-part"]["kept"]  # part of a short question is not the question
    assert f.contaminated_items() == {"qa": ["item-boil", "item-capital", "item-long"]}
    methods = {(r["row_id"], r["method"]) for r in f.records}
    assert {("r-para", "embedding"), ("r-ngram", "13-gram"), ("r-inside", "contained")} <= methods


PARAPHRASES = {  # real held-out utterance -> the same request reworded
    "Utterance: I want a table for five at a restaurant with Latin food in Arkansas for 1 hour from now.":
        "Utterance: In one hour, I'd like a table for five at a Latin food restaurant in Arkansas.",
    "Utterance: How will the weather be different 5 years from now in Waconia?":
        "Utterance: In Waconia, how will the weather differ five years from now?",
    "Utterance: Which is the nearest movie house playing “The Diary of Anne Frank”?":
        "Utterance: Which closest cinema is showing “The Diary of Anne Frank”?",
    "Utterance: Find me a table for 8 people at a nearby restaurant in Alabama one minute from now.":
        "Utterance: One minute from now, find a table for 8 people at a restaurant near me in Alabama.",
    "Utterance: Add Cecil Womack to my 50 great female voices playlist.":
        "Utterance: Put Cecil Womack on my 50 great female voices playlist.",
    "Utterance: Please play me a popular track from 1984.": "Utterance: Play a popular song from 1984 for me, please.",
    "Utterance: Book a Mediterranean restaurant for my sister and me.":
        "Utterance: Reserve a Mediterranean restaurant for me and my sister.",
}


def test_planted_leaks_of_each_kind_are_all_found_and_clean_rows_kept():
    """Held-out intent utterances planted in otherwise clean rows: copied, embedded in a longer row, reworded."""
    examples = intent_examples()
    heldout = examples[300:400]
    items = [EvalItem("intent", f"e{i}", [e["input"], e["label"]]) for i, e in enumerate(heldout)]
    rng = random.Random(3)
    rows = [row(f"clean{i}", sentence(rng, 30), inp=sentence(rng, 8)) for i in range(200)]
    rows += [row(f"label{i}", e["label"], inp=sentence(rng, 8)) for i, e in enumerate(heldout[:20])]  # same answers
    planted = {"exact": [], "embedded": [], "paraphrased": []}
    for i, e in enumerate(heldout[:10]):
        rows.append(row(f"exact{i}", e["label"], inp="  " + e["input"].upper().rstrip(".?") + " "))
        planted["exact"].append(f"exact{i}")
    long_and_short = [i for i, e in enumerate(heldout) if len(e["input"].split()) >= 14][:5]
    long_and_short += [i for i, e in enumerate(heldout) if len(e["input"].split()) < 13][:5]
    for i in long_and_short:
        rows.append(row(f"embedded{i}", f"{sentence(rng, 6)} {heldout[i]['input']} {sentence(rng, 6)}", inp=sentence(rng, 8)))
        planted["embedded"].append(f"embedded{i}")
    inputs = [e["input"] for e in heldout]
    for k, (original, reworded) in enumerate(PARAPHRASES.items()):
        assert original in inputs
        rows.append(row(f"para{k}", "book_restaurant", inp=reworded))
        planted["paraphrased"].append(f"para{k}")
    out = {r["id"]: r for r in apply_filters(rows, [decontaminate(items)])}
    found = {kind: sum(not out[i]["kept"] for i in ids) for kind, ids in planted.items()}
    print("found / planted:", {kind: f"{found[kind]}/{len(ids)}" for kind, ids in planted.items()})
    assert found == {kind: len(ids) for kind, ids in planted.items()}
    assert sum(len(e["input"].split()) >= 13 for e in (heldout[i] for i in long_and_short)) == 5  # both detectors ran
    assert all(out[i]["kept"] for i in out if i.startswith(("clean", "label")))


def test_a_one_word_answer_equal_to_another_items_answer_is_no_leak():
    items = [EvalItem("qa", "q1", ["Which city is the capital of France?", "Paris"]),
             EvalItem("qa", "q2", ["What is 6 times 7?", "42"]),
             EvalItem("qa", "q3", ["Name the author of Hamlet.", "William Shakespeare wrote Hamlet around 1600 for the Lord "
                                                             "Chamberlain's Men, his company of actors"])]
    rows = [row("wrong-but-equal", "Paris", inp="Which city is the capital of Italy?"),
            row("number", "42", inp="What is 40 plus 2?"),
            row("long-answer", "Well: William Shakespeare wrote Hamlet around 1600 for the Lord Chamberlain's Men, his company.",
                inp="who?"),
            row("question-and-answer", "Name the author of Hamlet. William Shakespeare", inp="quiz")]
    out = {r["id"]: r for r in apply_filters(rows, [decontaminate(items, embedding_threshold=None)])}
    assert out["wrong-but-equal"]["kept"] and out["number"]["kept"]
    assert not out["long-answer"]["kept"] and "13-gram of its reference" in out["long-answer"]["reason"]
    assert not out["question-and-answer"]["kept"] and "q3 (contained)" in out["question-and-answer"]["reason"]


def test_a_label_mode_run_keeps_its_rows(tmp_path, tiny_model):
    """Every label equals some held-out item's label: that is the task, not a leak."""
    examples = intent_examples()
    heldout = [{"id": row_id(e["input"]), "input": e["input"], "reference": e["label"], "references": [e["label"]], "slice": None}
               for e in examples[:150]]
    rows = [row(f"g{i}", e["label"], inp=e["input"]) for i, e in enumerate(examples[150:450])]
    rows.append(row("copied", examples[0]["label"], inp=examples[0]["input"]))  # a held-out item among the seeds
    recipe, run = prepared_run(tmp_path, tiny_model, rows, [{"type": "decontaminate", "embedding_threshold": None}], heldout)
    result = run_cli("filter", recipe)
    assert result.returncode == 0, result.stderr[-2000:]
    kept = dict(zip(*pq.read_table(run.filtered, columns=["id", "kept"]).to_pydict().values()))
    assert not kept.pop("copied")
    # the one other row rejected holds a held-out question whole: "Show me movie schedules" + " for today"
    inputs = {r["id"]: r["input"] for r in rows}
    assert [inputs[r] for r, k in kept.items() if not k] == ["Utterance: Show me movie schedules for today."]


def test_decontamination_in_the_stage_reads_the_heldout_split_and_writes_the_leaks(tmp_path, tiny_model):
    heldout = [{"id": row_id(w), "input": w, "reference": w + "s", "references": [w + "s"], "slice": None} for w in ("lantern", "meadow")]
    rows = [row("g1", "lanterns", inp="lantern"), row("g2", "rivers", inp="river"), row("g3", "meadows", inp="Meadow")]
    recipe, run = prepared_run(tmp_path, tiny_model, rows, [{"type": "decontaminate", "embedding_threshold": None}], heldout)
    result = run_cli("filter", recipe)
    assert result.returncode == 0, result.stderr[-2000:]
    kept = dict(zip(*pq.read_table(run.filtered, columns=["id", "kept"]).to_pydict().values()))
    assert kept == {"g1": False, "g2": True, "g3": False}
    leaks = [json.loads(line) for line in (run.stage("filter") / "contamination.jsonl").read_text().splitlines()]
    assert {(x["row_id"], x["set"], x["method"]) for x in leaks} >= {("g1", "heldout", "exact"), ("g3", "heldout", "exact")}
    items = json.loads((run.stage("filter") / "contaminated_items.json").read_text())
    assert items == {"heldout": sorted(row_id(w) for w in ("lantern", "meadow"))}


# --------------------------------------------------------------------------- heuristics and verifiers


def test_heuristics_flag_repetition_bad_json_and_refusals(tiny_model):
    steps = [{"type": "refusal"},
             {"type": "repetition", "ngram": 2, "max_ratio": 0.3},
             {"type": "json_schema", "json_schema": {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "integer"}}}}]
    rows = [row(1, '{"answer": 4}'), row(2, "I'm sorry, but I can't help with that."),
            row(3, "go go go go go go go go"), row(4, '{"answer": "four"}'), row(5, "answer: 4")]
    out = apply_filters(rows, filters_for(tiny_model, steps))
    assert [r["rejected_by"] for r in out] == [None, "refusal", "repetition", "json_schema", "json_schema"]
    assert "breaks the schema at 'answer'" in out[3]["reason"] and "is not JSON" in out[4]["reason"]
    assert out[2]["scores"]["repetition"] > 0.8 and out[0]["scores"]["repetition"] == 0.0


def test_reference_match_compares_normalised_text_or_numbers(tiny_model):
    rows = [row(1, " The Cats. ", reference="the cats"), row(2, "dogs", reference="cats"), row(3, "anything", reference=None)]
    out = apply_filters(rows, filters_for(tiny_model, [{"type": "reference_match"}]))
    assert [r["kept"] for r in out] == [True, False, True]
    rows = [row(1, "The answer is 1,250.0 apples", reference="1250"), row(2, "about 12", reference="13"), row(3, "none", reference="7")]
    out = apply_filters(rows, filters_for(tiny_model, [{"type": "reference_match", "mode": "numeric"}]))
    assert [r["reason"] for r in out] == [None, "completion gives 12, reference is 13", "completion has no number (reference 7)"]


def test_majority_vote_keeps_the_majority_and_records_its_margin(tiny_model):
    rows = [row(f"a{k}", ans, inp="2+2", prompt="Q: 2+2 A:") for k, ans in enumerate(["4", "4", " 4.", "5"])]
    rows += [row(f"b{k}", ans, inp="3+3", prompt="Q: 3+3 A:") for k, ans in enumerate(["6", "7"])]
    out = apply_filters(rows, filters_for(tiny_model, [{"type": "majority_vote"}]))
    assert [r["kept"] for r in out] == [True, True, True, False, False, False]
    assert out[0]["scores"]["majority_vote"] == 0.5  # 3 of 4 minus 1 of 4
    assert "minority answer" in out[3]["reason"] and "no clear majority" in out[4]["reason"]
    strict = apply_filters([dict(r) for r in rows[:4]], filters_for(tiny_model, [{"type": "majority_vote", "min_margin": 0.6}]))
    assert not any(r["kept"] for r in strict)


def test_per_row_checks_give_the_same_flags_in_several_processes(tiny_model):
    rng = random.Random(3)
    rows = [row(i, sentence(rng, rng.randint(0, 12))) for i in range(400)]
    steps = [{"type": "length", "min_chars": 20}, {"type": "regex", "must_not_match": "kabar"}]
    one = filter_table(pa.Table.from_pylist(rows), filters_for(tiny_model, steps), batch_size=50)
    two = filter_table(pa.Table.from_pylist(rows), filters_for(tiny_model, steps), batch_size=50, num_proc=2)
    assert one.column("reason").to_pylist() == two.column("reason").to_pylist()
    assert 0 < one.column("kept").to_pylist().count(False) < 400


# --------------------------------------------------------------------------- stage, funnel, recipe errors


def test_stage_writes_the_funnel_as_markdown_json_and_png(tmp_path, tiny_model):
    rows = [row(i, text) for i, text in enumerate(["fine answer", "x", "fine answer", "I cannot do that", "another fine answer"])]
    recipe, run = prepared_run(tmp_path, tiny_model, rows, [{"type": "length", "min_chars": 2}, {"type": "exact_dedup", "fields": ["completion"]}, {"type": "refusal"}])
    result = run_cli("filter", recipe)
    assert result.returncode == 0, result.stderr[-2000:]
    funnel = json.loads((run.stage("filter") / "funnel.json").read_text())
    assert [(s["filter"], s["in"], s["out"]) for s in funnel["steps"]] == [("length", 5, 4), ("exact_dedup", 4, 3), ("refusal", 3, 2)]
    md = (run.stage("filter") / "funnel.md").read_text()
    assert "| exact_dedup | 4 | 1 | 3 | duplicate of # on completion (1) |" in md
    assert (run.stage("filter") / "funnel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads(run.marker("filter").read_text())["summary"]
    assert summary["kept"] == 2 and summary["rejected"] == 3


def test_a_filter_reading_a_missing_column_is_a_one_line_error(tmp_path, tiny_model):
    recipe, _ = prepared_run(tmp_path, tiny_model, [row(1, "a")], [{"type": "reference_match", "reference_field": "gold"}])
    result = run_cli("filter", recipe)
    assert result.returncode == 2 and "reference_match reads column 'gold'" in result.stderr and "Traceback" not in result.stderr


def test_bad_filter_settings_are_caught_with_their_line(tmp_path, tiny_model):
    recipe, _ = prepared_run(tmp_path, tiny_model, [row(1, "a")], [{"type": "json_schema", "json_schema": {"type": "nonsense"}}])
    result = run_cli("validate", recipe)
    assert result.returncode == 2
    assert "filter.steps.0.json_schema: not a valid JSON schema" in result.stderr and "recipe.yaml:" in result.stderr
    recipe, _ = prepared_run(tmp_path, tiny_model, [row(1, "a")], [{"type": "judge", "rubric": "Is it right?"}])
    result = run_cli("filter", recipe)
    assert result.returncode == 2 and "filter.steps.0 judges with models.judge, which the recipe does not define" in result.stderr
