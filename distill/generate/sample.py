"""One answer of the teacher to one prompt, as its row will record it."""

from __future__ import annotations

from dataclasses import dataclass

from distill.data.captures import TokenCapture

FINISHED = ("stop", "length")  # an answer that ended any other way (abort, error) is a failure


@dataclass
class Sample:
    text: str  # the completion the row keeps
    finish_reason: str | None
    tokens: int  # tokens the teacher wrote for it (scored, in score mode)
    failure: str | None = None  # why the row is unusable, else None
    attempts: int = 1  # requests made for it: label and synthesize ask again for an answer that does not parse
    capture: TokenCapture | None = None  # the teacher's top K at each of its tokens (generate.logprobs)
    raw: str | None = None  # label and synthesize: the answer as written, before its check
    retry_seed: int | None = None  # the seed of the request that gave it, after a retry
    input: str | None = None  # synthesize: the input the teacher wrote
    prompt: str | None = None  # synthesize with answer_template: the prompt this answer answers
    input_tokens: int | None = None  # synthesize with answer_template: the tokens of the input it wrote
    answer_seed: int | None = None  # synthesize with answer_template: the answer request's seed
    reasoning: str | None = None  # a reasoning teacher's thinking, taken out of `text` (generate.reasoning: strip)

    @classmethod
    def of(cls, completion) -> "Sample":
        """From an engine's Completion: a failure when it did not end by a stop or max_tokens."""
        why = None if completion.finish_reason in FINISHED else f"finish_reason={completion.finish_reason}"
        return cls(text=completion.text, finish_reason=completion.finish_reason, tokens=completion.num_tokens,
                   failure=why, capture=completion.capture)
