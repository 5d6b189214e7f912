"""Who is evaluated: a model folder, optionally with a LoRA adapter, prompted as the student or the teacher.

`distill compare` accepts run directories (their trained adapter), adapter folders (served
on their base model), model folders, and the words `base` and `teacher` (the recipe's models).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from distill.errors import UserError
from distill.recipe import ModelSpec, Recipe


@dataclass(frozen=True)
class Candidate:
    name: str
    model_dir: Path  # the weights vLLM loads
    spec: ModelSpec  # engine and dtype settings
    adapter: Path | None = None  # LoRA adapter served on model_dir
    role: Literal["student", "teacher"] = "student"  # which prompt it gets
    step: int | None = None  # training step of a checkpoint, for curves
    merged: Path | None = None  # the adapter folded into a copy of model_dir, which the engine loads instead of LoRA


def checkpoint_step(folder: Path) -> int | None:
    name = folder.name
    return int(name.rpartition("-")[2]) if name.startswith("checkpoint-") and name.rpartition("-")[2].isdigit() else None


def is_trained_model(folder: Path) -> bool:
    """A whole model where an adapter would be: what train.method full saves (config.json, no adapter_config.json)."""
    return (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file()


def training_checkpoints(train_dir: Path) -> list[Path]:
    """Checkpoints saved during training (train.save_steps), in step order: adapters, or whole models (method full)."""
    folder = train_dir / "checkpoints"
    found = [p for p in folder.glob("checkpoint-*") if ((p / "adapter_config.json").is_file() or is_trained_model(p))
             and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def check_base_model(adapter: Path, student: dict) -> None:
    """An adapter served on a different model than it was trained on gives meaningless scores."""
    record = adapter / "training_data.json"
    if not record.is_file():
        return  # checkpoints and foreign adapters carry no record
    trained_on = json.loads(record.read_text()).get("base_model", {}).get("weights_sha256")
    if trained_on and trained_on != student.get("weights_sha256"):
        raise UserError(f"{adapter}: trained on another base model (weights {trained_on[:12]}) than the recipe's student "
                        f"({str(student.get('weights_sha256'))[:12]}); pass that run's recipe with --recipe")


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}#{i}", i + 1
    taken.add(out)
    return out


def resolve_candidates(targets: list[str], recipe: Recipe) -> list[Candidate]:
    """Each command-line target as a Candidate, named after what the user typed."""
    from distill.models.context import resolved_model

    student_dir, student = resolved_model(recipe, "student")
    taken: set[str] = set()
    out = []
    for target in targets:
        path = Path(target)
        if target == "base":
            out.append(Candidate(_unique("base", taken), student_dir, recipe.models.student))
        elif target == "teacher":
            teacher_dir, _ = resolved_model(recipe, "teacher")
            out.append(Candidate(_unique("teacher", taken), teacher_dir, recipe.models.teacher, role="teacher"))
        elif (path / "recipe.yaml").is_file() and (path / "train").is_dir():
            adapter = path / "train" / "adapter"
            if is_trained_model(adapter):  # train.method full: the run's whole model
                out.append(Candidate(_unique(path.resolve().name, taken), adapter.resolve(), recipe.models.student))
                continue
            if not (adapter / "adapter_config.json").is_file():
                raise UserError(f"{path}: run directory without a trained adapter (train/adapter): run its train stage first")
            check_base_model(adapter, student)
            out.append(Candidate(_unique(path.resolve().name, taken), student_dir, recipe.models.student, adapter=adapter))
        elif (path / "adapter_config.json").is_file():
            check_base_model(path, student)
            step = checkpoint_step(path)
            name = path.name if step is not None else (path.parent.name if path.name == "adapter" else path.name)
            if path.name == "adapter" and path.parent.name == "train":
                name = path.parent.parent.name
            out.append(Candidate(_unique(name, taken), student_dir, recipe.models.student, adapter=path, step=step))
        elif (path / "config.json").is_file():
            out.append(Candidate(_unique(path.resolve().name, taken), path.resolve(), recipe.models.student))
        else:
            raise UserError(f"{target}: not a run directory (recipe.yaml + train/), an adapter folder "
                            f"(adapter_config.json), a model folder (config.json), 'base' or 'teacher'")
    return out
