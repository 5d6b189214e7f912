"""Data as users have it: Alpaca's columns, chat conversations (OpenAI's messages, ShareGPT's conversations), JSON
lists, globs, `datasets` folders and Hub datasets, each reaching the teacher's and the student's prompts whole; and
what `validate` says, before any work, when a template names a column the rows do not have."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import yaml
from conftest import cache_hub_dataset, run_cli

from distill import rows as C
from distill.data.preflight import preflight
from distill.data.records import as_conversation, read_references, to_item
from distill.data.split import split_data
from distill.errors import DataError
from distill.prompts.teacher import teacher_prompts
from distill.prompts.template import PromptTemplate, chat_prompt
from distill.recipe import Recipe
from distill.run_dir import RunDir
from distill.train.formats import training_examples

WORDS = [("cat", "cats"), ("dog", "dogs"), ("ox", "oxen"), ("mouse", "mice"), ("box", "boxes"), ("child", "children"),
         ("city", "cities"), ("wolf", "wolves"), ("bus", "buses"), ("foot", "feet"), ("leaf", "leaves"),
         ("tooth", "teeth")]
SYSTEM = "You answer with one word."


def alpaca_rows() -> list[dict]:
    """Alpaca's three columns; half the rows have an empty `input`, as in alpaca_data.json."""
    return [{"instruction": "Give the plural of the word." if i % 2 else f"What is the plural of '{w}'?",
             "input": w if i % 2 else "", "output": p} for i, (w, p) in enumerate(WORDS)]


def chat_rows() -> list[dict]:
    """OpenAI-style conversations: a system message, sometimes an earlier exchange, the question, the answer."""
    rows = []
    for i, (w, p) in enumerate(WORDS):
        earlier = [{"role": "user", "content": "Ready?"}, {"role": "assistant", "content": "Yes."}] if i % 3 == 0 else []
        rows.append({"messages": [{"role": "system", "content": SYSTEM}, *earlier,
                                  {"role": "user", "content": f"Plural of {w}?"}, {"role": "assistant", "content": p}]})
    return rows


def recipe_for(folder: Path, model: Path, data: dict, **sections) -> Recipe:
    d = {"name": "users", "models": {"teacher": {"path": str(model)}, "student": {"path": str(model)}},
         "data": {"heldout": {"size": 4}, **data},
         "generate": {"template": "{{ input }}"}, "train": {"prompt_template": "{{ input }}"},
         "evaluate": {"sets": [{"name": "heldout", "data": "heldout"}]}}
    for key, value in sections.items():
        d[key] = {**d.get(key, {}), **value}
    return Recipe.model_validate(d, context={"base_dir": str(folder)})


def test_alpaca_columns_reach_the_teachers_and_the_students_prompts_by_name(tmp_path, tiny_model):
    data = tmp_path / "alpaca_data.json"  # a JSON list, as Alpaca ships it
    data.write_text(json.dumps(alpaca_rows(), indent=1))
    recipe = recipe_for(
        tmp_path, tiny_model, {"path": "alpaca_data.json", "input_field": ["instruction", "input"], "target_field": "output"},
        generate={"template": "{{ instruction }}{% if row.input %}\nWord: {{ row.input }}{% endif %}\nAnswer:"},
        train={"prompt_template": "### Instruction:\n{{ instruction }}\n### Input:\n{{ row.input }}\n### Response:"})
    heldout, seeds = split_data(recipe)
    by_output = {r["output"]: r for r in alpaca_rows()}
    for item in heldout + seeds:
        source = by_output[item[C.REFERENCE]]
        # the input both columns make: what dedup, decontamination and the report compare
        assert item[C.INPUT] == "\n\n".join(v for v in (source["instruction"], source["input"]) if v)
        assert item[C.COLUMNS] == source
    teacher = teacher_prompts(recipe, PromptTemplate(recipe.generate.template, "generate.template"), seeds, seeds)
    for item, prompt in zip(seeds, teacher):
        source = by_output[item[C.REFERENCE]]
        assert prompt == source["instruction"] + (f"\nWord: {source['input']}" if source["input"] else "") + "\nAnswer:"
    # a generated row as the train stage reads it back from Parquet: its columns as JSON text
    generated = [{**item, C.COLUMNS: json.dumps(item[C.COLUMNS]), C.COMPLETION: item[C.REFERENCE]} for item in seeds]
    for item, example in zip(seeds, training_examples(recipe, generated)):
        source = by_output[item[C.REFERENCE]]
        assert example["prompt"] == f"### Instruction:\n{source['instruction']}\n### Input:\n{source['input']}\n### Response:"


def test_validate_names_the_template_the_row_and_its_columns_when_a_variable_is_missing(tmp_path, tiny_model):
    data = tmp_path / "alpaca.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in alpaca_rows()))
    typo = recipe_for(tmp_path, tiny_model, {"path": "alpaca.jsonl", "input_field": "instruction", "target_field": "output"},
                      generate={"template": "{{ instrution }}"})
    with pytest.raises(DataError, match=rf"^generate.template: template failed to render: 'instrution' is undefined, "
                                        rf"rendering {data}:1 \(its columns: instruction, input, output\)$"):
        preflight(typo)
    # a column only some rows have: the first row without it is named, in the student's template too
    rows = alpaca_rows()
    rows[2]["hint"] = "irregular"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    partial = recipe_for(tmp_path, tiny_model, {"path": "alpaca.jsonl", "input_field": "instruction", "target_field": "output"},
                         train={"prompt_template": "{{ input }} ({{ hint }})"})
    with pytest.raises(DataError, match=rf"^train.prompt_template: .*'hint' is undefined, rendering {data}:1 "):
        preflight(partial)
    # the command a user runs: one line, exit 2, nothing started
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "users", "models": {"teacher": {"path": str(tiny_model)}, "student": {"path": str(tiny_model)}},
        "data": {"path": "alpaca.jsonl", "input_field": "instruction", "target_field": "output", "heldout": {"size": 4}},
        "generate": {"template": "{{ instruction }} {{ context }}"}, "train": {"prompt_template": "{{ input }}"},
        "evaluate": {"sets": [{"name": "heldout", "data": "heldout"}]}}))
    result = run_cli("validate", recipe, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"'context' is undefined, rendering {data}:1 (its columns: instruction, input, output)" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_chat_messages_are_read_as_a_conversation_openai_and_sharegpt_alike():
    openai = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Ready?"},
              {"role": "assistant", "content": "Yes."}, {"role": "user", "content": [{"type": "text", "text": "Plural "},
                                                                                  {"type": "text", "text": "of ox?"}]},
              {"role": "assistant", "content": "oxen"}]
    sharegpt = [{"from": "system", "value": SYSTEM}, {"from": "human", "value": "Ready?"}, {"from": "gpt", "value": "Yes."},
                {"from": "human", "value": "Plural of ox?"}, {"from": "gpt", "value": "oxen"}]
    for column in (openai, sharegpt):
        item = to_item({"messages": column, "_line": 3, "_where": "chat.jsonl:3"}, "messages", "messages")
        assert item[C.INPUT] == "Plural of ox?"  # the last user turn is what the teacher answers
        assert item[C.HISTORY] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Ready?"},
                                   {"role": "assistant", "content": "Yes."}]
        assert item[C.REFERENCES] == ["oxen"]  # target_field naming the conversation: its answer to that turn
    assert as_conversation(["a", "b"], "x") is None and as_conversation([{"text": "a"}], "x") is None
    with pytest.raises(DataError, match=r"^chat.jsonl:3: the conversation has no user turn to answer$"):
        to_item({"messages": [{"role": "system", "content": SYSTEM}], "_line": 3, "_where": "chat.jsonl:3"}, "messages", None)
    with pytest.raises(DataError, match=r"^chat.jsonl:3: a message has the role 'narrator'; expected one of system, "):
        to_item({"messages": [{"role": "narrator", "content": "x"}], "_line": 3, "_where": "chat.jsonl:3"}, "messages", None)
    # a conversation with no answer yet has no reference; a list of answers is a list of references
    assert read_references({"messages": openai[:4], "_where": "x"}, "messages") == []
    assert read_references({"t": ["oxen", "oxes"], "_where": "x"}, "t") == ["oxen", "oxes"]


def test_chat_data_is_refused_before_any_work_where_it_would_be_flattened(tmp_path, tiny_model):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows()))
    plain = recipe_for(tmp_path, tiny_model, {"path": "chat.jsonl", "input_field": "messages", "target_field": "messages"})
    with pytest.raises(DataError, match=rf"^{data}:1: data.input_field 'messages' holds chat messages, read only through "
                                        r"chat templates: set generate.chat and train.chat to true"):
        preflight(plain)
    # a list column read as text anywhere else is refused too, never sent as its Python repr
    as_text = recipe_for(tmp_path, tiny_model, {"path": "chat.jsonl", "input_field": ["messages"], "target_field": "messages"},
                         generate={"chat": True}, train={"chat": True})
    with pytest.raises(DataError, match=rf"^{data}:1: column 'messages' holds chat messages, where text is expected"):
        preflight(as_text)
    listed = tmp_path / "tags.jsonl"
    listed.write_text(json.dumps({"input": ["a", "b"], "target": "x"}) + "\n" + json.dumps({"input": "c", "target": "y"}) + "\n")
    tags = recipe_for(tmp_path, tiny_model, {"path": "tags.jsonl", "heldout": {"size": 1}})
    with pytest.raises(DataError, match=rf"^{listed}:1: column 'input' holds a list, where text is expected"):
        preflight(tags)


def test_a_conversation_reaches_the_teacher_after_its_history_and_the_student_in_its_own_template(tmp_path, tiny_model):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows()))
    recipe = recipe_for(tmp_path, tiny_model, {"path": "chat.jsonl", "input_field": "messages", "target_field": "messages"},
                        generate={"chat": True, "system_prompt": "Used only where a conversation has none."},
                        train={"chat": True, "system_prompt": "Used only where a conversation has none."})
    preflight(recipe)
    heldout, seeds = split_data(recipe)
    assert {r[C.REFERENCE] for r in heldout + seeds} == {p for _, p in WORDS}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    prompts = teacher_prompts(recipe, PromptTemplate("{{ input }}", "generate.template"), seeds, seeds,
                              functools.partial(chat_prompt, tok))
    for item, prompt in zip(seeds, prompts):
        turns = item[C.HISTORY] + [{"role": "user", "content": item[C.INPUT]}]
        assert prompt == tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        assert prompt.count(SYSTEM) == 1 and "Used only" not in prompt
    examples = training_examples(recipe, [{**s, C.COMPLETION: s[C.REFERENCE]} for s in seeds], tok)
    earlier = next(e for s, e in zip(seeds, examples) if len(s[C.HISTORY]) > 1)
    assert [m["role"] for m in earlier["prompt"]] == ["system", "user", "assistant", "user"]
    assert earlier["completion"] == [{"role": "assistant", "content": earlier["completion"][0]["content"]}]


def test_hub_datasets_folders_and_globs_are_read_as_seeds_and_evaluation_sets(tmp_path, tiny_model):
    """The same rows from a save_to_disk folder, from files matching a glob and (in a subprocess, offline from the
    local cache) from a Hub dataset: the same seeds."""
    import datasets

    rows = alpaca_rows()
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:8]), "test": datasets.Dataset.from_list(rows[8:])}
                         ).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "parts").mkdir()
    for n, part in enumerate((rows[:5], rows[5:8])):
        (tmp_path / "parts" / f"part-{n}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    fields = {"input_field": ["instruction", "input"], "target_field": "output", "heldout": {"size": 2}}
    sets = {"sets": [{"name": "heldout", "data": "heldout"},
                     {"name": "saved-test", "path": "saved", "input_field": ["instruction", "input"], "target_field": "output"}]}
    folder = recipe_for(tmp_path, tiny_model, {"path": "saved", **fields}, evaluate=sets)  # train split: the data
    globbed = recipe_for(tmp_path, tiny_model, {"path": "parts/part-*.jsonl", **fields}, evaluate=sets)
    assert split_data(folder) == split_data(globbed)
    from distill.data.eval_sets import load_items

    assert [it[C.REFERENCE] for it in load_items(folder.evaluate.sets[1], None)] == [r["output"] for r in rows[8:]]  # test split
    assert "first 4 rows read" in preflight(folder)[1]

    env = cache_hub_dataset(tmp_path / "hub", "someone/alpaca-mini", {"train": rows[:8], "test": rows[8:]})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "users", "models": {"teacher": {"path": str(tiny_model)}, "student": {"path": str(tiny_model)}},
        "data": {"hub": "someone/alpaca-mini", **fields}, "generate": {"template": "{{ input }}"},
        "train": {"prompt_template": "{{ input }}"},
        "evaluate": {"sets": [{"name": "heldout", "data": "heldout"},
                              {"name": "hub-test", "hub": "someone/alpaca-mini", "input_field": "instruction",
                               "target_field": "output"}]}}))
    result = run_cli("validate", recipe, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "checked data hub dataset someone/alpaca-mini: hub, first 8 rows read" in result.stderr
    assert "checked evaluate set 'hub-test' hub dataset someone/alpaca-mini: hub, first 4 rows read" in result.stderr
    missing = run_cli("validate", recipe, cwd=tmp_path, env={**env, "HF_DATASETS_CACHE": str(tmp_path / "empty")})
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "someone/alpaca-mini: not in the local datasets cache" in missing.stderr
    assert "datasets.load_dataset('someone/alpaca-mini')" in missing.stderr


E2E_RECIPE = """\
name: {name}
models:
  teacher: {{path: {model}, dtype: float32}}
  student: {{path: {model}, dtype: float32}}
data:
{data}
  heldout: {{size: 4}}
generate:
  template: "{template}"
  chat: {chat}
  sampling: {{max_tokens: 4, temperature: 1.0}}  # greedy, the tiny random model writes only newlines
filter:
  steps:
    - {{type: length, min_chars: 1, max_chars: 80}}
  keep_truncated: true  # the tiny random model rarely stops by itself
train:
  prompt_template: "{template}"
  chat: {chat}
  lora: {{r: 2, alpha: 4}}
  batch_size: 4
  max_length: 96
evaluate:
  sets:
    - {{name: heldout, data: heldout}}
  max_tokens: 4
"""


def test_a_chat_data_set_runs_end_to_end_with_each_conversation_whole(tmp_path, tiny_model):
    """`distill run` over OpenAI-style conversations: the teacher answers each last user turn after its history and
    system message, the student trains on those answers in its chat template, the held-out split is scored against
    the conversations' own answers."""
    import pyarrow.parquet as pq

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows()))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(E2E_RECIPE.format(name="chat", model=tiny_model, chat="true", template="{{ input }}",
                                        data="  path: chat.jsonl\n  input_field: messages\n  target_field: messages"))
    result = run_cli("run", recipe, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "chat"
    rows = pq.read_table(RunDir(run).generated).to_pylist()
    assert len(rows) == len(WORDS) - 4
    for r in rows:
        assert r[C.PROMPT].count(SYSTEM) == 1 and r[C.PROMPT].rstrip().endswith("<|im_start|>assistant")
        assert f"{r[C.INPUT]}<|im_end|>" in r[C.PROMPT] and r[C.HISTORY][0] == {"role": "system", "content": SYSTEM}
        assert ("Ready?" in r[C.PROMPT]) == (len(r[C.HISTORY]) == 3)
    # evaluation asks every model the held-out conversations whole, and scores against their own answers
    predictions = pq.read_table(run / "evaluate" / "predictions.parquet").to_pylist()
    assert {p["model"] for p in predictions} == {"base", "student", "teacher"} and len(predictions) == 12
    assert all(p["prompt"].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>") for p in predictions)
    assert {p["reference"] for p in predictions} <= {plural for _, plural in WORDS}


@pytest.mark.slow  # the Hub reading is in the default suite (test_hub_datasets_folders_and_globs_...); this adds the run
def test_an_alpaca_style_hub_data_set_runs_end_to_end_offline(tmp_path, tiny_model):
    """`distill run` over a Hub dataset with Alpaca's columns, read offline from the local datasets cache, its
    instruction and input joined into the input, the template reading both by name."""
    import pyarrow.parquet as pq

    env = cache_hub_dataset(tmp_path / "hub", "someone/alpaca-mini", {"train": alpaca_rows()})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(E2E_RECIPE.format(
        name="alpaca", model=tiny_model, chat="false",
        template="{{ instruction }}{% if row.input %} Word: {{ row.input }}{% endif %} Answer:",
        data="  hub: someone/alpaca-mini\n  input_field: [instruction, input]\n  target_field: output"))
    result = run_cli("run", recipe, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "alpaca"
    rows = pq.read_table(RunDir(run).generated).to_pylist()
    by_output = {r["output"]: r for r in alpaca_rows()}
    for r in rows:
        source = by_output[r[C.REFERENCE]]
        assert r[C.PROMPT] == source["instruction"] + (f" Word: {source['input']}" if source["input"] else "") + " Answer:"
        assert json.loads(r[C.COLUMNS]) == source
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["inputs"]["hub dataset someone/alpaca-mini"]["hub"] == "someone/alpaca-mini"
    for card, key in (("model_card.md", "datasets"), ("dataset_card.md", "source_datasets")):  # the Hub's metadata
        header = yaml.safe_load((run / card).read_text().split("---")[1])
        assert header[key] == ["someone/alpaca-mini"], card
