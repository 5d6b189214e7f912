"""What must hold whatever the model family. Each family's tiny model (distill.models.tiny) carries its public
special-token conventions: Llama 3 (the tokenizer adds <|begin_of_text|> and the chat template writes it too; turns
end with <|eot_id|>; the instruct model stops on three ids, the base model on <|end_of_text|>), Qwen2.5 and Qwen3
(no BOS, <|im_end|>; instruct stops <|im_end|> and <|endoftext|>, base EOS <|endoftext|>), Gemma (<bos> both ways,
<end_of_turn>, no system role) and Mistral (<s> both ways, [INST], </s>); SmolLM2's are the rest of the suite's.

An instruct teacher over its base student, in the student's plain format and in its chat format:
- the learner and the sampler see the same token ids for a prompt (one BOS), so the step-1 policy lag is ~0;
- the teacher scores exactly the sampled ids, after its own prompt with one BOS;
- the teacher's probability of stopping at all is what the student's stop is measured against, wherever the
  student's stop sits among the teacher's, and KD reads it the same way.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, write_recipe

from distill.data.captures import TokenCapture
from distill.models.tiny import FAMILIES, build_tiny_model

OTHER_FAMILIES = [f for f in FAMILIES if f != "smollm2"]  # SmolLM2's conventions are every other test's
TOP_K = 20  # the teacher's log-probabilities kept per position


def _recipe(folder: Path, student: Path, teacher: Path, family: str = "") -> Path:
    # Qwen3's teacher is asked for its answer without thinking first, as its chat template offers
    no_thinking = ", chat_template_kwargs: {{enable_thinking: false}}" if family == "qwen3" else ""
    text = TINY_RECIPE.replace("  teacher: {{path: {model}, dtype: float32}}",
                               f"  teacher: {{{{path: {teacher}, dtype: float32{no_thinking}}}}}")
    text = text.replace("  max_seeds: 40\n", "  max_seeds: 16\n")
    text = text.replace("  chunk_size: 16\n", "  chunk_size: 16\n  chat: true  # an instruct teacher, in its chat template\n")
    text = text.replace("  batch_size: 8\n", "  batch_size: 8\n  objective: on_policy\n"
                        f"  on_policy: {{{{steps: 1, prompts_per_step: 4, max_tokens: 5, top_k: {TOP_K}}}}}\n")
    return write_recipe(folder, student, text)


@pytest.fixture(scope="module", params=OTHER_FAMILIES)
def zoo(request, tmp_path_factory):
    """(family, the recipe, a run directory whose generate stage is done, in this process: its seeds are what
    on-policy reads): an instruct teacher of the family and a base student of it (the same vocabulary, other
    weights)."""
    from distill.generate.stage import run_generate
    from distill.recipe import load_recipe
    from distill.run_dir import RunDir

    family = request.param
    folder = tmp_path_factory.mktemp(family.replace(".", ""))
    teacher = build_tiny_model(folder / "teacher", family=family, variant="instruct", seed=1)
    student = build_tiny_model(folder / "student", family=family, variant="base", seed=0)
    recipe = _recipe(folder, student, teacher, family)
    run_generate(load_recipe(recipe), RunDir(folder / "run"))
    return family, recipe, folder / "run", teacher


def test_the_teachers_chat_template_variables_reach_its_prompts(zoo):
    """models.teacher.chat_template_kwargs: Qwen3's enable_thinking false writes an empty think block after the
    assistant's header, so the teacher answers at once; other families' prompts end at the header."""
    import pyarrow.parquet as pq

    from distill.run_dir import RunDir

    family, _, ready, _ = zoo
    prompts = [r["prompt"] for r in pq.read_table(RunDir(ready).generated).to_pylist()]
    assert prompts and all(p.endswith("<think>\n\n</think>\n\n") == (family == "qwen3") for p in prompts)


def _one_bos(ids: list[int], bos: int | None) -> bool:
    return bos is None or (ids[0] == bos and ids.count(bos) == 1)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_sampler_learner_and_teacher_read_the_same_tokens_and_the_teachers_stop_is_the_students(zoo, chat, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.prompts.tokens import prompt_ids
    from distill.recipe import load_recipe
    from distill.run_dir import RunDir
    from distill.train.on_policy import OnPolicyLoop

    family, recipe_file, ready, teacher = zoo
    recipe = load_recipe(recipe_file, [f"train.chat={str(chat).lower()}"])
    loop = OnPolicyLoop(recipe, RunDir(shutil.copytree(ready, tmp_path / "run")), kept=[])
    loop._models()
    loop._engines()
    try:
        samples = loop._sample(0, loop._batch(0), loop._save_adapter(loop.adapters / "step-0"))
        stop = loop.student_stop
        words = [t for t in samples[0].ids if t != stop][:3]
        ended = replace(samples[0], ids=words + [stop])  # an answer that ended with the student's stop
        loop._score(samples + [ended])
        loss, figures = loop._loss(samples)
        samples.append(ended)
    finally:
        loop.sampler.close()
        loop.scorer.close()

    student_tok, teacher_tok = loop.tokenizer, AutoTokenizer.from_pretrained(teacher)
    f = FAMILIES[family]
    expected_stop = student_tok.convert_tokens_to_ids(f.base_eos) if not chat else end_of_turn(student_tok, family)
    assert stop == expected_stop
    assert loop.teacher_stops == {teacher_tok.convert_tokens_to_ids(t) for t in f.instruct_stops}
    for s in samples:
        assert _one_bos(prompt_ids(student_tok, s.prompt), student_tok.bos_token_id), s.prompt[:40]
    # the sampler drew from the prompt the learner reads: before any update their log-probabilities agree
    assert figures["policy_lag"] < 1e-3, (family, chat, figures["policy_lag"])
    assert torch.isfinite(loss)

    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    teacher_stops = sorted(loop.teacher_stops)
    for s in samples:
        head = prompt_ids(teacher_tok, s.teacher_prompt)
        assert _one_bos(head, teacher_tok.bos_token_id), s.teacher_prompt[:40]
        assert s.teacher.token_ids == list(s.ids)  # exactly the sampled ids (the stop read as the student's)
        asked = list(s.ids) if s.ids[-1] != stop or stop in loop.teacher_stops else list(s.ids[:-1]) + [min(teacher_stops)]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([head + asked])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        expected = [lp[len(head) + j - 1, t].item() for j, t in enumerate(asked)]
        if s.ids[-1] == stop:
            # the teacher's probability of stopping at all, where the student stopped: the stop it was asked for and
            # its other stops among its top K (what KD reads too)
            at = lp[len(head) + len(asked) - 2]
            kth = at.topk(TOP_K).values[-1].item()
            if any(abs(at[t].item() - kth) < 1e-4 for t in teacher_stops):
                continue  # a stop on the top K's edge: which side vLLM puts it is a tie
            read = [t for t in teacher_stops if t == asked[-1] or at[t].item() >= kth]
            expected[-1] = math.log(sum(at[t].exp().item() for t in read))
        assert s.teacher.sampled_logprobs == pytest.approx(expected, abs=1e-4), (family, chat)
        for ids, lps in zip(s.teacher.top_ids, s.teacher.top_logprobs):  # no other stop keeps its mass
            assert all(lp == -math.inf for i, lp in zip(ids, lps) if i in loop.teacher_stops and i != stop)


WRITING_LOOP = "loop={rounds: 2, strategy: errors, budget: {per_round: 2}, dev: {size: 4}, errors: {synthesize: true, start: 'Word:'}}"
# the assistant turn each family's chat template opens, as its public template writes it
ASSISTANT_HEADER = {"llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n", "qwen2.5": "<|im_start|>assistant\n",
                    "qwen3": "<|im_start|>assistant\n<think>\n\n</think>\n\n", "gemma": "<start_of_turn>model\n",
                    "mistral": "[/INST]"}


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_the_teacher_writes_a_loops_inputs_in_its_own_format_with_one_bos(zoo, chat):
    """loop.errors.synthesize: a write request is loop.errors.template over one dev error, through the teacher's chat
    template when generate.chat is on (its chat_template_kwargs too: Qwen3's empty think block), with errors.start
    opening the teacher's reply; it reaches the engine as ids with one BOS, as every prompt does."""
    import functools

    from transformers import AutoTokenizer

    from distill import rows as C
    from distill.loop.written import write_requests
    from distill.prompts.template import PromptTemplate, chat_prompt, with_chat_template
    from distill.prompts.tokens import prompt_ids
    from distill.recipe import load_recipe

    family, recipe_file, _, teacher = zoo
    recipe = load_recipe(recipe_file, [f"generate.chat={str(chat).lower()}", WRITING_LOOP])
    spec = recipe.models.teacher
    tok = with_chat_template(AutoTokenizer.from_pretrained(teacher), spec)  # as the teacher's engine holds it
    render = functools.partial(chat_prompt, tok, **spec.chat_template_kwargs)  # its apply_chat_template
    error = {C.ID: "d1", C.INPUT: "mouse", C.REFERENCE: "mice", "prediction": "mouses", C.SLICE: "irregular"}
    prompts, seeds = write_requests(recipe, PromptTemplate(recipe.loop.errors.template, "t"), 2,
                                    [(error, 0), (error, 1)], render)
    assert prompts[0] == prompts[1] and seeds[0] != seeds[1]  # two writes from one error: other samples
    prompt = prompts[0]
    assert "Input: mouse\nCorrect answer: mice\nThe student's answer: mouses" in prompt
    assert _one_bos(prompt_ids(tok, prompt), tok.bos_token_id), prompt[:40]
    if chat:
        assert prompt.endswith(ASSISTANT_HEADER[family] + "Word:"), prompt[-80:]
    else:
        assert prompt.endswith("without its answer.\nWord:") and ASSISTANT_HEADER[family].strip() not in prompt


def end_of_turn(tokenizer, family: str) -> int:
    """The token each family's chat template ends an assistant turn with, as its public template writes it."""
    token = {"llama3": "<|eot_id|>", "qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "gemma": "<end_of_turn>",
             "mistral": "</s>", "smollm2": "<|im_end|>"}[family]
    return tokenizer.convert_tokens_to_ids(token)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_kd_and_on_policy_read_the_teachers_stop_mass_alike(family, chat, tmp_path):
    """At the position where the student stops, KD's target and on-policy's score give the student's stop the
    teacher's whole probability of stopping, and no top-K slot keeps a teacher stop under another id."""
    from transformers import AutoTokenizer

    from distill.prompts.template import end_of_turn_id
    from distill.train.kd import kd_example
    from distill.train.stops import capture_with_stops_as_eos, teacher_reads

    f = FAMILIES[family]
    tok = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "student", family=family, variant="base"))
    eos = end_of_turn_id(tok) if chat else tok.eos_token_id
    assert eos == (end_of_turn(tok, family) if chat else tok.convert_tokens_to_ids(f.base_eos))
    stops = {tok.convert_tokens_to_ids(t) for t in f.instruct_stops}
    word = tok.convert_tokens_to_ids(tok.tokenize("cats")[0])
    # the teacher's top 4 at the stop position: most of its mass on its stops, spread as its family spreads it
    ranked = sorted(stops) + [word]
    probs = [0.6, 0.25, 0.05][:len(stops)] + [0.05]
    top = ([i for i in ranked], [math.log(p) for p in probs])
    mass = sum(p for i, p in zip(ranked, probs) if i in stops)

    kd = kd_example([5, 6], {"top_ids": [top[0]], "top_logprobs": [top[1]]}, [], True, eos, None, stops)
    kd_stop = max(lp for i, lp in zip(kd["teacher_ids"][0], kd["teacher_logprobs"][0]) if i == eos)

    asked = teacher_reads([eos], stops, eos)
    sampled = dict(zip(*top)).get(asked[-1], math.log(0.01))
    on_policy = capture_with_stops_as_eos(TokenCapture(asked, [top[0]], [top[1]], [sampled]), [eos], stops, eos)
    assert on_policy.token_ids == [eos]
    assert math.exp(kd_stop) == pytest.approx(mass) and math.exp(on_policy.sampled_logprobs[0]) == pytest.approx(mass)
    for ids, lps in ((kd["teacher_ids"][0], kd["teacher_logprobs"][0]), (on_policy.top_ids[0], on_policy.top_logprobs[0])):
        assert all(lp == -math.inf for i, lp in zip(ids, lps) if i in stops and i != eos)


@pytest.fixture(scope="module")
def base_students(tmp_path_factory) -> dict[str, Path]:
    """Each family's base model, as a student."""
    folder = tmp_path_factory.mktemp("base-students")
    return {f: build_tiny_model(folder / f.replace(".", ""), family=f, variant="base") for f in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("chat", [False, True, "conversation"], ids=["plain", "chat", "conversation"])
def test_sft_trains_on_the_prompt_ids_the_sampler_and_evaluation_read_and_learns_the_stop_they_stop_on(
        base_students, family, chat, tmp_path):
    """TRL's SFT trainer, built as the train stage builds it, reads each row's prompt as the same token ids (one BOS)
    that the on-policy sampler, KD and evaluation are handed, and its last learned label is the stop they stop on
    (student_stop_id: the EOS in the plain format, the template's end of turn in the chat format). A conversation's
    earlier turns and system message are in that prompt and learned from nowhere: only the answer is; a template
    without a system role (Gemma's, Mistral's) reads the system message at the head of the first user turn."""
    from test_filters import recipe_dict, row

    from distill.prompts.student import student_prompt, student_stop_id
    from distill.prompts.template import PromptTemplate
    from distill.prompts.tokens import prompt_ids
    from distill.recipe import Recipe
    from distill.train.formats import check_stop_learned, training_examples
    from distill.train.stage import build_trainer

    student = base_students[family]
    d = recipe_dict(student, [])
    d["train"] = {"prompt_template": "Plural of {{ input }}:", "max_length": 160, "batch_size": 4, "chat": bool(chat),
                  "lora": {"r": 2, "alpha": 4}, "system_prompt": "Answer in one word." if chat == "conversation" else None}
    recipe = Recipe.model_validate(d)
    earlier = [{"role": "system", "content": "Plurals only."}, {"role": "user", "content": "Ready?"},
               {"role": "assistant", "content": "Yes."}]
    rows = [row(i, c, inp=f"word{i}", history=earlier[i % 2:] if chat == "conversation" else None)
            for i, c in enumerate(["cats", "dogs", "mice"])]
    from transformers import AutoTokenizer

    examples = training_examples(recipe, rows, AutoTokenizer.from_pretrained(student))
    trainer, tok = build_trainer(recipe, student, examples, tmp_path / "checkpoints")
    stop = student_stop_id(recipe, tok)
    assert stop == (end_of_turn(tok, family) if chat else tok.eos_token_id)
    if chat == "conversation":  # the data's system message where it has one, the recipe's where it has none
        said = [tok.decode(t["input_ids"]) for t in trainer.train_dataset]
        assert "Plurals only." in said[0] and "Answer in one word." not in said[0] and "Ready?" in said[0]
        assert "Answer in one word." in said[1] and "Ready?" in said[1]
    template = PromptTemplate(recipe.train.prompt_template, "train.prompt_template")
    for r, trained in zip(rows, trainer.train_dataset):
        head = prompt_ids(tok, student_prompt(recipe, template, r, tok))
        assert trained["input_ids"][:len(head)] == head and _one_bos(trained["input_ids"], tok.bos_token_id)
        assert tok.decode(trained["input_ids"][len(head):], skip_special_tokens=True).strip() == r["completion"]
    learned = check_stop_learned(trainer, tok, ["\n"], len(rows), 160, 0.0, stop)
    assert learned["eos_id"] == stop and learned["rows_without_eos"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("family", OTHER_FAMILIES)
def test_a_base_student_goes_through_sft_kd_evaluation_and_on_policy_repair_on_every_family(family, tmp_path):
    """End to end, per family: the instruct teacher scores the seeds' real plurals in its chat template (score mode,
    its top 20 captured), the base student trains with sft+kd (cross-entropy and the divergence from the teacher's
    distributions, its stops read as the student's EOS: every row's captures line up), evaluation scores base,
    student and teacher on the held-out words, the cards are written; then on-policy training continues from that
    adapter with repair prompts scored by the base student, its first step sampled from the policy the learner
    reads (lag < 1e-3), and evaluation runs again."""
    import pyarrow.parquet as pq
    from conftest import run_cli

    from distill.run_dir import RunDir

    teacher = build_tiny_model(tmp_path / "teacher", family=family, variant="instruct", seed=1)
    student = build_tiny_model(tmp_path / "student", family=family, variant="base", seed=0)
    text = TINY_RECIPE.replace("  teacher: {{path: {model}, dtype: float32}}",
                               f"  teacher: {{{{path: {teacher}, dtype: float32}}}}")
    text = text.replace("  chunk_size: 16\n", "  chunk_size: 16\n  chat: true\n  mode: score\n  logprobs: 20\n")
    text = text.replace("  batch_size: 8\n", "  batch_size: 8\n  objective: sft+kd\n  epochs: 10\n"
                        "  learning_rate: 0.01\n")
    text = text.replace("  max_tokens: 6\n", "  max_tokens: 6\n  models: [base, student, teacher]\n")
    recipe = write_recipe(tmp_path, student, text)
    done = run_cli("run", recipe, "--run-dir", tmp_path / "run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = RunDir(tmp_path / "run")
    targets = run.read_marker("train")["summary"]["teacher_targets"]
    assert targets["rows_with_teacher_targets"] == targets["rows"] > 0  # every row's captures lined up
    f = FAMILIES[family]
    if set(f.instruct_stops) != {f.base_eos}:
        assert targets["teacher_stop_read_as_student_eos"]
    predictions = pq.read_table(run.predictions).to_pylist()
    assert {p["model"] for p in predictions} == {"base", "student", "teacher"}
    assert (run.root / "model_card.md").is_file()

    # then on-policy from that adapter, with repair prompts scored by the base student, and evaluation again
    import json
    import shutil

    again = shutil.copytree(run.root, tmp_path / "on-policy")
    repair = tmp_path / "repair.jsonl"
    repair.write_text("".join(json.dumps({"input": f"What is {a} plus {b}?"}) + "\n" for a in range(3) for b in range(3)))
    on_policy = ("train.objective=on_policy", f"train.on_policy.start_from={run.adapter}", "train.learning_rate=0.0005",
                 "train.on_policy={steps: 2, prompts_per_step: 4, max_tokens: 5, top_k: 20, "
                 f"repair: {{path: {repair}, share: 0.5}}}}")
    for stage in ("train", "evaluate"):
        done = run_cli(stage, recipe, "--run-dir", again, *on_policy)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    steps = json.loads((again / "train" / "log.json").read_text())["history"]
    assert steps[0]["policy_lag"] < 1e-3 and all(h["repair_tokens"] > 0 for h in steps)
