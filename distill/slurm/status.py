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

STAGE_ORDER = ("teacher_server",) + slurm_jobs()
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


def run_status(run: RunDir) -> dict:
    """Every stage's job id, its Slurm state (and per task for arrays), and whether its output is complete."""
    recorded = read_jobs(run)
    if not shutil.which("squeue"):
        raise UserError("squeue not found: run `distill slurm status` where the Slurm client commands are installed")
    accounting = accounting_enabled()
    stages = {}
    for stage in sorted(recorded["stages"], key=STAGE_ORDER.index):
        job = recorded["stages"][stage]
        tasks = sorted(job_states(str(job["job_id"]), accounting), key=lambda t: t["job"])
        stages[stage] = {"job_id": job["job_id"], "state": summarize(tasks), "tasks": tasks,
                         "reason": next((t["reason"] for t in tasks if t["reason"]), ""),
                         "output_complete": run.read_marker(stage) is not None}
    return {"run_dir": str(run.root.resolve()), "profile": recorded.get("profile"), "accounting": accounting,
            "stages": stages}


def active_tasks(run: RunDir) -> dict[str, list[dict]]:
    """Per stage, the jobs (array tasks apart) of this run's previous submission that are still
    queued or running, each with its state and reason."""
    if not jobs_file(run).is_file():
        return {}
    active = {}
    for stage, job in read_jobs(run)["stages"].items():
        tasks = [t for t in job_states(str(job["job_id"])) if t["state"] in ACTIVE]
        if tasks:
            active[stage] = tasks
    return active


def never_starting(tasks_by_stage: dict[str, list[dict]]) -> dict[str, list[str]]:
    """Per stage, the pending jobs that can never start: their dependency failed
    (DependencyNeverSatisfied), or they wait on such a job. Without kill_invalid_depend (cluster)
    or --kill-on-invalid-dep (job) they stay in the queue for good."""
    stuck: dict[str, list[str]] = {}
    for i, stage in enumerate(STAGE_ORDER):
        pending = [t for t in tasks_by_stage.get(stage, []) if t["state"] == "PENDING"]
        if any(t["reason"] == NEVER_SATISFIED for t in pending) or (
                pending and i > 0 and STAGE_ORDER[i - 1] in stuck
                and all(t["reason"] == "Dependency" for t in pending)):
            stuck[stage] = [t["job"] for t in pending]
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
