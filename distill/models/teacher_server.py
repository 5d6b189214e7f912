"""The run's teacher server job (slurm.teacher_server), seen from a task that uses it (generation, on-policy training): its announcement file, and its
endpoint once it answers. The job itself is started by distill.slurm.teacher_server."""

from __future__ import annotations

import json
import time
from pathlib import Path

from distill.cluster import ACTIVE, job_states, round_job
from distill.errors import StageError
from distill.progress import console
from distill.recipe import EndpointSettings, Recipe
from distill.run_dir import RunDir

SERVED_NAME = "teacher"


SERVER_FILE_VARIABLE = "DISTILL_TEACHER_SERVER"


JOB = "teacher_server"  # its name among the run's Slurm jobs


def client_stages(recipe: Recipe) -> tuple[str, ...]:
    """The jobs the server serves, which it outlives: generation, and training when training asks the teacher
    (on-policy: the server scores the student's tokens)."""
    return ("generate", "train") if recipe.train.runs_the_teacher else ("generate",)


def client_jobs(recipe: Recipe) -> tuple[str, ...]:
    """The client jobs by their names among the run's jobs: a loop has them in every round."""
    if recipe.loop is None:
        return client_stages(recipe)
    return tuple(round_job(k, stage) for k in range(1, recipe.loop.rounds + 1) for stage in client_stages(recipe))


def server_file(run: RunDir) -> Path:
    return run.root / "slurm" / "teacher-server.json"


def recorded_server_job(server: Path) -> str | None:
    """The server job's id, as submit recorded it beside its announcement file (also for a loop round's tasks, whose
    own run directory is the round's)."""
    try:
        return str(json.loads((server.parent / "jobs.json").read_text())["stages"][JOB]["job_id"])
    except (OSError, ValueError, KeyError):
        return None


def wait_for_server(recipe: Recipe, path: Path, stage: str, poll_s: float = 2.0) -> EndpointSettings:
    """In a generation task (or on-policy training): the endpoint of this submission's teacher server, once it answers. Stops with the
    server's own reason when it failed, or when its job ended without ever answering."""
    ts = recipe.slurm.teacher_server
    job = recorded_server_job(path)
    logs = path.parent.parent / "logs" / "slurm"  # the submitted run's: a loop round's run directory is under it
    deadline = time.time() + ts.ready_timeout_s + 120  # the server's own limit, counted from its start, comes first
    announced = False
    while True:
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            info = {}
        if info and (job is None or info.get("job_id") == job):
            if info.get("failed"):
                raise StageError(f"{info['failed']} ({path})")
            if info.get("stopped"):
                raise StageError(f"the teacher server (job {info['job_id']}) has already stopped ({path}): submit again")
            if info.get("url"):
                return EndpointSettings(url=info["url"], model=info["model"], concurrency=ts.concurrency,
                                        chunks_in_flight=4, ready_timeout_s=60)
        tasks = job_states(job) if job is not None else []
        if tasks and not any(t["state"] in ACTIVE for t in tasks):
            raise StageError(f"the teacher server job {job} has ended without answering: see its log in {logs}")
        if time.time() > deadline:
            raise StageError(f"no teacher server answered within slurm.teacher_server.ready_timeout_s "
                             f"({ts.ready_timeout_s:g}s) + 120s: see the server job's log in {logs}")
        if not announced:
            console(f"[{stage}] waiting for the teacher server (job {job}) to answer")
            announced = True
        time.sleep(poll_s)
