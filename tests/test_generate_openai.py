"""The OpenAI-compatible backend against a real vLLM server started on loopback by the test.

The server stands in for a `vllm serve` teacher on other nodes: the rows, prompts and
provenance have the same shape as with the in-process engine, and greedy answers agree.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import vllm_server, write_recipe
from test_generate_modes import INTENT, INTENTS, LABEL_RECIPE

from distill.generate.stage import run_generate
from distill.recipe import load_recipe
from distill.run_dir import RunDir


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    """vLLM's OpenAI server on 127.0.0.1 with its default settings (prefix caching on), stopped after the module."""
    with vllm_server(tiny_model, tmp_path_factory.mktemp("server"), "tiny-teacher") as url:
        yield url


def _rows(folder: Path, recipe: Path, *overrides: str) -> tuple[list[dict], dict]:
    run = RunDir(folder)
    summary = run_generate(load_recipe(recipe, list(overrides)), run)
    return pq.read_table(run.generated).to_pylist(), summary


def test_endpoint_rows_match_the_in_process_engine(tmp_path, tiny_model, server):
    recipe = write_recipe(tmp_path, tiny_model)
    endpoint = f"generate.endpoint={{url: '{server}', concurrency: 8}}"
    remote, summary = _rows(tmp_path / "remote", recipe, "generate.backend=openai", endpoint, "generate.logprobs=3")
    local, _ = _rows(tmp_path / "local", recipe, "generate.logprobs=3")
    assert len(remote) == len(local) == 40 and summary["new_tokens"] > 0
    assert [r["prompt"] for r in remote] == [r["prompt"] for r in local]
    assert [r["completion"] for r in remote] == [r["completion"] for r in local]  # greedy: the same answers
    for r in remote:
        p = r["provenance"]
        assert p["backend"] == {"backend": "openai", "url": server, "served_model": "tiny-teacher"}
        assert p["teacher"]["path"] == str(tiny_model.resolve()) and p["completion_tokens"] > 0
    assert set(remote[0]) == set(local[0])
    # the teacher's top-3 by token id, the same over HTTP as in process
    remote_lp, local_lp = (pq.read_table(RunDir(tmp_path / d).teacher_logprobs).to_pylist() for d in ("remote", "local"))
    assert [c["token_ids"] for c in remote_lp] == [c["token_ids"] for c in local_lp]
    assert [c["top_ids"] for c in remote_lp] == [c["top_ids"] for c in local_lp]
    for a, b in zip(remote_lp, local_lp):
        assert [x for row in a["top_logprobs"] for x in row] == pytest.approx([x for row in b["top_logprobs"] for x in row], abs=1e-4)


def test_endpoint_labels_under_the_structured_constraint(tmp_path, tiny_model, server):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(LABEL_RECIPE.format(model=tiny_model, data=INTENT))
    rows, summary = _rows(tmp_path / "run", recipe, "generate.backend=openai", f"generate.endpoint={{url: '{server}'}}",
                          "generate.sampling.n=2", "generate.sampling.temperature=1.0")
    assert len(rows) == 48 and summary["failures"] == 0
    assert all(r["completion"] in INTENTS for r in rows)


def test_a_server_with_prefix_caching_on_is_refused_as_a_scorer_before_any_work(tmp_path, tiny_model, server):
    """On-policy training reads the teacher's prompt log-probabilities, which vLLM can return stale with prefix caching
    on (vllm#42019): a server started with vLLM's defaults is refused, naming the key that chose it and the fix."""
    from distill.errors import UserError
    from distill.models.teacher import teacher_engine

    recipe = load_recipe(write_recipe(tmp_path, tiny_model), ["generate.backend=openai",
                                                               f"generate.endpoint={{url: '{server}'}}"])
    with pytest.raises(UserError, match=r"generate\.endpoint: the server at .* has prefix caching on.*"
                                        r"--no-enable-prefix-caching"):
        teacher_engine(recipe, RunDir(tmp_path / "run"), tiny_model, stage="train", seed=0, max_logprobs=5,
                       reads_prompt_logprobs=True)
    writer = teacher_engine(recipe, RunDir(tmp_path / "run"), tiny_model, stage="generate", seed=0)  # writing is fine
    writer.close()
