"""Stage order, skip / force logic, logs and the run's report.

A stage is skipped when its completion marker records the same fingerprint: a hash of what
its declaration in distill.stages says shapes its output (settings, the models it runs, by content
and run settings, and the content, never the path, of its input files) and of the outputs of the
stages before it. Partial work left by a killed run is kept and resumed only while the
fingerprint is unchanged.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import yaml

from distill.errors import StageError, UserError
from distill.models.context import resolved_model
from distill.models.dtype import dtype_lines, machine_line
from distill.progress import CONSOLE_COLUMNS_ENV, CONSOLE_FD_ENV, console, print_summary
from distill.recipe import Recipe
from distill.run_dir import RunDir, hash_json, write_json, write_text
from distill.stages import NAMES, fingerprint, stage

STARTED = "_STARTED.json"


def begin_stage(run: RunDir, stage: str, fp: str, force: bool) -> Path | None:
    """Keep partial work only if it was started under the same fingerprint and not forced.

    Work started under another fingerprint (chunks, checkpoints, a finished output) is moved to
    runs/<name>/.stale/<stage>-<time>/ and kept until the user removes it; only `force` deletes it.
    Returns where it was moved, if it was."""
    stage_dir = run.stage(stage)
    started = stage_dir / STARTED
    try:
        previous = json.loads(started.read_text()).get("fingerprint") if started.is_file() else None
    except json.JSONDecodeError:
        previous = None
    moved = None
    if stage_dir.exists() and (force or previous != fp):
        bookkeeping = {STARTED, run.marker(stage).name}
        if force or not any(p.name not in bookkeeping for p in stage_dir.iterdir()):
            shutil.rmtree(stage_dir)  # asked to redo, or nothing but bookkeeping to keep
        else:
            from distill.progress import console

            moved = run.move_aside(stage_dir, stage)
            console(f"[{stage}] settings or inputs changed: the earlier {stage} work is moved to {moved} "
                    f"(remove it when no longer needed)")
    run.clear_marker(stage)
    write_json(started, {"fingerprint": fp, "started_at": time.time()})
    return moved


def _relaunched(marker: dict, launch: dict) -> bool:
    """A stage finished under one launch, run again under a launcher with other facts (more processes): redone. A
    process outside any launcher (`distill run`, `status`, another job) takes it as it was done."""
    return "WORLD_SIZE" in os.environ and marker.get("launch", {}) != launch


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def execute_stage(recipe: Recipe, run: RunDir, name: str, force: bool = False, shard: tuple[int, int] = (0, 1)) -> dict | None:
    """Run one stage in this process unless it is complete; return its summary."""
    from distill.provenance.lineage import enforce_chaining_policy

    enforce_chaining_policy(recipe)  # allow_chaining: false stops even a single stage before any work
    fp = fingerprint(recipe, run, name)
    launch = stage(name).launch()
    if not force and run.is_complete(name, fp) and not _relaunched(run.read_marker(name), launch):
        summary = run.read_marker(name)["summary"]
        console(f"[{name}] up to date, skipped ({run.stage(name)})")
        return summary
    moved = None
    if _is_main_process():
        from distill.run_dir import run_lock

        with run_lock(run.root / f".{name}.lock"):  # shards started together must not wipe each other's work
            # partial work (checkpoints) continues only under the same launch: a global batch of another size is
            # another run
            moved = begin_stage(run, name, hash_json({"fingerprint": fp, "launch": launch}) if launch else fp,
                                force and shard == (0, 1))
    summary = stage(name).run(recipe, run, **({"shard": shard} if shard != (0, 1) else {}))
    if summary is not None and summary.get("merged") is False:  # a generation shard whose siblings are still at work
        print_summary(name, summary)
        console(f"[{name}] shard {shard[0]}/{shard[1]} finished; other shards are still missing")
        return None
    if not _is_main_process():
        return None
    if moved:  # the earlier work this run set aside, so the summary says where it is
        summary["moved_aside"] = str(moved)
    run.mark_complete(name, fp, summary, launch)
    print_summary(name, summary)
    write_run_report(run)
    return summary


def save_resolved_recipe(recipe: Recipe, run: RunDir) -> Path:
    """The recipe as resolved (absolute paths, defaults filled in): what child stages and later runs read."""
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    write_text(run.recipe, text)
    return run.recipe


def write_run_report(run: RunDir) -> dict:
    report = {"run_dir": str(run.root), "stages": {}}
    for name in NAMES:
        marker = run.read_marker(name)
        report["stages"][name] = {"complete": bool(marker), "summary": marker["summary"] if marker else None}
    if run.loop_record.is_file():  # a loop's run: its rounds, why it stopped, whose student it is
        report["loop"] = json.loads(run.loop_record.read_text())
    write_json(run.report, report)
    return report


def prepare_run(recipe: Recipe) -> None:
    """Before any stage of a run: the models located (converted, downloaded), the chaining policy enforced, the
    machine and the dtypes it chose said."""
    for role in ("teacher", "student"):  # convert / locate models before any work starts
        resolved_model(recipe, role)
    from distill.provenance.lineage import enforce_chaining_policy

    for warning in enforce_chaining_policy(recipe):  # raises instead when the recipe forbids chaining
        print(f"warning: {warning}", flush=True)
    print(f"[run] {machine_line(recipe)}", flush=True)
    for warning in dtype_lines(recipe)[1]:
        print(f"warning: {warning}", flush=True)


def finish_run(run: RunDir, started: float) -> dict:
    report = write_run_report(run)
    print(f"run complete in {time.time() - started:.0f}s: {run.root}", flush=True)
    return report


def run_pipeline(recipe: Recipe, run: RunDir, force: tuple[str, ...] = (), stages: tuple[str, ...] = NAMES,
                 verbose: bool = False) -> dict:
    """Each stage in its own process (a clean engine and memory per stage), its output logged to run/logs/<stage>.log.

    The console shows each stage's progress bars, summary and warnings; `verbose` shows everything the stage writes.
    """
    prepare_run(recipe)
    started = time.time()
    run_stages(recipe, run, stages, force, verbose)
    return finish_run(run, started)


def run_stages(recipe: Recipe, run: RunDir, stages: tuple[str, ...], force: tuple[str, ...] = (),
               verbose: bool = False, label: str = "") -> None:
    """Save the resolved recipe in `run` and run each stage not up to date in a process of its own. `label` goes
    before each console line (a loop round's)."""
    recipe_file = save_resolved_recipe(recipe, run)
    for name in stages:
        fp = None
        try:
            fp = fingerprint(recipe, run, name)
        except UserError:
            pass  # upstream incomplete: the child will say so
        if fp and name not in force and run.is_complete(name, fp):
            print(f"{label}[{name}] up to date, skipped", flush=True)
            continue
        cmd = [sys.executable, "-m", "distill.cli", name, str(recipe_file), "--run-dir", str(run.root)]
        if name in force:
            cmd.append("--force")
        run_logged(cmd, run.logs / f"{name}.log", name, verbose)


class _LogLines:
    """Bytes of one stream cut into lines for the log; a line redrawn with \\r (a progress bar) keeps its last state."""

    def __init__(self) -> None:
        self.pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        return [line.rstrip(b"\r").rsplit(b"\r", 1)[-1] for line in lines]

    def close(self) -> list[bytes]:
        rest, self.pending = self.pending, b""
        return self.feed(rest + b"\n") if rest else []


FAILURE_TAIL = 20  # log lines shown on the console when a stage fails


STAGE_PROCESS_ENV = "DISTILL_STAGE_PROCESS"  # set in a stage's own process, whose output its parent routes


def in_stage_process() -> bool:
    return os.environ.get(STAGE_PROCESS_ENV) == "1"


def run_stage_command(run: RunDir, stage: str, argv: list[str], log_name: str, exit_codes: tuple[int, ...]) -> int:
    """A stage command typed by the user (`distill generate RECIPE ...`) runs as under `distill run`: in a child
    process whose library output goes to logs/<log_name>.log, its progress, summary and errors on the console."""
    return run_logged([sys.executable, "-m", "distill.cli", *argv], run.logs / f"{log_name}.log", stage,
                       exit_codes=exit_codes)


def _die_with_parent() -> None:
    """In the stage process, before it starts (Linux): SIGKILL when the parent dies, so that killing the command
    also stops the work it started instead of leaving it running unseen."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_logged(cmd: list[str], log: Path, stage: str, verbose: bool = False, exit_codes: tuple[int, ...] = (0,)) -> int:
    """Run one stage's process: all its output goes to `log`; the console gets what it writes through
    distill.progress (bars, summaries, warnings), or everything when `verbose`. On failure the end of the log.
    Returns the exit code when it is one of `exit_codes`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env, pass_fds, console_read = dict(os.environ), (), None
    env[STAGE_PROCESS_ENV] = "1"
    if not verbose:
        console_read, console_write = os.pipe()
        env[CONSOLE_FD_ENV], pass_fds = str(console_write), (console_write,)
        if sys.stdout.isatty():
            env[CONSOLE_COLUMNS_ENV] = str(shutil.get_terminal_size().columns - 1)
    tail: deque[bytes] = deque(maxlen=FAILURE_TAIL)
    with open(log, "ab") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} distill {' '.join(cmd[3:])}\n".encode())
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, pass_fds=pass_fds,
                                    preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        finally:
            if console_read is not None:
                os.close(console_write)  # only the child holds the write end: its exit ends the stream
        shown = {proc.stdout.fileno(): verbose}  # fd -> copied to the console as it comes
        if console_read is not None:
            shown[console_read] = True
        lines = {fd: _LogLines() for fd in shown}
        with selectors.DefaultSelector() as selector:
            for fd in shown:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                for key, _ in selector.select():
                    chunk = os.read(key.fd, 65536)
                    if shown[key.fd] and chunk:
                        sys.stdout.buffer.write(chunk)
                        sys.stdout.flush()
                    done = lines[key.fd].feed(chunk) if chunk else lines[key.fd].close()
                    if not chunk:
                        selector.unregister(key.fd)
                    f.writelines(line + b"\n" for line in done)
                    f.flush()
                    tail.extend(done)
        code = proc.wait()
        proc.stdout.close()
        if console_read is not None:
            os.close(console_read)
    if code in exit_codes:
        return code
    if not verbose:  # what the stage said before it stopped, which went to the log only
        shown_lines = [line for line in tail if line.startswith(b"error:")] if code == 2 else []
        if not shown_lines:
            print(f"--- last {len(tail)} lines of {log}:", file=sys.stderr)
        sys.stderr.write(b"\n".join(shown_lines or list(tail)).decode("utf-8", "replace") + "\n")
        sys.stderr.flush()
    if code == 2:
        raise UserError(f"stage {stage} stopped on an input error (above); log: {log}")
    if code != 0:
        raise StageError(f"stage {stage} failed with exit code {code}; log: {log}")
