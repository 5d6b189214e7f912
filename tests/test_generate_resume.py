"""Resume and sharding of `distill generate`, through the real command line in subprocesses.

Two shards started at the same moment, one of them killed with SIGKILL mid-stage and started
again, must end with exactly the rows of one uninterrupted, unsharded run of the same seed, and
with the teacher's captured log-probabilities still lined up with those rows.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, write_recipe

from distill.generate.stage import run_generate
from distill.recipe import load_recipe
from distill.run_dir import RunDir

# 60 seeds in 20 chunks of 3, sampled (not greedy): enough chunks to kill the run between two of them
SETTINGS = ("data.max_seeds=60", "generate.chunk_size=3", "generate.sampling.temperature=0.8",
            "generate.sampling.seed=7", "generate.few_shot.per_row=true", "generate.logprobs=4")
RUN_SPECIFIC = ("created_at", "shard")  # provenance that names when and where a row was made


def comparable(run: RunDir) -> tuple[list[dict], list[dict]]:
    """The rows without what names when and where they were made, and the captures."""
    rows = pq.read_table(run.generated).to_pylist()
    for r in rows:
        for key in RUN_SPECIFIC:
            r["provenance"].pop(key)
    return rows, pq.read_table(run.teacher_logprobs).to_pylist()


def generate_cmd(recipe: Path, run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "distill.cli", "generate", str(recipe), *SETTINGS, "--run-dir", str(run_dir), *extra]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory, tiny_model) -> Path:
    return write_recipe(tmp_path_factory.mktemp("resume"), tiny_model)


@pytest.fixture(scope="module")
def uninterrupted(recipe) -> tuple[list[dict], list[dict]]:
    """The reference: the same recipe and seed, run once without interruption (in this process, to save a start)."""
    run = RunDir(recipe.parent / "whole")
    summary = run_generate(load_recipe(recipe, list(SETTINGS)), run)
    assert summary["merged"] and summary["rows"] == 60 and summary["chunks_this_run"] == 20
    assert summary["captured_rows"] == 60
    return comparable(run)


def test_shards_started_together_one_killed_and_rerun_give_the_rows_of_one_run(recipe, uninterrupted):
    """Two shards share a run directory from the same moment (neither may wipe the other's chunks); shard 1 is
    killed with SIGKILL between chunks; rerun, it makes only its missing chunks and, finishing last, merges."""
    run = RunDir(recipe.parent / "sharded")
    shard0 = subprocess.Popen(generate_cmd(recipe, run.root, "--shard", "0/2"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    shard1 = subprocess.Popen(generate_cmd(recipe, run.root, "--shard", "1/2"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    odd_chunks = lambda: {p.name: p.stat().st_mtime_ns for p in run.chunks.glob("chunk-?????.parquet")
                          if int(p.stem.split("-")[1]) % 2 == 1}
    deadline = time.time() + 400
    while len(odd_chunks()) < 2:
        assert shard1.poll() is None, "shard 1 ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(shard1.pid, signal.SIGKILL)
    shard1.wait()
    out0, err0 = shard0.communicate(timeout=600)
    assert shard0.returncode == 0, err0[-3000:]
    assert "chunks_this_run=10," in out0 and "other shards are still missing" in out0
    kept = odd_chunks()
    assert 2 <= len(kept) < 10 and not run.generated.exists()
    assert not run.marker("generate").exists()

    result = run_cli("generate", recipe, *SETTINGS, "--run-dir", run.root, "--shard", "1/2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"chunks_this_run={10 - len(kept)}," in result.stdout  # only the missing chunks were made
    assert "rows=60" in result.stdout  # and, finishing last, it merged
    assert {name: mtime for name, mtime in odd_chunks().items() if name in kept} == kept
    rows, captures = comparable(run)
    assert rows == uninterrupted[0]  # every row exactly once, the same as one unsharded run
    # every row's capture exactly once, in row order, token for token what the teacher generated for it
    assert [c["id"] for c in captures] == [r["id"] for r in rows]
    assert captures == uninterrupted[1]
    assert all(len(c["token_ids"]) == r["provenance"]["completion_tokens"] == len(c["top_ids"])
               for c, r in zip(captures, rows))
    shard_of_chunk = {r["chunk"]: r["shard"] for r in pq.read_table(run.generated).column("provenance").to_pylist()}
    assert shard_of_chunk == {c: f"{c % 2}/2" for c in range(20)}
    assert run.read_marker("generate")["summary"]["rows"] == 60
    assert not list(run.chunks.glob(".*.tmp"))  # no half-written chunk left behind


def test_a_run_resumed_with_another_chunk_size_finishes_in_the_size_it_started_with(recipe, uninterrupted):
    """generate.chunk_size is not in the fingerprint (rows and their seeds are per item), so a changed size must not
    make chunks of two sizes overlap: the chunks already written set the size until the stage is complete."""
    from distill.generate.stage import open_teacher
    from distill.models.context import resolved_model

    run = RunDir(recipe.parent / "rechunked")
    started = load_recipe(recipe, list(SETTINGS))
    engine = open_teacher(started, run, resolved_model(started, "teacher")[0])
    try:
        half = run_generate(started, run, shard=(0, 2), engine=engine)  # every other chunk, as a stopped run leaves them
        assert not half["merged"]
        resumed = run_generate(load_recipe(recipe, [*SETTINGS, "generate.chunk_size=5"]), run, engine=engine)
        # Any items, answered alone by two plain calls, give the rows the stage made for them (what a selection of
        # items made later needs): the same prompts, seeds and samples, the same captures.
        from distill.data.eval_sets import seed_pool
        from distill.generate.answer import Answering
        from distill.generate.modes import mode_for

        mode, seeds = mode_for(started), seed_pool(run)
        answering = Answering(started, mode, engine, seeds, resolved_model(started, "teacher")[1], (0, 1))
        alone, captures = answering.rows(answering.answer(mode.items(seeds)[10:13], first=10), chunk=0)
    finally:
        engine.close()
    assert resumed["merged"] and resumed["rows"] == 60 and resumed["chunks_this_run"] == 10
    assert comparable(run) == uninterrupted
    rows, captured = copy.deepcopy(uninterrupted)  # the module's reference stays as it is
    for r in alone + rows:
        for key in (*RUN_SPECIFIC, "chunk"):
            r["provenance"].pop(key, None)
    assert alone == rows[10:13]
    assert [c["id"] for c in captures] == [r["id"] for r in alone]
    assert [c["token_ids"] for c in captures] == [c["token_ids"] for c in captured[10:13]]
