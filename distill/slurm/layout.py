"""Whether each vLLM engine a Slurm job starts fits the GPUs that job gets.

An engine runs on one node and splits the model over tensor_parallel_size GPUs of it. A teacher with
tensor_parallel_size 8 in a job on 4-GPU nodes loads nothing: vLLM stops after the job has waited in the queue,
often hours later. So the recipe's engines are held against each job's request and the partition it goes to
before anything is submitted (`distill slurm submit`, also with --dry-run) and by `distill doctor`.

A teacher served by its own job (slurm.teacher_server) is split by that job's own sizes, which the recipe checks
when it loads; the jobs it serves start no engine for it.
"""

from __future__ import annotations

from distill.models.teacher_server import client_stages
from distill.recipe import Recipe, StageResources
from distill.slurm.profile import ClusterProfile, Partition, choose_partition
from distill.stages import STAGES


def engines_per_job(recipe: Recipe) -> dict[str, list[str]]:
    """The roles whose vLLM engine each Slurm job starts in its own process, by job."""
    served = ("filter", *client_stages(recipe)) if recipe.slurm.teacher_server is not None else ()
    engines: dict[str, list[str]] = {}
    for stage in STAGES:
        if stage.name == "document" or not stage.runs_engines(recipe):  # document writes files, it runs no model
            continue
        for role in stage.models(recipe):
            remote = role == "teacher" and (stage.slurm_job in served
                                            or (stage.name == "generate" and recipe.generate.backend == "openai"))
            if not remote and role not in engines.setdefault(stage.slurm_job, []):
                engines[stage.slurm_job].append(role)
    return {job: roles for job, roles in engines.items() if roles}


def engine_gpus(recipe: Recipe, role: str) -> int:
    """GPUs of one node that one engine of this model takes."""
    return getattr(recipe.models, role).engine.tensor_parallel_size


def layout_problems(recipe: Recipe, profile: ClusterProfile,
                    chosen: dict[str, Partition] | None = None) -> list[str]:
    """One line per engine that does not fit its job: its key, the GPUs it needs, what the job asks and what the
    partition's nodes have. `chosen`: the partition of each job, when already chosen."""
    problems = []
    for job, roles in engines_per_job(recipe).items():
        res = getattr(recipe.slurm, job)
        partition = (chosen or {}).get(job) or choose_partition(profile, job, res)
        for role in roles:
            need = engine_gpus(recipe, role)
            if need > max(res.gpus_per_node, 1):  # one: a job without GPUs runs its engines on the CPU
                problems.append(_too_few_gpus(f"models.{role}.engine.tensor_parallel_size: {need}", role, need, job,
                                              res, partition, profile))
    return problems


def _too_few_gpus(key: str, role: str, need: int, job: str, res: StageResources, partition: Partition,
                  profile: ClusterProfile) -> str:
    """The finding and its fix: ask the job for more GPUs where a partition has them, else split the model less."""
    # a job that names no partition goes to the first that fits: asking for more GPUs may move it to a GPU partition
    reachable = [partition] if res.partition else [partition, *profile.partitions]
    roomy = next((p for p in reachable if p.gpus_per_node >= need), None)
    if roomy is not None:
        return (f"{key}, but slurm.{job}.gpus_per_node is {res.gpus_per_node}: ask for {need} (partition "
                f"{roomy.name!r} of cluster profile {profile.name!r} has {roomy.gpus_per_node} per node)")
    widest = max(reachable, key=lambda p: p.gpus_per_node)
    fix = "lower it" + (", or serve the teacher from its own job over several nodes (slurm.teacher_server)"
                        if role == "teacher" else "")
    return (f"{key}, but partition {widest.name!r} of cluster profile {profile.name!r} has {widest.gpus_per_node} GPUs "
            f"per node{'' if res.partition else ', the most of its partitions'}, and an engine runs on one node (in "
            f"slurm.{job}): {fix}")
