"""White-box distillation against SFT: held-out exact match of students trained with objective sft, kd and sft+kd on
the same rows and steps, at 25 / 50 / 100% of the rows, each with a paired-bootstrap interval against SFT at the same
rows; the capture's cost (generation time with generate.logprobs over without) and its size on disk per token.

Two tasks with different answer shapes, both from recipes/quickstart-kd (SmolLM2-135M teacher and student):
  plural      one English word ("wolves"), the quickstart's held-out words
  arithmetic  a number ("109"), two-digit additions, few-shot teacher, zero-shot student

    python benchmarks/kd.py                       # both tasks (about 25 minutes on 2 cores)
    python benchmarks/kd.py --tasks plural --fractions 1.0

Per task: one generate + filter run captures the teacher's top 20; each variant copies it and runs only `distill
train` (train.objective, train.max_rows); one `distill compare` scores every adapter on one engine. Capture overhead is
the generate stage's own time (engine start excluded), once without and once with logprobs, on the same prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

QUICKSTART_KD = ROOT / "recipes" / "quickstart-kd" / "recipe.yaml"
DATA = ROOT / "recipes" / "quickstart" / "data"
OBJECTIVES = ("sft", "kd", "sft+kd")


def task_recipe(task: str) -> dict:
    """recipes/quickstart-kd as a dict with absolute paths, evaluated on its held-out set only (no guard sets)."""
    r = yaml.safe_load(QUICKSTART_KD.read_text())
    r["data"]["path"] = str(DATA / "plural_json.json")
    r["evaluate"]["sets"] = [{"name": task, "data": "heldout"}]
    r["evaluate"]["models"] = ["base", "student", "teacher"]
    r["evaluate"]["gate"] = {"models": []}
    if task == "arithmetic":
        r["name"] = "kd-bench-arithmetic"
        r["data"] = {"path": str(DATA / "arithmetic_2_digit_addition.json"), "input_field": "input",
                     "target_field": "target", "heldout": {"size": 100, "seed": 0}}
        r["generate"]["template"] = ("{% for ex in examples %}Q: {{ ex.input }}\nA: {{ ex.target }}\n\n{% endfor %}"
                                     "Q: {{ input }}\nA:")
        r["filter"]["steps"] = [{"type": "regex", "must_match": r"^\s*\d+\s*$"}, {"type": "exact_dedup", "fields": ["input"]}]
        r["train"]["prompt_template"] = "Q: {{ input }}\nA:"
    else:
        r["name"] = "kd-bench-plural"
    return r


def cli(*args, log: Path) -> float:
    t0 = time.time()
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): distill {' '.join(map(str, args))}; see {log}")
    return time.time() - t0


def marker(run: Path, stage: str) -> dict:
    from distill.run_dir import RunDir

    return RunDir(run).read_marker(stage)["summary"]


def bench_task(task: str, work: Path, fractions: list[float], log: Path) -> dict:
    from distill.evaluate.stats import paired_bootstrap

    folder = work / task
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(task_recipe(task), sort_keys=False))

    # capture overhead: the same prompts without and with logprobs (the generate stage's own time)
    plain, base = folder / "no-logprobs", folder / "base"
    cli("generate", recipe, "generate.logprobs=null", "train.objective=sft", "--run-dir", plain, log=log)
    cli("generate", recipe, "--run-dir", base, log=log)
    cli("filter", recipe, "--run-dir", base, log=log)
    without, with_ = marker(plain, "generate"), marker(base, "generate")
    captured = base / "generate" / "teacher_logprobs.parquet"
    import pyarrow.parquet as pq

    tokens = sum(len(t) for t in pq.read_table(captured, columns=["token_ids"]).column("token_ids").to_pylist())
    kept = sum(pq.read_table(base / "filter" / "rows.parquet", columns=["kept"]).column("kept").to_pylist())

    variants = {}
    for fraction in fractions:
        rows = max(1, round(kept * fraction))
        for objective in OBJECTIVES:
            name = f"{objective}@{int(fraction * 100)}"
            run = folder / name.replace("+", "_").replace("@", "-")
            if not (run / "train" / "adapter" / "adapter_config.json").is_file():
                shutil.rmtree(run, ignore_errors=True)
                shutil.copytree(base, run)
                cli("train", recipe, f"train.objective={objective}", f"train.max_rows={rows}", "--run-dir", run, log=log)
            variants[name] = run
    out = folder / "compare"
    cli("compare", "base", *variants.values(), "teacher", "--recipe", recipe, "--run-dir", base, "--out", out, log=log)

    import pandas as pd

    pred = pd.read_parquet(out / "predictions.parquet")
    score = {m: g.set_index("item_id")["score"] for m, g in pred.groupby("model")}
    names = {run.name: name for name, run in variants.items()}
    table = []
    for fraction in fractions:
        sft = score[names_of(names, f"sft@{int(fraction * 100)}")]
        for objective in OBJECTIVES:
            name = f"{objective}@{int(fraction * 100)}"
            s = score[names_of(names, name)]
            summary = marker(variants[name], "train")
            row = {"objective": objective, "fraction": fraction, "rows": summary["rows"], "steps": summary["steps"],
                   "exact_match": float(s.mean()), "n": len(s)}
            if objective != "sft":
                ids = sft.index.intersection(s.index)
                c = paired_bootstrap(sft[ids].tolist(), s[ids].tolist(), n_boot=2000, seed=0)
                row.update(vs_sft=c["delta"], low=c["low"], high=c["high"])
            table.append(row)
    return {"task": task, "base": float(score["base"].mean()), "teacher": float(score["teacher"].mean()), "variants": table,
            "capture": {"generating_s_without": without["generating_seconds"], "generating_s_with": with_["generating_seconds"],
                        "tokens": tokens, "bytes": captured.stat().st_size, "bytes_per_token": captured.stat().st_size / tokens},
            "fidelity": json.loads((out / "report.json").read_text()).get("fidelity")}


def names_of(names: dict, variant: str) -> str:
    """The compare report's model name of a variant (its run folder's name)."""
    return next(folder for folder, name in names.items() if name == variant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="plural,arithmetic")
    parser.add_argument("--fractions", default="0.25,0.5,1.0", help="shares of the kept rows to train on")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-kd"), help="folder for the runs (kept for inspection)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench.log"
    fractions = [float(f) for f in args.fractions.split(",")]
    results = []
    for task in args.tasks.split(","):
        t0 = time.time()
        results.append(bench_task(task, work, fractions, log))
        print(f"[{task}] {time.time() - t0:.0f}s", flush=True)

    for r in results:
        cap = r["capture"]
        print(f"\n## {r['task']}: exact match on {r['variants'][0]['n']} held-out items: base model {r['base']:.3f}, "
              f"teacher {r['teacher']:.3f}\n")
        print("| objective | rows | steps | exact match | vs sft at the same rows (95% paired bootstrap) |")
        print("|---|---:|---:|---:|---|")
        for v in r["variants"]:
            diff = ("" if v["objective"] == "sft" else
                    f"{v['vs_sft']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]")
            print(f"| {v['objective']} | {v['rows']} | {v['steps']} | {v['exact_match']:.3f} | {diff} |")
        ratio = cap["generating_s_with"] / cap["generating_s_without"] if cap["generating_s_without"] else float("nan")
        print(f"\ncapture: generation {cap['generating_s_without']:.1f} s without logprobs, {cap['generating_s_with']:.1f} s "
              f"with logprobs: 20 ({ratio:.2f}x); {cap['tokens']} tokens in {cap['bytes'] / 1024:.0f} KiB = "
              f"{cap['bytes_per_token']:.0f} bytes/token (zstd Parquet)")
        if r["fidelity"]:
            for set_name, entry in r["fidelity"]["sets"].items():
                cells = ", ".join(f"{m} {v['top1_agreement']:.3f} / {v['kl_per_token']:.2f}" for m, v in entry["models"].items())
                print(f"fidelity to the teacher on {set_name} (top-1 agreement / KL per token): {cells}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
