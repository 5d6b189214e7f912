"""Shared fixtures: a tiny model built locally, a tiny recipe over the vendored plural data, the CLI."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
PLURAL = ROOT / "recipes" / "quickstart" / "data" / "plural_json.json"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ.setdefault("DISTILL_CACHE", str(tmp_path_factory.mktemp("distill-cache")))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from distill.models.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2")


TINY_RECIPE = """\
name: tiny
seed: 0
models:
  teacher: {{path: {model}, dtype: float32}}  # pinned: the tiny model's figures compare across machines
  student: {{path: {model}, dtype: float32}}
data:
  path: {data}
  slice_field: comment
  heldout: {{size: 24, min_per_slice: 4}}
  max_seeds: 40
generate:
  template: |-
    {{% for ex in examples %}}Q: plural of '{{{{ ex.input }}}}'? A: {{{{ ex.target }}}}
    {{% endfor %}}Q: plural of '{{{{ input }}}}'? A:
  few_shot: {{k: 2}}
  sampling: {{max_tokens: 6, stop: ["\\n"]}}
  chunk_size: 16
filter:
  steps:
    - {{type: length, min_chars: 1, max_chars: 60}}
    - {{type: exact_dedup, fields: [input]}}
  keep_truncated: true  # the tiny random model rarely stops by itself: nearly every answer runs to max_tokens
train:
  prompt_template: "Plural of {{{{ input }}}}:"
  lora: {{r: 4, alpha: 8}}
  batch_size: 8
  max_length: 48
evaluate:
  sets:
    - {{name: plural, data: heldout}}
  max_tokens: 6
"""


def write_recipe(folder: Path, model: Path, text: str = TINY_RECIPE, name: str = "recipe.yaml", data: Path = PLURAL) -> Path:
    path = folder / name
    path.write_text(text.format(model=model, data=data))
    return path


@pytest.fixture
def tiny_recipe(tmp_path, tiny_model) -> Path:
    return write_recipe(tmp_path, tiny_model)


# Set by libraries on import (TRL sets VLLM_LOGGING_LEVEL=ERROR) in this process, where some tests train
# in-process; a user's shell does not have them.
IMPORT_SIDE_EFFECTS = [k for k in ("VLLM_LOGGING_LEVEL",) if k not in os.environ]


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command line, in a subprocess, as a user would run it; `env` adds to (or replaces in) the environment."""
    env = {**{k: v for k, v in os.environ.items() if k not in IMPORT_SIDE_EFFECTS}, **(env or {})}
    return subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture
def doctor(capsys):
    """`distill doctor ARGS` run in this process (`distill.cli.main`): its exit code and output, as a CompletedProcess.
    For checks of a recipe's settings: a doctor process spends most of its 6 s importing transformers, which this
    process has done; where the environment or a cache is part of the question, run the command (run_cli)."""
    from distill.cli import main
    from distill.models.hardware import this_machine

    def run(*args) -> subprocess.CompletedProcess:
        this_machine.cache_clear()  # read again as a new process reads it (a test may cap the CPU's features)
        capsys.readouterr()
        code = main(["doctor", *map(str, args)])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, err[-3000:]
        return subprocess.CompletedProcess(["distill", "doctor", *args], code, out, err)

    yield run
    this_machine.cache_clear()


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_model):
    """One complete `distill run` of the tiny recipe, shared by the tests that inspect it (some re-run stages of it):
    (folder, recipe, run directory, the completed process, each stage log as it was when the run ended). A copy of
    the run as it ended is kept in folder/pristine-runs."""
    from distill.run_dir import RunDir

    folder = tmp_path_factory.mktemp("e2e")
    recipe = write_recipe(folder, tiny_model)
    result = run_cli("run", recipe, cwd=folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = RunDir(folder / "runs" / "tiny")
    logs = {p.stem: p.read_bytes() for p in run.logs.glob("*.log")}
    # as the run ended: tests that rerun stages of `run` change it, and the order tests run in is not fixed
    shutil.copytree(folder / "runs", folder / "pristine-runs")
    return folder, recipe, run, result, logs


@contextlib.contextmanager
def vllm_server(model: Path, folder: Path, name: str, *options: str, startup_limit_s: int = 400):
    """`python -m vllm.entrypoints.openai.api_server` on 127.0.0.1 serving `model` as `name`, as a teacher's `vllm
    serve` on other nodes would; yields its /v1 URL and stops it (its whole process group) afterwards."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = folder / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--served-model-name", name,
           "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024",
           "--seed", "0", "--structured-outputs-config", json.dumps({"backend": "xgrammar", "disable_any_whitespace": True}),
           *options]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + startup_limit_s
        while True:
            assert proc.poll() is None, f"server exited early:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"server not up in {startup_limit_s}s:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)  # nothing of the server's is kept: no reason to wait on a slow shutdown
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cache_hub_dataset(root: Path, repo_id: str, splits: dict[str, list[dict]], commit: str = "0" * 40) -> dict:
    """Put `repo_id` into a datasets cache under `root` as an online `load_dataset(repo_id)` leaves it, and return the
    environment that reads it offline. Offline, datasets reads only that cache (Arrow files and dataset_info.json under
    {HF_DATASETS_CACHE}/<owner>___<name>/default/0.0.0/<commit>/); load_dataset on the same repo checked out locally
    writes exactly that, under the folder's name and a content hash, which are renamed to the Hub's."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = repo_id.split("/")[-1]
    repo, cache = root / name, root / "hf" / "datasets"
    (repo / "data").mkdir(parents=True)
    for split, rows in splits.items():
        pq.write_table(pa.Table.from_pylist(rows), repo / "data" / f"{split}-00000-of-00001.parquet")
    datasets.load_dataset(str(repo), cache_dir=str(cache))
    (cache / name).rename(cache / repo_id.replace("/", "___"))
    for built in (cache / repo_id.replace("/", "___")).glob("*/0.0.0/*"):
        if built.is_dir():
            built.rename(built.with_name(commit))
    return {"HF_HOME": str(root / "hf"), "HF_HUB_CACHE": str(root / "hf" / "hub"), "HF_DATASETS_CACHE": str(cache),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# ------------------------------------------------------------------ how the tests share two workers

# A file whose tests use the session's `finished_run` says `pytestmark = SHARES_FINISHED_RUN`: the scheduler below
# sends those files to one worker, which builds the run once instead of each worker building its own.
SHARES_FINISHED_RUN = pytest.mark.shares_finished_run


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (scripts/test.sh): each test file whole on one worker (its module fixtures built once), the
    files that share the finished run as one unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedRunTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "finished_run" if _shares_finished_run(config.rootpath / file) else file

    return SharedRunTogether(config, log)


@functools.cache
def _shares_finished_run(path: Path) -> bool:
    return path.is_file() and "\npytestmark = SHARES_FINISHED_RUN" in path.read_text()
