"""`distill slurm submit|status` against a real one-node Slurm (slurmctld + slurmd + munge on
loopback), started by scripts/slurm/start.sh in a temporary folder and stopped at the end.

One tiny recipe is submitted end to end: a 2-task generation array (one task is requeued while
it runs), merge/filter, train as 2 DDP processes under `srun` + `accelerate launch` (the node
declares 2 GPUs that are not there: training falls back to CPU and gloo), evaluate, chained
with afterok.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, TINY_RECIPE, write_recipe

SCRIPTS = ROOT / "scripts" / "slurm"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"}

# Every job asks for both cores of the test node, so jobs run one at a time, as on a busy node.
SLURM_SECTION = """\
slurm:
  profile: local
  shards: 2
  generate:
    cpus_per_task: 2
    mem_gb: 4
    time: "15:00"
  filter:
    cpus_per_task: 2
    mem_gb: 4
    time: "15:00"
  train:
    gpus_per_node: 2
    cpus_per_task: 2
    mem_gb: 4
    time: "15:00"
  evaluate:
    cpus_per_task: 2
    mem_gb: 4
    time: "15:00"
"""
# Small chunks so that the requeued task has chunks written before and after the requeue.
RECIPE = (TINY_RECIPE.replace("chunk_size: 16", "chunk_size: 8").replace("batch_size: 8", "batch_size: 4")
          .replace("evaluate:\n  sets:", "evaluate:\n  models: [base, student]\n  sets:") + SLURM_SECTION)
CHUNKS, SHARD0_CHUNKS = 5, [0, 2, 4]
assert "chunk_size: 8" in RECIPE and "models: [base, student]" in RECIPE and "batch_size: 4" in RECIPE
PROFILE = """\
name: test-node
description: the one-node test cluster; its node declares 2 GPUs (fake devices) so that training runs 2 processes
partitions:
  - {name: debug, cpus_per_node: 2, gpus_per_node: 2, mem_gb: 16, max_time: "1:00:00"}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    """Environment in which sbatch/squeue/scontrol talk to a fresh one-node cluster."""
    if os.geteuid() != 0:
        pytest.skip("the one-node Slurm test cluster runs slurmd as root (CI runs as root)")
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_CONF=str(state / "etc" / "slurm.conf"))
    # the start script's settings stay out of the jobs' environment (srun reads SLURM_* variables)
    # NODE_CPUS: start.sh's default, nproc, counts OMP_NUM_THREADS=1 as one core; every job asks for two
    cluster = dict(env, SLURM_TEST_DIR=str(state), SLURM_LINK_CONF="0", NODE_GPUS="2",
                   NODE_CPUS=str(len(os.sched_getaffinity(0))),
                   SLURM_CTLD_PORT=str(_free_port()), SLURM_D_PORT=str(_free_port()))
    start = subprocess.run(["bash", str(SCRIPTS / "start.sh")], env=cluster, capture_output=True, text=True, timeout=600)
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]  # for run_status called in this process
    try:
        assert start.returncode == 0, f"test cluster did not start:\n{start.stdout}\n{start.stderr}"
        yield env
    finally:
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], env=cluster, capture_output=True, text=True, timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


def distill(env: dict, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def slurm(env: dict, *args: str) -> str:
    proc = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{args}: {proc.stderr}"
    return proc.stdout


def job_ids(run: Path) -> dict[str, str]:
    return {stage: job["job_id"] for stage, job in json.loads((run / "slurm" / "jobs.json").read_text())["stages"].items()}


def task_state(env: dict, task: str) -> str:
    return slurm(env, "squeue", "-h", "--states=all", "-j", task, "-o", "%T").strip()


def wait_until_finished(env: dict, run: Path, timeout: float = 480) -> dict:
    """Poll the run's status (what `distill slurm status` shows) until every job has ended; cancel on timeout."""
    from distill.run_dir import RunDir
    from distill.slurm.status import run_status

    deadline = time.time() + timeout
    while True:
        status = run_status(RunDir(run))
        if all(s["state"] in TERMINAL for s in status["stages"].values()):
            return status
        if time.time() > deadline:
            subprocess.run(["scancel", *job_ids(run).values()], env=env)
            logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((run / "logs" / "slurm").glob("*")))
            pytest.fail(f"jobs still not finished after {timeout:.0f}s: {status}\n{logs}")
        time.sleep(1)


def submit_recipe(env: dict, folder: Path, tiny_model: Path, text: str = RECIPE) -> Path:
    """`distill slurm submit` of a tiny recipe on the test node; the run directory."""
    recipe = write_recipe(folder, tiny_model, text)
    profile = folder / "test-node.yaml"
    profile.write_text(PROFILE)
    submitted = distill(env, "slurm", "submit", recipe, "--run-dir", folder / "run", "--profile", profile)
    assert submitted.returncode == 0, submitted.stderr
    return folder / "run"


@pytest.fixture(scope="module")
def finished_run(slurm_env, tiny_model, tmp_path_factory):
    """Submit the tiny recipe; requeue generation task 0 once it has written a chunk; wait for the end."""
    folder = tmp_path_factory.mktemp("slurm-run")
    env = dict(slurm_env)
    run = submit_recipe(env, folder, tiny_model)
    recipe = folder / "recipe.yaml"
    gen = job_ids(run)["generate"]

    chunks = run / "generate" / "chunks"
    deadline = time.time() + 240
    while not (chunks / "chunk-00000.parquet").is_file():
        if time.time() > deadline or task_state(env, f"{gen}_0") in TERMINAL:
            log = "".join(p.read_text()[-3000:] for p in (run / "logs" / "slurm").glob("*_0.out"))
            pytest.fail(f"generation task {gen}_0 wrote no chunk ({task_state(env, gen + '_0')}):\n{log}")
        time.sleep(0.1)
    slurm(env, "scontrol", "requeue", f"{gen}_0")
    for _ in range(300):  # killed and back in the queue
        if task_state(env, f"{gen}_0") == "PENDING":
            break
        time.sleep(0.2)
    kept = {c: (chunks / f"chunk-{c:05d}.parquet").stat().st_mtime_ns
            for c in SHARD0_CHUNKS if (chunks / f"chunk-{c:05d}.parquet").is_file()}
    # A requeued job waits two minutes (BeginTime) by default; let it start now.
    slurm(env, "scontrol", "update", f"jobid={gen}_0", "starttime=now")
    status = wait_until_finished(env, run)
    return {"env": env, "run": run, "recipe": recipe, "status": status, "kept_at_requeue": kept, "generate_job": gen}


def test_submitted_chain_runs_through_evaluation(finished_run):
    run, status = finished_run["run"], finished_run["status"]
    states = {stage: s["state"] for stage, s in status["stages"].items()}
    assert states == {"generate": "COMPLETED", "filter": "COMPLETED", "train": "COMPLETED", "evaluate": "COMPLETED"}
    gen = status["stages"]["generate"]
    assert sorted(t["job"] for t in gen["tasks"]) == [f"{gen['job_id']}_0", f"{gen['job_id']}_1"]
    # each job depends on the one before it
    recorded = json.loads((run / "slurm" / "jobs.json").read_text())["stages"]
    assert recorded["train"]["command"][2] == f"--dependency=afterok:{recorded['filter']['job_id']}"
    assert recorded["evaluate"]["command"][2] == f"--dependency=afterok:{recorded['train']['job_id']}"
    # the run's report: every stage complete, the evaluation report written
    report = json.loads((run / "report.json").read_text())
    assert all(stage["complete"] for stage in report["stages"].values()), report["stages"].keys()
    assert (run / "evaluate" / "report.md").is_file()
    assert (run / "document" / "_COMPLETE.json").is_file()  # manifest and cards, written by the evaluate job
    assert (run / "train" / "adapter" / "adapter_config.json").is_file()
    # training ran as 2 processes: 4 rows each per step, so half the steps one process would take
    assert "--num_processes 2" in (run / "slurm" / "train.sbatch").read_text()
    train = json.loads((run / "train" / "_COMPLETE.json").read_text())["summary"]
    assert train["steps"] == math.ceil(train["rows"] / 8)

    shown = distill(finished_run["env"], "slurm", "status", run)
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[2:] if not line.startswith(" ")}
    assert lines["evaluate"][1:4] == [recorded["evaluate"]["job_id"], "COMPLETED", "complete"]


def test_requeued_generation_task_resumes_without_duplicates(finished_run):
    run, gen = finished_run["run"], finished_run["generate_job"]
    kept = finished_run["kept_at_requeue"]
    assert 0 in kept
    chunks = run / "generate" / "chunks"
    # chunks written before the requeue were kept, not written again
    assert {c: (chunks / f"chunk-{c:05d}.parquet").stat().st_mtime_ns for c in kept} == kept
    log = (run / "logs" / "slurm" / f"distill-tiny-generate-{gen}_0.out").read_text()
    assert "restart 0" in log and "restart 1" in log
    rerun = log[log.index("restart 1"):]
    if len(kept) < len(SHARD0_CHUNKS):  # requeued mid-shard: only the missing chunks are made
        assert f"chunks_this_run={len(SHARD0_CHUNKS) - len(kept)}," in rerun
    else:  # on a fast machine the task may have finished its chunks before the requeue landed
        assert "chunks_this_run=0," in rerun or "[generate] up to date, skipped" in rerun
    rows = pq.read_table(run / "generate" / "rows.parquet").to_pylist()
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    assert sorted({r["provenance"]["chunk"] for r in rows}) == list(range(CHUNKS))


def _set_kill_invalid_depend(env: dict, on: bool) -> None:
    conf = Path(env["SLURM_CONF"])
    text = conf.read_text()
    line = "DependencyParameters=kill_invalid_depend\n"
    conf.write_text(text.replace(line, "") + (line if on else ""))
    slurm(env, "scontrol", "reconfigure")
    shown = slurm(env, "scontrol", "show", "config")
    assert ("kill_invalid_depend" in shown) == on


@pytest.fixture
def kill_invalid_depend_off(slurm_env):
    """The cluster as Slurm ships it: jobs whose dependency failed stay pending. Restored after."""
    _set_kill_invalid_depend(slurm_env, False)
    try:
        yield slurm_env
    finally:
        _set_kill_invalid_depend(slurm_env, True)


@pytest.fixture(params=[True, False], ids=["kill_invalid_depend", "slurm_default"])
def dependency_setting(request, slurm_env):
    """The test cluster with kill_invalid_depend set, then as Slurm ships it (restored after)."""
    if request.param:
        yield True
        return
    _set_kill_invalid_depend(slurm_env, False)
    try:
        yield False
    finally:
        _set_kill_invalid_depend(slurm_env, True)


def test_failed_stage_cancels_the_stages_after_it(finished_run, dependency_setting, tmp_path):
    """Filter fails (it keeps fewer rows than filter.min_kept): train and evaluate never run, on a
    cluster with kill_invalid_depend and on one without."""
    env = finished_run["env"]
    run = tmp_path / "run"
    shutil.copytree(finished_run["run"], run, ignore=shutil.ignore_patterns("slurm", "logs"))
    submitted = distill(env, "slurm", "submit", run / "recipe.yaml", "filter.min_kept=100000", "--run-dir", run,
                        "--profile", finished_run["recipe"].parent / "test-node.yaml")
    assert submitted.returncode == 0, submitted.stderr
    status = wait_until_finished(env, run, timeout=240)
    states = {stage: (s["state"], s["reason"]) for stage, s in status["stages"].items()}
    assert states["generate"][0] == "COMPLETED"  # up to date: both tasks skipped their work
    assert states["filter"] == ("FAILED", "NonZeroExitCode")
    assert states["train"] == ("CANCELLED", "DependencyNeverSatisfied")
    assert states["evaluate"] == ("CANCELLED", "DependencyNeverSatisfied")
    log = next((run / "logs" / "slurm").glob("distill-tiny-filter-*.out")).read_text()
    assert "fewer than filter.min_kept = 100000" in log

    shown = distill(env, "slurm", "status", run)
    assert shown.returncode == 0, shown.stderr
    assert "FAILED" in shown.stdout and shown.stdout.count("DependencyNeverSatisfied") == 2
    assert "will never start" not in shown.stdout  # cancelled, not left pending


def _wait_for(env: dict, job: str, want: tuple[str, str], timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while (got := tuple(slurm(env, "squeue", "-h", "--states=all", "-j", job, "-o", "%T|%r").strip().split("|"))) != want:
        assert time.time() < deadline, f"job {job}: {got}, waited for {want}"
        time.sleep(0.5)


def test_on_a_cluster_without_kill_invalid_depend_dependents_of_a_failed_stage_do_not_wait_forever(
        kill_invalid_depend_off, tmp_path):
    """Jobs distill submits are cancelled when the stage before fails. Jobs left pending on a failed
    stage (submitted without --kill-on-invalid-dep) are named by `status` and cancelled by `submit`."""
    from distill.run_dir import RunDir
    from distill.slurm.status import active_tasks
    from distill.slurm.submit import cancel_never_starting, sbatch_command

    env = kill_invalid_depend_off
    fails, ok = tmp_path / "fails.sbatch", tmp_path / "ok.sbatch"
    fails.write_text(f"#!/bin/bash\n#SBATCH --output={tmp_path}/%j.out\nexit 1\n")
    ok.write_text(f"#!/bin/bash\n#SBATCH --output={tmp_path}/%j.out\ntrue\n")
    failed = slurm(env, *sbatch_command(fails, None)).strip()
    dependent = slurm(env, *sbatch_command(ok, failed)).strip()  # as submit chains the stages
    # as an earlier submission left them: the cluster's default applies
    stuck = slurm(env, "sbatch", "--parsable", f"--dependency=afterok:{failed}", str(ok)).strip()
    after_stuck = slurm(env, "sbatch", "--parsable", f"--dependency=afterok:{stuck}", str(ok)).strip()
    _wait_for(env, dependent, ("CANCELLED", "DependencyNeverSatisfied"))
    _wait_for(env, stuck, ("PENDING", "DependencyNeverSatisfied"))
    assert task_state(env, after_stuck) == "PENDING"

    run = tmp_path / "run"
    (run / "slurm").mkdir(parents=True)
    (run / "slurm" / "jobs.json").write_text(json.dumps({"profile": "test-node", "stages": {
        "filter": {"job_id": failed}, "train": {"job_id": stuck}, "evaluate": {"job_id": after_stuck}}}))
    shown = distill(env, "slurm", "status", run)
    assert shown.returncode == 0, shown.stderr
    assert "train, evaluate: will never start (DependencyNeverSatisfied)" in shown.stdout
    assert f"scancel {stuck} {after_stuck}" in shown.stdout

    # what `distill slurm submit` does first for this run: cancel them, then nothing blocks a new submission
    assert cancel_never_starting(RunDir(run)) == [stuck, after_stuck]
    assert {task_state(env, stuck), task_state(env, after_stuck)} == {"CANCELLED"}
    assert not any(active_tasks(RunDir(run)).values())


def test_a_submit_that_fails_midway_cancels_what_it_had_submitted(slurm_env, tiny_model, tmp_path):
    """The train script cannot be written (its path is a folder) after generate and filter were queued: no half
    chain is left to run, and the user gets one line, not a traceback."""
    recipe = write_recipe(tmp_path, tiny_model, RECIPE)
    profile = tmp_path / "test-node.yaml"
    profile.write_text(PROFILE)
    run = tmp_path / "run"
    (run / "slurm" / "train.sbatch").mkdir(parents=True)
    result = distill(slurm_env, "slurm", "submit", recipe, "--run-dir", run, "--profile", profile)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "error: submitting train failed (IsADirectoryError" in result.stderr
    submitted = job_ids(run)
    assert set(submitted) == {"generate", "filter"}
    assert f"cancelled the jobs it had submitted (generate {submitted['generate']}, filter {submitted['filter']})" in result.stderr
    deadline = time.time() + 60
    states: set = set()
    while time.time() < deadline:
        out = slurm(slurm_env, "squeue", "-h", "-r", "--states=all", "-j", ",".join(submitted.values()), "-o", "%T")
        states = set(out.split())
        if states <= {"CANCELLED"}:
            break
        time.sleep(0.5)
    assert states <= {"CANCELLED"}, states


def test_without_scontrol_accounting_is_asked_of_sacct_itself(slurm_env, monkeypatch):
    from distill import cluster

    with_config = cluster.accounting_enabled()  # read from `scontrol show config`
    which = shutil.which
    monkeypatch.setattr(cluster.shutil, "which", lambda cmd: None if cmd == "scontrol" else which(cmd))
    assert cluster.accounting_enabled() == with_config


def read_log(path: Path) -> str:
    """A job's log, perhaps while the job writes it (a progress bar's character may be cut in two)."""
    return path.read_text(errors="replace")


def _wait_until(what: str, check, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.2)


def _signal_and_restart(env: dict, job: str, log: Path) -> None:
    """USR1 to the job's batch shell, as Slurm sends before preemption; wait until the job has put itself back
    in the queue, then let it start at once (a requeued job otherwise waits two minutes)."""
    slurm(env, "scancel", "--signal=USR1", "--batch", job)
    _wait_until(f"{job} to requeue itself",
                lambda: "requeueing job" in read_log(log) and task_state(env, job) == "PENDING")
    # Started again in the second the node revoked its last credential, the job is refused ("credential revoked":
    # Slurm's times have one-second resolution), so wait for the node (idle, or only the other jobs on it), and a
    # little more.
    _wait_until("the node to be done with the job",
                lambda: slurm(env, "sinfo", "-h", "-o", "%T").strip() in ("idle", "mixed", "allocated")
                and not slurm(env, "squeue", "-h", "-t", "CG").strip())
    time.sleep(2)
    slurm(env, "scontrol", "update", f"jobid={job}", "starttime=now")


@pytest.fixture(scope="module")
def preempted_run(slurm_env, tiny_model, tmp_path_factory):
    """The tiny recipe, long enough to be interrupted (one generation task of 200 prompts in 25 chunks; 12 epochs on
    40 of them), with generation and then training told to stop by the USR1 Slurm sends before preemption, each once
    it has work in hand."""
    folder = tmp_path_factory.mktemp("slurm-preempted")
    text = (RECIPE.replace("shards: 2", "shards: 1").replace("max_seeds: 40", "max_seeds: 200")
            .replace("train:\n  prompt_template", "train:\n  epochs: 12\n  max_rows: 40\n  prompt_template"))
    assert "max_seeds: 200" in text and "epochs: 12" in text
    env = dict(slurm_env)
    run = submit_recipe(env, folder, tiny_model, text)
    jobs = job_ids(run)
    logs = run / "logs" / "slurm"
    gen_log = logs / f"distill-tiny-generate-{jobs['generate']}_0.out"
    _wait_until("the first chunk", lambda: (run / "generate" / "chunks" / "chunk-00000.parquet").is_file())
    _signal_and_restart(env, f"{jobs['generate']}_0", gen_log)
    train_log = logs / f"distill-tiny-train-{jobs['train']}.out"
    _wait_until("training steps", lambda: train_log.is_file() and "train:" in read_log(train_log), timeout=480)
    _signal_and_restart(env, jobs["train"], train_log)
    _wait_until("training to end", lambda: tasks_ended(jobs["train"]), timeout=480)
    subprocess.run(["scancel", jobs["evaluate"]], env=env)  # evaluation under Slurm: test_submitted_chain_runs_through_evaluation
    status = wait_until_finished(env, run)
    return {"run": run, "status": status, "generate_log": read_log(gen_log), "train_log": read_log(train_log)}


def test_usr1_before_preemption_stops_generation_after_a_chunk_and_the_requeued_task_finishes_it(preempted_run):
    run, log = preempted_run["run"], preempted_run["generate_log"]
    assert {s: v["state"] for s, v in preempted_run["status"]["stages"].items() if s != "evaluate"} == dict.fromkeys(
        ("generate", "filter", "train"), "COMPLETED")
    first, rerun = log.split("restart 1", 1)
    assert "[generate] generate: stopped after chunk" in first and "requeueing job" in first
    done = re.search(r"prompts=(\d+), chunks=(\d+), .*chunks_this_run=(\d+),", rerun)
    prompts, chunks, made_after = map(int, done.groups())
    assert 0 < made_after < chunks  # stopped mid-run; the requeued task made only the rest
    rows = pq.read_table(run / "generate" / "rows.parquet").to_pylist()
    assert len(rows) == prompts and len({r["id"] for r in rows}) == prompts  # every prompt once


def test_usr1_before_preemption_stops_training_with_a_checkpoint_and_the_requeued_job_resumes_from_it(preempted_run):
    run, log = preempted_run["run"], preempted_run["train_log"]
    first, rerun = log.split("restart 1", 1)
    stopped_at = int(re.search(r"\[train\] train: stopped after step (\d+) with a checkpoint", first).group(1))
    summary = json.loads((run / "train" / "_COMPLETE.json").read_text())["summary"]
    assert summary["resumed"] is True and 0 < stopped_at < summary["steps"]
    steps = json.loads((run / "train" / "log.json").read_text())["steps"]
    assert steps == list(range(1, summary["steps"] + 1))  # every step once: none lost, none trained twice


# The teacher in its own job: one core for the server, one for a generation task beside it.
SERVER_RECIPE = RECIPE.replace("  generate:\n    cpus_per_task: 2", "  generate:\n    cpus_per_task: 1") + """\
  teacher_server:
    cpus_per_task: 1
    mem_gb: 4
    time: "15:00"
    ready_timeout_s: {ready}
    concurrency: 8
"""
assert "  generate:\n    cpus_per_task: 1" in SERVER_RECIPE


def _submit_with_server(env: dict, folder: Path, tiny_model: Path, ready: int) -> tuple[Path, dict]:
    """Submit the recipe with a teacher server; wait until the server and generation have ended, then cancel
    the stages after them (other tests cover those)."""
    run = submit_recipe(env, folder, tiny_model, SERVER_RECIPE.replace("{ready}", str(ready)))
    jobs = job_ids(run)
    deadline = time.time() + 300
    while not all(tasks_ended(jobs[s]) for s in ("teacher_server", "generate")):
        if time.time() > deadline:
            subprocess.run(["scancel", *jobs.values()], env=env)
            pytest.fail("the server and generation jobs did not end in 300 s:\n" + "\n".join(
                f"== {p.name}\n{read_log(p)[-3000:]}" for p in sorted((run / "logs" / "slurm").glob("*"))))
        time.sleep(1)
    subprocess.run(["scancel", jobs["filter"], jobs["train"], jobs["evaluate"]], env=env)
    return run, jobs


def summarize_states(env: dict, job: str) -> str:
    from distill.cluster import job_states
    from distill.slurm.status import summarize

    return summarize(job_states(job))


def tasks_ended(job: str) -> bool:
    from distill.cluster import job_states

    tasks = job_states(job)
    return bool(tasks) and all(t["state"] in TERMINAL for t in tasks)


def test_a_teacher_server_that_is_not_ready_in_time_ends_its_job_and_generation_with_its_reason(
        slurm_env, tiny_model, tmp_path):
    env = dict(slurm_env)
    run, jobs = _submit_with_server(env, tmp_path, tiny_model, ready=1)  # vLLM takes longer than a second to start
    logs = run / "logs" / "slurm"
    reason = "teacher server: not answering within slurm.teacher_server.ready_timeout_s = 1s; the job ends"
    server_log = read_log(logs / f"distill-tiny-teacher_server-{jobs['teacher_server']}.out")
    assert summarize_states(env, jobs["teacher_server"]) == "FAILED" and reason in server_log, server_log[-3000:]
    assert summarize_states(env, jobs["generate"]) == "FAILED"
    for task in logs.glob(f"distill-tiny-generate-{jobs['generate']}_*.out"):  # each task stops with the server's reason
        assert reason in read_log(task), read_log(task)[-3000:]
    assert not (run / "generate" / "chunks").is_dir() or not any((run / "generate" / "chunks").glob("chunk-*.parquet"))


# On-policy training with the teacher in its own job: the server scores the student's answers for the train job.
# One core each for the server and for whichever job runs beside it; training is one process (no GPUs).
ON_POLICY_SERVER_RECIPE = (SERVER_RECIPE.replace("{ready}", "240")
                           .replace("  filter:\n    cpus_per_task: 2", "  filter:\n    cpus_per_task: 1")
                           .replace("  train:\n    gpus_per_node: 2\n    cpus_per_task: 2", "  train:\n    cpus_per_task: 1")
                           .replace("  batch_size: 4\n", "  batch_size: 4\n  objective: on_policy\n  learning_rate: 0.01\n"
                                    "  on_policy: {{prompts_per_step: 4, max_tokens: 6, steps: 30, top_k: 5, "
                                    "forward_kl_weight: 1.0}}\n"))
assert "objective: on_policy" in ON_POLICY_SERVER_RECIPE and "  train:\n    cpus_per_task: 1" in ON_POLICY_SERVER_RECIPE


def test_a_teacher_server_job_serves_generation_and_on_policy_training_which_resumes_after_preemption(
        slurm_env, tiny_model, tmp_path):
    """The server job serves both generation tasks, then the on-policy train job, which Slurm's USR1 stops after a
    step with a checkpoint (adapter, optimizer, step, costs); requeued, it resumes there: every step once, every score
    from the server. The server ends by itself once generation and training have ended."""
    env = dict(slurm_env)
    run = submit_recipe(env, tmp_path, tiny_model, ON_POLICY_SERVER_RECIPE)
    jobs = job_ids(run)
    logs = run / "logs" / "slurm"
    train_log = logs / f"distill-tiny-train-{jobs['train']}.out"
    _wait_until("an on-policy step", lambda: train_log.is_file() and re.search(r"\| [1-9]/30 ", read_log(train_log)),
                timeout=600)
    _signal_and_restart(env, jobs["train"], train_log)
    _wait_until("training and the server to end", lambda: all(tasks_ended(jobs[s]) for s in ("train", "teacher_server")),
                timeout=480)
    subprocess.run(["scancel", jobs["evaluate"]], env=env)
    log, server_log = read_log(train_log), read_log(logs / f"distill-tiny-teacher_server-{jobs['teacher_server']}.out")
    assert summarize_states(env, jobs["train"]) == "COMPLETED", log[-3000:]
    first, rerun = log.split("restart 1", 1)
    stopped_at = int(re.search(r"train: stopped after on-policy step (\d+) with a checkpoint", first).group(1))
    summary = json.loads((run / "train" / "_COMPLETE.json").read_text())["summary"]
    assert summary["resumed"] is True and 0 < stopped_at < 30
    assert json.loads((run / "train" / "log.json").read_text())["steps"] == list(range(1, 31))  # none lost, none twice
    info = json.loads((run / "slurm" / "teacher-server.json").read_text())
    assert summary["teacher_scored_by"] == {"backend": "openai", "url": info["url"], "served_model": "teacher"}
    assert summary["cost"]["teacher_tokens_scored"] == summary["cost"]["student_tokens_sampled"] > 0
    assert summarize_states(env, jobs["teacher_server"]) == "COMPLETED", server_log[-3000:]
    # it announced itself once it answered, and stopped by itself once generation and training had ended
    assert re.search(r"\[teacher-server\] http://\S+:8000/v1 answers after [\d.]+s", server_log), server_log[-3000:]
    assert "[teacher-server] the generation and training jobs have ended: server stopped" in server_log
    assert info["job_id"] == jobs["teacher_server"] and info["stopped"] == "the generation and training jobs have ended"
    # every row was written by the server, reached through the endpoint, from both tasks
    rows = pq.read_table(run / "generate" / "rows.parquet").to_pylist()
    assert rows and {r["provenance"]["backend"]["url"] for r in rows} == {info["url"]}
    assert {r["provenance"]["backend"]["served_model"] for r in rows} == {"teacher"}
    assert {r["provenance"]["shard"] for r in rows} == {"0/2", "1/2"}
    assert len({r["id"] for r in rows}) == len(rows)
    shown = distill(env, "slurm", "status", run)  # the server has its own line, first
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[2].split()[:3] == ["teacher_server", jobs["teacher_server"], "COMPLETED"]


def test_doctor_holds_a_cluster_profile_against_what_sinfo_reports(slurm_env, tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, tiny_model)
    right = tmp_path / "test-node.yaml"
    right.write_text(PROFILE)
    proc = distill(slurm_env, "doctor", recipe, "--profile", right)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok       slurm profile 'test-node': partition 'debug': 1 node(s), 2 CPUs, 2 GPUs" in proc.stdout

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(PROFILE.replace("gpus_per_node: 2", "gpus_per_node: 8")
                     + "  - {name: gpu, cpus_per_node: 2, mem_gb: 16}\n")
    proc = distill(slurm_env, "doctor", recipe, "--profile", wrong)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "partition 'debug' promises more than the cluster has: gpus_per_node 8 (the cluster's nodes have 2)" in proc.stdout
    assert "partition 'gpu' is not on this cluster (sinfo lists debug)" in proc.stdout


# ------------------------------------------------------------------ a loop as a chain of round jobs
# The loop's run end to end: what a cluster runs (`distill slurm submit`), then taken up by `distill run`.

# Three rounds at most, 20 teacher prompts in all: the loop stops on its budget after round 2, and round 3's jobs,
# queued at submit, find nothing to do. One generation task and one training process per round. The token budget
# per round is wide enough not to bind (its arithmetic: test_loop.py).
LOOP_RECIPE = (RECIPE.replace("max_seeds: 40", "max_seeds: 60").replace("shards: 2", "shards: 1")
               .replace("    gpus_per_node: 2\n", "") + """\
loop:
  rounds: 3
  strategy: errors
  budget: {{per_round: 10, prompts: 20, round_tokens: 10000}}
  dev: {{size: 12, min_per_slice: 2}}
  plateau: null
""")
assert "max_seeds: 60" in LOOP_RECIPE and "shards: 1" in LOOP_RECIPE and "gpus_per_node" not in LOOP_RECIPE


@pytest.fixture(scope="module")
def loop_chain(slurm_env, tiny_model, tmp_path_factory):
    from distill.run_dir import RunDir

    folder = tmp_path_factory.mktemp("slurm-loop")
    run = submit_recipe(slurm_env, folder, tiny_model, LOOP_RECIPE)
    return {"run": RunDir(run), "status": wait_until_finished(slurm_env, run, timeout=900)}


def _job_log(run, recorded: dict, name: str) -> str:
    job = recorded[name]["job_id"]
    return "".join(p.read_text() for p in (run.logs / "slurm").glob(f"*-{job}*.out"))  # an array's: one per task


def test_a_loop_runs_as_a_chain_of_round_jobs_that_ends_when_the_loop_stops(loop_chain, slurm_env):
    from distill.loop.layout import LoopDir

    run, status = loop_chain["run"], loop_chain["status"]
    rounds = [f"round-{k:02d}/{stage}" for k in (1, 2, 3) for stage in ("generate", "filter", "train", "evaluate")]
    assert list(status["stages"]) == rounds + ["evaluate"]  # every round queued at submit, then the end job
    assert {s["state"] for s in status["stages"].values()} == {"COMPLETED"}
    recorded = json.loads((run.root / "slurm" / "jobs.json").read_text())["stages"]
    assert recorded["round-02/generate"]["command"][2] == f"--dependency=afterok:{recorded['round-01/evaluate']['job_id']}"

    record = json.loads(run.loop_record.read_text())
    assert [r["teacher_prompts"] for r in record["rounds"]] == [10, 20]
    assert record["stopped"] == "budget: 20 teacher prompts" and record["final_round"] == 2
    # round 1's evaluate job chose round 2's prompts; round 3's jobs ran after the loop had stopped and did nothing
    layout = LoopDir(run)
    assert "[round 2] errors: 10 prompts for the teacher" in _job_log(run, recorded, "round-01/evaluate")
    # sized by round 1's answers (budget.round_tokens): 10,000 tokens hold more than per_round of them
    chosen = layout.round(2).read_marker("select")["summary"]
    assert chosen["mean_teacher_tokens_before"] == round(record["rounds"][0]["teacher_tokens"] / 10, 1)
    for stage in ("generate", "filter", "train", "evaluate"):
        assert "the loop stopped after round 2 (budget: 20 teacher prompts)" in _job_log(run, recorded, f"round-03/{stage}")
        assert not layout.round(3).read_marker(stage)
    shown = distill(slurm_env, "slurm", "status", run.root)
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[0]: line.split() for line in shown.stdout.splitlines()[2:] if not line.startswith(" ")}
    assert lines["round-02/train"][2:4] == ["COMPLETED", "complete"] and lines["round-03/train"][3] == "-"


def _ids(path) -> list[str]:
    return [json.loads(line)["id"] for line in open(path) if line.strip()]


def test_each_round_answers_new_seeds_never_a_dev_or_test_item(loop_chain):
    from distill.loop.layout import LoopDir

    run = loop_chain["run"]
    answered = [pq.read_table(LoopDir(run).round(k).generated).to_pylist() for k in (1, 2)]
    seeds = [{r["input"] for r in rows} for rows in answered]
    assert all(len(rows) == 10 for rows in answered)
    assert not seeds[0] & seeds[1]  # no prompt answered twice
    dev = {json.loads(line)["input"] for line in open(run.dev)}
    test = {json.loads(line)["input"] for line in open(run.heldout)}
    assert len(dev) == 12 and not dev & test
    assert not (seeds[0] | seeds[1]) & (dev | test)
    # the pool the few-shot examples come from holds no dev item either
    assert not {json.loads(line)["input"] for line in open(run.seeds)} & dev


def test_every_row_says_its_round_and_why_it_was_chosen(loop_chain):
    run = loop_chain["run"]
    rows = pq.read_table(run.generated).to_pylist()  # the run's rows: every round's
    why = [r["provenance"]["selection"] for r in rows]
    assert [w["round"] for w in why] == [1] * 10 + [2] * 10
    assert {w["strategy"] for w in why[:10]} == {"random"}  # no student measured before round 1
    dev_ids = set(_ids(run.dev))
    assert all(w["strategy"] == "errors" and w["near"] in dev_ids and -1 <= w["similarity"] <= 1 for w in why[10:])


def test_rounds_measure_dev_only_and_the_test_split_once_at_the_end(loop_chain):
    from distill.loop.layout import LoopDir

    run = loop_chain["run"]
    layout = LoopDir(run)
    for k in (1, 2):
        assert list(json.loads(layout.round(k).eval_report.read_text())["sets"]) == ["dev"]
    final = json.loads(run.eval_report.read_text())
    assert list(final["sets"]) == ["plural"] and set(final["models"]) == {"base", "student"}
    # the loop's student is round 2's adapter, which continued round 1's: both rounds' rows were trained into it
    trained = json.loads((run.adapter / "training_data.json").read_text())
    assert trained["continued_from"] == str(layout.round(1).adapter.resolve())
    assert len(final["contamination"]["trained_on"]) == 2
    assert "| 2 | errors | 10 (20) |" in (layout.root / "report.md").read_text()
    assert (layout.root / "curve.png").is_file()
    # the model card's rounds table, cell by cell, is the loop's record
    record = json.loads(run.loop_record.read_text())
    rounds = (run.root / "model_card.md").read_text().split("## Rounds", 1)[1].split("\n## ", 1)[0]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rounds.splitlines() if re.match(r"\| \d", line)]
    assert cells == [[str(r["round"]), r["strategy"], f"{r['prompts']} ({r['teacher_prompts']})", str(r["kept"]),
                      f"{r['dev']['student']:.3f}"] for r in record["rounds"]]
    assert json.loads(run.report.read_text())["loop"] == record  # the run's report.json carries the loop


def test_distill_run_takes_up_a_chain_that_stopped_midway_without_answering_again(loop_chain, tmp_path):
    """The chain's round 2 as if its evaluate job had been killed: `distill run` on the same run directory finds round
    1 and round 2's answers and adapter up to date, evaluates round 2, and ends the loop as the chain did."""
    from distill.loop.layout import LoopDir
    from distill.run_dir import RunDir

    copy = tmp_path / "run"
    shutil.copytree(loop_chain["run"].root, copy, symlinks=True)
    run = RunDir(copy)
    second = LoopDir(run).round(2)
    answered = second.generated.read_bytes()
    before = json.loads(run.loop_record.read_text())
    trained = second.read_marker("train")
    for stage in (second.stage("evaluate"), *(run.stage(s) for s in ("generate", "filter", "train", "evaluate",
                                                                      "document"))):
        shutil.rmtree(stage)
    result = distill(os.environ, "run", copy, timeout=600)  # the run directory: its resolved recipe, run there
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for stage in ("select", "generate", "filter", "train", "evaluate"):
        assert f"[round 1] [{stage}] up to date, skipped" in result.stdout
    for stage in ("generate", "filter", "train"):
        assert f"[round 2] [{stage}] up to date, skipped" in result.stdout
    assert second.generated.read_bytes() == answered  # no prompt answered again
    assert second.read_marker("train") == trained and second.read_marker("evaluate")
    after = json.loads(run.loop_record.read_text())
    assert [r["teacher_prompts"] for r in after["rounds"]] == [10, 20] and after["stopped"] == before["stopped"]
    assert run.read_marker("evaluate") and run.read_marker("document")


def test_errors_synthesize_has_the_teacher_write_new_inputs_from_the_dev_errors(loop_chain, tmp_path):
    """LLM2LLM (loop.errors.synthesize): round 2's selection is inputs the teacher wrote, each modelled on a dev item
    round 1's student got wrong, and round 2's generation asks about them as it asks about seeds. On the chain's run with
    the setting switched on: round 1 is up to date (it draws at random whatever the strategy)."""
    import yaml

    from distill.data.split import selected
    from distill.generate.modes import mode_for
    from distill.loop.layout import LoopDir
    from distill.loop.run import round_recipe
    from distill.loop.select import dev_errors
    from distill.prompts.teacher import teacher_prompts
    from distill.prompts.template import PromptTemplate
    from distill.recipe import load_recipe
    from distill.run_dir import RunDir, read_jsonl

    copy = tmp_path / "run"
    shutil.copytree(loop_chain["run"].root, copy, symlinks=True)
    run = RunDir(copy)
    settings = yaml.safe_load(run.recipe.read_text())
    # a plural's input is one word: the teacher's first word is its input
    settings["loop"]["errors"].update(synthesize=True, stop=[" ", "\n"], max_tokens=6)
    run.recipe.write_text(yaml.safe_dump(settings))
    layout = LoopDir(run)
    errors = {e["id"] for e in dev_errors(layout.round(1))}
    assert errors  # round 1's student gets dev items wrong

    chose = distill(os.environ, "select", run.recipe, "--run-dir", copy, "--round", "2", timeout=300)
    assert chose.returncode == 0, chose.stdout[-3000:] + chose.stderr[-3000:]
    summary = layout.round(2).read_marker("select")["summary"]
    # the round's 10 prompts asked for; what was dropped was written again (a few passes at most)
    dropped = sum(summary["written_dropped"].values())
    assert 0 < summary["written"] <= 10 and summary["written_tokens"] > 0
    assert summary["written"] + dropped > 10 if dropped else summary["written"] == 10
    assert summary["pool_left"] == layout.round(1).read_marker("select")["summary"]["pool_left"]  # none taken
    entries = [json.loads(line) for line in layout.selection(2).read_text().splitlines()]
    assert len(entries) == summary["written"] and len({e["id"] for e in entries}) == len(entries)
    assert all(e["why"]["written_from"] in errors and e["why"]["round"] == 2 for e in entries)
    inputs = {e["input"] for e in entries}
    known = {r["input"] for f in (run.dev, run.heldout, run.seeds) for r in read_jsonl(f)}
    assert not inputs & known  # never a copy of a dev, test or pool input

    # round 2's generation asks about exactly these inputs, as it asks about seeds: the stage's own two calls, without
    # its 12 s of vLLM start-up (benchmarks/loop.py's synthesize loops run the stage, and the rest, end to end)
    round_two = round_recipe(load_recipe(run.recipe), layout, 2)
    seeds = read_jsonl(run.seeds)
    items = mode_for(round_two).items(selected(round_two, seeds))
    assert {it["input"] for it in items} == inputs and all(it["reference"] is None for it in items)
    assert all(it["selection"]["written_from"] in errors for it in items)
    prompts = teacher_prompts(round_two, PromptTemplate(round_two.generate.template, "t"), items, seeds)
    dev = [r["input"] for r in read_jsonl(run.dev)]
    for it, prompt in zip(items, prompts):  # the recipe's own template; no dev item's text in a prompt
        assert prompt.endswith(f"Q: plural of '{it['input']}'? A:")
        assert not any(f"'{d}'" in prompt for d in dev)


def test_a_retrained_round_trains_a_fresh_adapter_on_the_rows_of_every_round_so_far(loop_chain, tmp_path):
    """loop.train: retrain: round 2's student is a fresh adapter trained on round 1's and round 2's kept rows, as a
    one-shot student on those rows would be, and the leak check reads both rounds' rows from its record; the loop's
    end makes it the run's student, with the steps it made alone and both rounds' rows. On the chain's run with the
    setting switched on: the rounds' choices and answers stand; round 2's training runs here, in this process."""
    from distill.evaluate.contamination import trained_rows
    from distill.loop.assemble import assemble
    from distill.loop.layout import LoopDir
    from distill.loop.run import round_recipe, write_record
    from distill.pipeline import execute_stage
    from distill.recipe import load_recipe
    from distill.run_dir import RunDir
    from distill.stages import fingerprint

    copy = tmp_path / "run"
    shutil.copytree(loop_chain["run"].root, copy, symlinks=True)
    run = RunDir(copy)
    recipe = load_recipe(run.recipe, ["loop.train=retrain"])
    layout = LoopDir(run)
    one, two = (round_recipe(recipe, layout, k) for k in (1, 2))
    assert one.train.add_rows == [] and one.train.init_adapter is None
    assert layout.round(1).is_complete("train", fingerprint(one, layout.round(1), "train"))  # round 1 trains as before
    assert two.train.init_adapter is None and two.train.add_rows == [str(layout.round(1).filtered.resolve())]
    assert not layout.round(2).is_complete("train", fingerprint(two, layout.round(2), "train"))

    summary = execute_stage(two, layout.round(2), "train")
    kept = [sum(pq.read_table(layout.round(k).filtered).column("kept").to_pylist()) for k in (1, 2)]
    assert summary["rows"] == sum(kept) > kept[1]
    record = json.loads((layout.round(2).adapter / "training_data.json").read_text())
    assert "continued_from" not in record
    assert [a["rows_file"] for a in record["added_rows"]] == two.train.add_rows
    files, rows, problem = trained_rows(layout.round(2).adapter)
    assert problem is None and [str(f) for f in files] == [str(layout.round(2).filtered), *two.train.add_rows]
    assert len(rows) == sum(kept)

    # the loop stops after round 2: its record says how the rounds trained, the run's student is round 2's adapter
    rounds = json.loads(layout.record.read_text())["rounds"][:2]
    assert write_record(recipe, layout, rounds, "budget", 2)["train"] == "retrain"
    assemble(recipe, run, layout, 2)
    assembled = run.read_marker("train")["summary"]
    # round 1's steps made another adapter: the student made round 2's alone, on both rounds' rows
    assert (assembled["rows"], assembled["steps"]) == (summary["rows"], summary["steps"])
    assert len(trained_rows(run.adapter)[1]) == sum(kept)
    pq.write_table(pq.read_table(layout.round(1).filtered).slice(1), layout.round(1).filtered)  # a round's rows changed
    assert "changed since" in trained_rows(layout.round(2).adapter)[2]
