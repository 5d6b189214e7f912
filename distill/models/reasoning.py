"""A reasoning teacher's answer without its thinking.

Qwen3 and its kind write `<think> ... </think>` before the answer. With `generate.reasoning: strip` the completion is
what follows the end marker: the text the filters judge and the student learns, and, when the teacher's token
distributions are captured, only the answer's tokens, so that KD learns the answer the row keeps. An answer whose
thinking never ended (cut at max_tokens) has no answer at all: a failure with that reason, not a truncated row.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from distill.data.captures import TokenCapture

START = "<think>"


@dataclass
class Answer:
    text: str  # the completion kept
    reasoning: str | None  # the thinking taken out, None when there was none
    failure: str | None  # why there is no answer, else None
    capture: TokenCapture | None = None  # the teacher's distributions over the answer's tokens alone (None: no answer)


def split_reasoning(text: str, finish_reason: str | None, end: str) -> Answer:
    """The answer after the thinking that `end` closes; text without `end` or an opening <think> is all answer."""
    at = text.rfind(end)
    if at >= 0:
        answer = text[at + len(end):].strip()
        return Answer(answer, text[:at + len(end)], None if answer else "no answer after the reasoning")
    if text.lstrip().startswith(START):
        why = "cut at max_tokens while reasoning" if finish_reason == "length" else f"reasoning never closed ({end})"
        return Answer("", text, why)
    return Answer(text, None, None)


def _tokens_before_answer(ids: list[int], tokenizer, end: str) -> int:
    """How many of the captured tokens come before the answer: through the one whose text completes `end`, and the
    whitespace tokens after it (the answer is kept stripped). Found by bisection: a prefix holds `end` or not."""
    lo, hi = 1, len(ids)
    while lo < hi:  # the shortest prefix whose text holds the end marker
        mid = (lo + hi) // 2
        if end in tokenizer.decode(ids[:mid]):
            hi = mid
        else:
            lo = mid + 1
    n = lo
    while n < len(ids) and not tokenizer.decode(ids[n:n + 1]).strip():
        n += 1
    return n


def answer_capture(capture: TokenCapture | None, tokenizer, end: str) -> TokenCapture | None:
    """The teacher's distributions over its answer's tokens alone (the thinking's left out)."""
    if capture is None or not capture.token_ids:
        return capture
    n = _tokens_before_answer(list(capture.token_ids), tokenizer, end)
    return replace(capture, token_ids=capture.token_ids[n:], top_ids=capture.top_ids[n:],
                   top_logprobs=capture.top_logprobs[n:], sampled_logprobs=capture.sampled_logprobs[n:])


def without_reasoning(text: str, finish_reason: str | None, capture: TokenCapture | None, tokenizer,
                      end: str) -> Answer | None:
    """A completion and its capture with the thinking taken out, or None when it holds no thinking."""
    answer = split_reasoning(text, finish_reason, end)
    if answer.reasoning is None:
        return None
    if answer.failure is None:
        answer.capture = answer_capture(capture, tokenizer, end)
    return answer
