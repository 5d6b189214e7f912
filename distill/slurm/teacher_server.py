"""The teacher as its own Slurm job: `vllm serve` on the job's nodes, used by the generation tasks (and, with
train.objective on_policy, by the train job, which has it score the student's tokens), ended after them.

`distill slurm submit` queues the server job first and the generation array with `--dependency=after:SERVER`
(it starts once the server's job runs). In the server job, `distill slurm serve-teacher`:

1. starts vLLM's OpenAI server on models.teacher with the recipe's engine settings (over a Ray cluster that
   the job script started when the server spans nodes);
2. waits until it answers, for at most slurm.teacher_server.ready_timeout_s; a server that does not answer in
   time, or exits, ends the job with the reason written to RUN/slurm/teacher-server.json;
3. writes the address there: each generation task (DISTILL_TEACHER_SERVER names the file) waits for it and
   sends its prompts through the endpoint backend; an on-policy train job sends the student's answers to be scored;
4. stops the server when no task of its client jobs (generation, and on-policy training) is queued or running any
   more, and ends.

The file carries the server job's id, so a task never reads the address left by an earlier submission.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from distill.errors import StageError, UserError
from distill.models.dtype import model_dtype
from distill.models.teacher_server import SERVED_NAME, client_jobs, client_stages, server_file
from distill.progress import console
from distill.recipe import Recipe
from distill.run_dir import RunDir, write_json


def serve_command(recipe: Recipe, teacher_dir: Path) -> list[str]:
    """The `vllm serve` command line (vLLM's OpenAI server module, which every vLLM build ships, started by
    distill.slurm.vllm_server so that its CPU engine may use AMX) for the teacher:
    the engine settings the in-process engine would use, the job's parallel layout, then the recipe's extra options."""
    from distill.data.captures import LOGPROBS_MODE
    from distill.models.hardware import this_machine
    from distill.models.vllm_engine import block_size

    ts, spec, g = recipe.slurm.teacher_server, recipe.models.teacher, recipe.generate
    on_gpu = bool(this_machine().gpus)
    e = spec.engine
    tensor, pipeline = ts.parallel_sizes()
    cmd = [sys.executable, "-m", "distill.slurm.vllm_server", "--model", str(teacher_dir),
           "--served-model-name", SERVED_NAME, "--host", "0.0.0.0", "--port", str(ts.port),
           "--dtype", model_dtype(spec, "teacher", teacher_dir).dtype, "--max-model-len", str(e.max_model_len),
           "--seed", str(g.sampling.seed),
           "--tensor-parallel-size", str(tensor), "--pipeline-parallel-size", str(pipeline),
           # as the in-process engine: JSON answers without free whitespace (a per-engine setting in vLLM)
           "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True})]
    if e.enforce_eager:
        cmd.append("--enforce-eager")
    scores = recipe.train.runs_the_teacher  # on-policy training reads the server's prompt log-probabilities
    if e.prefix_caching is False or scores:  # which vLLM can return stale with prefix caching (vllm#42019)
        cmd.append("--no-enable-prefix-caching")
    else:  # generation only: the server is never asked for prompt log-probabilities (mode: score is refused)
        block = block_size(e, on_gpu)
        cmd += ["--enable-prefix-caching"] + (["--block-size", str(block)] if block else [])
    if not on_gpu:  # whole prompts per step: seeded sampling on the CPU build dies otherwise (distill.models.vllm_engine)
        cmd.append("--no-enable-chunked-prefill")
    if spec.trust_remote_code:
        cmd.append("--trust-remote-code")
    if e.quantization:
        cmd += ["--quantization", e.quantization]
    if e.max_num_seqs:
        cmd += ["--max-num-seqs", str(e.max_num_seqs)]
    if g.logprobs or scores:
        k = max(g.logprobs or 0, recipe.train.on_policy.top_k if scores else 0, 20)
        cmd += ["--max-logprobs", str(k), "--logprobs-mode", LOGPROBS_MODE]
    if ts.gpus_per_node:
        cmd += ["--gpu-memory-utilization", str(e.gpu_memory_utilization)]
    if ts.nodes > 1:
        cmd += ["--distributed-executor-backend", "ray"]
    return cmd + list(ts.vllm_args)


def _server_environment(recipe: Recipe) -> dict:
    env = dict(os.environ)
    if not recipe.slurm.teacher_server.gpus_per_node:  # vLLM's CPU build sizes its KV cache from the environment
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(recipe.models.teacher.engine.kv_cache_gb)))))
    return env


def _answers(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _active(run: RunDir, name: str) -> bool:
    """Whether a task of this submission's job `name` is still queued or running (True until it is recorded)."""
    from distill.cluster import ACTIVE, job_states, jobs_file

    try:
        job = json.loads(jobs_file(run).read_text())["stages"][name]["job_id"]
    except (OSError, ValueError, KeyError):
        return True  # submit records it right after queuing the server
    tasks = job_states(str(job))
    return not tasks or any(t["state"] in ACTIVE for t in tasks)  # no record: the controller has not shown it yet


def _wait_for_ray(nodes: int, deadline: float) -> None:
    """Until the Ray cluster the job script started (RAY_ADDRESS) has a node per job node."""
    import ray

    while True:
        try:
            ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), logging_level="ERROR")
            alive = sum(1 for n in ray.nodes() if n.get("Alive"))
            ray.shutdown()
            if alive >= nodes:
                return
        except (ConnectionError, RuntimeError):
            alive = 0
        if time.time() > deadline:
            raise StageError(f"the Ray cluster has {alive} of {nodes} nodes after slurm.teacher_server.ready_timeout_s")
        time.sleep(5)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def serve(recipe: Recipe, run: RunDir, poll_s: float = 5.0) -> dict:
    """Run the teacher's server until generation has ended (the body of the server job); a summary."""
    from distill.models.context import resolved_model

    ts = recipe.slurm.teacher_server
    if ts is None:
        raise UserError("slurm.teacher_server is not set in this recipe: there is no server to start")
    job_id = os.environ.get("SLURM_JOB_ID", "local")
    path = server_file(run)
    started = time.time()
    deadline = started + ts.ready_timeout_s

    def fail(message: str) -> StageError:
        write_json(path, {"job_id": job_id, "failed": message})
        return StageError(message)

    teacher_dir, _ = resolved_model(recipe, "teacher")
    if ts.nodes > 1:
        try:
            _wait_for_ray(ts.nodes, deadline)
        except StageError as e:
            raise fail(str(e)) from None
    # The server's output goes to this job's log; its own process group, so that stopping it stops its workers.
    proc = subprocess.Popen(serve_command(recipe, teacher_dir), env=_server_environment(recipe), start_new_session=True)
    previous = {s: signal.signal(s, lambda *_: (_stop(proc), sys.exit(143))) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not _answers(ts.port):
            if proc.poll() is not None:
                raise fail(f"teacher server: vLLM exited with code {proc.returncode} before answering (its output is in "
                           f"the server job's log)")
            if time.time() > deadline:
                _stop(proc)
                raise fail(f"teacher server: not answering within slurm.teacher_server.ready_timeout_s = "
                           f"{ts.ready_timeout_s:g}s; the job ends (vLLM's output is in its log)")
            time.sleep(1)
        url = f"http://{socket.gethostname()}:{ts.port}/v1"
        ready = round(time.time() - started, 1)
        write_json(path, {"job_id": job_id, "url": url, "model": SERVED_NAME, "ready_after_s": ready})
        ended = ("the generation tasks have ended" if client_stages(recipe) == ("generate",)
                 else "the generation and training jobs have ended")
        console(f"[teacher-server] {url} answers after {ready}s; serving until {ended.replace('have ended', 'end')}")
        while any(_active(run, job) for job in client_jobs(recipe)):
            if proc.poll() is not None:
                raise fail(f"teacher server: vLLM exited with code {proc.returncode} while serving")
            time.sleep(poll_s)
        _stop(proc)
        served = round(time.time() - started, 1)
        write_json(path, {"job_id": job_id, "url": url, "model": SERVED_NAME, "ready_after_s": ready,
                          "stopped": ended, "served_s": served})
        console(f"[teacher-server] {ended}: server stopped after {served}s")
        return {"url": url, "ready_after_s": ready, "served_s": served}
    finally:
        _stop(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)


