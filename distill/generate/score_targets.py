"""score mode: the teacher writes nothing. Each seed's real target is the completion, and the teacher's top-K
log-probabilities at each of its tokens are measured teacher-forced (vLLM prompt log-probabilities), so a real
labelled set is distilled with soft targets as well as generated text is."""

from __future__ import annotations

from distill import rows as C
from distill.generate.sample import Sample
from distill.prompts.template import PromptTemplate, row_variables

# Where the numbers come from (provenance and the stage summary): vLLM's prompt log-probabilities, measured to work
# on the CPU build in batches of 400 few-shot prompts (36k tokens).
SCORED_WITH = "vllm prompt_logprobs (teacher-forced)"


def scored_completions(template: PromptTemplate, items: list[dict]) -> list[str | None]:
    """The text scored after each prompt: the seed's reference through generate.completion_template (None: no target)."""
    return [None if not item[C.REFERENCE] else template.render(**{**row_variables(item), "target": item[C.REFERENCE]}) for item in items]


def score_chunk(engine, g, template: PromptTemplate, prompts: list[str], items: list[dict], stats) -> list[list[Sample]]:
    """Per prompt one sample, as generate_chunk returns them: the real target (through `template`, the recipe's
    generate.completion_template) and the teacher's capture of it; a seed without a target is a failure with the reason."""
    texts = scored_completions(template, items)
    todo = [i for i, t in enumerate(texts) if t and t.strip()]
    scored = dict(zip(todo, engine.score([prompts[i] for i in todo], [texts[i] for i in todo], g.logprobs))) if todo else {}
    samples = []
    for i, text in enumerate(texts):
        comp = scored.get(i)
        if comp is None:
            samples.append([Sample(text or "", None, tokens=0, failure="no target to score (data.target_field is empty)")])
            continue
        stats.tokens += comp.num_tokens
        samples.append([Sample(comp.text, None, tokens=comp.num_tokens, capture=comp.capture)])
    return samples
