"""Rendering and checking Slurm jobs without a cluster: `distill slurm submit --dry-run`,
cluster profiles, and requests refused before anything is submitted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import TINY_RECIPE, run_cli, write_recipe

from distill.errors import UserError
from distill.recipe import StageResources, slurm_minutes
from distill.slurm.profile import PROFILES_DIR, choose_partition, load_profile

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
    assert "distill/slurm/accelerate/fsdp.yaml" in out and 'MASTER_ADDR=$(scontrol show hostnames' in out
    assert "GENERATE_JOB=$(sbatch --parsable" in out
    assert "FILTER_JOB=$(sbatch --parsable --dependency=afterok:$GENERATE_JOB" in out
    assert "EVALUATE_JOB=$(sbatch --parsable --dependency=afterok:$TRAIN_JOB" in out
    assert not run.exists()  # a dry run writes nothing


def test_requeueable_jobs_ask_to_be_warned_before_preemption_and_the_rest_do_not(gpu_recipe, tmp_path):
    warned = run_cli("slurm", "submit", gpu_recipe, "--run-dir", tmp_path / "run", "--dry-run", "slurm.stop_grace=600")
    assert warned.returncode == 0, warned.stderr
    assert warned.stdout.count("#SBATCH --signal=B:USR1@600") == 4
    assert warned.stdout.count("run_stage srun") == 6  # generate, filter (merge, filter), train, evaluate (2)
    plain = run_cli("slurm", "submit", gpu_recipe, "--run-dir", tmp_path / "run", "--dry-run", "slurm.requeue=false")
    assert plain.returncode == 0, plain.stderr
    assert "--signal" not in plain.stdout and "DISTILL_STOP_FILE" not in plain.stdout
    assert "#SBATCH --no-requeue" in plain.stdout


@pytest.mark.parametrize("override, reason", [
    ("slurm.train.gpus_per_node=16", "16 GPUs per node asked, 8 available"),
    ("slurm.generate.time=3-00:00:00", "time 3-00:00:00 asked, at most 2-00:00:00"),
    ("slurm.filter.partition=gpu", "slurm.filter: no partition"),
    ("slurm.evaluate.partition=big", "'big' is not a partition of cluster profile 'example-gpu'"),
])
@pytest.mark.parametrize("sbatch", ["installed", "missing"])
def test_requests_that_fit_no_partition_are_refused_before_submitting(gpu_recipe, tmp_path, override, reason, sbatch):
    """Whether or not the machine has Slurm's client: the request is the recipe's mistake, and nothing reaches sbatch."""
    if "filter.partition" in override:  # the gpu partition allows 96 CPUs; ask for more
        extra = ["slurm.filter.cpus_per_task=128"]
    else:
        extra = []
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if sbatch == "installed":  # one that records being called
        (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path / 'sbatch-called'}\necho 1\n")
        (bin_dir / "sbatch").chmod(0o755)
    proc = run_cli("slurm", "submit", gpu_recipe, override, *extra, "--run-dir", tmp_path / "run",
                   env={"PATH": str(bin_dir)})
    assert proc.returncode == 2
    assert reason in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sbatch-called").exists()


def test_a_request_that_fits_on_a_machine_without_slurm_names_the_missing_client(gpu_recipe, tmp_path):
    (tmp_path / "bin").mkdir()
    proc = run_cli("slurm", "submit", gpu_recipe, "--run-dir", tmp_path / "run", env={"PATH": str(tmp_path / "bin")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "sbatch not found" in proc.stderr and "--dry-run" in proc.stderr
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


# ---------------------------------------------------------------- values that reach the scripts

def _profile_file(tmp_path, **changes):
    """example-gpu with some fields changed, as a profile file."""
    import yaml

    data = yaml.safe_load((PROFILES_DIR / "example-gpu.yaml").read_text())
    for key, value in changes.items():
        if key.startswith("partition_"):
            data["partitions"][0][key.removeprefix("partition_")] = value
        else:
            data[key] = value
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, where", [
    ({"partition_gpu_type": "h100\necho injected"}, "partitions.0.gpu_type"),
    ({"partition_name": "gpu $(id)"}, "partitions.0.name"),
    ({"partition_name": "gpu long"}, "partitions.0.name"),
    ({"account": "proj\n#SBATCH --output=/tmp/elsewhere"}, "account"),
    ({"qos": "normal;id"}, "qos"),
    ({"sbatch_options": ["--constraint=a100 --exclusive"]}, "sbatch_options"),
    ({"sbatch_options": ["--constraint=a100\necho injected"]}, "sbatch_options"),
    ({"sbatch_options": ["-C a100"]}, "sbatch_options"),
    ({"sbatch_options": ["--comment='x'"]}, "sbatch_options"),
    ({"sbatch_options": ["--output=/tmp/elsewhere.out"]}, "distill sets --output itself"),
])
def test_profile_values_that_could_break_the_sbatch_block_are_refused(tmp_path, changes, where):
    path = _profile_file(tmp_path, **changes)
    with pytest.raises(UserError) as e:
        load_profile(str(path))
    assert str(path) in str(e.value) and where in str(e.value)
    assert "\n" not in str(e.value)  # one line: the value is shown escaped


def test_a_bad_profile_value_is_a_one_line_error_from_the_command_line(gpu_recipe, tmp_path):
    path = _profile_file(tmp_path, partition_gpu_type="h100\necho injected")
    proc = run_cli("slurm", "submit", gpu_recipe, "--profile", path, "--dry-run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "partitions.0.gpu_type" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "#SBATCH" not in proc.stdout


def test_recipe_partition_must_be_a_plain_name(tiny_recipe):
    for bad in ("gpu $(id)", "gpu long"):
        proc = run_cli("validate", tiny_recipe, f"slurm.train.partition={bad}")
        assert proc.returncode == 2 and "slurm.train.partition" in proc.stderr, proc.stderr


def test_scripts_keep_the_whole_sbatch_block_and_pass_every_other_value_verbatim(tmp_path, tiny_model):
    """Paths and container settings full of shell syntax reach srun as the exact strings, run
    nothing, and the #SBATCH block sbatch reads holds every line distill wrote."""
    import os
    import subprocess

    from distill.recipe import load_recipe
    from distill.slurm.render import render_jobs, sbatch_header

    hostile = "a b $(touch PWNED) `touch PWNED` ; 'q' \"d\""
    folder = tmp_path / hostile
    folder.mkdir()
    recipe_file = write_recipe(folder, tiny_model, TINY_RECIPE + GPU_SECTION)
    profile = load_profile(str(_profile_file(
        tmp_path, python=f"/opt/{hostile}/python", sbatch_options=["--exclusive", "--constraint=a100&ib"],
        setup=["export FROM_SETUP=\"$(echo setup ran)\""],
        container={"image": "nvcr.io#nvidia/pytorch;touch PWNED", "mounts": [f"/data/{hostile}:/data"],
                   "workdir": "/w $(touch PWNED)"})))
    run_dir = folder / "run"
    jobs = render_jobs(load_recipe(recipe_file), profile, run_dir, recipe_file, workdir=folder)
    for job in jobs:
        header = sbatch_header(job.script)
        assert header == [line for line in job.script.splitlines() if line.startswith("#SBATCH")]
        for option in ("--chdir=", "--output=", "--requeue", "--exclusive", "--constraint=a100&ib", "--job-name="):
            assert any(line.startswith(f"#SBATCH {option}") for line in header), (job.stage, option)
        # the setup line is shell by design: it runs as written, after the block
        assert 'export FROM_SETUP="$(echo setup ran)"' in job.script.split("#SBATCH --constraint=a100&ib\n")[1]

    # run the job bodies with srun replaced by a function that records its arguments
    calls = tmp_path / "calls"
    env = dict(os.environ, SLURM_JOB_ID="7", SLURM_ARRAY_TASK_ID="0", CALLS=str(calls))
    for job in jobs:
        if job.stage == "train":  # needs scontrol; its quoting is the same filter
            continue
        script = tmp_path / f"{job.stage}.sh"
        script.write_text(job.script)
        proc = subprocess.run(["bash", "-c", 'srun() { printf "%s\\0" "$@" >> "$CALLS"; printf "\\n" >> "$CALLS"; }; '
                               'source "$1"', "_", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    argv = [line.strip("\0").split("\0") for line in calls.read_text().splitlines() if line]
    assert [args[6] for args in argv] == ["generate", "generate", "filter", "evaluate", "document"]
    srun_args = ["--container-image=nvcr.io#nvidia/pytorch;touch PWNED", f"--container-mounts=/data/{hostile}:/data",
                 "--container-workdir=/w $(touch PWNED)", f"/opt/{hostile}/python", "-m", "distill.cli"]
    for args in argv:
        assert args[:6] == srun_args
        assert args[7:10] == [str(recipe_file.resolve()), "--run-dir", str(run_dir.resolve())]
    assert not list(tmp_path.rglob("PWNED")) and not (folder / "PWNED").exists()


def test_a_working_directory_with_a_newline_is_refused_before_rendering(tmp_path, tiny_model):
    from distill.recipe import load_recipe
    from distill.slurm.render import render_jobs

    recipe_file = write_recipe(tmp_path, tiny_model, TINY_RECIPE + GPU_SECTION)
    odd = tmp_path / "x\n#SBATCH --output=elsewhere"
    with pytest.raises(UserError, match="working directory .* control characters"):
        render_jobs(load_recipe(recipe_file), load_profile("example-gpu"), tmp_path / "run", recipe_file, workdir=odd)


def test_dependent_jobs_are_cancelled_when_the_stage_before_fails_whatever_the_cluster_default():
    from distill.slurm.submit import sbatch_command

    cmd = sbatch_command(Path("/r/train.sbatch"), "41")
    assert cmd[2] == "--dependency=afterok:41" and "--kill-on-invalid-dep=yes" in cmd
    assert sbatch_command(Path("/r/generate.sbatch"), None) == ["sbatch", "--parsable", "/r/generate.sbatch"]


# ---------------------------------------------------------------- jobs that wait on a failed stage

SQUEUE_STUCK = """\
40_0|COMPLETED|None
40_1|COMPLETED|None
41|FAILED|NonZeroExitCode
42|PENDING|DependencyNeverSatisfied
43|PENDING|Dependency
"""


def _status(squeue_text: str) -> dict:
    from distill.cluster import parse_squeue
    from distill.slurm.status import summarize

    tasks = parse_squeue(squeue_text)
    by_stage = {"generate": tasks[:2], "filter": tasks[2:3], "train": tasks[3:4], "evaluate": tasks[4:5]}
    return {"run_dir": "/runs/tiny", "profile": "default-cluster", "accounting": False,
            "stages": {stage: {"job_id": ts[0]["job"].split("_")[0], "state": summarize(ts), "tasks": ts,
                               "reason": next((t["reason"] for t in ts if t["reason"]), ""), "output_complete": False}
                       for stage, ts in by_stage.items()}}


def test_status_names_jobs_that_will_never_start_and_what_to_do():
    from distill.slurm.status import format_status, never_starting

    status = _status(SQUEUE_STUCK)
    # train waits on the failed filter; evaluate waits on train, which will never run
    assert never_starting({s: v["tasks"] for s, v in status["stages"].items()}) == {"train": ["42"], "evaluate": ["43"]}
    shown = format_status(status)
    assert "train, evaluate: will never start (DependencyNeverSatisfied)" in shown
    assert "no kill_invalid_depend" in shown and "distill slurm submit" in shown and "scancel 42 43" in shown


def test_status_says_nothing_of_jobs_that_merely_wait():
    from distill.slurm.status import format_status, never_starting

    waiting = SQUEUE_STUCK.replace("41|FAILED|NonZeroExitCode", "41|RUNNING|None").replace(
        "42|PENDING|DependencyNeverSatisfied", "42|PENDING|Dependency")
    status = _status(waiting)
    assert never_starting({s: v["tasks"] for s, v in status["stages"].items()}) == {}
    assert "never start" not in format_status(status)


SERVER_SECTION = """\
  teacher_server:
    nodes: 2
    gpus_per_node: 8
    cpus_per_task: 32
    mem_gb: 512
    time: "12:00:00"
    pipeline_parallel_size: 2
    vllm_args: [--max-num-seqs=256, --enable-prefix-caching]
"""


def test_a_teacher_over_two_nodes_gets_a_ray_server_job_that_generation_starts_after(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, tiny_model, TINY_RECIPE + GPU_SECTION + SERVER_SECTION)
    proc = run_cli("slurm", "submit", recipe, "--run-dir", tmp_path / "run", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    scripts = dict(part.split("\n", 1) for part in proc.stdout.split("# ---- ")[1:])
    server = next(body for head, body in scripts.items() if head.startswith("teacher_server"))
    assert "#SBATCH --nodes=2" in server and "#SBATCH --gres=gpu:h100:8" in server
    assert "#SBATCH --no-requeue" in server  # a requeued server would come up at another address
    # Ray: a head on the first node, one worker on the other; the server on the head, over both
    assert "ray start --head" in server and "--nodes=1 --ntasks=1 --ntasks-per-node=1 --exclude=\"$HEAD\"" in server
    assert "slurm serve-teacher \"$RECIPE\" --run-dir \"$RUN_DIR\"" in server and '-w "$HEAD"' in server
    syntax = subprocess.run(["bash", "-n"], input=server, text=True, capture_output=True)
    assert syntax.returncode == 0, syntax.stderr
    # generation and the merge reach it through its file; the server is queued first and generation starts once it runs
    generate = next(body for head, body in scripts.items() if head.startswith("generate"))
    assert 'export DISTILL_TEACHER_SERVER="$RUN_DIR/slurm/teacher-server.json"' in generate
    submit = scripts["submit"]
    assert submit.index("TEACHER_SERVER_JOB=$(sbatch") < submit.index("GENERATE_JOB=$(sbatch")
    assert "GENERATE_JOB=$(sbatch --parsable --dependency=after:$TEACHER_SERVER_JOB --kill-on-invalid-dep=yes" in submit


def test_the_server_command_carries_the_teachers_engine_settings_and_the_jobs_layout(tmp_path, tiny_model):
    from distill.recipe import load_recipe
    from distill.slurm.teacher_server import serve_command

    recipe = load_recipe(write_recipe(tmp_path, tiny_model, TINY_RECIPE + GPU_SECTION + SERVER_SECTION))
    cmd = serve_command(recipe, tiny_model)
    flags = dict(zip(cmd, cmd[1:]))
    assert cmd[1:3] == ["-m", "distill.slurm.vllm_server"] and flags["--model"] == str(tiny_model)
    assert flags["--tensor-parallel-size"] == "8" and flags["--pipeline-parallel-size"] == "2"  # 16 GPUs in all
    assert flags["--distributed-executor-backend"] == "ray" and flags["--served-model-name"] == "teacher"
    assert flags["--dtype"] == "float32" and flags["--max-model-len"] == "1024" and "--enforce-eager" in cmd
    assert cmd[-2:] == ["--max-num-seqs=256", "--enable-prefix-caching"]
    # rendered here, on a CPU: whole prompts per step (seeded sampling on vLLM's CPU build dies otherwise)
    assert "--no-enable-chunked-prefill" in cmd


def test_an_on_policy_recipe_has_its_server_score_without_prefix_caching_for_the_train_job(tmp_path, tiny_model):
    """On-policy training has the server job score the student's tokens: the server keeps no prefix cache (stale
    prompt log-probabilities, vllm#42019) and returns the top_k asked; the train job reaches it through its file; a
    recipe that would turn the cache back on is refused when it loads."""
    from distill.recipe import load_recipe
    from distill.slurm.teacher_server import serve_command

    one_gpu = GPU_SECTION.replace("  train:\n    nodes: 2\n    gpus_per_node: 8", "  train:\n    gpus_per_node: 1")
    assert one_gpu != GPU_SECTION
    text = TINY_RECIPE + one_gpu + SERVER_SECTION.replace(", --enable-prefix-caching", "")
    on_policy = ["train.objective=on_policy", "train.on_policy.top_k=50"]
    recipe = write_recipe(tmp_path, tiny_model, text)
    cmd = serve_command(load_recipe(recipe, on_policy), tiny_model)
    assert "--no-enable-prefix-caching" in cmd and "--enable-prefix-caching" not in cmd
    assert dict(zip(cmd, cmd[1:]))["--max-logprobs"] == "50"
    assert "--enable-prefix-caching" in serve_command(load_recipe(recipe), tiny_model)  # generation only: cached
    proc = run_cli("slurm", "submit", recipe, "--run-dir", tmp_path / "run", "--dry-run", *on_policy)
    assert proc.returncode == 0, proc.stderr
    scripts = dict(part.split("\n", 1) for part in proc.stdout.split("# ---- ")[1:])
    train = next(body for head, body in scripts.items() if head.startswith("train"))
    assert 'export DISTILL_TEACHER_SERVER="$RUN_DIR/slurm/teacher-server.json"' in train
    refused = run_cli("validate", write_recipe(tmp_path, tiny_model, TINY_RECIPE + one_gpu + SERVER_SECTION),
                      "train.objective=on_policy")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "slurm.teacher_server.vllm_args: --enable-prefix-caching, but train.objective on_policy" in refused.stderr


@pytest.mark.parametrize("server, message", [
    ("{nodes: 2, gpus_per_node: 4, tensor_parallel_size: 4, pipeline_parallel_size: 1}",
     "tensor_parallel_size × pipeline_parallel_size must use every GPU of the job (2 nodes × 4 GPUs = 8)"),
    ("{vllm_args: ['--model x; rm -rf ~']}", "write each option as --key or --key=value"),
    ("{nodes: 2}", "a server over several nodes splits the model over their GPUs: set gpus_per_node"),
])
def test_a_teacher_server_that_cannot_run_is_refused_when_the_recipe_loads(tmp_path, tiny_model, server, message):
    braces = server.replace("{", "{{").replace("}", "}}")  # write_recipe formats the text
    recipe = write_recipe(tmp_path, tiny_model, TINY_RECIPE + f"slurm:\n  teacher_server: {braces}\n")
    proc = run_cli("validate", recipe)
    assert proc.returncode == 2 and message in proc.stderr and "slurm.teacher_server" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- engines against the GPUs of their jobs


def _dry_run(recipe, tmp_path, *overrides, profile=None):
    return run_cli("slurm", "submit", recipe, "--run-dir", tmp_path / "run", "--dry-run", *overrides,
                   *(["--profile", profile] if profile else []))


def test_a_teacher_split_over_more_gpus_than_a_node_has_is_refused_before_anything_is_queued(gpu_recipe, tmp_path):
    """tensor_parallel_size 8 on 4-GPU nodes would load nothing, hours later, once the job has left the queue."""
    four = _profile_file(tmp_path, partition_gpus_per_node=4)
    proc = _dry_run(gpu_recipe, tmp_path, "models.teacher.engine.tensor_parallel_size=8", "slurm.generate.gpus_per_node=4",
                    "slurm.train.gpus_per_node=4", "evaluate.models=[base, student]", profile=four)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "#SBATCH" not in proc.stdout
    assert proc.stderr.strip() == (
        "error: models.teacher.engine.tensor_parallel_size: 8, but partition 'gpu' of cluster profile 'example-gpu' "
        "has 4 GPUs per node, the most of its partitions, and an engine runs on one node (in slurm.generate): lower it, "
        "or serve the teacher from its own job over several nodes (slurm.teacher_server)")


def test_an_engine_wider_than_its_jobs_gpus_is_refused_with_the_request_that_fits(gpu_recipe, tmp_path):
    proc = _dry_run(gpu_recipe, tmp_path, "models.teacher.engine.tensor_parallel_size=4")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    # generation asks 1 GPU, evaluation (which evaluates the teacher too) 1: both named, on one line
    assert ("models.teacher.engine.tensor_parallel_size: 4, but slurm.generate.gpus_per_node is 1: ask for 4 "
            "(partition 'gpu' of cluster profile 'example-gpu' has 8 per node)") in proc.stderr
    assert "slurm.evaluate.gpus_per_node is 1: ask for 4" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    fits = _dry_run(gpu_recipe, tmp_path, "models.teacher.engine.tensor_parallel_size=4",
                    "slurm.generate.gpus_per_node=4", "slurm.evaluate.gpus_per_node=4")
    assert fits.returncode == 0, fits.stderr


def test_a_teacher_served_by_its_own_job_is_split_by_that_job_not_by_the_generation_tasks(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, tiny_model, TINY_RECIPE + GPU_SECTION + SERVER_SECTION)
    proc = _dry_run(recipe, tmp_path, "models.teacher.engine.tensor_parallel_size=8", "evaluate.models=[base, student]")
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- CPUs and memory follow the GPUs


def _headers(stdout: str) -> dict[str, list[str]]:
    scripts = dict(part.split("\n", 1) for part in stdout.split("# ---- ")[1:])
    return {head.split(":")[0]: [line for line in body.splitlines() if line.startswith("#SBATCH")]
            for head, body in scripts.items() if head != "submit"}


def test_a_job_that_asks_for_gpus_gets_their_share_of_the_nodes_cpus_and_memory(tmp_path, tiny_model):
    """example-gpu's nodes: 96 cores, 1800 GiB, 8 GPUs. A job that sets no CPUs or memory gets 12 cores and 225 GiB
    per GPU; one that sets them keeps them; one without GPUs gets 1 core and 8 GiB."""
    section = ("slurm:\n  profile: example-gpu\n  generate: {gpus_per_node: 8}\n  evaluate: {gpus_per_node: 1}\n"
               "  train: {gpus_per_node: 2, cpus_per_task: 4, mem_gb: 64}\n").replace("{", "{{").replace("}", "}}")
    recipe = write_recipe(tmp_path, tiny_model, TINY_RECIPE + section)
    proc = _dry_run(recipe, tmp_path)
    assert proc.returncode == 0, proc.stderr
    headers = _headers(proc.stdout)
    assert {"#SBATCH --cpus-per-task=96", f"#SBATCH --mem={1800 * 1024}M"} <= set(headers["generate"])
    assert {"#SBATCH --cpus-per-task=12", f"#SBATCH --mem={225 * 1024}M"} <= set(headers["evaluate"])
    assert {"#SBATCH --cpus-per-task=4", f"#SBATCH --mem={64 * 1024}M"} <= set(headers["train"])
    assert {"#SBATCH --cpus-per-task=1", f"#SBATCH --mem={8 * 1024}M"} <= set(headers["filter"])
    # a profile may say what a GPU comes with
    per_gpu = _profile_file(tmp_path, partition_cpus_per_gpu=10, partition_mem_gb_per_gpu=100)
    headers = _headers(_dry_run(recipe, tmp_path, profile=per_gpu).stdout)
    assert {"#SBATCH --cpus-per-task=80", f"#SBATCH --mem={800 * 1024}M"} <= set(headers["generate"])


def test_a_resolved_recipe_still_scales_cpus_and_memory_with_the_gpus(tmp_path, tiny_model):
    """run/recipe.yaml writes every field: an unset request must stay unset there, not become 1 CPU and 8 GiB."""
    import yaml

    from distill.recipe import load_recipe

    recipe = load_recipe(write_recipe(tmp_path, tiny_model, TINY_RECIPE + "slurm: {{generate: {{gpus_per_node: 8}}}}\n"))
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    again = load_recipe(resolved).slurm.generate
    assert again.cpus_per_task is None and again.mem_gb is None


# ---------------------------------------------------------------- templates and configs ship in the package


def test_templates_profiles_and_accelerate_configs_are_read_from_the_package():
    from importlib import resources

    from distill.slurm.render import ACCELERATE_DIR, TEMPLATES_DIR

    package = resources.files("distill.slurm")
    for folder, names in ((TEMPLATES_DIR, ["_job.sbatch.j2", "generate.sbatch.j2", "filter.sbatch.j2",
                                           "train.sbatch.j2", "evaluate.sbatch.j2", "teacher_server.sbatch.j2"]),
                          (PROFILES_DIR, ["local.yaml", "example-gpu.yaml"]),
                          (ACCELERATE_DIR, ["ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])):
        assert folder == Path(str(package / folder.name)), folder
        assert all((package / folder.name / name).is_file() for name in names), folder


def test_a_built_wheel_holds_the_templates_profiles_and_accelerate_configs(tmp_path):
    """What a plain `pip install .` gets: built from a copy of the sources, so the checkout gets no build/ folder."""
    import shutil
    import sys
    import zipfile

    from conftest import ROOT

    source = tmp_path / "src"
    shutil.copytree(ROOT / "distill", source / "distill", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (tmp_path / "wheel").glob("distill-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(ROOT)) for folder in ("templates", "profiles", "accelerate")
               for p in (ROOT / "distill" / "slurm" / folder).iterdir()}
    assert len(shipped) == 12 and shipped <= names, sorted(shipped - names)


LOOP_SECTION = """\
loop:
  rounds: 3
  strategy: random
  budget: {{per_round: 10}}
  dev: {{size: 12, min_per_slice: 2}}
"""


def test_a_loop_is_submitted_as_every_rounds_jobs_then_an_end_job_each_after_the_one_before(tmp_path, tiny_model):
    from distill.models.teacher_server import client_jobs
    from distill.recipe import load_recipe

    recipe = write_recipe(tmp_path, tiny_model, TINY_RECIPE + GPU_SECTION + SERVER_SECTION + LOOP_SECTION)
    proc = _dry_run(recipe, tmp_path)
    assert proc.returncode == 0, proc.stderr
    scripts = dict(part.split("\n", 1) for part in proc.stdout.split("# ---- ")[1:])
    names = [head.split(":")[0] for head in scripts if head != "submit"]
    rounds = [f"round-{k:02d}/{stage}" for k in (1, 2, 3) for stage in ("generate", "filter", "train", "evaluate")]
    assert names == ["teacher_server", *rounds, "evaluate"]
    body = {name: next(b for head, b in scripts.items() if head.startswith(name + ":")) for name in names}
    # each round's jobs run the round's stages; its evaluate job then decides (stop rules, the next selection)
    assert 'distill.cli slurm round --round 2 --stage generate "$RECIPE" --run-dir "$RUN_DIR" --shard' in body["round-02/generate"]
    assert "--stage generate \"$RECIPE\"" in body["round-02/filter"] and "--stage filter" in body["round-02/filter"]
    assert "-m distill.cli slurm round --round 2 --stage train" in body["round-02/train"]
    assert "--stage evaluate" in body["round-03/evaluate"] and "--stage decide" in body["round-03/evaluate"]
    assert "#SBATCH --job-name=distill-tiny-r3-evaluate" in body["round-03/evaluate"]
    assert "slurm end-loop" in body["evaluate"] and "document" not in body["evaluate"].split("set -euo pipefail")[1]
    for name in names:
        syntax = subprocess.run(["bash", "-n"], input=body[name], text=True, capture_output=True)
        assert syntax.returncode == 0, (name, syntax.stderr)
    submit = scripts["submit"]
    assert "ROUND_01_GENERATE_JOB=$(sbatch --parsable --dependency=after:$TEACHER_SERVER_JOB" in submit
    assert "ROUND_02_GENERATE_JOB=$(sbatch --parsable --dependency=afterok:$ROUND_01_EVALUATE_JOB" in submit
    assert "EVALUATE_JOB=$(sbatch --parsable --dependency=afterok:$ROUND_03_EVALUATE_JOB" in submit
    # the teacher server serves every round's generation and stops only when the last has ended
    assert 'DISTILL_TEACHER_SERVER="$RUN_DIR/slurm/teacher-server.json"' in body["round-03/generate"]
    assert client_jobs(load_recipe(recipe)) == ("round-01/generate", "round-02/generate", "round-03/generate")
