"""The `distill` command: parse arguments, call one function per command, map user errors to exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distill.errors import StageError, UserError

STAGE_HELP = {
    "generate": "the teacher writes completions for the seed inputs (vLLM)",
    "filter": "flag generated rows with the recipe's filters",
    "train": "LoRA fine-tuning of the student on the kept rows",
    "evaluate": "score base student, trained student and teacher on held-out real data",
}


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/N, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard {text}: need 0 <= i < N")
    return i, n


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="override single recipe fields")
    p.add_argument("--run-dir", help="run directory (default: the recipe's run_dir or runs/<name>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description="Teacher-to-student distillation, accountable end to end.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run every stage of a recipe, skipping stages that are up to date")
    _add_recipe_args(p)
    p.add_argument("--force", action="append", default=[], choices=["generate", "filter", "train", "evaluate"],
                   help="redo this stage even if it is up to date (repeatable)")

    for stage, text in STAGE_HELP.items():
        p = sub.add_parser(stage, help=text)
        _add_recipe_args(p)
        p.add_argument("--force", action="store_true", help="redo the stage even if it is up to date")
        if stage == "generate":
            p.add_argument("--shard", type=_parse_shard, default=(0, 1), metavar="i/N",
                           help="process only shard i of N (chunks c with c %% N == i); the last shard to finish merges")

    p = sub.add_parser("validate", help="check a recipe and print it resolved, without running anything")
    _add_recipe_args(p)

    p = sub.add_parser("tiny-model", help="build a tiny random-init model and tokenizer (for tests and demos)")
    p.add_argument("out", help="output folder")
    p.add_argument("--arch", choices=["qwen2", "llama"], default="qwen2")
    return parser


def _load(args):
    from distill.recipe import load_recipe
    from distill.run_dir import RunDir

    recipe = load_recipe(args.recipe, args.overrides)
    return recipe, RunDir(Path(args.run_dir) if args.run_dir else recipe.resolved_run_dir())


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "tiny-model":
            from distill.models.tiny import build_tiny_model

            print(build_tiny_model(args.out, args.arch))
            return 0
        recipe, run = _load(args)
        if args.command == "validate":
            import yaml

            print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), end="")
            return 0
        from distill import pipeline

        if args.command == "run":
            pipeline.run_pipeline(recipe, run, force=tuple(args.force))
        else:
            if Path(args.recipe).resolve() != run.recipe.resolve():
                pipeline.save_resolved_recipe(recipe, run)
            pipeline.execute_stage(recipe, run, args.command, force=args.force, shard=getattr(args, "shard", (0, 1)))
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except StageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
