"""The generate stage's modes on a tiny model with the real in-process vLLM engine.

complete (the default) answers real seeds; synthesize fills an attribute grid with a quota
per cell; label constrains the teacher to a label set and records answers that fail to
parse instead of dropping them; n > 1 keeps candidates side by side.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_cli, write_recipe

from distill.generate.stage import run_generate
from distill.recipe import load_recipe
from distill.run_dir import RunDir

INTENT = ROOT / "recipes" / "intent" / "data" / "intent_recognition.json"
INTENTS = ["add_to_playlist", "book_restaurant", "get_weather", "play_music", "search_screening_event",
           "search_creative_work", "rate_book"]

LABEL_RECIPE = """\
name: label
models:
  teacher: {{path: {model}}}
  student: {{path: {model}}}
data:
  path: {data}
  target_field: null
  heldout: {{size: 20}}
  max_seeds: 24
generate:
  mode: label
  template: "{{{{ input }}}}\\nIntent:"
  label: {{choice: %s}}
  sampling: {{max_tokens: 24}}  # the tiny model's byte-level tokens: the longest label is 20 of them
  chunk_size: 10
train: {{prompt_template: "{{{{ input }}}}"}}
evaluate: {{sets: [{{name: intent, path: {data}, limit: 20}}]}}  # the held-out split is unlabelled here: a labelled file scores
""" % json.dumps(INTENTS)


@pytest.fixture(scope="module")
def teacher(tiny_model):
    """One engine for the module: the stage takes an open engine as well as opening its own."""
    from distill.models.vllm_engine import VLLMEngine
    from distill.recipe import ModelSpec

    engine = VLLMEngine(tiny_model, ModelSpec(path=str(tiny_model)))
    yield engine
    engine.close()


def generate(folder: Path, model: Path, *overrides: str, text: str | None = None, data: Path | None = None,
             engine=None) -> list[dict]:
    """Run the generate stage in this process and return the merged rows (its summary goes to folder/summary.json)."""
    path = folder / "recipe.yaml"
    if text is None:
        write_recipe(folder, model)
    else:
        path.write_text(text.format(model=model, data=data))
    recipe = load_recipe(path, list(overrides))
    run = RunDir(folder / "run")
    summary = run_generate(recipe, run, engine=engine)
    assert summary["merged"]
    (folder / "summary.json").write_text(json.dumps(summary))
    return pq.read_table(run.generated).to_pylist()


def test_complete_mode_answers_every_seed_once(tmp_path, tiny_model):
    rows = generate(tmp_path, tiny_model)
    assert len(rows) == 40 and len({r["input"] for r in rows}) == 40
    assert all(r["cell"] is None and r["failure"] is None for r in rows)
    assert {r["provenance"]["mode"] for r in rows} == {"complete"}
    assert {r["provenance"]["backend"]["backend"] for r in rows} == {"vllm"}


def test_synthesize_fills_every_cell_to_its_quota(tmp_path, tiny_model, teacher):
    template = "'Write a {{ difficulty }} question about {{ topic }} (number {{ index }}, cell {{ cell.topic }}):'"
    rows = generate(
        tmp_path, tiny_model, "generate.mode=synthesize", f"generate.template={template}",
        "generate.grid={attributes: {topic: [volcanoes, tides, glaciers], difficulty: [easy, hard]}, per_cell: 3}",
        "generate.sampling.n=2", "generate.sampling.temperature=0.8", "generate.few_shot.k=0",
        "generate.sampling.max_tokens=40", "generate.grid.max_chars=8", NO_TEACHER_EVAL, engine=teacher,
    )
    # 3 topics x 2 difficulties x 3 per cell x 2 candidates, each cell recorded on its rows
    assert len(rows) == 36
    per_cell: dict[tuple, int] = {}
    for r in rows:
        key = (r["cell"]["topic"], r["cell"]["difficulty"])
        per_cell[key] = per_cell.get(key, 0) + 1
        assert r["prompt"].startswith(f"Write a {key[1]} question about {key[0]} (number ")
        assert r["prompt"].endswith(f"cell {key[0]}):")
        # the teacher wrote the input and its answer as one JSON object: the row holds both, the object stays in provenance
        assert r["failure"] is None and r["input"].strip() and r["completion"].strip()
        assert json.loads(r["provenance"]["synthesis"]["raw"], strict=False) == {"input": r["input"], "output": r["completion"]}
    assert per_cell == {(t, d): 6 for t in ("volcanoes", "tides", "glaciers") for d in ("easy", "hard")}
    # candidates: the n samples of one prompt sit side by side, with their own ids and sample_index
    assert [r["sample_index"] for r in rows[:4]] == [0, 1, 0, 1]
    assert rows[0]["prompt"] == rows[1]["prompt"] and rows[0]["provenance"]["seed"] == rows[1]["provenance"]["seed"]
    assert len({r["id"] for r in rows}) == 36


def test_label_mode_answers_only_with_a_label(tmp_path, tiny_model, teacher):
    rows = generate(tmp_path, tiny_model, text=LABEL_RECIPE, data=INTENT, engine=teacher)
    assert len(rows) == 24
    assert all(r["completion"] in INTENTS and r["failure"] is None for r in rows)
    assert all(r["reference"] is None for r in rows)  # the teacher labels without the answers
    assert {r["provenance"]["attempts"] for r in rows} == {1}


def test_a_label_written_with_its_leading_space_is_kept_without_it(tmp_path, tiny_model, teacher):
    """After a prompt ending in "Intent:" the label is a new word: the choice carries the space the tokenizer puts
    before it, and the row keeps the bare label."""
    spaced = json.dumps([" " + intent for intent in INTENTS])
    rows = generate(tmp_path, tiny_model, f"generate.label={{choice: {spaced}}}", text=LABEL_RECIPE, data=INTENT,
                    engine=teacher)
    assert all(r["completion"] in INTENTS and r["failure"] is None for r in rows)


def test_unparseable_labels_are_retried_then_kept_with_the_reason(tmp_path, tiny_model, teacher):
    schema = {"type": "object", "properties": {"intent": {"enum": INTENTS}, "confidence": {"type": "number"}},
              "required": ["intent", "confidence"]}
    # three tokens cannot hold the JSON document: every answer is cut off, retried twice, then recorded
    rows = generate(tmp_path, tiny_model, f"generate.label={{json_schema: {json.dumps(schema)}, retries: 2}}",
                    "generate.sampling.max_tokens=3", text=LABEL_RECIPE, data=INTENT, engine=teacher)
    assert len(rows) == 24  # nothing dropped
    for r in rows:
        assert r["failure"].startswith("not valid JSON") and "cut off at max_tokens" in r["failure"]
        assert r["provenance"]["attempts"] == 3 and r["provenance"]["retry_seed"] is not None
        assert r["completion"]  # the raw answer stays for inspection
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failures"] == 24 and summary["retried"] == 48


def test_regex_label_and_chat_prompts(tmp_path, tiny_model, teacher):
    rows = generate(tmp_path, tiny_model, "generate.label={regex: '[a-z]{2,5}'}", "generate.chat=true",
                    "generate.system_prompt=You label intents.", text=LABEL_RECIPE, data=INTENT, engine=teacher)
    assert all(r["failure"] is None and 2 <= len(r["completion"]) <= 5 and r["completion"].isalpha() for r in rows)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    first = rows[0]
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "You label intents."}, {"role": "user", "content": f"{first['input']}\nIntent:"}],
        tokenize=False, add_generation_prompt=True)
    assert first["prompt"] == expected


NO_TEACHER_EVAL = "evaluate.models=[base, student]"  # the grid prompt cannot answer a held-out input
SYNTH = ("generate.mode=synthesize", "generate.grid={attributes: {topic: [tides]}}", "generate.few_shot.k=0", NO_TEACHER_EVAL)


def test_unparseable_pairs_are_retried_then_kept_with_the_reason(tmp_path, tiny_model, teacher):
    # six tokens cannot hold {"input":...,"output":...}: every object is cut off, retried once, then recorded
    rows = generate(tmp_path, tiny_model, *SYNTH, "generate.template=Write one.", "generate.grid.per_cell=4",
                    "generate.grid.retries=1", "generate.sampling.max_tokens=6", engine=teacher)
    assert len(rows) == 4  # nothing dropped
    for r in rows:
        assert r["failure"].startswith("not valid JSON") and "cut off at max_tokens" in r["failure"]
        assert r["input"] is None and r["provenance"]["attempts"] == 2
        assert r["provenance"]["synthesis"]["raw"].startswith('{"')  # what the teacher wrote, for inspection
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failures"] == 4 and summary["retried"] == 4


def test_answer_template_answers_each_written_input_n_times(tmp_path, tiny_model, teacher):
    rows = generate(tmp_path, tiny_model, *SYNTH, "generate.template='Write a question about {{ topic }}:'",
                    "generate.grid.per_cell=3", "generate.grid.max_chars=8", "generate.sampling.max_tokens=24",
                    "generate.answer_template='Answer: {{ input }} ->'", "generate.sampling.n=2",
                    "generate.sampling.temperature=0.8", engine=teacher)
    # 3 written inputs, each answered twice: the two candidates share the answer prompt, which holds the input
    assert len(rows) == 6 and all(r["failure"] is None for r in rows)
    for first, second in zip(rows[::2], rows[1::2]):
        assert first["input"] == second["input"] and first["input"].strip()
        assert first["prompt"] == second["prompt"] == f"Answer: {first['input']} ->"
        assert [first["sample_index"], second["sample_index"]] == [0, 1]
        synthesis = first["provenance"]["synthesis"]
        assert synthesis["input_prompt"] == "Write a question about tides:"
        assert json.loads(synthesis["raw"], strict=False) == {"input": first["input"]}  # the first pass asks for the input only
    assert len({r["prompt"] for r in rows}) == 3


@pytest.mark.parametrize("override, message", [
    ("generate.mode=synthesize", "generate: grid is needed by, and only by, mode: synthesize"),
    # synthesize has no input until the teacher writes one: a template that reads it would say "None"
    (SYNTH, "generate: template uses `input`, but in synthesize mode there is none"),
    (SYNTH + ("generate.template=Write one.", "generate.answer_template=Answer this."),
     "generate: answer_template never uses `input`"),
    ("generate.answer_template={{ input }}", "generate: answer_template is used by, and only by, mode: synthesize"),
    (SYNTH + ("generate.template=Write one.", "generate.grid.output_key=input"),
     "generate.grid: input_key and output_key are both 'input'"),
    ("generate.mode=label", "generate: label is needed by, and only by, mode: label"),
    # on-policy has the teacher score an answer to each seed: a template that writes new pairs cannot
    (SYNTH + ("generate.template=Write one.", "train.objective=on_policy"),
     "train.objective on_policy: the teacher scores the student's answer to each seed under the template it answers "
     "a real input with"),
    ("generate.backend=openai", "generate: endpoint is needed by, and only by, backend: openai"),
    ("generate.label={choice: [a, b], regex: x}", "give exactly one of choice, json_schema, regex"),
])
def test_mode_settings_are_checked_before_any_work(tmp_path, tiny_model, override, message):
    recipe = write_recipe(tmp_path, tiny_model)
    overrides = override if isinstance(override, tuple) else (override,)
    result = run_cli("validate", recipe, *overrides, "generate.mode=label" if "label=" in override else "generate.chunk_size=8")
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
