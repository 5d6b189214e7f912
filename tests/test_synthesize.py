"""synthesize mode end to end: the teacher writes an input and its answer for every grid cell, the student trains on
them and is evaluated on the real held-out split.

Through the real CLI, the real in-process vLLM engine (JSON structured output) and real LoRA
training, on the tiny random model: it writes nonsense, but the schema makes every answer parse.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest
from conftest import PLURAL, run_cli, write_recipe

from distill.filters.stage import apply_filters, build_filters
from distill.recipe import load_recipe
from distill.run_dir import RunDir
from distill.train.formats import training_examples

SYNTH_RECIPE = """\
name: synth
seed: 0
models:
  teacher: {{path: {model}}}
  student: {{path: {model}}}
data:
  path: {data}
  slice_field: comment
  heldout: {{size: 24, min_per_slice: 4}}
  max_seeds: 40
generate:
  mode: synthesize
  template: |-
    {{% for ex in examples %}}{{"word":"{{{{ ex.input }}}}","plural":"{{{{ ex.target }}}}"}}
    {{% endfor %}}Another {{{{ kind }}}} noun ({{{{ index }}}}):
  few_shot: {{k: 2}}
  grid:
    attributes: {{kind: [regular, irregular]}}
    per_cell: 6
    input_key: word
    output_key: plural
    max_chars: 10
  sampling: {{max_tokens: 48, temperature: 0.8}}
  chunk_size: 8
filter:
  steps:
    - {{type: exact_dedup, fields: [input]}}
train:
  prompt_template: "Plural of {{{{ input }}}}:"
  lora: {{r: 4, alpha: 8}}
  batch_size: 8
  max_length: 48
evaluate:
  sets:
    - {{name: plural, data: heldout}}
  teacher_template: |-
    {{% for ex in examples %}}{{"word":"{{{{ ex.input }}}}","plural":"{{{{ ex.target }}}}"}}
    {{% endfor %}}{{"word":"{{{{ input }}}}","plural":"
  max_tokens: 6
"""


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory, tiny_model):
    folder = tmp_path_factory.mktemp("synth")
    recipe = write_recipe(folder, tiny_model, SYNTH_RECIPE)
    result = run_cli("run", recipe, cwd=folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return recipe, RunDir(folder / "runs" / "synth")


def test_every_cell_gets_its_quota_of_teacher_written_pairs(synth_run):
    _, run = synth_run
    rows = pq.read_table(run.generated).to_pylist()
    assert len(rows) == 12
    assert sorted(r["cell"]["kind"] for r in rows) == ["irregular"] * 6 + ["regular"] * 6
    for r in rows:
        assert r["failure"] is None
        raw = json.loads(r["provenance"]["synthesis"]["raw"], strict=False)  # as the teacher wrote it
        assert raw == {"word": r["input"], "plural": r["completion"]}
        assert r["input"].strip() and len(r["input"]) <= 10 and r["completion"].strip()
        assert r["prompt"].endswith(f"Another {r['cell']['kind']} noun ({r['provenance']['seed'] % 6}):")


def test_the_student_trains_on_the_generated_inputs(synth_run):
    recipe_path, run = synth_run
    kept = [r for r in pq.read_table(run.filtered).to_pylist() if r["kept"]]
    assert kept
    # the pairs the train stage builds from the kept rows: prompted with the teacher's input, never "None"
    examples = training_examples(load_recipe(recipe_path), kept)
    assert [e["prompt"] for e in examples] == [f"Plural of {r['input']}:" for r in kept]
    assert not any("None" in e["prompt"] for e in examples)
    assert [e["completion"] for e in examples] == [f" {r['completion'].strip()}" for r in kept]
    assert json.loads((run.adapter / "training_data.json").read_text())["rows_used"] == len(kept)


def test_evaluation_scores_the_real_heldout_items(synth_run):
    _, run = synth_run
    heldout = [json.loads(line) for line in run.heldout.read_text().splitlines()]
    real_words = {e["input"] for e in json.loads(PLURAL.read_text())["examples"]}
    assert len(heldout) == 24 and {h["input"] for h in heldout} <= real_words
    predictions = pq.read_table(run.predictions).to_pylist()
    for model in ("base", "student"):
        scored = [p for p in predictions if p["model"] == model and p["set"] == "plural"]
        assert sorted(p["input"] for p in scored) == sorted(h["input"] for h in heldout)
        assert all(p["prompt"] == f"Plural of {p['input']}:" for p in scored)
    teacher = [p for p in predictions if p["model"] == "teacher"]
    assert sorted(p["input"] for p in teacher) == sorted(h["input"] for h in heldout)
    assert all(p["prompt"].endswith(f'{{"word":"{p["input"]}","plural":"') for p in teacher)


def test_teacher_evaluation_needs_a_prompt_that_answers_an_input(tmp_path, tiny_model):
    head, _, tail = SYNTH_RECIPE.partition("  teacher_template:")
    recipe = write_recipe(tmp_path, tiny_model, head + tail[tail.index("  max_tokens:"):])  # no teacher_template
    result = run_cli("validate", recipe)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "evaluate.sets: 'plural' would prompt the teacher with generate.template" in result.stderr
    assert run_cli("validate", recipe, "evaluate.models=[base, student]").returncode == 0


def test_an_answer_template_that_reads_only_the_input_prompts_the_evaluated_teacher(tmp_path, tiny_model):
    from distill.evaluate.candidates import Candidate
    from distill.evaluate.scoring import build_prompts

    head, _, tail = SYNTH_RECIPE.partition("  teacher_template:")
    text = head + tail[tail.index("  max_tokens:"):]
    answer = 'generate.answer_template="Plural of {{ input }}:"'
    recipe = load_recipe(write_recipe(tmp_path, tiny_model, text), [answer])
    teacher = Candidate("teacher", tiny_model, recipe.models.teacher, role="teacher")
    item = {"id": "i", "input": "mouse", "reference": "mice", "references": ["mice"], "slice": None}
    seeds = [{"id": f"s{i}", "input": w, "reference": w + "s"} for i, w in enumerate(["cat", "dog"])]
    no_chat = SimpleNamespace(apply_chat_template=None)  # generate.chat is off: the prompt is the rendered text
    assert build_prompts(recipe, teacher, recipe.evaluate.sets[0], [item], seeds, no_chat) == ["Plural of mouse:"]
    # one that reads a grid attribute cannot be rendered for a real item: an explicit teacher prompt is needed
    result = run_cli("validate", tmp_path / "recipe.yaml", 'generate.answer_template="A {{ kind }} plural of {{ input }}:"')
    assert result.returncode == 2 and "would prompt the teacher" in result.stderr


def _vote_rows(prompt_answers: list[tuple[str, str]]) -> list[dict]:
    return [{"id": str(i), "input": None, "reference": None, "prompt": p, "completion": a, "failure": None}
            for i, (p, a) in enumerate(prompt_answers)]


def test_majority_vote_pools_the_candidates_of_one_prompt_only(tmp_path, tiny_model):
    recipe = load_recipe(write_recipe(tmp_path, tiny_model), ["filter.steps=[{type: majority_vote}]"])
    # two prompts whose rows carry no input (synthesize): each prompt's candidates vote among themselves
    rows = _vote_rows([("cell A", "x"), ("cell A", "x"), ("cell A", "y"), ("cell B", "y"), ("cell B", "y")])
    out = apply_filters(rows, build_filters(recipe))
    assert [r["kept"] for r in out] == [True, True, False, True, True]
    assert [r["scores"]["majority_vote"] for r in out] == [0.3333, 0.3333, 0.3333, 1.0, 1.0]


def test_majority_vote_refuses_to_pool_rows_without_a_group(tmp_path, tiny_model):
    recipe = load_recipe(write_recipe(tmp_path, tiny_model), ["filter.steps=[{type: majority_vote, group_field: input}]"])
    from distill.errors import UserError

    with pytest.raises(UserError, match="column 'input' is empty on some rows"):
        apply_filters(_vote_rows([("cell A", "x"), ("cell B", "y")]), build_filters(recipe))
