"""Reference NLL: read from the vLLM engine's prompt log-probabilities when the engine runs anyway, else from a
transformers forward pass on the device the machine has, in length-sorted batches sized to it. The figures
must not depend on which path ran or how the items were batched."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import SHARES_FINISHED_RUN

from distill import rows as C
from distill.models import device as D

pytestmark = SHARES_FINISHED_RUN  # one worker builds the shared run (conftest.py)


def test_batches_cover_every_sequence_once_and_stay_within_the_token_budget():
    rng = random.Random(0)
    lengths = [rng.randrange(1, 40) for _ in range(500)] + [90]  # one longer than the budget
    batches = list(D.length_sorted_batches(lengths, budget=64))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 64
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first: little padding


def test_the_cpu_is_used_when_asked_even_where_a_gpu_is(monkeypatch):
    monkeypatch.setenv("DISTILL_DEVICE", "cpu")
    assert D.torch_device().type == "cpu"
    assert D.tokens_per_pass(D.torch_device(), vocab_size=50_000) == D.CPU_TOKENS_PER_PASS


@pytest.fixture(scope="module")
def scoring(tiny_model, tmp_path_factory):
    from conftest import write_recipe

    from distill.evaluate.candidates import Candidate
    from distill.evaluate.scoring import Prompter, Scorer
    from distill.recipe import load_recipe

    recipe = load_recipe(write_recipe(tmp_path_factory.mktemp("device"), tiny_model))
    cand = Candidate(name="base", role="student", model_dir=tiny_model, spec=recipe.models.student)
    rng = random.Random(1)
    words = ["cat", "mouse", "criterion", "phenomenon", "box", "knife", "child", "cactus"]
    items = []
    for i in range(40):
        w = " ".join(rng.choice(words) for _ in range(rng.randrange(1, 9)))  # inputs of very different lengths
        items.append({C.ID: str(i), C.INPUT: w, C.REFERENCE: w + "s" * (i % 3 + 1), C.REFERENCES: [w + "s"], C.SLICE: "all"})
    prompts = [f"Plural of {it[C.INPUT]}:" for it in items]
    return recipe, cand, Prompter(tiny_model, recipe.models.student), Scorer(recipe), items, prompts


def one_at_a_time(model, tokenizer, prompt: str, reference: str) -> list[float]:
    """log p of each reference token, one unpadded sequence per forward pass."""
    import torch

    head, full = tokenizer(prompt).input_ids, tokenizer(prompt + reference).input_ids
    start = next(i for i, (a, b) in enumerate(zip(head + [None], full)) if a != b)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([full])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return [float(lp[j - 1, full[j]]) for j in range(start, len(full))]


@pytest.mark.parametrize("budget", [8, 64, 4096])
def test_reference_nll_is_the_same_whatever_the_batching(scoring, monkeypatch, budget):
    from distill.evaluate.scoring import reference_text

    recipe, cand, prompter, scorer, items, prompts = scoring
    monkeypatch.setattr(D, "CPU_TOKENS_PER_PASS", budget)  # 8: most sequences go alone; 4096: all in one pass
    got = scorer._reference_logprobs(prompter, cand, recipe.evaluate.sets[0], items, prompts)
    model = scorer._forward_model(cand)
    assert model.device.type == "cpu"
    for item, prompt, lps in zip(items, prompts, got):  # in the items' order, not the sorted one
        expected = one_at_a_time(model, prompter.tokenizer, prompt, reference_text(recipe, cand, item[C.REFERENCE]))
        assert lps == pytest.approx(expected, abs=1e-4)


def test_reference_nll_from_the_engine_equals_the_forward_pass(finished_run):
    """An engine without adapters or prefix caching gives the NLL from its prompt log-probabilities; an engine serving adapters
    (whose batched prompt log-probabilities this vLLM build cannot give) leaves it to the forward pass. The figures
    are the same either way, and the adapter counts."""
    from distill.evaluate.candidates import Candidate
    from distill.evaluate.scoring import Prompter, Scorer
    from distill.models.merge import adapter_rank
    from distill.models.vllm_engine import VLLMEngine
    from distill.recipe import load_recipe

    folder, recipe_file, run, _, _ = finished_run
    recipe = load_recipe(recipe_file)
    spec = recipe.models.student
    model_dir = Path(spec.path)
    items = [{C.ID: str(i), C.INPUT: w, C.REFERENCE: w + "es", C.REFERENCES: [w + "es"], C.SLICE: "all"}
             for i, w in enumerate(["box", "fox", "criterion", "phenomenon", "potato", "glass", "bus", "church"])]
    prompts = [f"Plural of {it[C.INPUT]}:" for it in items]
    prompter, plural = Prompter(model_dir, spec), recipe.evaluate.sets[0]
    base = Candidate(name="base", model_dir=model_dir, spec=spec)
    student = Candidate(name="student", model_dir=model_dir, spec=spec, adapter=run.adapter)
    read = {}
    no_prefix_cache = spec.model_copy(update={"engine": spec.engine.model_copy(update={"prefix_caching": False})})
    for lora, cand in ((None, base), (adapter_rank(run.adapter), student)):
        engine = VLLMEngine(model_dir, no_prefix_cache, max_lora_rank=lora)
        try:
            scorer = Scorer(recipe)
            scorer._generate(engine, cand, plural, prompts)  # evaluate answers before it reads NLL
            read[cand.name] = scorer._reference_logprobs(prompter, cand, plural, items, prompts, engine)
            source = scorer.nll_sources[(cand.name, "plural")]["source"]
        finally:
            engine.close()
        forward = Scorer(recipe)._reference_logprobs(prompter, cand, plural, items, prompts)
        assert source == ("vLLM prompt log-probabilities" if lora is None else "transformers forward pass")
        assert [len(x) for x in read[cand.name]] == [len(x) for x in forward]
        for a, b in zip(read[cand.name], forward):
            assert a == pytest.approx(b, abs=1e-4), cand.name
    # the adapter was applied: the trained student reads the references otherwise than its base
    assert max(abs(a - b) for x, y in zip(read["base"], read["student"]) for a, b in zip(x, y)) > 1e-2
