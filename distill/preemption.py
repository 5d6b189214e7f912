"""A request to stop at a safe point, from the job scheduler.

Before preemption or the time limit, Slurm signals the job's batch shell (`--signal=B:USR1@N`), which
creates the file named by DISTILL_STOP_FILE on the shared run directory (see distill/slurm/templates/_job.sbatch.j2).
Stages look for it where stopping loses nothing (generation after each chunk, training after each
optimizer step) and raise `Preempted`; the command exits with PREEMPTED_EXIT and the job requeues itself.
A file rather than a forwarded signal: it reaches every process of every node, through srun,
accelerate and distill's own logged child process alike.
"""

from __future__ import annotations

import os

STOP_FILE_ENV = "DISTILL_STOP_FILE"
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: try again later


class Preempted(Exception):
    """The stage stopped at a safe point because the scheduler asked; its work so far is kept."""


def stop_may_be_requested() -> bool:
    """Whether this process runs under a job script that can ask it to stop."""
    return bool(os.environ.get(STOP_FILE_ENV))


def stop_requested() -> bool:
    path = os.environ.get(STOP_FILE_ENV)
    return bool(path) and os.path.exists(path)


def stopped_at_request() -> None:
    """Leave STOP_FILE.stopped for the batch script: a launcher (accelerate, torchrun) reports its processes' exit
    75 as a plain failure, so the exit code alone cannot say that the stage stopped as asked."""
    path = os.environ.get(STOP_FILE_ENV)
    if path:
        with open(f"{path}.stopped", "a"):
            pass
