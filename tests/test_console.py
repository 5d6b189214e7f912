"""What `distill run` shows on the console: each stage's progress and summary, not library logs; -v shows all;
a failed stage shows the end of its log and where the log is. Everything is in runs/<name>/logs/ either way."""

from __future__ import annotations

import re
import shutil
import time

import pytest
from conftest import SHARES_FINISHED_RUN, TINY_RECIPE, run_cli, write_recipe

from distill.run_dir import RunDir

pytestmark = SHARES_FINISHED_RUN  # one worker builds the shared run (conftest.py)

VLLM_LOG_LINE = re.compile(r"^\(\w+ pid=\d+\) (INFO|WARNING) ", re.M)


def test_console_shows_stage_summaries_and_bars_but_not_library_output(finished_run):
    _, _, run, result, _ = finished_run
    console = result.stdout + result.stderr
    for stage in ("generate", "filter", "train", "evaluate", "document"):
        assert f"[{stage}] done" in result.stdout
    assert "[evaluate] base on plural: exact_match=" in result.stdout  # each model's result on each set
    assert "generate (complete):" in console and "train:" in console and "loss=" in console  # distill's own bars
    assert not VLLM_LOG_LINE.search(console)
    for noise in ("Loading safetensors", "Loading weights", "examples/s", "{'loss'", "Triton"):
        assert noise not in console, noise
    # besides bar states: warnings, 5 summaries, 3 per-model results and the last line: about a dozen
    lines = [line for line in result.stdout.splitlines() if line.strip() and not re.search(r"\d+%\|", line)]
    assert len(lines) < 20, lines


def test_logs_hold_what_the_console_leaves_out(finished_run):
    *_, logs = finished_run
    generate, train = logs["generate"].decode(), logs["train"].decode()
    assert "Loading safetensors" in generate  # the engine's weight loading, which the console leaves out
    assert "[generate] done" in generate  # the console lines are in the log too
    assert "'loss'" in train and "[train] done" in train
    # a redrawn bar is one line in the log, in its last state
    assert b"\r" not in logs["train"]
    assert re.search(r"^train: 100%.*5/5", train, re.M)


def test_verbose_shows_library_output(finished_run, tmp_path):
    shutil.copytree(finished_run[0] / "pristine-runs", tmp_path / "runs")  # the run as it ended, whatever ran since
    result = run_cli("run", tmp_path / "runs" / "tiny", "-v", "--force", "document", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("up to date, skipped") == 4 and "[document] done" in result.stdout
    assert re.search(r"^Loading weights: 100%", result.stdout.replace("\r", "\n"), re.M)  # transformers' own bar


@pytest.mark.parametrize("command", ["run", "filter"])
def test_a_failed_stage_shows_the_end_of_its_log_and_its_path(finished_run, tiny_model, tmp_path, command):
    """Under `distill run` and as a stage command alone."""
    shutil.copytree(finished_run[0] / "runs", tmp_path / "runs")  # a copy: generate is up to date there
    run = RunDir(tmp_path / "runs" / "tiny")
    (tmp_path / "crash.py").write_text("def check(row):\n    raise RuntimeError('verifier crashed on row ' + row['id'])\n")
    failing = TINY_RECIPE.replace("    - {{type: exact_dedup, fields: [input]}}",
                                  "    - {{type: exact_dedup, fields: [input]}}\n    - {{type: verifier, function: 'crash.py:check'}}")
    recipe = write_recipe(tmp_path, tiny_model, failing, name="crashing.yaml")
    result = run_cli(command, recipe, cwd=tmp_path)
    assert result.returncode == 1
    assert "RuntimeError: verifier crashed on row" in result.stderr  # the log's last lines
    assert "stage filter failed with exit code 1; log: runs/tiny/logs/filter.log" in result.stderr
    assert "RuntimeError: verifier crashed on row" in (run.logs / "filter.log").read_text()


def test_a_stage_ends_when_its_work_is_done_though_a_thread_pool_was_left_open(finished_run, tiny_model, tmp_path):
    """Libraries leave executors open (vLLM's, user code's): their idle, non-daemon workers must not keep a finished
    stage process, or `distill run` waiting on it, alive. Each stage under `distill run` ends the same way."""
    shutil.copytree(finished_run[0] / "runs", tmp_path / "runs")
    (tmp_path / "pooled.py").write_text(
        "from concurrent.futures import ThreadPoolExecutor\n"
        "_pool = ThreadPoolExecutor(1)  # never shut down\n"
        "_pool.submit(int).result()  # its worker now waits, idle, for more\n"
        "def check(row):\n    return True\n")
    pooled = TINY_RECIPE.replace("    - {{type: exact_dedup, fields: [input]}}",
                                 "    - {{type: exact_dedup, fields: [input]}}\n    - {{type: verifier, function: 'pooled.py:check'}}")
    recipe = write_recipe(tmp_path, tiny_model, pooled, name="pooled.yaml")
    started = time.time()
    result = run_cli("filter", recipe, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[filter] done" in result.stdout
    assert "still running" not in result.stdout + result.stderr  # woken and ended, not left behind after a wait
    assert time.time() - started < 120


def test_a_stage_command_alone_is_as_quiet_as_under_run(finished_run, tmp_path):
    shutil.copytree(finished_run[0] / "runs", tmp_path / "runs")
    run = RunDir(tmp_path / "runs" / "tiny")
    result = run_cli("generate", run.root, "--force", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert "[generate] done" in result.stdout and "generate (complete):" in console
    assert not VLLM_LOG_LINE.search(console) and "Loading safetensors" not in console
    log = (run.logs / "generate.log").read_text()
    assert VLLM_LOG_LINE.search(log) and "[generate] done" in log
