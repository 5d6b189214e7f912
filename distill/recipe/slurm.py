"""slurm: the jobs `distill slurm submit` writes, their resources and the teacher's server job."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.recipe.base import Section


DEFAULT_CPUS, DEFAULT_MEM_GB = 1, 8.0  # a job without GPUs that does not say what it needs


class StageResources(Section):
    """What one stage's Slurm job asks for. Checked against the cluster profile before submitting."""

    partition: str | None = Field(None, pattern=r"^[A-Za-z0-9_.+-]+$", description="Partition; unset: the first partition of the cluster profile that fits (CPU ones first when no GPUs are asked).")
    nodes: int = Field(1, ge=1, description="Nodes (more than one only makes sense for train).")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node; train starts one process per GPU.")
    # Unset rather than a number, so that a resolved recipe (run/recipe.yaml, every field written) still scales them.
    cpus_per_task: int | None = Field(None, ge=1, description="CPU cores per node. Unset: the partition's share for "
                                      "the GPUs asked (its cpus_per_gpu, else cpus_per_node / gpus_per_node each); "
                                      f"{DEFAULT_CPUS} without GPUs.")
    mem_gb: float | None = Field(None, gt=0, description="Memory per node in GiB. Unset: the partition's share for the "
                                 "GPUs asked (its mem_gb_per_gpu, else mem_gb / gpus_per_node each); "
                                 f"{DEFAULT_MEM_GB:g} without GPUs.")
    time: str = Field("01:00:00", description="Wall-clock limit in Slurm's format: M, H:M:S or D-H:M:S.")

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, v: str) -> str:
        if slurm_minutes(v) is None:
            raise ValueError("give a finite time limit")
        return v.strip()  # written into an #SBATCH line


class TrainResources(StageResources):
    accelerate_config: Literal["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "ddp", description="The accelerate config (distill/slurm/accelerate/NAME.yaml) used when training spans more "
        "than one process."
    )


VLLM_SERVE_OPTION = re.compile(r"--[a-z][a-z0-9-]*(\.[a-z][a-z0-9_-]*)*(=[\x21-\x7e]+)?")


class TeacherServerSettings(StageResources):
    """A `vllm serve` job for a teacher larger than one generation task can hold: its nodes and GPUs, how the
    model is split over them, and how long it may take to start. The generation tasks start once it runs,
    wait until it answers and send their prompts to it; it ends when they have all ended."""

    time: str = Field("04:00:00", description="Wall-clock limit of the server job: long enough for all of generation "
                      "(and, with train.objective on_policy, which has the server score the student's answers, for "
                      "training too).")
    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs each layer is split over; default gpus_per_node.")
    pipeline_parallel_size: int | None = Field(None, ge=1, description="Stages the layers are split into; default nodes.")
    port: int = Field(8000, ge=1024, le=65535, description="Port the server listens on, on the job's first node.")
    ray_port: int = Field(6379, ge=1024, le=65535, description="Port of the Ray head when the server spans nodes.")
    vllm_args: list[str] = Field(default_factory=list, description="Extra `vllm serve` options, each --key or "
                                 "--key=value (e.g. --max-num-seqs=256); the teacher's engine settings are passed already.")
    ready_timeout_s: float = Field(1800, gt=0, description="Seconds the server may take to answer after its job starts "
                                   "(loading weights, starting Ray); then the job ends with an error and so does generation.")
    concurrency: int = Field(64, gt=0, description="Requests each generation task keeps in flight on the server.")

    @field_validator("vllm_args")
    @classmethod
    def _options(cls, v: list[str]) -> list[str]:
        for option in v:
            if not VLLM_SERVE_OPTION.fullmatch(option):
                raise ValueError(f"{option!r}: write each option as --key or --key=value, without spaces or quotes")
        return v

    @model_validator(mode="after")
    def _layout(self) -> "TeacherServerSettings":
        if self.nodes > 1 and not self.gpus_per_node:
            raise ValueError("a server over several nodes splits the model over their GPUs: set gpus_per_node")
        if self.gpus_per_node:
            world = self.nodes * self.gpus_per_node
            if self.parallel_sizes()[0] * self.parallel_sizes()[1] != world:
                raise ValueError(f"tensor_parallel_size × pipeline_parallel_size must use every GPU of the job "
                                 f"({self.nodes} nodes × {self.gpus_per_node} GPUs = {world})")
        return self

    def parallel_sizes(self) -> tuple[int, int]:
        """(tensor, pipeline) parallel sizes, defaults filled in: each node's GPUs split every layer, nodes hold stages."""
        return self.tensor_parallel_size or max(self.gpus_per_node, 1), self.pipeline_parallel_size or self.nodes


class SlurmSettings(Section):
    """How `distill slurm submit` runs this recipe: one job per stage, chained with afterok."""

    profile: str = Field("local", description="Cluster profile: a name of distill/slurm/profiles/ (shipped in the "
                         "package) or a YAML file.")
    shards: int = Field(1, ge=1, description="Generation runs as a job array of this many tasks (`--shard i/N`).")
    requeue: bool = Field(True, description="Let Slurm requeue preempted jobs; a requeued stage resumes its own work.")
    stop_grace: int = Field(
        300, ge=10, le=65535, description="With requeue: seconds before preemption or the time limit at which Slurm "
        "signals the job (--signal=B:USR1@N); generation then stops after the chunk in hand and training after saving "
        "a checkpoint, and the job requeues itself. Long enough for one chunk or one checkpoint save."
    )
    generate: StageResources = Field(default_factory=StageResources, description="Resources of each generation array task.")
    filter: StageResources = Field(default_factory=StageResources, description="Resources of the merge + filter job.")
    train: TrainResources = Field(default_factory=TrainResources, description="Resources of the training job.")
    evaluate: StageResources = Field(default_factory=StageResources, description="Resources of the evaluation job.")
    teacher_server: TeacherServerSettings | None = Field(
        None, description="Serve the teacher from its own job (`vllm serve`, over several nodes with Ray) instead of an "
        "engine in every generation task; for a teacher larger than one task's GPUs.")


UNLIMITED = ("UNLIMITED", "INFINITE")


def slurm_minutes(text: str) -> int | None:
    """Minutes in a Slurm time string (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S); None if unlimited."""
    text = str(text).strip()
    if text.upper() in UNLIMITED:
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(f"not a Slurm time (M, H:M:S or D-H:M:S): {text!r}")
    days, a, b, c = m.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = int(a), int(b or 0), int(c or 0)
        seconds = ((int(days) * 24 + h) * 60 + mi) * 60 + s
    elif c is not None:  # H:M:S
        seconds = (int(a) * 60 + int(b)) * 60 + int(c)
    elif b is not None:  # M:S
        seconds = int(a) * 60 + int(b)
    else:  # M
        seconds = int(a) * 60
    return -(-seconds // 60)
