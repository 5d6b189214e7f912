"""Stage order, skip / force logic, logs and the run's report.

A stage is skipped when its completion marker records the same fingerprint: a hash of what
its own declaration says shapes its output (settings, the models it runs, by content and run
settings, and the content, never the path, of its input files) and of the outputs of the
stages before it. Partial work left by a killed run is kept and resumed only while the
fingerprint is unchanged.
"""

from __future__ import annotations

import importlib
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
from distill.models.context import model_fingerprint, resolved_model
from distill.models.dtype import dtype_lines, machine_line
from distill.models.identity import folder_hash
from distill.progress import CONSOLE_COLUMNS_ENV, CONSOLE_FD_ENV, console, print_summary
from distill.recipe import Recipe
from distill.run_dir import STAGES, RunDir, hash_file, hash_json, hash_tree, write_json, write_text

STARTED = "_STARTED.json"
UPSTREAM = {"generate": (), "filter": ("generate",), "train": ("filter",), "evaluate": ("generate", "filter", "train"),
            "document": ("generate", "filter", "train", "evaluate")}


def _upstream_hash(run: RunDir, stage: str) -> str:
    marker = run.read_marker(stage)
    if not marker:
        raise UserError(f"stage {stage} has not completed in {run.root}: run it first (distill {stage} ...)")
    return marker["output_hash"]


# --------------------------------------------------------------------------- what shapes each stage's output
#
# Each stage declares what shapes its output (STAGE_SETTINGS, STAGE_MODELS); its fingerprint hashes exactly that,
# with the output hashes of the stages before it. Settings count by value and every field of a section counts
# unless excluded here as cosmetic, so a new recipe field redoes its stage until someone decides otherwise.
# Files count by content, never by path: the same bytes moved elsewhere change nothing. Models count by
# content and the settings they run with (model_fingerprint).


def content_hash(path: str | Path) -> str:
    """sha256 of a file, or of every file under a folder (a `datasets` folder)."""
    path = Path(path)
    return hash_tree(path) if path.is_dir() else hash_file(path)


def _file(path: str) -> dict:
    """A data file by content, with its suffix: `format: auto` reads the format from it."""
    return {"sha256": content_hash(path), "suffix": Path(path).suffix.lower()}


def _data(r: Recipe) -> dict:
    return {**r.data.model_dump(mode="json", exclude={"path"}), "file": _file(r.data.path)}


# What decontamination reads of an eval set: its items (evaluate reads the rest: metrics, tolerances, prompts).
DECONTAMINATION_FIELDS = {"name", "data", "path", "format", "split", "input_field", "target_field", "limit"}


def _eval_set(s, fields: set[str] | None = None) -> dict:
    out = s.model_dump(mode="json", include=fields)
    if s.path:
        out["path"] = _file(s.path)
    return out


def _generate_settings(r: Recipe) -> dict:
    g = r.generate.model_dump(mode="json")
    if g.get("endpoint"):  # the server and the model it serves count; how requests travel does not
        g["endpoint"] = {k: v for k, v in g["endpoint"].items() if k in ("url", "model")}
    return {"data": _data(r), "generate": g}


def _filter_settings(r: Recipe) -> dict:
    f = r.filter.model_dump(mode="json", exclude={"num_proc"})  # processes for per-row checks: the same rows either way
    for step in f["steps"]:
        if step["type"] == "verifier":
            target, _, name = step["function"].rpartition(":")
            if target.endswith(".py"):
                step["function"] = {"file": content_hash(target), "name": name}
        if step.get("embedder") and Path(step["embedder"]).is_dir():
            step["embedder"] = folder_hash(Path(step["embedder"]))
    if f["calibration"]["gold"]:
        f["calibration"]["gold"] = _file(f["calibration"]["gold"])
    settings = {"filter": f}
    if any(step.type == "decontaminate" for step in r.filter.steps):  # the held-out split comes in as generate's output
        settings["eval_sets"] = [_eval_set(s, DECONTAMINATION_FIELDS) for s in r.evaluate.sets]
    return settings


def _train_settings(r: Recipe) -> dict:
    # logging_steps and report_to only say how often and where the loss is logged: the same adapter and
    # checkpoints. save_steps counts: it decides which checkpoints are written (and evaluated with
    # evaluate.checkpoints). The name is written into the adapter's training_data.json.
    return {"train": r.train.model_dump(mode="json", exclude={"logging_steps", "report_to"}), "name": r.name}


def _evaluate_settings(r: Recipe) -> dict:
    e = r.evaluate.model_dump(mode="json", exclude={"cache"})  # where results are reused from: the same scores
    e["sets"] = [_eval_set(s) for s in r.evaluate.sets]
    return {"evaluate": e, "seed": r.seed, "name": r.name,
            "student_format": {"prompt_template": r.train.prompt_template, "completion_template": r.train.completion_template,
                               "chat": r.train.chat},
            "teacher_prompt": {"template": r.generate.answering_template(), "few_shot": r.generate.few_shot.model_dump(),
                               "chat": r.generate.chat, "system_prompt": r.generate.system_prompt}}


def _input_paths(r: Recipe) -> list[str]:
    paths = [r.data.path] + [s.path for s in r.evaluate.sets if s.path]
    paths += [step.function.rpartition(":")[0] for step in r.filter.steps if step.type == "verifier"]
    return paths + ([r.filter.calibration.gold] if r.filter.calibration.gold else [])


def _document_settings(r: Recipe) -> dict:
    # The manifest and cards record the whole recipe, the input files by path and content and the models'
    # full identities (paths included): any change to what they record redoes the stage.
    return {"recipe": r.model_dump(mode="json"),
            "inputs": {p: content_hash(p) for p in sorted(set(_input_paths(r))) if Path(p).exists()},
            "identities": {role: resolved_model(r, role)[1] for role in _all_roles(r)}}


def _judges(r: Recipe) -> tuple[str, ...]:
    return tuple(sorted({step.model for step in r.filter.steps if step.type == "judge"}))


def _evaluated(r: Recipe) -> tuple[str, ...]:
    return (("student",) if {"base", "student"} & set(r.evaluate.models) else ()) + (("teacher",) if "teacher" in r.evaluate.models else ())


def _all_roles(r: Recipe) -> tuple[str, ...]:
    return ("teacher", "student") + (("judge",) if r.models.judge is not None else ())


STAGE_SETTINGS = {"generate": _generate_settings, "filter": _filter_settings, "train": _train_settings,
                  "evaluate": _evaluate_settings, "document": _document_settings}
# The roles whose model each stage runs (see model_fingerprint for what of a model counts).
STAGE_MODELS = {"generate": lambda r: ("teacher",), "filter": _judges, "train": lambda r: ("student",),
                "evaluate": _evaluated, "document": _all_roles}


def stage_settings(recipe: Recipe, stage: str) -> dict:
    """Everything in the recipe that can change a stage's output: settings by value, files by content."""
    return STAGE_SETTINGS[stage](recipe)


def stage_inputs(recipe: Recipe, stage: str) -> dict:
    """A stage's settings and the models it runs, as its fingerprint hashes them (without upstream outputs)."""
    return {"stage": stage, "settings": stage_settings(recipe, stage),
            "models": {role: model_fingerprint(recipe, role) for role in STAGE_MODELS[stage](recipe)}}


def fingerprint(recipe: Recipe, run: RunDir, stage: str) -> str:
    upstream = {u: _upstream_hash(run, u) for u in UPSTREAM[stage]}
    return hash_json({**stage_inputs(recipe, stage), "upstream": upstream})


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


STAGE_FUNCTIONS = {"filter": "distill.filters.stage:run_filter", "train": "distill.train.stage:run_train",
                   "evaluate": "distill.evaluate.stage:run_evaluate", "document": "distill.provenance.stage:run_document"}


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def execute_stage(recipe: Recipe, run: RunDir, stage: str, force: bool = False, shard: tuple[int, int] = (0, 1)) -> dict | None:
    """Run one stage in this process unless it is complete; return its summary."""
    from distill.provenance.lineage import enforce_chaining_policy

    enforce_chaining_policy(recipe)  # allow_chaining: false stops even a single stage before any work
    fp = fingerprint(recipe, run, stage)
    if not force and run.is_complete(stage, fp):
        summary = run.read_marker(stage)["summary"]
        console(f"[{stage}] up to date, skipped ({run.stage(stage)})")
        return summary
    moved = None
    if _is_main_process():
        from distill.run_dir import run_lock

        with run_lock(run.root / f".{stage}.lock"):  # shards started together must not wipe each other's work
            moved = begin_stage(run, stage, fp, force and shard == (0, 1))
    if stage == "generate":
        from distill.generate.stage import run_generate

        summary = run_generate(recipe, run, shard)
        if not summary.get("merged"):
            print_summary(stage, summary)
            console(f"[generate] shard {shard[0]}/{shard[1]} finished; other shards are still missing")
            return None
    else:
        # import only this stage's module: each stage process pays for its own libraries alone
        module, function = STAGE_FUNCTIONS[stage].split(":")
        summary = getattr(importlib.import_module(module), function)(recipe, run)
    if not _is_main_process():
        return None
    if moved:  # the earlier work this run set aside, so the summary says where it is
        summary["moved_aside"] = str(moved)
    run.mark_complete(stage, fp, summary)
    print_summary(stage, summary)
    write_run_report(run)
    return summary


def save_resolved_recipe(recipe: Recipe, run: RunDir) -> Path:
    """The recipe as resolved (absolute paths, defaults filled in): what child stages and later runs read."""
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    write_text(run.recipe, text)
    return run.recipe


def write_run_report(run: RunDir) -> dict:
    report = {"run_dir": str(run.root), "stages": {}}
    for stage in STAGES:
        marker = run.read_marker(stage)
        report["stages"][stage] = {"complete": bool(marker), "summary": marker["summary"] if marker else None}
    write_json(run.report, report)
    return report


def run_pipeline(recipe: Recipe, run: RunDir, force: tuple[str, ...] = (), stages: tuple[str, ...] = STAGES,
                 verbose: bool = False) -> dict:
    """Each stage in its own process (a clean engine and memory per stage), its output logged to run/logs/<stage>.log.

    The console shows each stage's progress bars, summary and warnings; `verbose` shows everything the stage writes.
    """
    for role in ("teacher", "student"):  # convert / locate models before any work starts
        resolved_model(recipe, role)
    from distill.provenance.lineage import enforce_chaining_policy

    for warning in enforce_chaining_policy(recipe):  # raises instead when the recipe forbids chaining
        print(f"warning: {warning}", flush=True)
    print(f"[run] {machine_line(recipe)}", flush=True)
    for warning in dtype_lines(recipe)[1]:
        print(f"warning: {warning}", flush=True)
    recipe_file = save_resolved_recipe(recipe, run)
    started = time.time()
    for stage in stages:
        fp = None
        try:
            fp = fingerprint(recipe, run, stage)
        except UserError:
            pass  # upstream incomplete: the child will say so
        if fp and stage not in force and run.is_complete(stage, fp):
            print(f"[{stage}] up to date, skipped", flush=True)
            continue
        cmd = [sys.executable, "-m", "distill.cli", stage, str(recipe_file), "--run-dir", str(run.root)]
        if stage in force:
            cmd.append("--force")
        _run_logged(cmd, run.logs / f"{stage}.log", stage, verbose)
    report = write_run_report(run)
    print(f"run complete in {time.time() - started:.0f}s: {run.root}", flush=True)
    return report


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
    return _run_logged([sys.executable, "-m", "distill.cli", *argv], run.logs / f"{log_name}.log", stage,
                       exit_codes=exit_codes)


def _die_with_parent() -> None:
    """In the stage process, before it starts (Linux): SIGKILL when the parent dies, so that killing the command
    also stops the work it started instead of leaving it running unseen."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _run_logged(cmd: list[str], log: Path, stage: str, verbose: bool = False, exit_codes: tuple[int, ...] = (0,)) -> int:
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
