"""Rollouts: the answers an on-policy step learns from, and the teacher's scores of exactly their tokens.

A rollout is one answer after one student prompt: sampled by the student (the step's seeds, or train.on_policy.repair's
prompts), or a kept row's text (an off-policy step, GKD's lmbda). The teacher then reads those token ids after its own
prompt for the same seed, teacher-forced, with its stops read as the student's (distill.train.stops); a repair answer is
read by the repair teacher after the student's own prompt. The losses (distill.policy_loss) read rollouts only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distill import rows as C
from distill.data.captures import TokenCapture
from distill.models.engine import ScoringEngine
from distill.prompts.student import student_prompt
from distill.prompts.teacher import teacher_prompts
from distill.prompts.template import PromptTemplate, row_seed
from distill.prompts.tokens import continuation_ids
from distill.recipe import Recipe
from distill.train.stops import capture_with_stops_as_eos, teacher_reads

TASK, REPAIR, TEXT = "task", "repair", "text"  # a seed's sampled answer, a repair prompt's, a kept row's text
SOURCES = {TASK: "student sample", REPAIR: "student sample (repair)", TEXT: "kept row"}  # as trained_rows.parquet names them


@dataclass
class Rollout:
    kind: str  # TASK, REPAIR or TEXT
    item: dict  # the seed, repair prompt or kept row it answers
    prompt: str  # the student's prompt
    ids: list[int]  # the answer's token ids, ending with the student's stop where it stopped
    sampler_logprobs: list[float] | None  # the sampler's log-probabilities of those ids (None: not sampled, TEXT)
    finish_reason: str | None = None
    teacher_prompt: str | None = None
    teacher: TokenCapture | None = None  # its scores of `ids`, stops read as the student's
    teacher_prompt_tokens: int = 0  # prompt tokens it read to score them

    @property
    def sampled(self) -> bool:
        return self.sampler_logprobs is not None


@dataclass
class Scorers:
    """Who reads the rollouts' tokens: the teacher (seeds, kept rows' text) and the repair teacher (repair prompts)."""

    teacher: ScoringEngine
    teacher_stops: set[int]  # the teacher's own stop ids, read as the student's stop
    student_stop: int
    top_k: int
    repair: ScoringEngine | None = None


def student_templates(recipe: Recipe) -> dict[str, PromptTemplate]:
    """The student's prompt template for each kind of rollout."""
    t = recipe.train
    templates = {TASK: PromptTemplate(t.prompt_template, "train.prompt_template")}
    templates[TEXT] = templates[TASK]
    if t.on_policy.repair:
        templates[REPAIR] = PromptTemplate(t.on_policy.repair.prompt_template, "train.on_policy.repair.prompt_template")
    return templates


def sample(recipe: Recipe, sampler, tokenizer, batch: list[tuple[str, dict]], step: int, adapter: Path,
           student_stop: int | None) -> list[Rollout]:
    """The student's answers to the step's prompts, sampled with `adapter` (each prompt's seed drawn from train.seed,
    the step and the item), with the sampler's log-probabilities of its tokens. Empty answers are left out."""
    o, templates = recipe.train.on_policy, student_templates(recipe)
    prompts = [student_prompt(recipe, templates[kind], item, tokenizer) for kind, item in batch]
    seeds = [row_seed(recipe.train.seed, f"on-policy:{step}:{item[C.ID]}") for _, item in batch]
    out = sampler.generate(prompts, seeds=seeds, n=o.samples_per_prompt, temperature=o.temperature,
                           max_tokens=o.max_tokens, stop=list(recipe.evaluate.stop) or None,
                           stop_token_ids=[student_stop] if student_stop is not None else None,
                           adapter=adapter, adapter_name="student", logprobs=1)
    return [Rollout(kind, item, prompt, list(c.capture.token_ids), list(c.capture.sampled_logprobs), c.finish_reason)
            for (kind, item), prompt, completions in zip(batch, prompts, out)
            for c in completions if c.capture is not None and c.capture.token_ids]


def text_rollouts(recipe: Recipe, tokenizer, rows: list[dict], student_stop: int) -> list[Rollout]:
    """Kept rows' text as rollouts (an off-policy step): the student's prompt, the answer's tokens and its stop, in
    the format the student trains in (chat: the user turn through its template)."""
    from distill.train.formats import training_examples

    rollouts, template = [], PromptTemplate(recipe.train.prompt_template, "train.prompt_template")
    for row, e in zip(rows, training_examples(recipe, rows, tokenizer)):
        prompt = student_prompt(recipe, template, row, tokenizer)  # the conversation's history with it
        answer = e["completion"][0]["content"] if recipe.train.chat else e["completion"]
        rollouts.append(Rollout(TEXT, row, prompt, continuation_ids(tokenizer, answer) + [student_stop], None))
    return rollouts


def score(recipe: Recipe, rollouts: list[Rollout], scorers: Scorers, pool: list[dict], render_chat) -> None:
    """Fill in each rollout's teacher scores: the teacher reads the seeds' answers and the kept rows' text after its
    own prompt for that seed (a few-shot draw never holding the seed itself), its stops read as the student's; the
    repair teacher reads the repair answers after the student's prompt."""
    theirs = [r for r in rollouts if r.kind in (TASK, TEXT)]
    if theirs:
        key = "generate.answer_template" if recipe.generate.writes_inputs else "generate.template"
        template = PromptTemplate(recipe.generate.answering_template(), key)
        prompts = teacher_prompts(recipe, template, [r.item for r in theirs], pool, render_chat, never_itself=True)
        stops, eos = scorers.teacher_stops, scorers.student_stop
        asked = [teacher_reads(r.ids, stops, eos) for r in theirs]
        for r, prompt, done in zip(theirs, prompts, scorers.teacher.score_ids(prompts, asked, scorers.top_k)):
            r.teacher_prompt, r.teacher_prompt_tokens = prompt, done.prompt_tokens
            r.teacher = capture_with_stops_as_eos(done.capture, r.ids, stops, eos)
    repair = [r for r in rollouts if r.kind == REPAIR]
    if repair:
        prompts = [r.prompt for r in repair]
        for r, done in zip(repair, scorers.repair.score_ids(prompts, [r.ids for r in repair], scorers.top_k)):
            r.teacher_prompt, r.teacher_prompt_tokens, r.teacher = r.prompt, done.prompt_tokens, done.capture
