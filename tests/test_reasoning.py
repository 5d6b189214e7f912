"""Reasoning teachers (Qwen3 and its kind): what the student learns of an answer written after `<think> ... </think>`,
what a cut-off thought becomes, and the chat template settings that ask for no thinking at all. The tokenizer is the
family zoo's Qwen3 (its `<think>` and `</think>` are added tokens, its template writes an empty think block when
enable_thinking is false)."""

from __future__ import annotations

import math

import pytest

from distill.data.captures import TokenCapture, captured_completion
from distill.generate.sample import Sample
from distill.generate.sampling import strip_reasoning
from distill.models.reasoning import split_reasoning
from distill.models.tiny import build_tiny_model
from distill.prompts.template import chat_prompt, with_chat_template
from distill.prompts.tokens import continuation_ids
from distill.recipe import ModelSpec


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = build_tiny_model(tmp_path_factory.mktemp("qwen3") / "teacher", family="qwen3", variant="instruct")
    return folder, AutoTokenizer.from_pretrained(folder)


def capture_of(tokenizer, text: str, stop: int) -> TokenCapture:
    """A capture of `text` then the stop, as vLLM returns one: each token with a top-K that holds it."""
    ids = continuation_ids(tokenizer, text) + [stop]
    top = [[t, (t + 1) % len(tokenizer)] for t in ids]
    return TokenCapture(token_ids=ids, top_ids=top, top_logprobs=[[math.log(0.6), math.log(0.3)]] * len(ids),
                        sampled_logprobs=[math.log(0.6)] * len(ids))


def test_the_answer_after_the_thinking_is_the_completion_and_its_tokens_alone_are_captured(qwen3):
    _, tok = qwen3
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    text = "<think>\nOx is irregular: the plural adds -en.\n</think>\n\noxen"
    sample = Sample(text, "stop", tokens=0, capture=capture_of(tok, text, stop))
    strip_reasoning(sample, tok, "</think>")
    assert sample.text == "oxen" and sample.failure is None
    assert sample.reasoning == "<think>\nOx is irregular: the plural adds -en.\n</think>"
    # what KD reads: the kept text is exactly the captured tokens before the teacher's stop
    found, why = captured_completion({"token_ids": sample.capture.token_ids}, sample.text, tok, {stop})
    assert why is None and tok.decode(found[0]) == "oxen" and found[1]  # and the stop after them is the teacher's
    assert len(sample.capture.top_ids) == len(sample.capture.token_ids) == len(found[0]) + 1


def test_an_end_marker_spread_over_several_tokens_is_found_too(qwen3):
    _, tok = qwen3
    text = "Let me think. Plurals of words ending in -ch add -es. So: churches"
    ids = continuation_ids(tok, text)
    end = "So:"
    assert end not in [tok.decode([i]) for i in ids]  # no single token holds it
    sample = Sample(text, "stop", tokens=0, capture=capture_of(tok, text, tok.eos_token_id))
    strip_reasoning(sample, tok, end)
    assert sample.text == "churches"
    assert tok.decode(sample.capture.token_ids[:-1]).strip() == "churches"


def test_a_thought_cut_off_is_a_failure_with_its_reason_and_an_answer_without_thinking_is_kept_whole():
    assert split_reasoning("<think>\nhmm, the plural of", "length", "</think>").failure == "cut at max_tokens while reasoning"
    assert split_reasoning("<think>\nhmm", "stop", "</think>").failure == "reasoning never closed (</think>)"
    assert split_reasoning("<think>ok</think>\n\n", "stop", "</think>").failure == "no answer after the reasoning"
    plain = split_reasoning("oxen", "stop", "</think>")
    assert (plain.text, plain.reasoning, plain.failure) == ("oxen", None, None)
    sample = Sample("<think>\nhmm", "length", tokens=2)
    strip_reasoning(sample, None, "</think>")
    assert sample.failure == "cut at max_tokens while reasoning" and sample.text == ""


def test_chat_template_settings_ask_a_qwen3_teacher_for_no_thinking_or_replace_its_template(qwen3, tmp_path):
    folder, tok = qwen3
    thinking = chat_prompt(tok, "Plural of ox?")
    assert thinking.endswith("<|im_start|>assistant\n")
    spec = ModelSpec.model_validate({"path": str(folder), "chat_template_kwargs": {"enable_thinking": False}},
                                    context={"base_dir": str(tmp_path)})
    assert chat_prompt(tok, "Plural of ox?", **spec.chat_template_kwargs) == thinking + "<think>\n\n</think>\n\n"
    # a template of the recipe's own, given as a file beside it, replaces the model's
    (tmp_path / "plain.jinja").write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                                          "{% if add_generation_prompt %}assistant:{% endif %}")
    own = ModelSpec.model_validate({"path": str(folder), "chat_template": "plain.jinja"}, context={"base_dir": str(tmp_path)})
    from transformers import AutoTokenizer

    assert chat_prompt(with_chat_template(AutoTokenizer.from_pretrained(folder), own), "Plural of ox?") == \
        "user: Plural of ox?\nassistant:"


def test_the_students_chat_template_variables_go_with_each_training_example(qwen3, tmp_path):
    """TRL hands an example's chat_template_kwargs to the chat template: the student trains with the prompts it is
    sampled and evaluated with."""
    from distill.recipe import Recipe
    from distill.train.formats import training_examples

    folder, tok = qwen3
    recipe = Recipe.model_validate({
        "name": "r", "models": {"teacher": {"path": str(folder)},
                                "student": {"path": str(folder), "chat_template_kwargs": {"enable_thinking": False}}},
        "data": {"path": str(tmp_path), "heldout": {"size": 1}}, "generate": {"template": "{{ input }}"},
        "train": {"prompt_template": "{{ input }}", "chat": True},
        "evaluate": {"sets": [{"name": "h", "data": "heldout"}]}})
    [example] = training_examples(recipe, [{"id": "1", "input": "Plural of ox?", "completion": "oxen"}], tok)
    assert example["chat_template_kwargs"] == {"enable_thinking": False}


def test_a_students_own_chat_template_is_the_one_it_trains_and_is_prompted_with(qwen3, tmp_path):
    from distill.prompts.student import student_prompt
    from distill.prompts.template import PromptTemplate
    from distill.recipe import Recipe
    from distill.train.formats import training_examples
    from distill.train.stage import build_trainer

    folder, _ = qwen3
    own = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>{% endfor %}"
           "{% if add_generation_prompt %}[assistant] {% endif %}")
    recipe = Recipe.model_validate({
        "name": "r", "models": {"teacher": {"path": str(folder)}, "student": {"path": str(folder), "chat_template": own}},
        "data": {"path": str(tmp_path), "heldout": {"size": 1}}, "generate": {"template": "{{ input }}"},
        "train": {"prompt_template": "{{ input }}", "chat": True, "max_length": 64, "batch_size": 1,
                  "lora": {"r": 2, "alpha": 4}},
        "evaluate": {"sets": [{"name": "h", "data": "heldout"}]}})
    row = {"id": "1", "input": "Plural of ox?", "completion": "oxen"}
    trainer, tok = build_trainer(recipe, folder, training_examples(recipe, [row], tok_of(folder, recipe)), tmp_path / "out")
    prompt = student_prompt(recipe, PromptTemplate("{{ input }}", "train.prompt_template"), row, tok)
    assert prompt == "[user] Plural of ox?<|im_end|>[assistant] "
    assert tok.decode(trainer.train_dataset[0]["input_ids"]).startswith(prompt + "oxen")


def tok_of(folder, recipe):
    from transformers import AutoTokenizer

    return with_chat_template(AutoTokenizer.from_pretrained(folder), recipe.models.student)
