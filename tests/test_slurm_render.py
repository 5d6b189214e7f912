"""Rendering and checking Slurm jobs without a cluster: `distill slurm submit --dry-run`,
cluster profiles, and requests refused before anything is submitted."""

from __future__ import annotations

import pytest

from conftest import TINY_RECIPE, run_cli, write_recipe
from distill.errors import UserError
from distill.recipe import StageResources
from distill.slurm.profile import PROFILES_DIR, choose_partition, load_profile, slurm_minutes

GPU_SECTION = """\
slurm:
  profile: example-gpu
  shards: 4
  generate:
    gpus_per_node: 1
    cpus_per_task: 8
    mem_gb: 64
    time: "4:00:00"
  filter:
    cpus_per_task: 16
    mem_gb: 64
  train:
    nodes: 2
    gpus_per_node: 8
    cpus_per_task: 96
    mem_gb: 1000
    time: "1-12:00:00"
    accelerate_config: fsdp
  evaluate:
    gpus_per_node: 1
    time: "2:00:00"
"""


@pytest.fixture
def gpu_recipe(tmp_path, tiny_model):
    return write_recipe(tmp_path, tiny_model, TINY_RECIPE + GPU_SECTION)


def test_dry_run_prints_one_script_per_stage_and_the_chained_sbatch_commands(gpu_recipe, tmp_path):
    run = tmp_path / "run"
    proc = run_cli("slurm", "submit", gpu_recipe, "--run-dir", run, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "#SBATCH --array=0-3" in out
    assert '--shard "${SLURM_ARRAY_TASK_ID}/4"' in out
    assert "#SBATCH --partition=gpu" in out and "#SBATCH --partition=cpu" in out  # filter needs no GPU
    assert "#SBATCH --gres=gpu:h100:8" in out and "#SBATCH --account=my-project" in out
    assert "#SBATCH --requeue" in out and "module load cuda/12.4" in out
    # train: 2 nodes x 8 GPUs, one accelerate launcher per node, FSDP config, rendezvous from Slurm
    assert "--num_machines 2 --num_processes 16" in out
    assert "configs/accelerate/fsdp.yaml" in out and 'MASTER_ADDR=$(scontrol show hostnames' in out
    assert "GENERATE_JOB=$(sbatch --parsable" in out
    assert "FILTER_JOB=$(sbatch --parsable --dependency=afterok:$GENERATE_JOB" in out
    assert "EVALUATE_JOB=$(sbatch --parsable --dependency=afterok:$TRAIN_JOB" in out
    assert not run.exists()  # a dry run writes nothing


@pytest.mark.parametrize("override, reason", [
    ("slurm.train.gpus_per_node=16", "16 GPUs per node asked, 8 available"),
    ("slurm.generate.time=3-00:00:00", "time 3-00:00:00 asked, at most 2-00:00:00"),
    ("slurm.filter.partition=gpu", "slurm.filter: no partition"),
    ("slurm.evaluate.partition=big", "'big' is not a partition of cluster profile 'example-gpu'"),
])
def test_requests_that_fit_no_partition_are_refused_before_submitting(gpu_recipe, tmp_path, override, reason):
    if "filter.partition" in override:  # the gpu partition allows 96 CPUs; ask for more
        extra = ["slurm.filter.cpus_per_task=128"]
    else:
        extra = []
    proc = run_cli("slurm", "submit", gpu_recipe, override, *extra, "--run-dir", tmp_path / "run")
    assert proc.returncode == 2
    assert reason in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_cpu_only_profile_refuses_a_gpu_request_naming_every_partition():
    local = load_profile("local")
    with pytest.raises(UserError, match=r"slurm.train: no partition of cluster profile 'local'.*debug: 1 GPUs per node asked, 0 available"):
        choose_partition(local, "train", StageResources(gpus_per_node=1))
    assert choose_partition(local, "train", StageResources(cpus_per_task=2)).name == "debug"


def test_every_shipped_profile_is_valid():
    names = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    assert {"local", "example-gpu"} <= set(names)
    for name in names:
        assert load_profile(name).partitions


def test_unknown_profile_is_a_one_line_error(tiny_recipe, tmp_path):
    proc = run_cli("slurm", "submit", tiny_recipe, "--profile", "nosuch", "--dry-run")
    assert proc.returncode == 2
    assert "cluster profile 'nosuch' not found" in proc.stderr and "known profiles:" in proc.stderr


def test_slurm_time_strings():
    assert slurm_minutes("30") == 30
    assert slurm_minutes("1:30") == 2  # M:S, rounded up
    assert slurm_minutes("2:00:00") == 120
    assert slurm_minutes("1-12") == 36 * 60
    assert slurm_minutes("1-00:30:00") == 24 * 60 + 30
    assert slurm_minutes("UNLIMITED") is None
    with pytest.raises(ValueError):
        slurm_minutes("two hours")


def test_recipe_time_must_be_a_finite_slurm_time(tiny_recipe):
    proc = run_cli("validate", tiny_recipe, "slurm.train.time=soon")
    assert proc.returncode == 2 and "slurm.train.time" in proc.stderr and "not a Slurm time" in proc.stderr
    proc = run_cli("validate", tiny_recipe, "slurm.train.time=UNLIMITED")
    assert proc.returncode == 2 and "give a finite time limit" in proc.stderr


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    from distill.slurm.render import ACCELERATE_DIR

    kinds = {p.stem: load_config_from_file(str(p)).distributed_type.value for p in ACCELERATE_DIR.glob("*.yaml")}
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero2": "DEEPSPEED", "deepspeed_zero3": "DEEPSPEED"}


def test_status_of_a_run_never_submitted_is_a_one_line_error(tmp_path):
    proc = run_cli("slurm", "status", tmp_path)
    assert proc.returncode == 2
    assert "no Slurm jobs recorded for this run" in proc.stderr and "Traceback" not in proc.stderr
