"""A teacher served by an OpenAI-compatible server (`vllm serve` on other nodes), behind the engine interface.

Prompts are rendered here, with the teacher's own tokenizer, and sent to /v1/completions as
token ids made as the in-process engine makes them (distill.prompts.tokens: one BOS, whatever the family): the rows,
prompts and provenance are the same as with the in-process engine. One request
per prompt goes to a persistent pool of `concurrency` workers shared by every `generate` call,
so the generate stage can hand over several chunks at once (`chunks_in_flight`) without ever
having more than `concurrency` requests in flight. A server under load is waited for, not
failed on: 408, 429, 5xx and network errors are retried with jittered exponential backoff, never
sooner than a `Retry-After` header asks; other 4xx answers stop the run at once.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

from distill.data.captures import TokenCapture
from distill.errors import StageError, UserError
from distill.models.engine import Completion
from distill.models.vocabulary import stop_token_ids
from distill.prompts.template import chat_prompt, with_chat_template
from distill.prompts.tokens import prompt_ids
from distill.recipe import EndpointSettings

RETRIED_STATUS = {408, 429}  # and every 5xx: the server is busy or starting, not refusing this request


def _retried(status: int) -> bool:
    return status in RETRIED_STATUS or status >= 500


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max((parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds(), 0.0)
    except (TypeError, ValueError):
        return None


class OpenAIEndpoint:
    """Same `generate` / `apply_chat_template` / `close` as VLLMEngine, over HTTP."""

    def __init__(self, folder: Path, endpoint: EndpointSettings, spec=None):
        """`spec`: the served model's recipe entry (its chat template and template variables), when it has one."""
        from transformers import AutoTokenizer

        self.endpoint = endpoint
        self.url = endpoint.url.rstrip("/")
        headers = {}
        if endpoint.api_key_env:
            key = os.environ.get(endpoint.api_key_env)
            if not key:
                raise UserError(f"generate.endpoint.api_key_env: environment variable {endpoint.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(headers=headers, timeout=endpoint.timeout_s,
                                   limits=httpx.Limits(max_connections=endpoint.concurrency))
        # Set on the first error that retrying cannot fix: queued requests are then never sent and
        # requests waiting out a backoff wake up, so the run stops at once instead of after the backlog.
        self._stop = threading.Event()
        self._fatal: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=endpoint.concurrency, thread_name_prefix="endpoint")
        self.chunks_in_flight = endpoint.chunks_in_flight
        try:
            self.tokenizer = with_chat_template(AutoTokenizer.from_pretrained(str(folder)), spec)
            self.chat_kwargs = dict(spec.chat_template_kwargs) if spec is not None else {}
            self.folder = Path(folder)
            self.model = self._served_model(self._wait_until_ready())
        except BaseException:
            self.close()
            raise

    def _wait_until_ready(self) -> list[str]:
        """Poll GET /models until the server lists its models, for up to ready_timeout_s: a teacher that is
        still starting on another node is waited for; no prompt is sent and no chunk written before."""
        limit = self.endpoint.ready_timeout_s
        deadline = time.monotonic() + limit
        pause, last = 0.25, "no answer"
        while True:
            try:
                response = self.client.get(f"{self.url}/models", timeout=max(min(10.0, deadline - time.monotonic()), 0.5))
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {_one_line(str(e))}"
            else:
                if response.status_code == 200:
                    try:
                        return [m["id"] for m in response.json()["data"]]
                    except (KeyError, TypeError, ValueError):
                        raise StageError(f"generate.endpoint.url: {self.url}/models answered something that is not a "
                                         f"model list: {_one_line(response.text)}") from None
                last = f"HTTP {response.status_code}: {_one_line(response.text)}"
                if not _retried(response.status_code):
                    raise StageError(f"generate.endpoint.url: {self.url}/models answered {last}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise StageError(f"generate.endpoint.url: no server ready at {self.url}/models within "
                                 f"generate.endpoint.ready_timeout_s = {limit:g}s (last: {last})")
            time.sleep(min(pause, left))
            pause = min(pause * 1.5, 5.0)

    def _served_model(self, names: list[str]) -> str:
        if self.endpoint.model is not None and self.endpoint.model not in names:
            raise UserError(f"generate.endpoint.model: the server at {self.url} serves {names}, not {self.endpoint.model!r}")
        if self.endpoint.model is None and len(names) != 1:
            raise UserError(f"generate.endpoint.model: the server at {self.url} serves {names}; name one")
        return self.endpoint.model or names[0]

    def describe(self) -> dict:
        return {"backend": "openai", "url": self.url, "served_model": self.model}

    @property
    def stop_ids(self) -> set[int]:
        return stop_token_ids(self.folder, tokenizer=self.tokenizer)

    def apply_chat_template(self, user: str, system: str | None = None, history: list[dict] | None = None) -> str:
        return chat_prompt(self.tokenizer, user, system, history, **self.chat_kwargs)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before retry `attempt` + 1: exponential, jittered so clients refused together do not return
        together, and never shorter than the server's Retry-After."""
        ceiling = min(self.endpoint.max_backoff_s, self.endpoint.backoff_s * 2 ** attempt)
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, retry_after + random.uniform(0, 0.1 * retry_after))
        return wait

    def _fail(self, message: str) -> StageError:
        if self._fatal is None:
            self._fatal = message
        self._stop.set()
        return StageError(message)

    def _post(self, body: dict) -> dict:
        """One request, retried while the server is busy (408, 429, 5xx) or unreachable; other 4xx are final."""
        tries = self.endpoint.max_retries + 1
        target = f"{self.url}/completions"
        for attempt in range(tries):
            if self._stop.is_set():
                raise StageError(self._fatal or f"{target}: the backend was closed")
            retry_after = None
            try:
                response = self.client.post(target, json=body)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {_one_line(str(e))}"
            else:
                if response.status_code < 400:
                    return response.json()
                problem = f"HTTP {response.status_code}: {_one_line(response.text)}"
                if not _retried(response.status_code):
                    raise self._fail(f"{target} refused a request with {problem}")
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
            if attempt + 1 < tries and self._stop.wait(self._backoff(attempt, retry_after)):
                raise StageError(self._fatal or f"{target}: the backend was closed")
        raise self._fail(f"{target} failed after {tries} tries (generate.endpoint.max_retries = "
                         f"{self.endpoint.max_retries}); last: {problem}")

    def generate(
        self,
        prompts: list[str],
        *,
        seeds: list[int],
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 64,
        stop: list[str] | None = None,
        stop_token_ids: list[int] | None = None,
        structured: dict | None = None,
        logprobs: int | None = None,
        **_ignored,
    ) -> list[list[Completion]]:
        def one(prompt: str, seed: int) -> list[Completion]:
            body = {"model": self.model, "prompt": prompt_ids(self.tokenizer, prompt), "n": n,
                    "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "seed": seed,
                    "return_token_ids": True}
            if stop:
                body["stop"] = stop
            if stop_token_ids:  # vLLM's extra parameter, as its engine takes it in process
                body["stop_token_ids"] = stop_token_ids
            if structured:
                body["structured_outputs"] = structured
            if logprobs:  # by token id: token strings do not map back to ids one to one
                body.update(logprobs=logprobs, return_tokens_as_token_ids=True)
            choices = sorted(self._post(body)["choices"], key=lambda c: c["index"])
            return [Completion(c["text"], c.get("finish_reason"), len(c.get("token_ids") or []),
                               self._capture(c, logprobs) if logprobs else None) for c in choices]

        # The shared pool, not one per call: concurrent calls (chunks in flight) share `concurrency` slots.
        futures = [self._pool.submit(one, p, s) for p, s in zip(prompts, seeds)]
        return [f.result() for f in futures]

    def score_ids(self, prompts: list[str], completions: list[list[int]], logprobs: int) -> list[Completion]:
        """As VLLMEngine.score_ids, over HTTP: each prompt's tokens and the given ids are sent as one token-id prompt
        with vLLM's `prompt_logprobs`, at temperature 1 (the model's own distribution), so the scored ids are exactly
        these."""
        heads = [prompt_ids(self.tokenizer, p) for p in prompts]

        def one(head: list[int], tail: list[int]) -> Completion:
            positions = self._post(self._scoring_request(head + list(tail), logprobs))["choices"][0].get("prompt_logprobs")
            if not positions:
                raise StageError(f"{self.url}: the server answered without prompt_logprobs; scoring the student's "
                                 "tokens needs vLLM's OpenAI-compatible server")
            return Completion("", None, len(tail), TokenCapture.from_served_prompt_logprobs(tail, positions[len(head):], logprobs),
                              prompt_tokens=len(head))

        futures = [self._pool.submit(one, h, t) for h, t in zip(heads, completions)]
        return [f.result() for f in futures]

    def _scoring_request(self, ids: list[int], k: int) -> dict:
        """A teacher-forced read of `ids`: their prompt log-probabilities (top k), nothing sampled worth keeping."""
        return {"model": self.model, "prompt": ids, "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": k}

    def require_exact_scores(self, k: int, key: str) -> None:
        """Before any work, for a caller that reads teacher-forced scores: the server has prefix caching off (vLLM can
        return stale prompt log-probabilities with it on, vllm#42019), as its /metrics says, and returns k of them."""
        root = self.url.removesuffix("/v1")
        try:
            metrics = self.client.get(f"{root}/metrics", timeout=10).text
        except httpx.HTTPError:
            metrics = ""
        caching = re.search(r'vllm:cache_config_info\{[^}]*enable_prefix_caching="(\w+)"', metrics)
        restart = "serve it with vLLM's --no-enable-prefix-caching"
        if caching is None:
            raise UserError(f"{key}: the server at {self.url} does not say on {root}/metrics whether prefix caching is "
                            f"on; its prompt log-probabilities are read, which vLLM can return stale with it on "
                            f"(vllm#42019): {restart}")
        if caching.group(1) == "True":
            raise UserError(f"{key}: the server at {self.url} has prefix caching on, and its prompt log-probabilities "
                            f"are read, which vLLM can then return stale (vllm#42019): {restart}")
        try:
            answer = self.client.post(f"{self.url}/completions",
                                      json=self._scoring_request(self.tokenizer("Hello world")["input_ids"], k))
        except httpx.HTTPError as e:
            raise StageError(f"{key}: {self.url}/completions: {type(e).__name__}: {_one_line(str(e))}") from None
        if answer.status_code != 200:
            raise UserError(f"{key}: the server at {self.url} refused {k} prompt log-probabilities per token "
                            f"(HTTP {answer.status_code}: {_one_line(answer.text)}); serve it with --max-logprobs {k} "
                            "or more")

    @staticmethod
    def _capture(choice: dict, k: int) -> TokenCapture:
        if not choice.get("logprobs"):
            raise StageError("the server answered without logprobs: generate.logprobs needs a server that returns "
                             "them (vLLM: start it with --max-logprobs at least generate.logprobs)")
        try:
            return TokenCapture.from_openai(choice["logprobs"], k)
        except ValueError as e:
            raise StageError(str(e)) from None

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
