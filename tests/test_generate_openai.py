"""The OpenAI-compatible backend against a real vLLM server started on loopback by the test.

The server stands in for a `vllm serve` teacher on other nodes: the rows, prompts and
provenance have the same shape as with the in-process engine, and greedy answers agree.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from conftest import write_recipe
from test_generate_modes import INTENT, INTENTS, LABEL_RECIPE

from distill.generate.stage import run_generate
from distill.recipe import load_recipe
from distill.run_dir import RunDir

STARTUP_LIMIT_S = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model):
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1, stopped (whole process group) after the module."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
           "--served-model-name", "tiny-teacher", "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
           "--dtype", "float32", "--max-model-len", "1024", "--seed", "0",
           "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + STARTUP_LIMIT_S
        while True:
            assert proc.poll() is None, f"server exited early:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"server not up in {STARTUP_LIMIT_S}s:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)  # nothing of the server's is kept: no reason to wait on a slow shutdown
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
