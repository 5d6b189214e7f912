"""Render one sbatch script per stage from the package's templates (distill/slurm/templates/).

Templates are Jinja, rendered in a sandbox. Values in the job's body are shell-quoted by the
`q` filter; values in `#SBATCH` lines (read by sbatch, not the shell) match a pattern checked
when the recipe and profile load, and paths there may hold no control characters. So a recipe
or profile can put no shell code in a job that it did not write as a setup line, and no value
can end the `#SBATCH` block early.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from distill.cluster import round_job
from distill.errors import UserError
from distill.loop.layout import DECIDE, ROUND_STAGES
from distill.models.teacher_server import JOB, client_stages
from distill.recipe import Recipe, StageResources
from distill.slurm.layout import layout_problems
from distill.slurm.profile import ClusterProfile, choose_partition, cpus_and_memory, package_folder
from distill.stages import STAGES, slurm_jobs

TEMPLATES_DIR = package_folder("templates")
ACCELERATE_DIR = package_folder("accelerate")  # read by `accelerate launch` in the train job, by path
SLURM_STAGES = slurm_jobs()  # one job per stage, document inside the evaluation job
TEACHER_SERVER = JOB  # a job before generation when the recipe serves its teacher (slurm.teacher_server)
# What each job runs (distill.cli commands, each on the recipe and run directory): the stages that name the job in
# the registry, the filter job merging the generation shards' chunks first if no shard did.
COMMANDS = {TEACHER_SERVER: ["slurm serve-teacher"],
            **{job: (["generate"] if job == "filter" else []) + [s.name for s in STAGES if s.slurm_job == job]
               for job in SLURM_STAGES}}
# A round's job: the same, less the cards (a round writes none), its evaluate job then deciding
ROUND_COMMANDS = {job: [c for c in commands if c in ROUND_STAGES] + ([DECIDE] if job == "evaluate" else [])
                  for job, commands in COMMANDS.items() if job in SLURM_STAGES}
LOOP_END = ["slurm end-loop"]  # in an evaluate job: the loop's student on the test split, the cards, the report


@dataclass
class StageJob:
    """One job: its rendered script and where it goes."""

    stage: str  # its name among the run's jobs: the stage, or round-NN/stage for a loop's round
    partition: str
    script: str
    array: str | None = None
    depends_on: str | None = None
    dependency: str = "afterok"  # after: starts once the job it depends on has started (the teacher server)
    resources: dict = field(default_factory=dict)

    @property
    def variable(self) -> str:
        """A shell variable for its job id, in the dry run's commands."""
        return re.sub(r"\W", "_", self.stage).upper() + "_JOB"


@dataclass
class PlannedJob:
    name: str  # among the run's jobs
    stage: str  # whose template and resources (slurm.<stage>) it has
    commands: list[str]  # distill.cli commands it runs, in order
    round: int | None = None  # a loop's round


def planned_jobs(recipe: Recipe) -> list[PlannedJob]:
    """The run's jobs in submission order, each after the one before (afterok; the first after the teacher server
    once that has started). A loop queues every round's jobs (a round after the loop stopped exits at once) and an
    end job."""
    jobs = [PlannedJob(TEACHER_SERVER, TEACHER_SERVER, COMMANDS[TEACHER_SERVER])] if recipe.slurm.teacher_server else []
    if recipe.loop is None:
        return jobs + [PlannedJob(stage, stage, COMMANDS[stage]) for stage in SLURM_STAGES]
    for k in range(1, recipe.loop.rounds + 1):
        jobs += [PlannedJob(round_job(k, stage), stage, [f"slurm round --round {k} --stage {c}" for c in commands], k)
                 for stage, commands in ROUND_COMMANDS.items()]
    return jobs + [PlannedJob("evaluate", "evaluate", LOOP_END)]


def _environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(loader=FileSystemLoader(str(TEMPLATES_DIR)), undefined=StrictUndefined,
                               keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def _sbatch_path(what: str, path: Path) -> str:
    """A path for an `#SBATCH` line: sbatch reads it up to the line's end and drops backslashes."""
    text = str(path)
    if re.search(r"[\x00-\x1f\x7f\\]", text):
        raise UserError(f"{what} {text!r}: a path with control characters or backslashes cannot go into an "
                        "#SBATCH line; use another folder")
    return text


def sbatch_header(script: str) -> list[str]:
    """The `#SBATCH` lines sbatch reads: those before the first line that is neither blank nor a comment."""
    header = []
    for line in script.splitlines()[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            break
        if line.startswith("#SBATCH"):
            header.append(line)
    return header


def _gres(res: StageResources, gpu_type: str | None) -> str | None:
    if not res.gpus_per_node:
        return None
    return f"gpu:{gpu_type}:{res.gpus_per_node}" if gpu_type else f"gpu:{res.gpus_per_node}"


def _srun_args(profile: ClusterProfile) -> str:
    """pyxis options that put each job step in the profile's container."""
    c = profile.container
    if c is None:
        return ""
    args = [f"--container-image={c.image}"]
    if c.mounts:
        args.append(f"--container-mounts={','.join(c.mounts)}")
    if c.workdir:
        args.append(f"--container-workdir={c.workdir}")
    return " ".join(shlex.quote(a) for a in args) + " "


def render_jobs(recipe: Recipe, profile: ClusterProfile, run_dir: Path, recipe_file: Path,
                workdir: Path | None = None) -> list[StageJob]:
    """Every job's script, in submission order (planned_jobs). Refuses (UserError) before rendering anything if some
    stage's request fits no partition of the profile, or a model's engine needs more GPUs than its job gets."""
    s = recipe.slurm
    run_dir, recipe_file = Path(run_dir).resolve(), Path(recipe_file).resolve()
    planned = planned_jobs(recipe)
    chosen = {job.stage: choose_partition(profile, job.stage, getattr(s, job.stage)) for job in planned}
    problems = layout_problems(recipe, profile, chosen)
    if problems:
        raise UserError(" | ".join(problems))
    env = _environment()
    jobs = []
    for i, job in enumerate(planned):
        stage = job.stage
        res: StageResources = getattr(s, stage)
        partition = chosen[stage]
        cpus, mem_gb = cpus_and_memory(partition, res)
        array = f"0-{s.shards - 1}" if stage == "generate" else None
        processes = res.nodes * max(res.gpus_per_node, 1) if stage == "train" else 1
        log_name = "%x-%A_%a.out" if array else "%x-%j.out"
        server = stage == TEACHER_SERVER
        context = {
            "stage": stage,
            "job_name": f"distill-{recipe.name}-" + (f"r{job.round}-{stage}" if job.round else stage),
            "commands": job.commands,
            "partition": partition.name,
            "account": profile.account,
            "qos": profile.qos,
            "nodes": res.nodes,
            "cpus_per_task": cpus,
            "mem_mb": int(mem_gb * 1024),
            "time": res.time,
            "gres": _gres(res, partition.gpu_type),
            "array": array,
            "output": _sbatch_path("run directory", run_dir / "logs" / "slurm" / log_name),
            # a server back in the queue would come up elsewhere, after its clients gave up on the old address
            "requeue": s.requeue and not server,
            "stop_grace": s.stop_grace,
            "sbatch_options": profile.sbatch_options,
            "setup": profile.setup,
            "workdir": _sbatch_path("working directory", Path(workdir or Path.cwd()).resolve()),
            "python": profile.python or sys.executable,
            "srun_args": _srun_args(profile),
            "recipe": str(recipe_file),
            "run_dir": str(run_dir),
            "shards": s.shards,
            "processes": processes,
            "threads_per_process": max(cpus * res.nodes // processes, 1),
            "accelerate_config": str(ACCELERATE_DIR / f"{s.train.accelerate_config}.yaml"),
            # generation (and the merge before filtering) reach the teacher through the server job; so does on-policy
            # training, which has it score the student's answers
            "teacher_server": s.teacher_server is not None and stage in ("generate", "filter", *client_stages(recipe)),
            "ray_port": s.teacher_server.ray_port if server else None,
        }
        script = env.get_template(f"{stage}.sbatch.j2").render(**context)
        head = script.split("\nset -euo pipefail\n")[0]  # the template's header, before the job's first command
        written = [line for line in head.splitlines() if line.startswith("#SBATCH")]
        if sbatch_header(script) != written:  # a line that sbatch would not read: the block ended early
            raise UserError(f"{job.name}: the rendered script's #SBATCH block ends early; check the cluster profile")
        depends_on = planned[i - 1].name if i else None
        dependency = "after" if depends_on == TEACHER_SERVER else "afterok"
        jobs.append(StageJob(stage=job.name, partition=partition.name, script=script, array=array,
                             depends_on=depends_on, dependency=dependency,
                             resources={**res.model_dump(mode="json"), "cpus_per_task": cpus, "mem_gb": mem_gb}))
    return jobs
