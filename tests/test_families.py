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
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, write_recipe

from distill.data.captures import TokenCapture
from distill.models.tiny import FAMILIES, build_tiny_model

OTHER_FAMILIES = [f for f in FAMILIES if f != "smollm2"]  # SmolLM2's conventions are every other test's
TOP_K = 20  # the teacher's log-probabilities kept per position


def _recipe(folder: Path, student: Path, teacher: Path) -> Path:
    text = TINY_RECIPE.replace("  teacher: {{path: {model}, dtype: float32}}",
                               f"  teacher: {{{{path: {teacher}, dtype: float32}}}}")
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
    recipe = _recipe(folder, student, teacher)
    run_generate(load_recipe(recipe), RunDir(folder / "run"))
    return family, recipe, folder / "run", teacher


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
        words = [t for t in samples[0]["ids"] if t != stop][:3]
        ended = {**samples[0], "ids": words + [stop]}  # an answer that ended with the student's stop
        loop._score(samples + [ended])
        loss, figures = loop._on_policy_loss(samples)
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
        assert _one_bos(prompt_ids(student_tok, s["prompt"]), student_tok.bos_token_id), s["prompt"][:40]
    # the sampler drew from the prompt the learner reads: before any update their log-probabilities agree
    assert figures["policy_lag"] < 1e-3, (family, chat, figures["policy_lag"])
    assert torch.isfinite(loss)

    model = AutoModelForCausalLM.from_pretrained(teacher, dtype=torch.float32).eval()
    teacher_stops = sorted(loop.teacher_stops)
    for s in samples:
        head = prompt_ids(teacher_tok, s["teacher_prompt"])
        assert _one_bos(head, teacher_tok.bos_token_id), s["teacher_prompt"][:40]
        assert s["teacher"].token_ids == list(s["ids"])  # exactly the sampled ids (the stop read as the student's)
        asked = list(s["ids"]) if s["ids"][-1] != stop or stop in loop.teacher_stops else list(s["ids"][:-1]) + [min(teacher_stops)]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([head + asked])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        expected = [lp[len(head) + j - 1, t].item() for j, t in enumerate(asked)]
        if s["ids"][-1] == stop:
            # the teacher's probability of stopping at all, where the student stopped: the stop it was asked for and
            # its other stops among its top K (what KD reads too)
            at = lp[len(head) + len(asked) - 2]
            kth = at.topk(TOP_K).values[-1].item()
            if any(abs(at[t].item() - kth) < 1e-4 for t in teacher_stops):
                continue  # a stop on the top K's edge: which side vLLM puts it is a tie
            read = [t for t in teacher_stops if t == asked[-1] or at[t].item() >= kth]
            expected[-1] = math.log(sum(at[t].exp().item() for t in read))
        assert s["teacher"].sampled_logprobs == pytest.approx(expected, abs=1e-4), (family, chat)
        for ids, lps in zip(s["teacher"].top_ids, s["teacher"].top_logprobs):  # no other stop keeps its mass
            assert all(lp == -math.inf for i, lp in zip(ids, lps) if i in loop.teacher_stops and i != stop)


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
