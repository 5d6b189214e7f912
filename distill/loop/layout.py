"""Where a loop's files live: runs/<name>/loop/round-NN/ is a run directory of its own (select/, generate/, filter/,
train/, evaluate/, recipe.yaml, logs/), and loop/loop.json records every round's figures and why the loop stopped."""

from __future__ import annotations

import json
from pathlib import Path

from distill import rows as C
from distill.errors import UserError
from distill.run_dir import RunDir

SELECT = "select"  # a round's first step: its stage folder and completion marker
DEV_SET = "dev"  # the name of the dev split's evaluation set in every round
ROUND_STAGES = ("generate", "filter", "train", "evaluate")  # the registry's stages a round runs (no cards)
DECIDE = "decide"  # a round's last step on a cluster, after evaluate: its record, the stop rules, the next selection


class LoopDir:
    def __init__(self, run: RunDir):
        self.run = run
        self.root = run.loop

    def round(self, k: int) -> RunDir:
        return RunDir(self.root / f"round-{k:02d}")

    def selection(self, k: int) -> Path:
        return self.round(k).stage(SELECT) / "selected.jsonl"

    @property
    def record(self) -> Path:
        return self.run.loop_record

    def chosen(self, k: int) -> list[dict]:
        """Round k's selection ({id, why} per seed), as its completed select step wrote it."""
        if not self.round(k).read_marker(SELECT):
            raise UserError(f"loop round {k} has not selected its prompts ({self.selection(k)}): run the loop first")
        with open(self.selection(k)) as f:
            return [json.loads(line) for line in f if line.strip()]

    def answered_before(self, k: int) -> set[str]:
        """The seeds chosen by the rounds before round k: the teacher has answered them (or will, on resume), and no
        round chooses them again."""
        return {entry[C.ID] for r in range(1, k) for entry in self.chosen(r)}
