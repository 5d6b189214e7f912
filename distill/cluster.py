"""What Slurm says of a run's jobs: their ids as submitted (RUN/slurm/jobs.json) and their states (sacct where the
cluster keeps accounting, else squeue). Read by the stages that wait on another job (a generation task on its
teacher server) and by `distill slurm status`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from distill.errors import UserError
from distill.run_dir import RunDir

ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}


def round_job(k: int, stage: str) -> str:
    """The name of loop round k's job for `stage` among the run's jobs: its folder under loop/, then the stage."""
    return f"round-{k:02d}/{stage}"


def jobs_file(run: RunDir) -> Path:
    return run.root / "slurm" / "jobs.json"


def read_jobs(run: RunDir) -> dict:
    path = jobs_file(run)
    if not path.is_file():
        raise UserError(f"{path}: no Slurm jobs recorded for this run (submit it with `distill slurm submit`)")
    return json.loads(path.read_text())


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} not found: run this where the Slurm client commands are on PATH") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{cmd[0]} gave no answer in 60 s: is the Slurm controller reachable from here?") from None


def accounting_enabled() -> bool:
    """Whether the cluster keeps job accounting (sacct knows finished jobs), read from its configuration."""
    if not shutil.which("sacct"):
        return False
    if not shutil.which("scontrol"):  # no configuration to read: ask sacct itself, which fails without a database
        return _run(["sacct", "-n", "-X", "-j", "1"]).returncode == 0
    out = _run(["scontrol", "show", "config"]).stdout
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageType":
            return value.strip() not in ("", "accounting_storage/none", "(null)")
    return False


def _from_squeue(job_id: str) -> list[dict]:
    """One record per task (array tasks expanded); [] if the controller no longer knows the job."""
    proc = _run(["squeue", "-h", "-r", "--states=all", "-j", job_id, "-o", "%i|%T|%r"])
    return parse_squeue(proc.stdout) if proc.returncode == 0 else []


def parse_squeue(text: str) -> list[dict]:
    """Records of `squeue -h -o %i|%T|%r` lines: job (array task) id, state, reason ('' for None)."""
    tasks = []
    for line in text.splitlines():
        task, state, reason = (line.split("|") + ["", ""])[:3]
        tasks.append({"job": task.strip(), "state": state.strip(), "reason": "" if reason.strip() == "None" else reason.strip()})
    return tasks


def _from_sacct(job_id: str) -> list[dict]:
    proc = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,Reason"])
    if proc.returncode != 0:
        return []
    tasks = []
    for line in proc.stdout.splitlines():
        task, state, reason = (line.split("|") + ["", ""])[:3]
        tasks.append({"job": task, "state": state.split()[0] if state else "", "reason": "" if reason == "None" else reason})
    return tasks


def job_states(job_id: str, accounting: bool | None = None) -> list[dict]:
    accounting = accounting_enabled() if accounting is None else accounting
    return (_from_sacct(job_id) if accounting else []) or _from_squeue(job_id)
