"""Does a teacher answer cut at max_tokens reach training? By default no: it is rejected as `truncated`, on its own
funnel line, unless the recipe keeps truncated rows on purpose. Label mode checks and retries its own answers."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from conftest import run_cli
from test_filters import prepared_run, row

ROWS = [row("stop", "cats", finish_reason="stop", failure=None),
        row("cut", "the plural of cat is ca", finish_reason="length", failure=None),
        row("failed", "{\"label\": ", finish_reason="length", failure="not valid JSON (cut off at max_tokens)"),
        row("cut2", "dogs and then some more", finish_reason="length", failure=None)]


def filtered(tmp_path, tiny_model, **extra) -> tuple[dict, dict]:
    recipe, run = prepared_run(tmp_path, tiny_model, [dict(r) for r in ROWS], [{"type": "length", "min_chars": 1}], **extra)
    result = run_cli("filter", recipe)
    assert result.returncode == 0, result.stderr[-2000:]
    table = pq.read_table(run.filtered, columns=["id", "kept", "rejected_by", "reason"]).to_pylist()
    funnel = json.loads((run.stage("filter") / "funnel.json").read_text())
    return {r["id"]: r for r in table}, {s["filter"]: s for s in funnel["steps"]}


def test_answers_cut_at_max_tokens_are_rejected_as_truncated_by_default(tmp_path, tiny_model):
    rows, steps = filtered(tmp_path, tiny_model)
    assert rows["stop"]["kept"]
    for rid in ("cut", "cut2"):
        assert not rows[rid]["kept"] and rows[rid]["rejected_by"] == "truncated"
        assert rows[rid]["reason"].startswith("truncated: the teacher's answer was cut at generate.sampling.max_tokens = 64")
    assert rows["failed"]["rejected_by"] == "generation_failure"  # a failed row is counted once, where it failed
    assert list(steps) == ["generation_failure", "truncated", "length"]
    assert (steps["truncated"]["in"], steps["truncated"]["rejected"], steps["truncated"]["out"]) == (3, 2, 1)
    assert steps["truncated"]["top_reasons"][0]["count"] == 2


def test_the_recipe_can_keep_truncated_rows(tmp_path, tiny_model):
    rows, steps = filtered(tmp_path, tiny_model, keep_truncated=True)
    assert [rows[r]["kept"] for r in ("stop", "cut", "failed", "cut2")] == [True, True, False, True]
    assert "truncated" not in steps
