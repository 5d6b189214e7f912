"""What the stages ask of a model that answers: one interface, served by vLLM in process
(distill.models.vllm_engine) or by an OpenAI-compatible server (distill.models.openai_engine)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from distill.data.captures import TokenCapture

@dataclass
class Completion:
    text: str
    finish_reason: str | None
    num_tokens: int
    capture: "TokenCapture | None" = None  # the teacher's top-K log-probabilities, when asked for
    prompt_tokens: int = 0  # the prompt's tokens, where the engine counted them (scoring)


class TeacherEngine(Protocol):
    """A model that writes completions (and, in process, scores given ones)."""

    chunks_in_flight: int  # chunks of prompts the generate stage may hand over at once
    tokenizer: Any  # the model's transformers tokenizer: prompts become token ids with it (distill.prompts.tokens)

    def describe(self) -> dict:
        """What served the rows, for their provenance."""

    def apply_chat_template(self, user: str, system: str | None = None, history: list[dict] | None = None) -> str:
        """The prompt text of one user message, after a conversation's earlier turns (`history`) and a system prompt
        (where the history has none), through the model's chat template."""

    def generate(self, prompts: list[str], *, seeds: list[int], n: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, max_tokens: int = 64, stop: list[str] | None = None,
                 stop_token_ids: list[int] | None = None, adapter: Path | None = None, adapter_name: str = "adapter",
                 structured: dict | None = None, logprobs: int | None = None) -> list[list[Completion]]:
        """n completions for each prompt, in order; each prompt's seed makes it reproducible on its own.
        `stop_token_ids`: ids that end an answer besides the model's own stops (a chat student's end of turn)."""

    def close(self) -> None:
        """Free the engine's memory (or connections)."""


class ScoringEngine(TeacherEngine, Protocol):
    """An engine that also reads given completions teacher-forced (vLLM prompt log-probabilities): in process or
    behind a server."""

    @property
    def stop_ids(self) -> set[int]:
        """The ids the model ends an answer with (its generation config's eos_token_id, or the tokenizer's EOS)."""

    def score_ids(self, prompts: list[str], completions: list[list[int]], logprobs: int) -> list[Completion]:
        """The top-K log-probabilities at every token of each completion, given as token ids, after its prompt (made
        token ids as the learner makes them): exactly these ids are scored, never a re-tokenisation. Each Completion
        counts its prompt's tokens."""


class EvaluationEngine(TeacherEngine, Protocol):
    """What evaluation asks of an engine beside answers: reference NLL from its prompt log-probabilities, where they
    come back exact (distill.models.vllm_engine)."""

    prompt_logprobs_exact: bool

    def token_logprobs(self, sequences: list[list[int]], starts: list[int]) -> list[list[float]]:
        """The log-probability of each token of each sequence (token ids) from its `start` on, teacher-forced, under
        the model's own distribution."""
