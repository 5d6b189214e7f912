"""Cluster profiles (distill/slurm/profiles/NAME.yaml, or a file) and the check that a stage's request fits one.

A profile names the partitions a user may submit to with what each node offers, plus the
account, QOS, environment setup lines and container options every job gets. Requests that
no partition can satisfy are refused before anything is submitted. A request that names no CPUs
or memory gets the partition's share for the GPUs it asks: an 8-GPU job on 8-GPU nodes the whole
node, not one core.

The shipped profiles, sbatch templates and accelerate configs live inside the package (read through
importlib.resources), so an installed wheel submits as a checkout does.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import yaml
from pydantic import Field, ValidationError, field_validator

from distill.errors import UserError
from distill.recipe import Section, StageResources, slurm_minutes
from distill.recipe.slurm import DEFAULT_CPUS, DEFAULT_MEM_GB


def package_folder(name: str) -> Path:
    """A data folder of this package (templates, profiles, accelerate) on disk: a path, because sbatch scripts and
    `accelerate launch` read the files by path. pip always installs a wheel unpacked, so the package is a folder."""
    return Path(str(resources.files("distill.slurm") / name))


PROFILES_DIR = package_folder("profiles")
# Values written into `#SBATCH` lines are not shell-quoted there (sbatch reads them itself, and
# the block ends at the first line that is not a comment), so each must match a pattern.
SLURM_NAME = r"^[A-Za-z0-9_.+-]+$"
# distill sets these itself; a second one in sbatch_options would silently win (the last line does).
RESERVED_OPTIONS = {"job-name", "partition", "account", "qos", "nodes", "ntasks-per-node", "cpus-per-task", "mem",
                    "time", "gres", "array", "chdir", "output", "error", "open-mode", "requeue", "no-requeue",
                    "dependency", "kill-on-invalid-dep", "parsable", "wrap"}
SBATCH_OPTION = re.compile(r"--([a-z][a-z0-9-]*)(?:=([\x21-\x7e]+))?")


class Partition(Section):
    """One partition and what one of its nodes offers."""

    name: str = Field(pattern=SLURM_NAME, description="Partition name as Slurm knows it.")
    nodes: int = Field(1, ge=1, description="Nodes a job may use at most.")
    cpus_per_node: int = Field(ge=1, description="CPU cores per node.")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node (0: a CPU partition).")
    gpu_type: str | None = Field(None, pattern=SLURM_NAME,
                                 description="GRES type of the GPUs (gpu:TYPE:N), or unset for plain gpu:N.")
    mem_gb: float = Field(gt=0, description="Memory per node a job may ask for, in GiB.")
    max_time: str = Field("UNLIMITED", description="Longest wall-clock time a job may ask for (Slurm format).")
    cpus_per_gpu: int | None = Field(None, ge=1, description="CPU cores a job gets per GPU it asks for, unless the "
                                     "recipe sets cpus_per_task; unset: cpus_per_node / gpus_per_node.")
    mem_gb_per_gpu: float | None = Field(None, gt=0, description="Memory in GiB a job gets per GPU it asks for, unless "
                                         "the recipe sets mem_gb; unset: mem_gb / gpus_per_node.")

    @field_validator("max_time")
    @classmethod
    def _time(cls, v: str) -> str:
        slurm_minutes(v)
        return v


class Container(Section):
    """Run each job step in a container through the pyxis srun options."""

    image: str = Field(description="Container image (srun --container-image).")
    mounts: list[str] = Field(default_factory=list, description="SRC:DST mounts (srun --container-mounts).")
    workdir: str | None = Field(None, description="Working directory inside the container (srun --container-workdir).")


class ClusterProfile(Section):
    name: str = Field(pattern=SLURM_NAME, description="Profile name, shown in status.")
    description: str = Field("", description="What cluster this is.")
    partitions: list[Partition] = Field(min_length=1, description="Partitions this profile may submit to, tried in order.")
    account: str | None = Field(None, pattern=SLURM_NAME, description="Slurm account charged (sbatch --account).")
    qos: str | None = Field(None, pattern=SLURM_NAME, description="Quality of service (sbatch --qos).")
    python: str | None = Field(
        None, description="Interpreter on the compute nodes; unset: the interpreter that submits (its venv)."
    )
    setup: list[str] = Field(default_factory=list, description="Shell lines run first in every job (module load, "
                             "env vars); shell code by design, written into the scripts as they are.")
    container: Container | None = Field(None, description="Run job steps in this container (pyxis/enroot).")
    sbatch_options: list[str] = Field(default_factory=list, description="Extra sbatch options as --key or --key=value "
                                      "(no spaces, quotes, '#' or backslashes), e.g. '--constraint=a100'.")

    @field_validator("sbatch_options")
    @classmethod
    def _options(cls, options: list[str]) -> list[str]:
        for option in options:
            m = SBATCH_OPTION.fullmatch(option)
            if not m or (m.group(2) and re.search(r"[\'\"#\\]", m.group(2))):
                raise ValueError(f"{option!r} is not one --key or --key=value flag without spaces, quotes, '#' "
                                 "or backslashes")
            if m.group(1) in RESERVED_OPTIONS:
                raise ValueError(f"{option!r}: distill sets --{m.group(1)} itself (from the recipe's slurm section "
                                 "and the profile's fields)")
        return options


def profile_path(name_or_path: str) -> Path:
    """A profile by name (a shipped one: distill/slurm/profiles/NAME.yaml) or by file path."""
    as_path = Path(name_or_path).expanduser()
    if as_path.suffix in (".yaml", ".yml") or as_path.is_file():
        return as_path
    return PROFILES_DIR / f"{name_or_path}.yaml"


def load_profile(name_or_path: str) -> ClusterProfile:
    path = profile_path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))) or "none"
        raise UserError(f"cluster profile {name_or_path!r} not found ({path}); known profiles: {known}")
    try:
        data = yaml.safe_load(path.read_text())
        return ClusterProfile.model_validate(data)
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = f" (got {err['input']!r})" if isinstance(err.get("input"), (str, int, float)) else ""
        raise UserError(f"{path}: {where}: {err['msg']}{got}") from None


def cpus_and_memory(partition: Partition, res: StageResources) -> tuple[int, float]:
    """(CPU cores, GiB) per node for the request on this partition: what the recipe sets, else the share of a node
    that goes with the GPUs asked (a GPU job starved of cores and memory feeds its GPUs slowly, or dies loading the
    model), else a small default for a job without GPUs."""
    gpus = min(res.gpus_per_node, partition.gpus_per_node)  # more GPUs than the node has: why_not refuses it
    cpus, mem = res.cpus_per_task, res.mem_gb
    if cpus is None:
        if gpus:
            per_gpu = partition.cpus_per_gpu or partition.cpus_per_node // partition.gpus_per_node
            cpus = min(max(per_gpu * gpus, DEFAULT_CPUS), partition.cpus_per_node)
        else:
            cpus = min(DEFAULT_CPUS, partition.cpus_per_node)
    if mem is None:
        if gpus:
            per_gpu = partition.mem_gb_per_gpu or partition.mem_gb / partition.gpus_per_node
            mem = min(per_gpu * gpus, partition.mem_gb)
        else:
            mem = min(DEFAULT_MEM_GB, partition.mem_gb)
    return cpus, float(mem)


def why_not(partition: Partition, res: StageResources) -> str | None:
    """Why this partition cannot run the request, or None if it can."""
    problems = []
    cpus, mem = cpus_and_memory(partition, res)
    if res.nodes > partition.nodes:
        problems.append(f"{res.nodes} nodes asked, {partition.nodes} allowed")
    if res.gpus_per_node > partition.gpus_per_node:
        problems.append(f"{res.gpus_per_node} GPUs per node asked, {partition.gpus_per_node} available")
    if cpus > partition.cpus_per_node:
        problems.append(f"{cpus} CPUs asked, {partition.cpus_per_node} per node")
    if mem > partition.mem_gb:
        problems.append(f"{mem:g} GiB memory asked, {partition.mem_gb:g} GiB per node")
    asked, limit = slurm_minutes(res.time), slurm_minutes(partition.max_time)
    if limit is not None and (asked is None or asked > limit):
        problems.append(f"time {res.time} asked, at most {partition.max_time}")
    return "; ".join(problems) or None


def choose_partition(profile: ClusterProfile, stage: str, res: StageResources) -> Partition:
    """The requested partition if it fits, else the first of the profile that does; else refuse with every reason."""
    by_name = {p.name: p for p in profile.partitions}
    if res.partition is not None:
        if res.partition not in by_name:
            raise UserError(f"slurm.{stage}.partition: {res.partition!r} is not a partition of cluster profile "
                            f"{profile.name!r} (it has {', '.join(by_name)})")
        candidates = [by_name[res.partition]]
    else:  # a request without GPUs goes to a CPU partition first, leaving GPU nodes to GPU work
        candidates = sorted(profile.partitions, key=lambda p: res.gpus_per_node == 0 and p.gpus_per_node > 0)
    reasons = []
    for partition in candidates:
        reason = why_not(partition, res)
        if reason is None:
            return partition
        reasons.append(f"{partition.name}: {reason}")
    raise UserError(f"slurm.{stage}: no partition of cluster profile {profile.name!r} can run this request "
                    f"({' | '.join(reasons)})")
