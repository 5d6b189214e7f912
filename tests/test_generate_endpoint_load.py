"""The OpenAI-compatible backend against a server under load, played by a tiny loopback peer.

The peer answers /v1/models and /v1/completions like `vllm serve` would, but can refuse its
first requests (429 / 503 with Retry-After, or a 400), come up late, or answer some prompts
slowly. It records every request it sees, so the tests measure attempts and waits from the
server's side. Its loops are bounded: at most MAX_REQUESTS answers, a socket timeout per
request, and shutdown when the test ends.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow.parquet as pq
import pytest
from conftest import write_recipe

from distill.errors import StageError
from distill.generate.stage import run_generate
from distill.recipe import load_recipe
from distill.run_dir import RunDir

MAX_REQUESTS = 300  # more than any test needs; past it the peer refuses, so a runaway client stops
SEEDS = 40  # tiny recipe: 40 seed rows, one prompt each


class PeerState:
    def __init__(self, script=(), slow=None):
        self.script = list(script)  # (status, headers) answered to the first len(script) completion requests
        self.slow = slow or (lambda seed: 0.0)  # seconds to wait before answering the request with this seed
        self.lock = threading.Lock()
        self.log: list[tuple[float, int, int]] = []  # (time received, seed, status answered)
        self.in_flight = self.most_in_flight = 0
        self.up_at: float | None = None


def _handler(state: PeerState):
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a stuck client cannot hold a peer thread for longer

        def log_message(self, *args):
            pass

        def _send(self, status: int, body: dict, headers: dict | None = None):
            data = json.dumps(body).encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "peer-teacher", "object": "model"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seed = body["seed"]
            with state.lock:
                turn = len(state.log)
                status, headers = state.script[turn] if turn < len(state.script) else (200, {})
                if turn >= MAX_REQUESTS:
                    status, headers = 400, {}
                state.log.append((time.monotonic(), seed, status))
                state.in_flight += 1
                state.most_in_flight = max(state.most_in_flight, state.in_flight)
            if status == 200:
                time.sleep(min(state.slow(seed), 5.0))
            with state.lock:  # before answering: the client may send its next request as soon as it has the answer
                state.in_flight -= 1
            if status != 200:
                self._send(status, {"error": {"message": f"scripted {status}\nsecond line"}}, headers)
                return
            self._send(200, {"choices": [{"index": i, "text": f" answer {seed}.{i}", "finish_reason": "stop",
                                          "token_ids": [1, 2, 3]} for i in range(body["n"])]})

    return Handler


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def peer(*, script=(), slow=None, up_after: float | None = 0.0):
    """A peer on a loopback port, listening `up_after` seconds from now (None: never)."""
    state, port, box = PeerState(script, slow), _free_port(), {}
    ready = threading.Event()

    def serve():
        if up_after is None or ready.wait(up_after):  # set early only when the test is over
            return
        box["server"] = server = ThreadingHTTPServer(("127.0.0.1", port), _handler(state))
        server.daemon_threads = True
        state.up_at = time.monotonic()
        server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1", state
    finally:
        ready.set()
        if "server" in box:
            box["server"].shutdown()
            box["server"].server_close()
        thread.join(timeout=5)


@pytest.fixture
def recipe(tmp_path, tiny_model):
    return write_recipe(tmp_path, tiny_model)


def _generate(recipe, folder, url, *overrides, **endpoint):
    endpoint = {"url": url, "concurrency": 4, "backoff_s": 0.05, **endpoint}
    settings = ["generate.backend=openai", f"generate.endpoint={json.dumps(endpoint)}", "generate.sampling.seed=0",
                *overrides]
    run = RunDir(folder)
    return run, run_generate(load_recipe(recipe, settings), run)


@pytest.mark.parametrize("status", [429, 503])
def test_busy_answers_are_retried_after_the_wait_the_server_asks(tmp_path, recipe, status):
    """The first 3 requests are refused with Retry-After: 1 (the client's own backoff is 0.05 s): every row still
    comes out, each refused request is sent again once and not before the second the server asked for."""
    with peer(script=[(status, {"Retry-After": "1"})] * 3) as (url, state):
        run, summary = _generate(recipe, tmp_path / "run", url)
    rows = pq.read_table(run.generated).to_pylist()
    assert summary["rows"] == len(rows) == SEEDS and summary["failures"] == 0
    assert [r["completion"] for r in rows] == [f" answer {r['provenance']['seed']}.0" for r in rows]
    assert len(state.log) == SEEDS + 3  # 40 answered + 3 refused, no more
    refused = [(t, seed) for t, seed, s in state.log if s == status]
    for t, seed in refused:
        again = [t2 for t2, s2, st in state.log if s2 == seed and st == 200]
        assert len(again) == 1
        assert again[0] - t >= 1.0, f"retried after {again[0] - t:.3f}s, before Retry-After: 1"
        assert again[0] - t < 2.0


def test_a_client_error_stops_the_run_at_once_with_one_line(tmp_path, recipe):
    """A 400 is the request's fault: retrying cannot fix it, so the run stops with one line naming URL and status,
    sends no more of its queued requests once the 400 is read, and writes no chunk."""
    with peer(script=[(400, {})]) as (url, state):
        started = time.monotonic()
        with pytest.raises(StageError) as error:
            _generate(recipe, tmp_path / "run", url)
        took = time.monotonic() - started
    message = str(error.value)
    assert "\n" not in message and f"{url}/completions" in message and "HTTP 400" in message
    # what was in flight, and what slots freed by quick answers sent before the 400 was read: never the backlog
    assert len(state.log) <= 8 < SEEDS
    assert took < 10
    assert not list(RunDir(tmp_path / "run").chunks.glob("chunk-*.parquet"))


def test_a_server_still_starting_is_waited_for(tmp_path, recipe):
    """The teacher's server comes up 1.5 s after the run starts: the run waits for it instead of failing."""
    with peer(up_after=1.5) as (url, state):
        started = time.monotonic()
        run, summary = _generate(recipe, tmp_path / "run", url, ready_timeout_s=30)
    assert summary["rows"] == SEEDS and summary["failures"] == 0
    assert state.up_at - started >= 1.4 and len(state.log) == SEEDS


def test_a_server_that_never_comes_up_fails_naming_url_and_timeout_before_any_chunk(tmp_path, recipe):
    with peer(up_after=None) as (url, state):
        started = time.monotonic()
        with pytest.raises(StageError) as error:
            _generate(recipe, tmp_path / "run", url, ready_timeout_s=1.5)
        took = time.monotonic() - started
    message = str(error.value)
    assert "\n" not in message and f"{url}/models" in message and "ready_timeout_s = 1.5s" in message
    assert 1.5 <= took < 8
    assert not list(RunDir(tmp_path / "run").chunks.glob("chunk-*.parquet"))


def test_a_chunks_slowest_request_does_not_idle_the_other_slots(tmp_path, recipe):
    """10 chunks of 4 prompts, 4 slots; the first prompt of every chunk takes 0.4 s, the others 0.02 s. One chunk at a
    time waits ~0.4 s per chunk with 3 slots idle; with chunks in flight the next chunks fill them. Same rows, in
    order, and never more than 4 requests at the server at once."""
    def slow(seed):
        return 0.4 if seed % 4 == 0 else 0.02

    timings, outputs = {}, {}
    for in_flight in (1, 4):
        with peer(slow=slow) as (url, state):
            run, summary = _generate(recipe, tmp_path / f"in_flight_{in_flight}", url, "generate.chunk_size=4",
                                     chunks_in_flight=in_flight)
        assert summary["rows"] == SEEDS and summary["chunks_this_run"] == 10
        assert state.most_in_flight <= 4
        print(f"chunks_in_flight={in_flight}: generating_seconds={summary['generating_seconds']}")
        timings[in_flight] = summary["generating_seconds"]
        outputs[in_flight] = [(r["id"], r["completion"], r["provenance"]["chunk"])
                              for r in pq.read_table(run.generated).to_pylist()]
    assert outputs[1] == outputs[4]
    assert [chunk for _, _, chunk in outputs[4]] == sorted(chunk for _, _, chunk in outputs[4])
    assert timings[1] >= 4.0  # 10 chunks, each waiting for its 0.4 s request
    assert timings[4] <= 0.6 * timings[1], timings


def test_retry_and_concurrency_settings_keep_the_generated_rows(recipe):
    """How requests travel (slots, chunks in flight, retries, waits) leaves the rows as they are, so changing it must
    not invalidate generated chunks; another server or served model does."""
    from distill.stages import stage_inputs

    def inputs(**endpoint):
        return stage_inputs(load_recipe(recipe, ["generate.backend=openai",
                                                 f"generate.endpoint={json.dumps(endpoint)}"]), "generate")

    base = inputs(url="http://a:8000/v1")
    assert inputs(url="http://a:8000/v1", concurrency=64, chunks_in_flight=8, max_retries=10, backoff_s=2,
                  max_backoff_s=120, ready_timeout_s=5, timeout_s=30) == base
    assert inputs(url="http://b:8000/v1") != base
    assert inputs(url="http://a:8000/v1", model="other") != base
