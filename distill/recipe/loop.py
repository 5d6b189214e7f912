"""loop: spend the teacher's budget in rounds, each on the prompts the student of the round before most needs.

A round selects prompts from the seed pool, the teacher answers only those, the filter runs, the student's adapter
continues training on the new rows and is measured on a dev split carved from the pool. The held-out test split is
evaluated once, after the last round; selection never reads it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill.recipe.base import Section

STRATEGIES = ("random", "uncertainty", "errors", "slices")


class DevSplit(Section):
    size: int = Field(gt=0, description="Seed rows set aside to measure each round's student: never answered by the "
                      "teacher, never trained on, never a few-shot example; the held-out test split stays apart.")
    min_per_slice: int = Field(0, ge=0, description="At least this many dev rows of every slice of data.slice_field "
                               "that has them, so that `slices` can measure rare slices.")
    seed: int = Field(0, description="Seed of the deterministic dev split.")


class LoopBudget(Section):
    per_round: int = Field(gt=0, description="Prompts the teacher answers per round.")
    prompts: int | None = Field(None, gt=0, description="Prompts the teacher answers over all rounds (default: "
                                "rounds x per_round); the last round takes what is left.")
    tokens: int | None = Field(None, gt=0, description="Stop once the teacher has written this many tokens: its "
                               "answers, and the inputs it wrote with errors.synthesize (checked after each round, so "
                               "the last round may pass it).")
    round_tokens: int | None = Field(None, gt=0, description="Teacher tokens per round (its answers, and the inputs it "
                                     "writes with errors.synthesize): from round 2 on, a round takes as many prompts "
                                     "as fit at the mean cost per prompt of the rounds before (at least one, at most "
                                     "per_round); round 1 takes per_round. An estimate: a round of long answers may "
                                     "pass it, and the first round that writes is sized by answers alone.")


class UncertaintySettings(Section):
    measure: Literal["disagreement", "logprob"] = Field(
        "disagreement", description="disagreement: the share of the student's `samples` answers that differ from the "
        "most common one (higher: less sure). logprob: the mean log-probability per token of the student's greedy "
        "answer (lower: less sure).")
    samples: int = Field(4, ge=2, description="Answers sampled per prompt for disagreement.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of those answers.")
    candidates: int | None = Field(None, gt=0, description="Score at most this many unanswered prompts per round, "
                                   "drawn at random (default: all of them).")


WRITE_TEMPLATE = """A student model answered this example wrongly.

Input: {{ input }}
Correct answer: {{ reference }}
The student's answer: {{ student_answer }}

Write one new input of the same kind, testing the same skill, that differs from the one above. Reply with the new \
input only, without its answer.
"""


class ErrorsSettings(Section):
    embedder: str = Field("all-minilm-l6-v2", description="Sentence-transformers model folder, or the offline default.")
    synthesize: bool = Field(
        False, description="LLM2LLM: instead of the nearest unanswered pool prompts, the teacher writes new inputs "
        "modelled on each dev error (errors.template), spread evenly over the errors; each written input is one of "
        "the round's prompts, then answered like a seed. A written input that is empty, cut off at "
        "errors.max_tokens, or a copy of a dev, test, pool or earlier written input is dropped and written again by "
        "the next error in turn (four passes at most; a round whose teacher keeps writing copies takes fewer "
        "prompts). The writing's tokens count toward the teacher's budget. Dev is then trained toward: its "
        "scores are no held-out measure (the test split is).")
    template: str = Field(WRITE_TEMPLATE, description="The teacher's prompt to write one input from a dev error "
                          "(Jinja, sandboxed): input, reference, references, student_answer, slice and the dev row's "
                          "columns by name. Sent through the teacher's chat template when generate.chat is on.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature of the written inputs (above 0, so that "
                               "several inputs written from one error differ).")
    max_tokens: int = Field(128, gt=0, description="Most tokens of one written input; a longer one is dropped.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a written input (not kept), as "
                            "generate.sampling.stop ends an answer: [\"\\n\"] for inputs of one line.")
    start: str = Field("", description="The opening of every written input, given to the teacher as the start of "
                       "its reply and kept at the head of the input (\"Utterance:\" where every real input opens so).")


class SlicesSettings(Section):
    weight: Literal["gap", "variance"] = Field(
        "gap", description="gap: a slice's share of the round is its dev gap to the teacher (teacher minus student, "
        "0 where the student is ahead; 1 minus the student where evaluate.models has no teacher); variance: the student's p(1-p) on the slice, largest where it is right half "
        "the time. Within a slice the prompts are drawn at random.")
    floor: float = Field(0.05, ge=0, le=1, description="Each slice with prompts left gets at least this share of the "
                         "weight, so that a slice measured as solved is still sampled a little.")


class PlateauSettings(Section):
    min_gain: float = Field(0.01, ge=0, description="A round whose dev score rises less than this over the best "
                            "round before it counts toward a plateau.")
    patience: int = Field(1, ge=1, description="Stop after this many such rounds in a row.")


class LoopSettings(Section):
    rounds: int = Field(ge=1, description="Most rounds.")
    strategy: Literal[STRATEGIES] = Field(  # type: ignore[valid-type]
        "random", description="How a round chooses its prompts after the first (which draws at random: no student "
        "has been measured yet). random: the control. uncertainty: where the current student is least sure "
        "(loop.uncertainty). errors: the unanswered prompts nearest (by embedding) to the dev items the student gets "
        "wrong, spread evenly over those errors. slices: the round split across data.slice_field's slices by "
        "loop.slices.weight.")
    explore: float = Field(
        0.0, ge=0, le=1, description="Share of each round after the first drawn at random from the unanswered pool "
        "beside the strategy's choice (rounded to whole prompts): coverage the strategy cannot narrow. A targeting "
        "strategy picks the prompts the student finds hard, which can be the ones its teacher answers worst; a random "
        "share keeps part of every round as the random control would spend it. Ignored by strategy random.")
    train: Literal["continue", "retrain"] = Field(
        "continue", description="How each round trains. continue: the adapter of the round before goes on, on the "
        "round's new rows only (train.init_adapter). retrain: a fresh adapter on the kept rows of every round so far "
        "(train.add_rows; objective sft only): each round's student is trained as a one-shot student on the same rows "
        "would be, so a loop against one-shot compares the choice of prompts alone, at equal optimizer steps; its "
        "training grows with the rounds.")
    budget: LoopBudget = Field(description="The teacher's prompts per round and in all.")
    dev: DevSplit = Field(description="The dev split each round is measured on.")
    uncertainty: UncertaintySettings = Field(default_factory=UncertaintySettings, description="strategy uncertainty.")
    errors: ErrorsSettings = Field(default_factory=ErrorsSettings, description="strategy errors.")
    slices: SlicesSettings = Field(default_factory=SlicesSettings, description="strategy slices.")
    plateau: PlateauSettings | None = Field(default_factory=PlateauSettings, description="Stop when the dev score "
                                            "stops rising; null: run every round the budget allows.")
    stop_on_guard_degraded: bool = Field(
        True, description="Stop when a guard set of evaluate.sets is measured degraded after a round (the gate of "
        "evaluate.gate); the loop's student is then the round before it.")

    @model_validator(mode="after")
    def _budget_fits(self) -> "LoopSettings":
        if self.budget.prompts is not None and self.budget.prompts < self.budget.per_round:
            raise ValueError(f"budget.prompts = {self.budget.prompts} is less than one round's "
                             f"budget.per_round = {self.budget.per_round}")
        return self

    @property
    def total_prompts(self) -> int:
        return self.budget.prompts or self.rounds * self.budget.per_round

    def round_budget(self, spent: int, mean_tokens: float | None = None) -> int:
        """Prompts the next round may select, after `spent` in the rounds before it, each of which cost the teacher
        `mean_tokens` on average (None before any was answered)."""
        n = max(0, min(self.budget.per_round, self.total_prompts - spent))
        if self.budget.round_tokens is not None and mean_tokens:
            n = min(n, max(1, int(self.budget.round_tokens // mean_tokens)))
        return n
