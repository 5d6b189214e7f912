"""On-policy distillation against the off-policy objectives: held-out exact match, guard sets, teacher and student
tokens and wall time of students trained with sft, kd, sft+kd, on_policy and sft then on_policy, at equal teacher
budgets where the objectives allow.

The teacher's budget is counted in prompts it reads and answer tokens it handles. The off-policy objectives spend one
prompt per seed (it writes each seed's answer once, generate.logprobs capturing its top 20 on the way). on_policy
spends one prompt per sampled answer (it scores the student's tokens): at `prompts_per_step` = 16, ceil(seeds / 16)
steps read as many teacher prompts as generation did, and that is the on_policy variant's length. sft -> on_policy
spends both, so it is set beside on_policy x2, which spends the same number of teacher prompts on-policy only.

Three tasks (SmolLM2-135M teacher and student):
  plural      the quickstart's task (kd.py); guard sets arithmetic and wikidata
  arithmetic  two-digit additions, few-shot teacher, zero-shot student (kd.py); guard set wikidata
  intent      recipes/intent: the teacher labels utterances with one of 7 intents (14-shot, under the label
              constraint, generate.logprobs 20 for KD); guard sets arithmetic and wikidata

    python benchmarks/on_policy.py                     # all three (about an hour on 2 cores)
    python benchmarks/on_policy.py --tasks plural

Per task: one generate + filter run; each variant copies it and runs only `distill train`; one `distill compare`
scores every student, the base model and the teacher on one set of items, each against the base model with 95%
paired-bootstrap intervals, and its gate says what degraded. A second table sets each variant beside the SFT student
with as many optimizer steps, where there is one (`sft x2` trains twice the recipe's epochs): the task score and each
guard set's reference NLL (the forgetting), paired. The guard sets here are never repaired, so they measure general ability. On-policy settings are recipes/quickstart-repair's:
reverse KL on the sampled tokens plus forward KL over the teacher's top 20, learning rate 5e-4, one sample per prompt.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd import DATA, ROOT, cli, marker, names_of, task_recipe  # noqa: E402  (the same two tasks, runs and CLI calls)

PROMPTS_PER_STEP = 16
ON_POLICY = ["train.on_policy.forward_kl_weight=1.0", "train.on_policy.top_k=20",
             f"train.on_policy.prompts_per_step={PROMPTS_PER_STEP}", "train.on_policy.max_tokens=8"]
GUARDS = {
    "arithmetic": {"name": "arithmetic", "path": str(DATA / "arithmetic_2_digit_addition.json"), "guard": True,
                   "limit": 100, "prompt_template": "Q: {{ input }}\nA:", "metrics": ["exact_match", "nll"]},
    "wikidata": {"name": "wikidata", "path": str(DATA / "qa_wikidata.json"), "guard": True, "limit": 100,
                 "prompt_template": "{{ input }}", "metrics": ["multi_ref_match", "nll"]},
}


INTENT = ROOT / "recipes" / "intent" / "recipe.yaml"


def intent_recipe() -> dict:
    """recipes/intent with absolute paths, the teacher's top 20 captured (for kd), evaluated on its held-out set."""
    r = yaml.safe_load(INTENT.read_text())
    r["data"]["path"] = str((INTENT.parent / r["data"]["path"]).resolve())
    r["generate"]["logprobs"] = 20
    r["evaluate"]["sets"] = [{"name": "intent", "data": "heldout"}]
    r["evaluate"]["models"] = ["base", "student", "teacher"]
    return r


def bench_recipe(task: str) -> dict:
    r = intent_recipe() if task == "intent" else task_recipe(task)
    r["name"] = f"on-policy-bench-{task}"
    r["evaluate"]["sets"] += [g for name, g in GUARDS.items() if name != task]
    r["evaluate"]["max_tokens"], r["evaluate"]["stop"] = 8, ["\n"]
    return r


def variants(seeds: int, epochs: float) -> dict[str, list[str]]:
    """Each variant's overrides of `distill train` (`epochs`: the task recipe's)."""
    steps = math.ceil(seeds / PROMPTS_PER_STEP)
    on_policy = ["train.objective=on_policy", *ON_POLICY]
    return {
        "sft": ["train.objective=sft"],
        "kd": ["train.objective=kd"],
        "sft+kd": ["train.objective=sft+kd"],
        "sft x2": ["train.objective=sft", f"train.epochs={2 * epochs}"],  # twice SFT's optimizer steps
        "on_policy": [*on_policy, f"train.on_policy.steps={steps}"],
        "on_policy x2": [*on_policy, f"train.on_policy.steps={2 * steps}"],
        "sft -> on_policy": [*on_policy, f"train.on_policy.steps={steps}", "train.on_policy.start_from=sft"],
    }


def cost(run: Path, name: str, generated: dict) -> dict:
    """Teacher prompts and answer tokens, the prompt tokens it read while scoring, student tokens sampled, optimizer
    steps and train seconds (an SFT phase's included) of one variant. On-policy needs the generate pass too (its seeds
    and their kept rows): its prompts count."""
    s = marker(run, "train")
    off_policy = {"teacher_prompts": generated["prompts"], "teacher_tokens": generated["new_tokens"], "student_tokens": 0,
                  "scoring_prompt_tokens": 0}
    if s.get("objective") != "on_policy":
        return {**off_policy, "train_s": s["seconds"], "steps": s["steps"]}
    c = s["cost"]
    phase = s.get("sft_phase")
    return {"teacher_prompts": generated["prompts"] + c["teacher_prompts_scored"],
            "teacher_tokens": c["teacher_tokens_scored"] + generated["new_tokens"],
            "scoring_prompt_tokens": c["teacher_prompt_tokens_read"],
            "student_tokens": c["student_tokens_sampled"], "train_s": s["seconds"],
            "steps": s["steps"] + (phase["steps"] if phase else 0), "reverse_kl": (s["first_reverse_kl"], s["last_reverse_kl"])}


def equal_steps_sft(table: list[dict]) -> dict[str, str]:
    """For each variant, the SFT variant with as many optimizer steps (if any), so objectives compare at equal steps
    as well as at equal teacher budget."""
    sft = {v["steps"]: v["variant"] for v in table if v["variant"] in ("sft", "sft x2")}
    return {v["variant"]: sft[v["steps"]] for v in table if v["steps"] in sft and sft[v["steps"]] != v["variant"]}


def bench_task(task: str, work: Path, log: Path) -> dict:
    folder = work / task
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(bench_recipe(task), sort_keys=False))
    base = folder / "base"
    if not (base / "filter" / "rows.parquet").is_file():
        shutil.rmtree(base, ignore_errors=True)
        cli("generate", recipe, "--run-dir", base, log=log)
        cli("filter", recipe, "--run-dir", base, log=log)
    g = marker(base, "generate")
    generated = {"prompts": g["prompts"], "new_tokens": g["new_tokens"],
                 "seconds": g["generating_seconds"]}

    runs = {}
    epochs = yaml.safe_load(recipe.read_text())["train"].get("epochs", 1)
    for name, overrides in variants(generated["prompts"], epochs).items():
        run = folder / name.replace(" -> ", "-then-").replace(" ", "-").replace("+", "_")
        if not (run / "train" / "adapter" / "adapter_config.json").is_file():
            shutil.rmtree(run, ignore_errors=True)
            shutil.copytree(base, run)
            cli("train", recipe, *overrides, "--run-dir", run, log=log)
        runs[name] = run
    out = folder / "compare"
    cli("compare", "base", *runs.values(), "teacher", "--recipe", recipe, "--run-dir", base, "--out", out, log=log)
    report = json.loads((out / "report.json").read_text())
    folders = {run.name: name for name, run in runs.items()}
    import pandas as pd

    from distill.evaluate.stats import paired_bootstrap

    predictions = pd.read_parquet(out / "predictions.parquet")

    def per_item(set_name: str, metric: str | None = None) -> dict:
        rows = predictions[predictions["set"] == set_name]
        column = "score" if metric is None else f"score_{metric}"
        return {m: g.set_index("item_id")[column] for m, g in rows.groupby("model")}

    def paired(a, b) -> dict:
        ids = a.index.intersection(b.index)
        c = paired_bootstrap(a[ids].tolist(), b[ids].tolist(), n_boot=2000, seed=0)
        return {k: c[k] for k in ("delta", "low", "high")}

    score = per_item(task)
    table = []
    for name, run in runs.items():
        model = names_of(folders, name)
        row = {"variant": name, **cost(run, name, generated), "sets": {}}
        if name != "sft":
            row["vs_sft"] = paired(score[names_of(folders, "sft")], score[model])
        for set_name, entry in report["sets"].items():
            metric = entry["metrics"][0]
            vs = entry["vs_base"][model]["metrics"]
            row["sets"][set_name] = {
                "guard": entry["guard"], "metric": metric, "score": entry["models"][model]["score"],
                "vs_base": {m: {k: vs[m]["overall"][k] for k in ("delta", "low", "high")} for m in entry["metrics"]},
                "degraded": any(d["model"] == model and d["set"] == set_name for d in report["degraded"])}
        table.append(row)
    # at equal optimizer steps: the task score and each guard set's reference NLL against SFT's (forgetting)
    for row in table:
        match = equal_steps_sft(table).get(row["variant"])
        if match is None:
            continue
        model, sft = names_of(folders, row["variant"]), names_of(folders, match)
        row["equal_steps"] = {"sft": match, "task": paired(score[sft], score[model])}
        for set_name, entry in row["sets"].items():
            if entry["guard"] and "nll" in report["sets"][set_name]["metrics"]:
                nll = per_item(set_name, "nll")
                row["equal_steps"][set_name] = paired(nll[sft], nll[model])
    return {"task": task, "generated": generated, "variants": table,
            "base": {s: e["models"]["base"]["score"] for s, e in report["sets"].items()},
            "teacher": {s: e["models"]["teacher"]["score"] for s, e in report["sets"].items()}}


def _interval(d: dict) -> str:
    return f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def print_task(r: dict) -> None:
    task, g = r["task"], r["generated"]
    print(f"\n## {r['task']}: base model {r['base'][task]:.3f}, teacher {r['teacher'][task]:.3f} exact match; the "
          f"teacher wrote {g['new_tokens']} answer tokens for {g['prompts']} seeds in {g['seconds']:.0f} s\n")
    guards = [s for s, e in r["variants"][0]["sets"].items() if e["guard"]]
    print("At equal teacher budget, against the base model and SFT:\n")
    print("| objective | teacher prompts | teacher answer tokens | scoring prompt tokens | student tokens sampled | "
          f"steps | train s | {task} exact match | vs base (95%) | vs sft (95% paired) | "
          + " | ".join(f"{s} vs base ({r['variants'][0]['sets'][s]['metric']}; nll)" for s in guards) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|" + "---|" * len(guards))
    for v in r["variants"]:
        own = v["sets"][task]
        vs = v.get("vs_sft")
        cells = [_interval(own["vs_base"][own["metric"]]), _interval(vs) if vs else ""]
        for s in guards:
            e = v["sets"][s]
            first, nll = e["vs_base"][e["metric"]], e["vs_base"].get("nll")
            cells.append(f"{first['delta']:+.3f}; {_interval(nll)}" + (" **degraded**" if e["degraded"] else ""))
        print(f"| {v['variant']} | {v['teacher_prompts']} | {v['teacher_tokens']} | {v['scoring_prompt_tokens']} | "
              f"{v['student_tokens']} | {v['steps']} | {v['train_s']:.0f} | {own['score']:.3f} | " + " | ".join(cells) + " |")
    same = [v for v in r["variants"] if "equal_steps" in v]
    if same:
        print("\nAt equal optimizer steps, against the SFT student with as many steps (paired, 95%); a guard set's "
              "reference NLL above SFT's is more forgetting:\n")
        print(f"| objective | steps | SFT variant | {task} exact match vs it | "
              + " | ".join(f"{s} NLL vs it" for s in guards) + " |")
        print("|---|---:|---|---|" + "---|" * len(guards))
        for v in same:
            e = v["equal_steps"]
            print(f"| {v['variant']} | {v['steps']} | {e['sft']} | {_interval(e['task'])} | "
                  + " | ".join(_interval(e[s]) if s in e else "" for s in guards) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="plural,arithmetic,intent")
    parser.add_argument("--work", default=str(ROOT / "runs" / "bench-on-policy"), help="folder for the runs (kept)")
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench.log"
    results = []
    for task in args.tasks.split(","):
        t0 = time.time()
        results.append(bench_task(task, work, log))
        print(f"[{task}] {time.time() - t0:.0f}s", flush=True)
    for r in results:
        print_task(r)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
