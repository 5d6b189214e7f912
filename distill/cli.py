"""The `distill` command: parse arguments, call one function per command, map user errors to exit 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from distill.errors import StageError, UserError
from distill.loop.layout import DECIDE, ROUND_STAGES
from distill.models.tiny import FAMILIES
from distill.preemption import PREEMPTED_EXIT, Preempted, stopped_at_request
from distill.stages import NAMES, STAGES

DEGRADED_EXIT = 3
FAIL_ON_DEGRADATION_HELP = ("exit with code 3 when a gated model is degraded on any set, slice or guard set: its drop from "
                            "the baseline is shown to exceed the metric's tolerance, corrected across the gated tests "
                            "(evaluate.gate; evaluate gates the models in evaluate.gate.models, compare every model but the "
                            "baseline; the others are reported only)")


NO_CACHE_HELP = ("score every model afresh: neither read nor write the evaluation cache (evaluate.cache; results "
                 "are reused while model, items, prompts, decoding and metrics are unchanged)")


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/N, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard {text}: need 0 <= i < N")
    return i, n


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file, or a run directory (its resolved recipe.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override single recipe fields")
    p.add_argument("--run-dir", help="run directory (default: the recipe's run_dir or runs/<name>)")
    p.set_defaults(overrides_anywhere=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Teacher-to-student distillation, accountable end to end.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run every stage of a recipe, skipping stages that are up to date")
    _add_recipe_args(p)
    p.add_argument("--force", action="append", default=[], choices=list(NAMES),
                   help="redo this stage even if it is up to date (repeatable)")
    p.add_argument("--no-cache", action="store_true", help=NO_CACHE_HELP)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show everything the stages write (library logs and progress bars) on the console, "
                        "not only their progress, summaries and warnings; it all goes to runs/<name>/logs/ either way")

    p = sub.add_parser("select", help="choose the prompts the teacher answers in one round of a recipe's loop "
                       "(`distill run` runs it for every round)")
    _add_recipe_args(p)
    p.add_argument("--round", type=int, required=True, metavar="K", help="the round, from 1")
    p.add_argument("--force", action="store_true", help="choose again even if the round's choice is up to date")

    for stage in STAGES:
        p = sub.add_parser(stage.name, help=stage.help)
        _add_recipe_args(p)
        p.add_argument("--force", action="store_true", help="redo the stage even if it is up to date")
        p.add_argument("-v", "--verbose", action="store_true",
                       help="show everything the stage writes (library logs and progress bars) on the console; "
                            "without it that goes to runs/<name>/logs/<stage>.log and the console shows progress, "
                            "the summary and warnings")
        if stage.name == "generate":
            p.add_argument("--shard", type=_parse_shard, default=(0, 1), metavar="i/N",
                           help="process only shard i of N (chunks c with c %% N == i); the last shard to finish merges")
        if stage.name == "evaluate":
            p.add_argument("--fail-on-degradation", action="store_true", help=FAIL_ON_DEGRADATION_HELP)
            p.add_argument("--no-cache", action="store_true", help=NO_CACHE_HELP)

    p = sub.add_parser("validate", help="check a recipe and print it resolved, without running anything")
    _add_recipe_args(p)

    p = sub.add_parser("doctor", help="what this machine has, the dtype each model will run in, and a recipe's checks "
                       "that would otherwise fail late (prompt lengths, KD vocabularies, log-probabilities, prefix "
                       "caching, the Slurm profile against the cluster); exit 2 with any finding")
    p.add_argument("recipe", nargs="?", help="recipe YAML file, or a run directory (without it: the machine only)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override single recipe fields")
    p.add_argument("--profile", help="cluster profile to check against `sinfo` (default: the recipe's slurm.profile)")
    p.set_defaults(overrides_anywhere=True, run_dir=None)

    p = sub.add_parser("tiny-model", help="build a tiny random-init model and tokenizer (for tests and demos)")
    p.add_argument("out", help="output folder")
    p.add_argument("--family", choices=list(FAMILIES), default="smollm2",
                   help="whose special-token conventions the tokenizer and generation config carry (BOS, end of turn, "
                        "stops, chat template)")
    p.add_argument("--variant", choices=["instruct", "base"], default="instruct",
                   help="instruct: the family's instruct stops; base: its base model's one EOS")
    p.add_argument("--arch", choices=["qwen2", "llama"], default=None, help="architecture (default: the family's)")

    p = sub.add_parser("export", help="write the trained student for serving: its adapter as vLLM loads it, or "
                       "(--merge) the base with the adapter merged in (a full fine-tuning run: its model), each with "
                       "its model card; --push-to-hub uploads it")
    p.add_argument("target", metavar="RUN_OR_ADAPTER", help="a run directory or an adapter folder")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the base (merge_and_unload), saved in "
                   "the base's dtype with its tokenizer: a model folder transformers and vLLM load alone")
    p.add_argument("--out", help="output folder (default RUN/export/merged, RUN/export/adapter or RUN/export/model)")
    p.add_argument("--push-to-hub", metavar="REPO_ID", dest="push_to_hub",
                   help="then upload the folder to this Hugging Face Hub model repository (owner/name; created if "
                        "missing), its card as README.md")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.add_argument("--token", help="with --push-to-hub: a Hub token with write access (default: HF_TOKEN or the "
                   "saved `hf auth login`; a token on the command line shows in the process list)")

    p = sub.add_parser("compare", help="evaluate runs, adapter folders or model folders on the same held-out real items, "
                       "each against the first (or --baseline), with intervals")
    p.add_argument("targets", nargs="+", metavar="A", help="run directory, adapter folder, model folder, 'base' or 'teacher'")
    p.add_argument("--recipe", help="recipe whose evaluate sets and settings to use (default: the first run's)")
    p.add_argument("--run-dir", help="run holding the held-out split (default: the first run among the targets)")
    p.add_argument("--baseline", help="name of the model the others are measured against (default: the first)")
    p.add_argument("--out", default="compare", help="folder for report.md/.json/.png/.html and predictions (default: compare)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="key.path=value",
                   help="override a recipe field, e.g. --set evaluate.gate.tolerance.nll=0.2 (repeatable)")
    p.add_argument("--fail-on-degradation", action="store_true", help=FAIL_ON_DEGRADATION_HELP)
    p.add_argument("--no-cache", action="store_true", help=NO_CACHE_HELP)

    p = sub.add_parser("slurm", help="run a recipe as Slurm jobs (submit) and follow them (status)")
    slurm = p.add_subparsers(dest="slurm_command", required=True, metavar="SLURM_COMMAND")
    q = slurm.add_parser("submit", help="render one sbatch script per stage and submit them chained with afterok")
    _add_recipe_args(q)
    q.add_argument("--dry-run", action="store_true", help="print the scripts and sbatch commands; submit nothing")
    q.add_argument("--profile", help="cluster profile: a name of distill/slurm/profiles/ or a YAML file (default: the recipe's slurm.profile)")
    q = slurm.add_parser("status", help="each stage's job id and state, read from Slurm")
    q.add_argument("run_dir", metavar="RUN", help="the run directory")
    q = slurm.add_parser("serve-teacher", help="the body of the teacher server job (slurm.teacher_server): serve the "
                         "teacher until the run's generation tasks have ended")
    _add_recipe_args(q)
    q = slurm.add_parser("round", help="the body of a loop round's job: the round's stage (in its folder, with its "
                         "recipe), or its decision after evaluate; nothing once the loop has stopped before the round")
    _add_recipe_args(q)
    q.add_argument("--round", type=int, required=True, metavar="K", help="the round, from 1")
    q.add_argument("--stage", required=True, choices=[*ROUND_STAGES, DECIDE],
                   help="decide: the round's record, the stop rules and the next round's selection")
    q.add_argument("--shard", type=_parse_shard, default=(0, 1), metavar="i/N", help="a generation task's shard")
    q = slurm.add_parser("end-loop", help="the body of a loop's last job: the loop's student as the run's own, "
                         "evaluated once on the test split, its cards and the loop's report")
    _add_recipe_args(q)

    p = sub.add_parser("review", help="export filtered rows for people to check (export) and read their verdicts back (import)")
    review = p.add_subparsers(dest="review_command", required=True, metavar="REVIEW_COMMAND")
    q = review.add_parser("export", help="write a stratified sample (filter outcome x cell) to review/queue.csv")
    q.add_argument("target", metavar="RUN_OR_RECIPE", help="a run directory or its recipe file")
    q.add_argument("--size", type=int, default=100, help="rows to sample (default 100)")
    q.add_argument("--seed", type=int, default=0, help="seed of the sample")
    q.add_argument("--out", help="output CSV (default RUN/review/queue.csv)")
    q.add_argument("--run-dir", help="run directory, when RUN_OR_RECIPE is a recipe with another run_dir")
    q = review.add_parser("import", help="read reviewed verdicts (id, verdict = keep|reject) and measure filters against them")
    q.add_argument("target", metavar="RUN_OR_RECIPE", help="a run directory or its recipe file")
    q.add_argument("file", help="the reviewed CSV or JSONL file")
    q.add_argument("--run-dir", help="run directory, when RUN_OR_RECIPE is a recipe with another run_dir")
    return parser


def _review(args, argv=None) -> int:
    from distill.filters.review import export_queue, import_verdicts

    if args.review_command == "export":
        if args.size < 1:
            raise UserError(f"--size must be at least 1 (got {args.size})")
        export_queue(args.target, args.size, args.seed, args.out, args.run_dir)
    else:
        import_verdicts(args.target, args.file, args.run_dir)
    return 0


def _slurm(args, argv=None) -> int:
    from distill.run_dir import RunDir

    if args.slurm_command == "status":
        from distill.slurm.status import format_status, run_status

        print(format_status(run_status(RunDir(args.run_dir))))
        return 0
    from distill.slurm.submit import dry_run, submit

    recipe, run = _load(args)
    if args.slurm_command == "serve-teacher":
        from distill.slurm.teacher_server import serve

        serve(recipe, run)
        return 0
    if args.slurm_command in ("round", "end-loop"):
        return _loop_job(args, recipe, run)
    if args.dry_run:
        print(dry_run(recipe, run, args.profile))
    else:
        submit(recipe, run, args.profile)
    return 0


def _loop_job(args, recipe, run) -> int:
    """One job of a loop's chain: a round's stage runs as its stage command would, on the round's folder."""
    from distill.loop import chain

    if recipe.loop is None:
        raise UserError(f"{args.recipe}: the recipe has no loop section, so it has no rounds")
    if args.slurm_command == "end-loop":
        chain.finish(recipe, run)
        return 0
    if args.round < 1 or args.round > recipe.loop.rounds:
        raise UserError(f"--round {args.round}: the loop has rounds 1 to {recipe.loop.rounds}")
    if args.stage == DECIDE:
        chain.decide(recipe, run, args.round)
        return 0
    argv = chain.round_stage_command(recipe, run, args.round, args.stage, args.shard)
    return 0 if argv is None else _stage(_parse(build_parser(), argv), argv)


def _doctor(args, argv=None) -> int:
    from distill.doctor import checkup, machine_lines
    from distill.models.hardware import this_machine

    for line in machine_lines(this_machine()):
        print(line)
    if args.recipe is None:
        return 0
    print(f"recipe: {args.recipe}")
    try:
        recipe, _ = _load(args)
    except UserError as e:
        print(f"  PROBLEM  {e}\n1 finding")
        return 2
    found = checkup(recipe, args.profile)
    print("\n".join(found.lines))
    print(f"{len(found.findings)} finding(s)" if found.findings else "all well")
    return 2 if found.findings else 0


def _export(args, argv=None) -> int:
    from distill.export import run_export

    if (args.private or args.token) and not args.push_to_hub:
        raise UserError("--private and --token are settings of --push-to-hub REPO_ID, which is not given")
    export = run_export(args.target, args.out, args.merge, args.push_to_hub, args.private, args.token)
    what = "model" if export["method"] == "full" else ("merged model" if export["merged"] else "adapter")
    print(f"{what}: {export['folder']}")
    print(f"serve: {export['serve_command']}")
    if "pushed" in export:
        print(f"pushed: {export['pushed']['url']} (commit {export['pushed']['commit'][:12]})")
    return 0


def _compare(args, argv=None) -> int:
    from distill.evaluate.compare import run_compare

    report = run_compare(args.targets, args.out, args.recipe, args.run_dir, args.baseline, args.overrides)
    return DEGRADED_EXIT if args.fail_on_degradation and report["any_degraded"] else 0


def _load(args):
    from distill.recipe import load_recipe
    from distill.run_dir import RunDir

    target = Path(args.recipe)
    if target.is_dir() and (target / "recipe.yaml").is_file():  # a run directory: its resolved recipe
        args.recipe, args.run_dir = str(target / "recipe.yaml"), args.run_dir or str(target)
    recipe = load_recipe(args.recipe, args.overrides)
    return recipe, RunDir(Path(args.run_dir) if args.run_dir else recipe.resolved_run_dir())


def _quiet_stage_command(args: argparse.Namespace) -> bool:
    """Whether this stage command should rerun itself as a logged child (as `distill run` runs stages): not with
    --verbose, not when it already is that child, not under a launcher (accelerate) whose output is the user's."""
    from distill.pipeline import in_stage_process

    return not (args.verbose or in_stage_process() or "LOCAL_RANK" in os.environ)


def _say_degraded(evaluate_dir: Path, summary: dict) -> None:
    print(f"degraded: {summary['degraded']} finding(s), see {evaluate_dir / 'report.md'}", file=sys.stderr)


def _tiny_model(args, argv=None) -> int:
    from distill.models.tiny import build_tiny_model

    print(build_tiny_model(args.out, args.arch, family=args.family, variant=args.variant))
    return 0


def _validate(args, argv=None) -> int:
    import yaml

    from distill.data.eval_sets import require_heldout_references
    from distill.data.preflight import preflight
    from distill.models.dtype import dtype_lines, machine_line
    from distill.provenance.lineage import enforce_chaining_policy
    from distill.tracking import check_installed
    from distill.train.repair import every_guard_set_repaired

    recipe, _ = _load(args)
    check_installed(recipe)
    require_heldout_references(recipe)  # an unlabelled held-out split is caught here too, not after generation
    checked = preflight(recipe)
    print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), end="")
    for line in checked:
        print(f"checked {line}", file=sys.stderr)
    for warning in enforce_chaining_policy(recipe):  # the same check `run` makes before any work
        print(f"warning: {warning}", file=sys.stderr)
    if unmeasured := every_guard_set_repaired(recipe):
        print(f"warning: {unmeasured}", file=sys.stderr)
    print(machine_line(recipe), file=sys.stderr)
    for warning in dtype_lines(recipe)[1]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _run(args, argv=None) -> int:
    from distill import pipeline
    from distill.data.preflight import preflight
    from distill.tracking import check_installed

    recipe, run = _load(args)
    preflight(recipe)  # every input file's format and first rows, before any work
    check_installed(recipe)
    if recipe.loop is None:
        pipeline.run_pipeline(recipe, run, force=tuple(args.force), verbose=args.verbose)
        return 0
    from distill.loop.run import run_loop

    pipeline.prepare_run(recipe)  # rounds of the stages, then the test evaluation of the loop's student
    started = time.time()
    run_loop(recipe, run, tuple(args.force), args.verbose)
    pipeline.finish_run(run, started)
    return 0


def _stage(args, argv=None) -> int:
    """`distill generate|filter|train|evaluate|document`: quiet (a logged child process) unless -v, in a launch or
    already that child; then the stage itself, in this process."""
    from distill import pipeline

    recipe, run = _load(args)
    if _quiet_stage_command(args):
        i, n = getattr(args, "shard", (0, 1))
        code = pipeline.run_stage_command(run, args.command, sys.argv[1:] if argv is None else [str(a) for a in argv],
                                          log_name=args.command if n == 1 else f"{args.command}-shard{i}of{n}",
                                          exit_codes=(0, DEGRADED_EXIT, PREEMPTED_EXIT))
        if code == DEGRADED_EXIT:
            _say_degraded(run.stage("evaluate"), json.loads(run.marker("evaluate").read_text())["summary"])
        return code
    if args.command == "generate":
        from distill.data.preflight import preflight

        preflight(recipe)  # every input file's format and first rows, before any work
    if args.command in ("train", "evaluate"):
        from distill.tracking import check_installed

        check_installed(recipe)
    if Path(args.recipe).resolve() != run.recipe.resolve():
        pipeline.save_resolved_recipe(recipe, run)
    summary = pipeline.execute_stage(recipe, run, args.command, force=args.force, shard=getattr(args, "shard", (0, 1)))
    if getattr(args, "fail_on_degradation", False) and summary and summary.get("degraded"):
        if not pipeline.in_stage_process():  # else the command the user typed says it, on its stderr
            _say_degraded(run.stage("evaluate"), summary)
        return DEGRADED_EXIT
    return 0


def _select(args, argv=None) -> int:
    from distill.errors import UserError
    from distill.loop.select import run_select
    from distill.progress import print_summary

    recipe, run = _load(args)
    if recipe.loop is None:
        raise UserError(f"{args.recipe}: the recipe has no loop section, so there are no rounds to select for")
    if args.round < 1 or args.round > recipe.loop.rounds:
        raise UserError(f"--round {args.round}: the loop has rounds 1 to {recipe.loop.rounds}")
    print_summary("select", run_select(recipe, run, args.round, force=args.force))
    return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Overrides may come after options too (`distill filter R --run-dir D key=value`): argparse stops filling a
    positional list at the first option, so the rest arrive as extras."""
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "overrides_anywhere", False) and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


COMMANDS = {"run": _run, "validate": _validate, "doctor": _doctor, "tiny-model": _tiny_model, "export": _export,
            "compare": _compare, "slurm": _slurm, "review": _review, "select": _select}  # the stage commands: _stage


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from distill.progress import attach_console

    attach_console()  # a stage started by `distill run`: its console lines go to the parent's pipe
    args = _parse(build_parser(), argv)
    if getattr(args, "no_cache", False):
        from distill.evaluate.cache import NO_CACHE_ENV

        os.environ[NO_CACHE_ENV] = "1"  # `run` starts each stage in a child process, which inherits it
    try:
        return COMMANDS.get(args.command, _stage)(args, argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Preempted as e:
        from distill.progress import console

        if os.environ.get("RANK", "0") == "0":  # every process of a launch stops; one says so
            console(f"[{args.command}] {e}")
        stopped_at_request()
        return PREEMPTED_EXIT
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _exit_without_teardown(code: int) -> None:
    """End a process of a multi-process launch (accelerate, torchrun) without running destructors: torch's gloo
    process group can hang or abort in them at exit once another process has gone (seen after a resumed DDP
    training). Everything is written and synced before this point; only the console buffers are left."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# How long a finished stage waits for threads still running after its work (their hooks run first, below).
THREAD_GRACE_S = 30.0


def _wake_idle_threads() -> None:
    """Run the hooks Python's own shutdown runs before it joins threads (threading._register_atexit): with them a
    concurrent.futures executor a library never shut down tells its idle workers to end. Joined first, those workers
    wait for work forever."""
    import threading

    hooks = getattr(threading, "_threading_atexits", None)
    if hooks is None:  # another Python: its shutdown does this itself, and so does the join below within its grace
        return
    threading._SHUTTING_DOWN = True  # as Python's shutdown sets it: no executor starts a worker from here on
    for hook in reversed(hooks):
        hook()
    hooks.clear()


def _exit_without_finalizing(code: int) -> None:
    """End the process as Python would, less the interpreter's finalization: idle executor workers are told to end,
    other threads are waited for (THREAD_GRACE_S at most: a stage whose work is written does not wait on a thread that
    never ends, and its log names it) and the exit handlers the libraries registered run (log files, temporary
    folders), then the process leaves. Finalizing the modules of torch, transformers and vLLM takes about 2 s per
    stage process and frees nothing the OS would not."""
    import atexit
    import threading

    _wake_idle_threads()
    deadline = time.monotonic() + THREAD_GRACE_S
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    for thread in others:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in others if t.is_alive()]
    if left:
        print(f"distill: left {len(left)} thread(s) still running after {THREAD_GRACE_S:.0f} s at exit: "
              f"{', '.join(left)}", file=sys.stderr)
    atexit._run_exitfuncs()
    _exit_without_teardown(code)


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _exit_without_teardown(code)
    _exit_without_finalizing(code)
