"""How a chunk of prompts becomes samples: the teacher's completions, answers that must parse asked again with seeds
of their own, and synthesize mode's second pass that answers the inputs the teacher wrote."""

from __future__ import annotations

from distill.generate.sample import Sample
from distill.models.reasoning import without_reasoning
from distill.prompts.template import row_seed


class ChunkStats:
    """What a chunk cost: rows, failures, tokens, retries."""

    def __init__(self):
        self.rows = self.failures = self.tokens = self.retried = 0


def _sample(engine, g, prompts: list[str], seeds: list[int], *, n: int, temperature: float, structured: dict | None,
            capture: bool = True):
    return engine.generate(prompts, seeds=seeds, n=n, temperature=temperature, top_p=g.sampling.top_p,
                           max_tokens=g.sampling.max_tokens, stop=g.sampling.stop, structured=structured,
                           logprobs=g.logprobs if capture else None)


def generate_chunk(engine, g, prompts: list[str], request_seeds: list[int], stats: ChunkStats,
                   answer_prompts=None, parsed=(None, None, None)) -> list[list[Sample]]:
    """Per prompt, its n samples.

    In label and synthesize mode an answer that fails its check is requested again (alone,
    with its own seed) up to `retries` times; one that still fails is kept with the reason.
    synthesize samples also carry the `input` the teacher wrote and its `raw` JSON.
    `answer_prompts(indices, inputs)`: the second-pass prompts of synthesize mode with
    generate.answer_template; the first pass then writes one input per prompt, the second n answers.
    `parsed`: the mode's (structured request, check, retry settings), see distill.generate.modes.
    """
    structured, check, retry = parsed
    n = 1 if answer_prompts else g.sampling.n
    # with an answer pass, the first pass writes inputs: the answers are what gets captured
    capture = answer_prompts is None
    outputs = _sample(engine, g, prompts, request_seeds, n=n, temperature=g.sampling.temperature, structured=structured,
                      capture=capture)
    samples = [[Sample.of(comp) for comp in completions] for completions in outputs]
    stats.tokens += sum(s.tokens for sample_list in samples for s in sample_list)
    if check is None:  # a constrained answer (label, synthesize's JSON) has no room for thinking: nothing to strip
        _strip_reasoning(engine, g, samples)
        return samples
    for sample_list in samples:
        for s in sample_list:
            s.raw = s.text
    retry_temperature = g.sampling.temperature or retry.retry_temperature
    for attempt in range(1, retry.retries + 2):
        bad = []
        for p, sample_list in enumerate(samples):
            for k, s in enumerate(sample_list):
                if s.attempts == attempt:
                    kept, why = check(s.raw, s.finish_reason)
                    for field, value in (kept or {"text": s.raw}).items():
                        setattr(s, field, value)
                    s.failure = why
                    if why is not None:
                        bad.append((p, k))
        if not bad or attempt > retry.retries:
            break
        stats.retried += len(bad)
        retry_seeds = [row_seed(request_seeds[p], f"retry{attempt}:{k}") for p, k in bad]
        again = _sample(engine, g, [prompts[p] for p, _ in bad], retry_seeds, n=1, temperature=retry_temperature,
                        structured=structured, capture=capture)
        for (p, k), retry_seed, completions in zip(bad, retry_seeds, again):
            comp, s = completions[0], samples[p][k]
            stats.tokens += comp.num_tokens
            s.raw, s.finish_reason, s.tokens, s.capture = comp.text, comp.finish_reason, comp.num_tokens, comp.capture
            s.attempts, s.retry_seed = attempt + 1, retry_seed
    if answer_prompts is not None:
        _answer_inputs(engine, g, samples, request_seeds, stats, answer_prompts)
    return samples


def _answer_inputs(engine, g, samples: list[list[Sample]], request_seeds: list[int], stats: ChunkStats,
                   answer_prompts) -> None:
    """synthesize with answer_template: the teacher answers each input it wrote, n times, prompted with the template.

    A prompt whose input never parsed keeps its one failed sample; the others get n answer samples
    that carry the input, its raw JSON, the answer prompt and the answer seed.
    """
    ok = [p for p, sample_list in enumerate(samples) if sample_list[0].failure is None]
    if not ok:
        return
    prompts = answer_prompts(ok, [samples[p][0].input for p in ok])
    seeds = [row_seed(request_seeds[p], "answer") for p in ok]
    outputs = _sample(engine, g, prompts, seeds, n=g.sampling.n, temperature=g.sampling.temperature, structured=None)
    for p, prompt, seed, completions in zip(ok, prompts, seeds, outputs):
        first = samples[p][0]
        answers = [Sample.of(comp) for comp in completions]
        for a in answers:
            stats.tokens += a.tokens
            a.attempts, a.retry_seed, a.input, a.raw = first.attempts, first.retry_seed, first.input, first.raw
            a.input_tokens, a.prompt, a.answer_seed = first.tokens, prompt, seed
        samples[p] = answers
        _strip_reasoning(engine, g, [answers])


def _strip_reasoning(engine, g, samples: list[list[Sample]]) -> None:
    """generate.reasoning: strip: each answer without the thinking before it."""
    if g.reasoning == "strip":
        for sample_list in samples:
            for s in sample_list:
                strip_reasoning(s, engine.tokenizer, g.reasoning_end)


def strip_reasoning(s: Sample, tokenizer, end: str) -> None:
    """The sample's answer after the thinking `end` closes (distill.models.reasoning): its text and capture, the
    thinking kept in `reasoning`; a failure when no answer came after it."""
    answer = without_reasoning(s.text, s.finish_reason, s.capture, tokenizer, end)
    if answer is None:
        return
    s.text, s.reasoning = answer.text, answer.reasoning
    if answer.failure is not None:
        s.failure = s.failure or answer.failure
    else:
        s.capture = answer.capture
