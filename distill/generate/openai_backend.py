"""A teacher served by an OpenAI-compatible server (`vllm serve` on other nodes), behind the engine interface.

Prompts are rendered here, with the teacher's own tokenizer, and sent to /v1/completions as
text: the rows, prompts and provenance are the same as with the in-process engine. Requests
go out concurrently (a bounded thread pool), one request per prompt.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from distill.errors import StageError, UserError
from distill.generate.vllm_engine import Completion
from distill.recipe import EndpointSettings


class OpenAIEndpoint:
    """Same `generate` / `apply_chat_template` / `close` as VLLMEngine, over HTTP."""

    def __init__(self, folder: Path, endpoint: EndpointSettings):
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
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.model = endpoint.model or self._only_model()

    def _only_model(self) -> str:
        try:
            listed = self.client.get(f"{self.url}/models").raise_for_status().json()["data"]
        except (httpx.HTTPError, KeyError, ValueError) as e:
            raise StageError(f"generate.endpoint.url: cannot list models at {self.url}/models: {e}") from None
        names = [m["id"] for m in listed]
        if len(names) != 1:
            raise UserError(f"generate.endpoint.model: the server at {self.url} serves {names}; name one")
        return names[0]

    def describe(self) -> dict:
        return {"backend": "openai", "url": self.url, "served_model": self.model}

    def apply_chat_template(self, user: str, system: str | None = None) -> str:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _post(self, body: dict) -> dict:
        """One request; network errors and 5xx answers are retried with backoff, 4xx are the caller's fault."""
        for attempt in range(self.endpoint.max_retries + 1):
            try:
                response = self.client.post(f"{self.url}/completions", json=body)
            except httpx.TransportError as e:
                problem = f"{type(e).__name__}: {e}"
            else:
                if response.status_code < 400:
                    return response.json()
                problem = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code < 500:
                    raise StageError(f"{self.url}/completions refused a request: {problem}")
            if attempt < self.endpoint.max_retries:
                time.sleep(min(2 ** attempt, 30))
        raise StageError(f"{self.url}/completions failed after {self.endpoint.max_retries + 1} tries: {problem}")

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
        structured: dict | None = None,
        **_ignored,
    ) -> list[list[Completion]]:
        def one(prompt: str, seed: int) -> list[Completion]:
            body = {"model": self.model, "prompt": prompt, "n": n, "temperature": temperature, "top_p": top_p,
                    "max_tokens": max_tokens, "seed": seed, "return_token_ids": True}
            if stop:
                body["stop"] = stop
            if structured:
                body["structured_outputs"] = structured
            choices = sorted(self._post(body)["choices"], key=lambda c: c["index"])
            return [Completion(c["text"], c.get("finish_reason"), len(c.get("token_ids") or [])) for c in choices]

        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency) as pool:
            return list(pool.map(one, prompts, seeds))

    def close(self) -> None:
        self.client.close()
