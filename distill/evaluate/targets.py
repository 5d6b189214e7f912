"""The teacher's answers as targets of the fidelity measurement: which K, and each answer's tokens with its top K."""

from __future__ import annotations

from distill.data.captures import captured_completion
from distill.models.engine import Completion
from distill.recipe import Recipe

DEFAULT_K = 20


def fidelity_k(recipe: Recipe) -> int | None:
    """The teacher's top K to measure fidelity with, or None when it is not measured (evaluate.fidelity)."""
    e = recipe.evaluate
    on = e.fidelity if e.fidelity is not None else (recipe.train.learns_from_captures or recipe.train.runs_the_teacher)
    if not on or "teacher" not in e.models:
        return None
    return recipe.generate.logprobs or DEFAULT_K


def teacher_target(answer: Completion, tokenizer) -> dict | None:
    """The teacher's tokens of its answer (as its text keeps them, plus its EOS when it stopped with one) and its top K
    at each, from the answer's capture; None when the answer has no tokens or its text is not its tokens."""
    capture = answer.capture
    found, _ = captured_completion({"token_ids": capture.token_ids}, answer.text, tokenizer)
    if found is None:
        return None
    tokens, eos = found
    n = len(tokens) + eos
    if n == 0:
        return None
    return {"token_ids": tokens, "eos": eos, "top_ids": capture.top_ids[:n], "top_logprobs": capture.top_logprobs[:n]}
