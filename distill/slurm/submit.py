"""Submit a recipe as a chain of Slurm jobs: generation array -> merge/filter -> train -> evaluate (a loop: those four
for every round, then an end job that evaluates the loop's student on the test split).

Each job depends on the one before with afterok and --kill-on-invalid-dep=yes, so a failed stage
cancels the stages after it instead of leaving them pending, also on clusters without
kill_invalid_depend. Scripts and job ids are kept in RUN/slurm/ for `distill slurm status` and
for reading what ran.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from pathlib import Path

from distill.cluster import jobs_file
from distill.errors import StageError, UserError
from distill.models.teacher_server import server_file
from distill.recipe import Recipe
from distill.run_dir import RunDir, write_json, write_text
from distill.slurm.profile import load_profile
from distill.slurm.render import render_jobs
from distill.slurm.status import NEVER_SATISFIED, active_tasks, never_starting


def sbatch_command(script: Path, dependency_id: str | None, dependency: str = "afterok") -> list[str]:
    cmd = ["sbatch", "--parsable"]
    if dependency_id is not None:  # cancelled if the job before fails, whatever the cluster's default
        cmd += [f"--dependency={dependency}:{dependency_id}", "--kill-on-invalid-dep=yes"]
    return cmd + [str(script)]


def _sbatch(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise UserError(f"sbatch refused {cmd[-1]}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip().split(";")[0]  # --parsable prints "id" or "id;cluster"


def cancel_never_starting(run: RunDir, active: dict[str, list[dict]] | None = None) -> list[str]:
    """Cancel this run's earlier jobs that wait on a failed stage and so can never start (on a
    cluster without kill_invalid_depend, for jobs submitted without --kill-on-invalid-dep)."""
    stuck = never_starting(active_tasks(run) if active is None else active)
    jobs = [job for ids in stuck.values() for job in ids]
    if jobs:
        proc = subprocess.run(["scancel", *jobs], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise UserError(f"scancel {' '.join(jobs)} failed: {proc.stderr.strip()}")
        print(f"[slurm] cancelled {', '.join(stuck)} of the earlier submission (jobs {' '.join(jobs)}): "
              f"{NEVER_SATISFIED}, a stage they waited on failed", flush=True)
    return jobs


def _cancel_partial_chain(submitted: dict[str, str]) -> str:
    """Cancel the stages a failed submit had already queued (half a chain must not run on its own); says what it did."""
    if not submitted:
        return ""
    jobs = ", ".join(f"{stage} {job}" for stage, job in submitted.items())
    try:
        if subprocess.run(["scancel", *submitted.values()], capture_output=True, timeout=60).returncode == 0:
            return f"; cancelled the jobs it had submitted ({jobs})"
    except (OSError, subprocess.SubprocessError):
        pass
    return f"; could not cancel the jobs it had submitted ({jobs}): scancel them"


def dry_run(recipe: Recipe, run: RunDir, profile_name: str | None = None) -> str:
    """The scripts and the sbatch commands that submit would run, as text; nothing is written."""
    profile = load_profile(profile_name or recipe.slurm.profile)
    jobs = render_jobs(recipe, profile, run.root, run.recipe)
    by_name = {job.stage: job for job in jobs}
    out = []
    for job in jobs:
        script = run.root.resolve() / "slurm" / f"{job.stage}.sbatch"
        out.append(f"# ---- {job.stage}: {script}\n{job.script}")
    out.append("# ---- submit")
    for job in jobs:
        script = run.root.resolve() / "slurm" / f"{job.stage}.sbatch"
        dep = f"${by_name[job.depends_on].variable}" if job.depends_on else None
        out.append(f"{job.variable}=$(" + " ".join(shlex.quote(c) if not c.startswith("--dependency") else c
                                                          for c in sbatch_command(script, dep, job.dependency)) + ")")
    return "\n".join(out)


def submit(recipe: Recipe, run: RunDir, profile_name: str | None = None) -> dict:
    """Render, check and submit every stage; record the job ids in RUN/slurm/jobs.json."""
    from distill.models.context import resolved_model
    from distill.pipeline import save_resolved_recipe

    profile = load_profile(profile_name or recipe.slurm.profile)
    # Requests that fit no partition are refused first: the recipe's own mistake, whatever machine submits it.
    jobs = render_jobs(recipe, profile, run.root, run.recipe)
    if not shutil.which("sbatch"):
        raise UserError("sbatch not found: submit from a machine with the Slurm client commands, or use --dry-run")
    earlier = active_tasks(run)
    cancelled = cancel_never_starting(run, earlier)
    still_active = [t["job"] for tasks in earlier.values() for t in tasks if t["job"] not in cancelled]
    if still_active:
        raise UserError(f"{run.root}: jobs of an earlier submission are still queued or running "
                        f"({', '.join(still_active)}); wait for them or scancel them first")
    for role in recipe.models.roles:  # download / convert / locate models once, here, not in every job
        resolved_model(recipe, role)
    save_resolved_recipe(recipe, run)
    slurm_dir = run.root / "slurm"
    (run.logs / "slurm").mkdir(parents=True, exist_ok=True)  # sbatch --output needs the folder
    server_file(run).unlink(missing_ok=True)  # an earlier submission's server address (its job id tells it apart too)

    record = {"profile": profile.name, "recipe": str(run.recipe.resolve()), "submitted_at": time.time(), "stages": {}}
    submitted: dict[str, str] = {}
    width = max(len(job.stage) for job in jobs)
    try:
        for job in jobs:
            script = slurm_dir / f"{job.stage}.sbatch"
            write_text(script, job.script)
            cmd = sbatch_command(script.resolve(), submitted.get(job.depends_on) if job.depends_on else None, job.dependency)
            job_id = _sbatch(cmd)
            submitted[job.stage] = job_id
            record["order"] = [*record.get("order", []), job.stage]
            record["stages"][job.stage] = {"job_id": job_id, "array": job.array, "partition": job.partition,
                                           "depends_on": job.depends_on, "script": str(script.resolve()),
                                           "command": cmd, "resources": job.resources}
            write_json(jobs_file(run), record)
            print(f"[slurm] {job.stage:<{width}} job {job_id}" + (f" (array {job.array})" if job.array else "")
                  + f" on {job.partition}" + (f", after {job.depends_on}" if job.depends_on else "")
                  + (" has started" if job.dependency == "after" else ""), flush=True)
    except (UserError, subprocess.SubprocessError, OSError) as e:
        note = _cancel_partial_chain(submitted)
        if isinstance(e, UserError) and not note:
            raise
        why = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        raise StageError(f"submitting {job.stage} failed ({why}){note}") from None
    print(f"[slurm] submitted {len(submitted)} jobs; follow with: distill slurm status {run.root}", flush=True)
    return record
