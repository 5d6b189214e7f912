"""The loop as a chain of Slurm jobs (`distill slurm submit`): what each job does.

Every round's jobs are queued at submit time, chained with afterok: round k's generation array, its filter, train and
evaluate jobs, then one job at the end. A job reads where the loop stands from the rounds' files (`progress`, the
same decisions `distill run` takes), so a job whose round comes after the loop stopped exits at once, and the chain
runs on to its end job. Round k's evaluate job also decides: the round's record, the stop rules, and while the loop
goes on, round k+1's selection (uncertainty runs the student there, on the job that has its GPUs).
"""

from __future__ import annotations

from distill.errors import UserError
from distill.loop.layout import DECIDE, ROUND_STAGES, LoopDir
from distill.loop.run import close_round, end_loop, progress, round_recipe, select_round
from distill.pipeline import save_resolved_recipe, write_run_report
from distill.recipe import Recipe
from distill.run_dir import RunDir, run_lock


def _stopped_before(where: tuple[list[dict], str | None, int | None], k: int) -> str | None:
    """Why round k has nothing to do (the loop stopped before it), else None, from where the loop stands
    (`progress`); refuses a round whose turn has not come (the job chain runs them in order; a job started by hand
    may not)."""
    records, reason, current = where
    if reason is not None and (not records or records[-1]["round"] < k):
        return f"the loop stopped after round {records[-1]['round'] if records else 0} ({reason})"
    if current is not None and current < k:
        raise UserError(f"loop round {k}: round {current} has not finished; its jobs come first")
    return None


def _selected(recipe: Recipe, run: RunDir, k: int) -> dict:
    """Round k's selection: made by round k-1's decide job, or here (one of the generation tasks makes it, the others
    wait for it and find it up to date)."""
    layout = LoopDir(run)
    with run_lock(layout.round(k).root / ".select.lock"):
        return select_round(recipe, run, k, label=f"[round {k}] ")


def round_stage_command(recipe: Recipe, run: RunDir, k: int, stage: str,
                        shard: tuple[int, int] = (0, 1)) -> list[str] | None:
    """The stage command (`distill STAGE ROUND_RECIPE --run-dir ROUND_DIR`) that runs round k's `stage` in its job,
    with the round's recipe written; None when there is nothing to do (the loop stopped before round k, or round k
    found nothing to select)."""
    if stage not in ROUND_STAGES:
        raise UserError(f"--stage {stage}: a round runs {', '.join(ROUND_STAGES)}")
    layout = LoopDir(run)
    stopped = _stopped_before(progress(recipe, layout), k)
    # the round's first job makes its selection if the round before did not; later jobs find it in `progress`
    if stopped is None and stage == ROUND_STAGES[0] and not _selected(recipe, run, k)["selected"]:
        stopped = f"round {k} found nothing to select"
    if stopped:
        print(f"[round {k}] [{stage}] {stopped}: nothing to do", flush=True)
        return None
    here = layout.round(k)
    save_resolved_recipe(round_recipe(recipe, layout, k), here)
    return [stage, str(here.recipe), "--run-dir", str(here.root),
            *(["--shard", f"{shard[0]}/{shard[1]}"] if shard != (0, 1) else [])]


def decide(recipe: Recipe, run: RunDir, k: int) -> str | None:
    """After round k's evaluation: its record in loop/loop.json, the stop rules, and when the loop goes on, round
    k+1's selection. Returns why the loop stops, or None."""
    layout = LoopDir(run)
    where = progress(recipe, layout)
    stopped = _stopped_before(where, k)
    if stopped:
        print(f"[round {k}] [{DECIDE}] {stopped}: nothing to do", flush=True)
        return None
    if layout.round(k).read_marker("evaluate") is None:
        raise UserError(f"loop round {k} has not been evaluated ({layout.round(k).stage('evaluate')}): its evaluate "
                        "job comes first")
    records = [r for r in where[0] if r["round"] < k]  # round k is recorded (and said) again, here
    reason = close_round(recipe, layout, records, k, label=f"[round {k}] ")
    if reason is None:
        chosen = _selected(recipe, run, k + 1)
        print(f"[round {k + 1}] {chosen['strategy']}: {chosen['selected']} prompts for the teacher "
              f"({chosen['pool_left']} left in the pool)", flush=True)
    else:
        print(f"[loop] stops after round {k} ({reason})", flush=True)
    return reason


def finish(recipe: Recipe, run: RunDir) -> dict:
    """The chain's last job: the loop's student assembled as the run's own, scored on the test split, the cards and the
    loop's report (as `distill run` ends a loop)."""
    records, reason, current = progress(recipe, LoopDir(run))
    if reason is None:
        raise UserError(f"the loop has not stopped: round {current} has not finished; its jobs come first")
    save_resolved_recipe(recipe, run)
    record = end_loop(recipe, run, records, reason)
    write_run_report(run)
    return record
