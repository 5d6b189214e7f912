"""The state of each stage's job, read from Slurm, beside what the run directory holds.

Job ids live in RUN/slurm/jobs.json (written by submit). States come from sacct when the
cluster keeps accounting, else from squeue, which knows finished jobs for MinJobAge seconds.
"""

from __future__ import annotations

import shutil

from distill.cluster import ACTIVE, accounting_enabled, job_states, jobs_file, read_jobs
from distill.errors import UserError
from distill.run_dir import RunDir
from distill.stages import slurm_jobs

NEVER_SATISFIED = "DependencyNeverSatisfied"
# How an array's task states sum up into one stage state: the first that any task is in.
ARRAY_PRECEDENCE = ("FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "PREEMPTED", "BOOT_FAIL",
                    "DEADLINE", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "PENDING", "COMPLETED")


def summarize(tasks: list[dict]) -> str:
    if not tasks:
        return "UNKNOWN"
    states = {t["state"] for t in tasks}
    if len(states) == 1:
        return states.pop()
    for state in ARRAY_PRECEDENCE:
        if state in states:
            return state
    return sorted(states)[0]


def jobs_in_order(recorded: dict) -> dict[str, dict]:
    """The recorded jobs in submission order, each waiting on the one before (jobs.json keeps its keys sorted, and
    the order apart; a record without it, from an earlier version, holds the plain chain's jobs)."""
    stages = recorded["stages"]
    plain = ("teacher_server",) + slurm_jobs()
    order = recorded.get("order") or sorted(stages, key=lambda name: plain.index(name) if name in plain else len(plain))
    return {name: stages[name] for name in order}


def _output_complete(run: RunDir, name: str) -> bool:
    """Whether job `name`'s stage has its output: a loop round's (round-NN/stage) in the round's folder."""
    folder, _, stage = name.rpartition("/")
    return (RunDir(run.loop / folder) if folder else run).read_marker(stage) is not None


def run_status(run: RunDir) -> dict:
    """Every job's id, its Slurm state (and per task for arrays), and whether its output is complete, in submission
    order (each job after the one before)."""
    recorded = read_jobs(run)
    if not shutil.which("squeue"):
        raise UserError("squeue not found: run `distill slurm status` where the Slurm client commands are installed")
    accounting = accounting_enabled()
    stages = {}
    for stage, job in jobs_in_order(recorded).items():
        tasks = sorted(job_states(str(job["job_id"]), accounting), key=lambda t: t["job"])
        stages[stage] = {"job_id": job["job_id"], "state": summarize(tasks), "tasks": tasks,
                         "reason": next((t["reason"] for t in tasks if t["reason"]), ""),
                         "output_complete": _output_complete(run, stage)}
    return {"run_dir": str(run.root.resolve()), "profile": recorded.get("profile"), "accounting": accounting,
            "stages": stages}


def active_tasks(run: RunDir) -> dict[str, list[dict]]:
    """Per job of this run's previous submission, in submission order, its tasks (array tasks apart) that are still
    queued or running, each with its state and reason ([] for a job that has ended)."""
    if not jobs_file(run).is_file():
        return {}
    return {stage: [t for t in job_states(str(job["job_id"])) if t["state"] in ACTIVE]
            for stage, job in jobs_in_order(read_jobs(run)).items()}


def never_starting(tasks_by_stage: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Per job (the jobs in submission order, each waiting on the one before), the pending tasks that can never
    start: their dependency failed (DependencyNeverSatisfied), or they wait on such a job. Without
    kill_invalid_depend (cluster) or --kill-on-invalid-dep (job) they stay in the queue for good."""
    stuck: dict[str, list[str]] = {}
    before = None
    for stage, tasks in tasks_by_stage.items():
        pending = [t for t in tasks if t["state"] == "PENDING"]
        if any(t["reason"] == NEVER_SATISFIED for t in pending) or (
                pending and before in stuck and all(t["reason"] == "Dependency" for t in pending)):
            stuck[stage] = [t["job"] for t in pending]
        before = stage
    return stuck


def format_status(status: dict) -> str:
    lines = [f"run {status['run_dir']} (profile {status['profile']}; states from "
             f"{'sacct' if status['accounting'] else 'squeue'})",
             f"{'stage':<14} {'job':<10} {'state':<12} {'output':<9} reason"]
    for stage, s in status["stages"].items():
        output = "complete" if s["output_complete"] else "-"
        lines.append(f"{stage:<14} {s['job_id']:<10} {s['state']:<12} {output:<9} {s['reason']}")
        if len(s["tasks"]) > 1:
            for t in s["tasks"]:
                lines.append(f"  {t['job']:<16} {t['state']:<12} {t['reason']}")
    stuck = never_starting({stage: s["tasks"] for stage, s in status["stages"].items()})
    if stuck:
        ids = " ".join(job for jobs in stuck.values() for job in jobs)
        lines.append(f"{', '.join(stuck)}: will never start ({NEVER_SATISFIED}): a stage they wait on failed, and "
                     "this cluster leaves such jobs pending (no kill_invalid_depend). Fix the failed stage and run "
                     f"`distill slurm submit` for this run again (it cancels them first), or `scancel {ids}`")
    if not status["accounting"] and any(s["state"] == "UNKNOWN" for s in status["stages"].values()):
        lines.append("UNKNOWN: the controller has forgotten the job (MinJobAge) and the cluster keeps no accounting")
    return "\n".join(lines)
