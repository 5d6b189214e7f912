"""Experiment tracking: the trainer's curves and the evaluation figures in one tracker run per run directory.

`train.report_to` names the trackers. Each writes offline under RUN/tracking/ unless the user says
otherwise: TensorBoard event files in tracking/tensorboard, a W&B offline run in tracking/wandb
(`wandb sync` uploads it; WANDB_MODE=online logs live). The run id comes from the run directory, so
train, evaluate and compare processes append to the same run. Training logs what the trainer logs
(loss, learning rate, ...) per step; evaluate and compare log every figure of their report: each
model's score per set, metric and slice, and its difference from the baseline with its interval.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from pathlib import Path

from distill.errors import UserError
from distill.recipe import Recipe
from distill.run_dir import RunDir

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def tracking_dir(run: RunDir) -> Path:
    return run.root / "tracking"


def check_installed(recipe: Recipe) -> None:
    """Before any work: every tracker the recipe names can be imported."""
    for name in recipe.train.report_to:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(f"train.report_to: {name} is not installed here (pip install {PACKAGES[name]})")


def _wandb_run(recipe: Recipe, run: RunDir):
    """This run directory's W&B run, started or resumed."""
    import wandb

    if wandb.run is not None:
        return wandb.run
    folder = tracking_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    run_id = hashlib.sha256(str(run.root.resolve()).encode()).hexdigest()[:16]
    return wandb.init(project=os.environ.get("WANDB_PROJECT", recipe.name), name=recipe.name, id=run_id, resume="allow",
                      dir=str(folder), mode=os.environ.get("WANDB_MODE", "offline"),
                      settings=wandb.Settings(silent=True, console="off"))


def _tensorboard_writer(run: RunDir):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(tracking_dir(run) / "tensorboard"))


def trainer_callbacks(recipe: Recipe, run: RunDir) -> list:
    """transformers callbacks that log to the recipe's trackers, in the run's folder (the trainer's own
    `report_to` stays "none", which would choose folders and run names of its own). Main process only."""
    callbacks = []
    for name in recipe.train.report_to:
        if name == "tensorboard":
            from transformers.integrations import TensorBoardCallback

            callbacks.append(TensorBoardCallback(_tensorboard_writer(run)))
        elif name == "wandb":
            from transformers.integrations import WandbCallback

            _wandb_run(recipe, run)  # the callback logs to the run already open
            callbacks.append(WandbCallback())
    return callbacks


def finish_tracking(recipe: Recipe) -> None:
    """Close the trainer's tracker runs now, not at interpreter exit (a multi-process launch skips that)."""
    if "wandb" in recipe.train.report_to:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def last_training_step(run: RunDir) -> int:
    """The trained student's optimizer steps, as the train stage recorded them (0 before training)."""
    try:
        return int(run.read_marker("train")["summary"].get("steps") or 0)
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def report_scalars(report: dict, prefix: str, student_step: int = 0) -> list[tuple[str, float, int]]:
    """(tag, value, step) for every finite figure of an evaluation report.

    Tags: PREFIX/SET/METRIC/MODEL (score), .../MODEL/slice/SLICE, and .../vs_BASELINE with _low and _high
    (the difference from the baseline and its interval). Checkpoints student@S log as `student` at step S and
    the trained student at its last step, so the tracker draws them as one curve; other models log at step 0.
    """
    steps = report.get("steps") or {}

    def series(model: str) -> tuple[str, int]:
        if model.startswith("student@"):
            return "student", int(steps.get(model) or model.partition("@")[2])
        if model == "student":
            return "student", int(steps.get(model) or student_step)
        return model, int(steps.get(model) or 0)

    out: list[tuple[str, float, int]] = []

    def add(tag: str, value, step: int) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append((tag, float(value), step))

    versus = f"vs_{report['baseline']}"
    for set_name, entry in report["sets"].items():
        for model, summary in entry["models"].items():
            name, step = series(model)
            for metric, s in summary["metrics"].items():
                add(f"{prefix}/{set_name}/{metric}/{name}", s["score"], step)
                for where, v in s["slices"].items():
                    add(f"{prefix}/{set_name}/{metric}/{name}/slice/{where}", v["score"], step)
        for model, cmp in entry["vs_base"].items():
            name, step = series(model)
            for metric, c in cmp["metrics"].items():
                for where, x in [(None, c["overall"]), *c["slices"].items()]:
                    tag = f"{prefix}/{set_name}/{metric}/{name}" + (f"/slice/{where}" if where else "") + f"/{versus}"
                    add(tag, x["delta"], step)
                    add(f"{tag}_low", x["low"], step)
                    add(f"{tag}_high", x["high"], step)
    add(f"{prefix}/degraded_findings", len(report["degraded"]), max([step for _, _, step in out], default=0))
    return out


def log_report(recipe: Recipe, run: RunDir, report: dict, prefix: str) -> None:
    """Log an evaluation report's figures to the recipe's trackers (nothing when it names none)."""
    if not recipe.train.report_to:
        return
    scalars = report_scalars(report, prefix, last_training_step(run))
    for name in recipe.train.report_to:
        if name == "tensorboard":
            with _tensorboard_writer(run) as writer:
                for tag, value, step in scalars:
                    writer.add_scalar(tag, value, step)
        elif name == "wandb":
            wb = _wandb_run(recipe, run)
            # W&B's own step only goes forward within a run (training used it): these figures get their own axis.
            wb.define_metric(f"{prefix}/step")
            wb.define_metric(f"{prefix}/*", step_metric=f"{prefix}/step")
            by_step: dict[int, dict] = {}
            for tag, value, step in scalars:
                by_step.setdefault(step, {})[tag] = value
            for step in sorted(by_step):
                wb.log({f"{prefix}/step": step, **by_step[step]})
            wb.finish()
