"""Generation modes and training objectives, each declared once: what it needs from the recipe, whether it runs the
teacher, and which recipe sections count in its stage's fingerprint. The recipe schema, the fingerprints and the stages
read these facts; the classes that do the work (distill.generate.modes, distill.train.objectives) are named by the same
keys. Nothing here imports a library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Objective:
    name: str
    learns_from_captures: bool = False  # the teacher's top K captured by generation (generate.logprobs)
    runs_the_teacher: bool = False  # training asks the teacher itself: the train stage runs it (its engine counts)
    shares_vocabulary: bool = False  # teacher and student ids must mean the same tokens
    sections: tuple[str, ...] = ()  # its own sections of `train`: they count in train's fingerprint only when it runs


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("sft"),
    Objective("kd", learns_from_captures=True, shares_vocabulary=True, sections=("kd",)),
    Objective("sft+kd", learns_from_captures=True, shares_vocabulary=True, sections=("kd",)),
    Objective("on_policy", runs_the_teacher=True, shares_vocabulary=True, sections=("on_policy",)),
)}


def objective(name: str) -> Objective:
    return OBJECTIVES[name]


def unused_sections(name: str) -> set[str]:
    """The `train` sections of objectives other than `name`: settings of an objective not run shape nothing."""
    own = set(OBJECTIVES[name].sections)
    return {s for o in OBJECTIVES.values() for s in o.sections} - own


@dataclass(frozen=True)
class Mode:
    name: str
    needs: str | None = None  # the generate section it needs, and that only it may set
    writes_inputs: bool = False  # the teacher writes the inputs too (there is no real input to read)
    scores_targets: bool = False  # the teacher writes nothing: the seeds' real targets are scored, teacher-forced
    retries_cut_answers: bool = False  # an answer cut at max_tokens is retried by the stage, not left to the filter


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("complete"),
    Mode("synthesize", needs="grid", writes_inputs=True),
    Mode("label", needs="label", retries_cut_answers=True),
    Mode("score", scores_targets=True),
)}


def mode(name: str) -> Mode:
    return MODES[name]
