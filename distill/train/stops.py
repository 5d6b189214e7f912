"""A teacher's stops read as the student's: one rule for KD and on-policy, whatever the families.

An instruct teacher stops on several ids (generation_config.json's eos_token_id: Llama 3's <|end_of_text|>,
<|eom_id|>, <|eot_id|>; Qwen's <|im_end|>, <|endoftext|>), and the student stops on one: its EOS, or in the chat
format its template's end-of-turn token. Whenever the two sets differ, the teacher's probability of stopping at all
is what the student's stop is measured against: the stops' probabilities summed under the student's stop id. That
holds also where the student's stop is one of the teacher's (a base student beside its instruct teacher): the
teacher's mass on its other stops is still its wish to stop.
"""

from __future__ import annotations

import math

from distill.data.captures import TokenCapture


def stop_as_eos(ids: list[int], logprobs: list[float], stops: set[int], eos: int) -> tuple[list[int], list[float]]:
    """One position of the teacher's top-K with its stop tokens read as the student's EOS: their probabilities summed
    into the first slot they held, under the student's EOS id; the others emptied (-inf, masked by the divergences)."""
    merge = [j for j, i in enumerate(ids) if i in stops or i == eos]
    if not merge or (len(merge) == 1 and ids[merge[0]] == eos):
        return ids, logprobs
    ids, logprobs = list(ids), list(logprobs)
    mass = sum(math.exp(logprobs[j]) for j in merge)
    total = math.log(mass) if mass > 0 else -math.inf
    first, *rest = merge
    ids[first], logprobs[first] = eos, total
    for j in rest:  # emptied, under the student's id too: no slot keeps a teacher stop
        ids[j], logprobs[j] = eos, -math.inf
    return ids, logprobs


def teacher_reads(student_ids: list[int], stops: set[int], eos: int) -> list[int]:
    """The student's tokens as the teacher is asked to score them: an answer ended with the student's stop, when the
    teacher does not stop with it, ends with one of the teacher's stops instead."""
    if student_ids and student_ids[-1] == eos and eos not in stops:
        return list(student_ids[:-1]) + [min(stops)]
    return list(student_ids)


def capture_with_stops_as_eos(capture: TokenCapture, student_ids: list[int], stops: set[int], eos: int) -> TokenCapture:
    """A teacher's scores of the student's tokens (asked as `teacher_reads` made them) with its stops read as the
    student's stop: in every position's top K (stop_as_eos), and where the student ended its answer, the teacher's
    probability of stopping at all under the student's stop id."""
    if stops == {eos}:
        return capture
    rows = [stop_as_eos(i, lp, stops, eos) for i, lp in zip(capture.top_ids, capture.top_logprobs)]
    ids, sampled = list(capture.token_ids), list(capture.sampled_logprobs)
    if student_ids and student_ids[-1] == eos:
        top = dict(zip(capture.top_ids[-1], capture.top_logprobs[-1]))
        mass = sum(math.exp(lp) for i, lp in top.items() if i in stops or i == eos)
        if ids[-1] not in top:  # the stop it read, outside its top K
            mass += math.exp(sampled[-1])
        ids[-1], sampled[-1] = eos, math.log(mass) if mass > 0 else -math.inf
    return TokenCapture(ids, [i for i, _ in rows], [lp for _, lp in rows], sampled)
