"""The evaluation cache: a model scored before on the same items, with the same prompts and settings, is not
scored again (and starts no engine); any change in what determines its results scores it again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PLURAL, ROOT, write_recipe

from distill.evaluate.cache import NO_CACHE_ENV, EvalCache, open_cache
from distill.evaluate.candidates import Candidate
from distill.evaluate.scoring import Prompter, Scorer, score_candidates
from distill.data.eval_sets import load_items
from distill.models import vllm_engine
from distill.recipe import load_recipe

BOTH = "evaluate.sets=[{{name: plural, path: {data}, limit: 8, metrics: [exact_match, nll]}}]"
NLL = "evaluate.sets=[{{name: plural, path: {data}, limit: 8, metrics: [nll]}}]"


@pytest.fixture
def engine_starts(monkeypatch):
    """How many vLLM engines scoring starts (the real engine still runs)."""
    started = []
    real = vllm_engine.VLLMEngine.__init__

    def counting(self, *args, **kwargs):
        started.append(args[0])
        real(self, *args, **kwargs)

    monkeypatch.setattr(vllm_engine.VLLMEngine, "__init__", counting)
    return started


def _setup(recipe_path, overrides, candidates, data):
    recipe = load_recipe(recipe_path, [o.format(data=data) for o in overrides])
    sets = {s.name: (s, load_items(s, None)) for s in recipe.evaluate.sets}
    cands = candidates or [Candidate("base", Path(recipe.models.student.path), recipe.models.student)]
    return recipe, sets, [Candidate(c.name, c.model_dir, recipe.models.student, adapter=c.adapter) for c in cands]


def score(recipe_path, *overrides, candidates=None, data=PLURAL):
    recipe, sets, cands = _setup(recipe_path, overrides, candidates, data)
    return score_candidates(recipe, cands, sets, [], open_cache(recipe))


def reused(recipe_path, *overrides, data=PLURAL) -> bool:
    """Whether scoring the base model would take every answer from the cache (and start no engine)."""
    recipe, sets, cands = _setup(recipe_path, overrides, None, data)
    prompter = Prompter(cands[0].model_dir, cands[0].spec)
    return not Scorer(recipe).needs_engine(cands[0], prompter, sets, [], open_cache(recipe))


def without_flag(rows):
    return [{k: v for k, v in r.items() if k != "from_cache"} for r in rows]


@pytest.fixture(scope="module")
def cached_recipe(tmp_path_factory, tiny_model):
    """A recipe with its own cache folder, and the base model's answers and scores on 8 items, scored once."""
    folder = tmp_path_factory.mktemp("evalcache")
    recipe = write_recipe(folder, tiny_model)
    with open(recipe, "a") as f:
        f.write("  cache: cache\n")  # relative to the recipe's folder
    cold = score(recipe, BOTH)
    return recipe, folder / "cache", cold


def test_a_second_scoring_reuses_every_result_and_starts_no_engine(cached_recipe, engine_starts):
    recipe, cache_dir, cold = cached_recipe
    assert len(cold) == 8 and not any(r["from_cache"] for r in cold)
    assert len(list(cache_dir.glob("*/*.json"))) == 1  # one entry: the base model on the set
    warm = score(recipe, BOTH)
    assert engine_starts == []
    assert all(r["from_cache"] for r in warm)
    assert without_flag(warm) == without_flag(cold)  # answers, finish reasons, scores, prompts: as scored


@pytest.mark.parametrize("change", [
    ["evaluate.sets=[{{name: plural, path: {data}, limit: 8, metrics: [exact_match, nll], max_tokens: 5}}]"],
    ["evaluate.max_tokens=5"],
    ["evaluate.stop=['.']"],
    ["evaluate.temperature=0.5"],
    ["evaluate.seed=7"],
    ["train.prompt_template='Plural of {{{{ input }}}}? '"],
    ["evaluate.sets=[{{name: plural, path: {data}, limit: 8, metrics: [exact_match_normalized, nll]}}]"],
    ["evaluate.sets=[{{name: plural, path: {data}, limit: 7, metrics: [exact_match, nll]}}]"],
    ["models.student.dtype=bfloat16"],
    ["models.student.engine.max_model_len=512"],
], ids=lambda c: c[0].split("=")[0] + ("" if "sets" not in c[0] else "." + c[0].split(",")[-1].strip(" }]")))
def test_a_change_in_decoding_prompts_metrics_items_or_model_settings_scores_again(cached_recipe, change):
    recipe, _, _ = cached_recipe
    assert reused(recipe, BOTH)
    assert not reused(recipe, *change) if change[0].startswith("evaluate.sets") else not reused(recipe, BOTH, *change)


def test_a_changed_reference_scores_again(cached_recipe, tmp_path):
    recipe, _, _ = cached_recipe
    task = json.loads(PLURAL.read_text())
    task["examples"][0]["target"] = "not " + str(task["examples"][0]["target"])
    edited = tmp_path / "plural.json"
    edited.write_text(json.dumps(task))
    assert not reused(recipe, BOTH, data=edited)
    copy = tmp_path / "copy.json"
    copy.write_text(PLURAL.read_text())  # the same items in another file: still reused
    assert reused(recipe, BOTH, data=copy)


def test_settings_that_do_not_change_results_keep_the_cache(cached_recipe):
    recipe, _, _ = cached_recipe
    assert reused(recipe, BOTH, "models.student.engine.kv_cache_gb=2", "evaluate.bootstrap_samples=500",
                  "evaluate.gate.alpha=0.01")


def _adapter(folder, model, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(folder)
    return folder


def test_a_changed_adapter_scores_again_and_nll_alone_needs_no_engine(tmp_path, tiny_model, engine_starts):
    recipe = write_recipe(tmp_path, tiny_model)
    with open(recipe, "a") as f:
        f.write(f"  cache: {tmp_path / 'cache'}\n")
    adapter = _adapter(tmp_path / "adapter", tiny_model, seed=1)
    student = [Candidate("student", tiny_model, None, adapter=adapter)]
    first = score(recipe, NLL, candidates=student)
    again = score(recipe, NLL, candidates=student)
    assert not any(r["from_cache"] for r in first) and all(r["from_cache"] for r in again)
    _adapter(adapter, tiny_model, seed=2)  # same folder, other weights
    changed = score(recipe, NLL, candidates=student)
    assert not any(r["from_cache"] for r in changed)
    assert [r["score"] for r in changed] != [r["score"] for r in first]
    assert engine_starts == []  # reference NLL is a transformers forward pass


def test_compare_reports_reused_results_and_no_cache_scores_afresh(tmp_path, tiny_model, monkeypatch):
    from distill.cli import main

    monkeypatch.setenv(NO_CACHE_ENV, "")  # main sets it for --no-cache; restored after the test
    recipe = write_recipe(tmp_path, tiny_model)
    with open(recipe, "a") as f:
        f.write("  cache: cache\n")
    monkeypatch.chdir(tmp_path)

    def compare(out, *flags):
        code = main(["compare", "base", "base", "--recipe", str(recipe), "--out", str(tmp_path / out),
                     "--set", NLL.format(data=PLURAL), *flags])
        assert code == 0
        return json.loads((tmp_path / out / "report.json").read_text())

    first = compare("one")
    # the second `base` is the same model on the same items: scored once, reused within the same command
    assert first["cache"] == {"dir": str(tmp_path / "cache"), "from_cache": {"base#2": ["plural"]}}
    second = compare("two")
    assert second["cache"]["from_cache"] == {"base": ["plural"], "base#2": ["plural"]}
    assert "From the evaluation cache" in (tmp_path / "two" / "report.md").read_text()
    assert second["sets"]["plural"]["models"]["base"]["score"] == first["sets"]["plural"]["models"]["base"]["score"]
    fresh = compare("three", "--no-cache")
    assert fresh["cache"] == {"dir": None, "from_cache": {}}
    assert "From the evaluation cache" not in (tmp_path / "three" / "report.md").read_text()


def test_cache_folder_is_relative_to_the_recipe_and_not_part_of_the_stage_fingerprint(tmp_path, tiny_model):
    from distill.stages import stage_settings

    recipe = write_recipe(tmp_path, tiny_model)
    here = load_recipe(recipe, ["evaluate.cache=shared/eval"])
    assert here.evaluate.cache == str(tmp_path / "shared" / "eval")
    assert open_cache(here).root == tmp_path / "shared" / "eval"
    off = load_recipe(recipe, ["evaluate.cache=false"])
    assert open_cache(off) is None
    assert stage_settings(here, "evaluate") == stage_settings(off, "evaluate") == stage_settings(load_recipe(recipe), "evaluate")


WRITER = """
import sys
from distill.evaluate.cache import EvalCache
cache = EvalCache(sys.argv[1])
for i in range(200):
    cache.put("ab" * 32, {"item_ids": ["x"] * 500, "writer": sys.argv[2]})
"""


def test_two_processes_writing_one_key_leave_a_whole_entry(tmp_path):
    cache = EvalCache(tmp_path)
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name], cwd=ROOT) for name in ("a", "b")]
    seen = 0
    while any(w.poll() is None for w in writers):
        entry = cache.get("ab" * 32, ["x"] * 500)
        seen += entry is not None
    assert all(w.wait() == 0 for w in writers)
    assert cache.get("ab" * 32, ["x"] * 500)["writer"] in ("a", "b")
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name.startswith(".")]  # no temporary file left
    assert cache.get("ab" * 32, ["y"]) is None  # an entry for other items is never taken
