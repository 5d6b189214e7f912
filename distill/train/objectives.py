"""Training objectives, one object each: what it needs before any work, how it turns kept rows into training
examples, and the trainer it builds from its typed config. A new objective is one class here (and its name in the
recipe schema); the train stage follows the recipe to the loss through these calls.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from distill import catalog
from distill import rows as C
from distill.prompts.template import with_chat_template
from distill.recipe import Recipe
from distill.run_dir import RunDir


class Objective:
    name: ClassVar[str]  # its key in distill.catalog.OBJECTIVES, where what it needs is declared
    loss_terms: ClassVar[tuple[str, ...]] = ()  # what its trainer logs beside the loss
    own_loop: ClassVar[bool] = False  # trains with its own loop (`train`) instead of a TRL trainer

    def __init__(self, recipe: Recipe):
        self.recipe, self.t = recipe, recipe.train

    def check(self) -> None:
        """Refuse before any work what would make its training meaningless."""

    def examples(self, rows: list[dict], student_dir: Path, run: RunDir) -> tuple[list[dict], list[dict], dict | None]:
        """(training examples, the rows they come from, what the summary says of the teacher's targets or None)."""
        from transformers import AutoTokenizer

        from distill.train.formats import training_examples

        tokenizer = with_chat_template(AutoTokenizer.from_pretrained(
            student_dir, trust_remote_code=self.recipe.models.student.trust_remote_code), self.recipe.models.student)
        return training_examples(self.recipe, rows, tokenizer), rows, None

    def config_class(self):
        from trl import SFTConfig

        return SFTConfig

    def config_fields(self) -> dict:
        """Its own fields of the trainer's typed config."""
        return {}

    def trainer_class(self):
        from trl import SFTTrainer

        return SFTTrainer

    def collator(self, default):
        return default

    def summary(self, teacher_targets: dict | None, terms: dict[str, list[float]]) -> dict:
        return {}


class SFT(Objective):
    """Cross-entropy on the teacher's text."""

    name = "sft"


class KD(Objective):
    """The teacher's captured token distributions at every completion token; cross-entropy only where the teacher gave
    none (the EOS of a stop string)."""

    name = "kd"
    loss_terms = ("ce_loss", "kd_loss")
    cross_entropy = "where_no_teacher"

    def check(self) -> None:
        from distill.models.vocabulary import check_shared_vocabulary

        check_shared_vocabulary(self.recipe)

    def examples(self, rows: list[dict], student_dir: Path, run: RunDir) -> tuple[list[dict], list[dict], dict | None]:
        from transformers import AutoTokenizer

        from distill.models.context import resolved_model
        from distill.models.vocabulary import stop_token_ids
        from distill.train.kd import kd_examples

        tokenizer = with_chat_template(AutoTokenizer.from_pretrained(
            student_dir, trust_remote_code=self.recipe.models.student.trust_remote_code), self.recipe.models.student)
        teacher_dir, _ = resolved_model(self.recipe, "teacher")
        stops = stop_token_ids(teacher_dir, self.recipe.models.teacher.trust_remote_code)
        examples, teacher_targets, used = kd_examples(self.recipe, rows, tokenizer, run.teacher_logprobs, stops)
        trained = set(used)
        return examples, [r for r in rows if r[C.ID] in trained], teacher_targets

    def config_class(self):
        from distill.train.kd_trainer import KDConfig

        return KDConfig

    def config_fields(self) -> dict:
        kd = self.t.kd
        return {"cross_entropy": self.cross_entropy, "divergence": kd.divergence, "kd_weight": kd.weight,
                "kd_tail": kd.tail}

    def trainer_class(self):
        from distill.train.kd_trainer import KDTrainer

        return KDTrainer

    def collator(self, default):
        from distill.train.kd import TeacherTargetCollator

        return TeacherTargetCollator(default, self.t.kd.top_k or self.recipe.generate.logprobs)

    def summary(self, teacher_targets: dict | None, terms: dict[str, list[float]]) -> dict:
        return {"objective": self.name, "teacher_targets": teacher_targets,
                **{f"first_{n}": round(v[0], 4) for n, v in terms.items()},
                **{f"last_{n}": round(v[-1], 4) for n, v in terms.items()}}


class SFTPlusKD(KD):
    """Cross-entropy on the teacher's tokens plus kd.weight times the divergence from its distributions."""

    name = "sft+kd"
    cross_entropy = "everywhere"


class OnPolicy(Objective):
    """The student samples through vLLM with its current adapter, the teacher scores exactly its tokens, and the
    student learns from the per-token difference (distill.train.on_policy). Needs a teacher engine, and teacher and
    student to share a vocabulary; the seeds are its prompts."""

    name = "on_policy"
    own_loop = True

    def check(self) -> None:
        from distill.models.vocabulary import check_shared_vocabulary

        check_shared_vocabulary(self.recipe, instead="Use train.objective: sft to train on the teacher's text instead",
                                both_ways=True)

    def train(self, run: RunDir, kept: list[dict], sft: Callable[[], dict]) -> dict:
        """The loop, after the SFT phase when train.on_policy.start_from is sft. `sft`: the train stage's SFT on the
        kept rows, offered to every objective with a loop of its own; this one decides whether it runs first."""
        from distill.train.on_policy import OnPolicyLoop

        first = sft() if self.t.on_policy.start_from == "sft" else None
        return OnPolicyLoop(self.recipe, run, kept, first).train()


OBJECTIVES: dict[str, type[Objective]] = {o.name: o for o in (SFT, KD, SFTPlusKD, OnPolicy)}
assert set(OBJECTIVES) == set(catalog.OBJECTIVES), "an objective declared in distill.catalog without its class"


def objective_for(recipe: Recipe) -> Objective:
    return OBJECTIVES[recipe.train.objective](recipe)
