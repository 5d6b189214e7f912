"""What the stages ask of a model that answers: one interface, served by vLLM in process
(distill.models.vllm_engine) or by an OpenAI-compatible server (distill.models.openai_engine)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from distill.data.captures import TokenCapture

@dataclass
class Completion:
    text: str
    finish_reason: str | None
    num_tokens: int
    capture: "TokenCapture | None" = None  # the teacher's top-K log-probabilities, when asked for


class TeacherEngine(Protocol):
    """A model that writes completions (and, in process, scores given ones)."""

    chunks_in_flight: int  # chunks of prompts the generate stage may hand over at once

    def describe(self) -> dict:
        """What served the rows, for their provenance."""

    def apply_chat_template(self, user: str, system: str | None = None) -> str:
        """The prompt text of one user message (and an optional system prompt) through the model's chat template."""

    def generate(self, prompts: list[str], *, seeds: list[int], n: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, max_tokens: int = 64, stop: list[str] | None = None, adapter: Path | None = None,
                 adapter_name: str = "adapter", structured: dict | None = None,
                 logprobs: int | None = None) -> list[list[Completion]]:
        """n completions for each prompt, in order; each prompt's seed makes it reproducible on its own."""

    def close(self) -> None:
        """Free the engine's memory (or connections)."""


class ScoringEngine(TeacherEngine, Protocol):
    """An engine that also reads given completions teacher-forced (vLLM prompt log-probabilities)."""

    def score(self, prompts: list[str], completions: list[str], logprobs: int) -> list[Completion]:
        """The top-K log-probabilities at every token of each completion after its prompt."""
