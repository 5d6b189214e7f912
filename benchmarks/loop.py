"""The closed loop against random one-shot: held-out exact match of students whose teacher answered only the prompts a
strategy chose, round by round, against a student whose teacher answered as many prompts drawn at random at once,
and against the full-pool student (the teacher answered every pool prompt).

Per task, every student comes from `distill run` of the same recipe with a loop section (the same pool, the same dev
split, the same objective and settings):
  full      rounds 1, per_round = the whole pool: the teacher answers everything
  oneshot@B rounds 1, per_round = B: B prompts drawn at random, answered at once (the control)
  S         a loop with strategy S (random, errors, uncertainty, slices, or synthesize: errors with the teacher
            writing new inputs from the dev errors, LLM2LLM): `per_round` prompts per round; the adapter after round
            r is the student at budget r x per_round (round 1 draws at random for every strategy)
  S+explore the loop S with loop.explore = --explore: that share of each round after the first drawn at random
  S+retrain the loop S with loop.train: retrain: each round a fresh adapter on every round's rows so far, so that its
            student at budget B is trained exactly as oneshot@B is, on the rows S chose (the choice alone)
One `distill compare` scores every adapter, the base and the teacher on the held-out test split, with paired 95%
bootstrap intervals against random one-shot at the same budget. Each round continues the adapter on its new rows
only (unless +retrain), so a loop at budget B has trained on B rows for the recipe's epochs, as oneshot@B has: equal
optimizer steps up to rounding, reported beside each row. The loops stop only at their budget here (no plateau, no guard sets), so that
every strategy reaches every budget; dev never reaches the test split's items. --seeds N trains N one-shot students
per budget (recipe seeds 0..N-1): the paired intervals cover the test items, not which random rows a student drew
nor its training's order and initialisation, and these students show how far that alone moves a score. Beside the
scores, how often the teacher's answer is right against the seed's own references (the test set's metric) on the
prompts each loop chose: whether a strategy steers the teacher toward prompts it answers worse (the benchmark's pools
are labelled; a user's need not be).

Tasks (SmolLM2-135M teacher and student, float32 on a CPU without bf16):
  plural   the quickstart's recipe with its whole pool (1,502 seeds less dev: over a thousand prompts)
  intent   recipes/intent (label mode, 7 intents), its whole pool; slices are the intents
  facts    factual completion from BIG-bench qa_wikidata (benchmarks/data: 1,700 items, none of the quickstart's
           wikidata guard set; 1,400 prompts less dev), five examples in the teacher's prompt, any-reference match;
           slices are the relation

    python benchmarks/loop.py --tasks plural                  # about an hour on 2 cores (AVX2)
    python benchmarks/loop.py --tasks plural,intent --per-round 0.1 --budgets 0.2,0.3,0.5
    python benchmarks/loop.py --tasks intent --strategies random,errors+explore,uncertainty+explore
    python benchmarks/loop.py --tasks intent --strategies random+retrain,errors+retrain,uncertainty+retrain --seeds 2
    python benchmarks/loop.py --tasks facts --seeds 2 \
        --strategies random+retrain,errors+retrain,uncertainty+retrain,random,errors,uncertainty   # 93 min (AVX2)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kd import ROOT, cli  # noqa: E402  (the CLI calls and data of the other benchmarks)

STRATEGIES = ("random", "errors", "uncertainty", "slices", "synthesize")
# each compared loop's settings: a strategy, or errors with the teacher writing the round's inputs (LLM2LLM)
LOOP_SETTINGS = {**{s: [f"loop.strategy={s}"] for s in STRATEGIES[:4]},
                 "synthesize": ["loop.strategy=errors", "loop.errors.synthesize=true"]}
# a compared loop's name is a strategy and any of these after "+" ("errors+explore", "random+retrain")
VARIANTS = {"explore": "draws --explore of each round after the first at random (loop.explore)",
            "retrain": "trains each round a fresh adapter on every round's rows (loop.train: retrain)"}


def loop_settings(name: str, explore: float) -> list[str]:
    """The recipe settings of a compared loop: its strategy's, with each variant its name adds."""
    strategy, *variants = name.split("+")
    unknown = [v for v in variants if v not in VARIANTS]
    if strategy not in LOOP_SETTINGS or unknown:
        sys.exit(f"--strategies: {name}: expected one of {', '.join(LOOP_SETTINGS)}, then any of "
                 f"{', '.join('+' + v for v in VARIANTS)}")
    return [*LOOP_SETTINGS[strategy], *([f"loop.explore={explore}"] if "explore" in variants else []),
            *(["loop.train=retrain"] if "retrain" in variants else [])]
INTENT = ROOT / "recipes" / "intent" / "recipe.yaml"
QUICKSTART = ROOT / "recipes" / "quickstart" / "recipe.yaml"
FACTS = ROOT / "benchmarks" / "data" / "qa_wikidata_facts.json"  # 1,700 BIG-bench qa_wikidata items (see ATTRIBUTION)
TASKS = ("plural", "intent", "facts")
INTENT_WRITE = "{{ input }}\nIntent: {{ reference }}\n\nAnother utterance whose intent is {{ reference }}, worded differently:\n"


def task_recipe(task: str, dev: int, max_seeds: int | None = None) -> dict:
    """The task's recipe with absolute paths, its whole seed pool, evaluated on its test split only."""
    source = INTENT if task == "intent" else QUICKSTART
    r = yaml.safe_load(source.read_text())
    r["data"]["path"] = str((source.parent / r["data"]["path"]).resolve())
    if task == "facts":
        facts_task(r)
    r["data"].pop("max_seeds", None)
    if max_seeds:  # a smaller pool, for a quick look
        r["data"]["max_seeds"] = max_seeds
    if task == "intent":
        r["data"]["slice_field"] = "target"  # the intent: slices are the seven classes
    test = next(s for s in r["evaluate"]["sets"] if s.get("data") == "heldout")
    r["evaluate"]["sets"] = [test]
    r["evaluate"]["gate"] = {"models": []}
    r["name"] = f"loop-bench-{task}"
    r["loop"] = {"rounds": 1, "strategy": "random", "budget": {"per_round": 1},
                 "dev": {"size": dev, "min_per_slice": 5, "seed": 0}, "plateau": None,
                 "stop_on_guard_degraded": False,
                 "uncertainty": {"candidates": 400},  # 4 samples of 400 drawn prompts per round, not the whole pool
                 "errors": {"stop": ["\n"]}}  # synthesize: every task's inputs are one line
    if task == "intent":  # synthesize: the teacher (asked without chat, as the recipe asks it) writes another
        # utterance of the intent the student missed, opening as every real input does
        # (one of over 40 tokens is longer than the real ones and would not fit train.max_length)
        r["loop"]["errors"].update(template=INTENT_WRITE, start="Utterance:", temperature=0.7, max_tokens=40)
    return r


def facts_task(r: dict) -> None:
    """Factual completion ("The religion of X is"): the quickstart's models and training, BIG-bench qa_wikidata's
    prompts. The teacher sees five other facts completed before its own; the student completes the bare prompt; an
    answer is right when any acceptable reference appears in it (multi_ref_match). Slices are the relation
    (country, language, religion, instrument, other). The teacher's answers can teach the answer's form (a word,
    where the bare prompt gets a sentence) more than facts: a fact the student does not know, no answer about
    another subject teaches it."""
    r["data"].update(path=str(FACTS), input_field="input", target_field="target", slice_field="relation",
                     heldout={"size": 200, "min_per_slice": 15, "seed": 0})
    r["generate"]["template"] = ("{% for ex in examples %}{{ ex.input }} {{ ex.target }}\n{% endfor %}"
                                 "{{ input }}")
    r["generate"]["few_shot"] = {"k": 5, "per_row": True}
    r["filter"]["steps"] = [{"type": "length", "min_chars": 1, "max_chars": 40},
                            {"type": "exact_dedup", "fields": ["input"]}]
    r["train"]["prompt_template"] = "{{ input }}"
    r["evaluate"]["sets"] = [{"name": "facts", "data": "heldout", "metrics": ["multi_ref_match"]}]


def pool_size(recipe: Path) -> int:
    from distill.loop.select import pool_of
    from distill.recipe import load_recipe

    return len(pool_of(load_recipe(recipe))[1])


def compared_names(adapters: list[str], recipe: Path) -> list[str]:
    """The names `distill compare` gives these adapters (folder names, made unique in the order given)."""
    from distill.evaluate.candidates import resolve_candidates
    from distill.recipe import load_recipe

    return [c.name for c in resolve_candidates(["base", *adapters, "teacher"], load_recipe(recipe))][1:-1]


def run_loop(recipe: Path, folder: Path, name: str, settings: list[str], per_round: int, rounds: int,
             log: Path, metric: str) -> dict:
    """`distill run` of the recipe as a loop; returns loop/loop.json and the rounds' adapters."""
    run = folder / name
    cli("run", recipe, *settings, f"loop.budget.per_round={per_round}", f"loop.rounds={rounds}",
        f"name={name}", "--run-dir", run, log=log)
    record = json.loads((run / "loop" / "loop.json").read_text())
    record["adapters"] = {r["teacher_prompts"]: str(run / "loop" / f"round-{r['round']:02d}" / "train" / "adapter")
                          for r in record["rounds"]}
    record["steps"] = {}
    steps = 0
    for r in record["rounds"]:
        marker = json.loads((run / "loop" / f"round-{r['round']:02d}" / "train" / "_COMPLETE.json").read_text())
        # continued, the round's student made every round's steps; retrained, its own round's alone
        steps = marker["summary"]["steps"] + (steps if record.get("train", "continue") == "continue" else 0)
        record["steps"][r["teacher_prompts"]] = steps
    record["run"] = str(run)
    record["teacher_right"] = teacher_right(run, record["rounds"], metric)
    return record


def teacher_right(run: Path, rounds: list[dict], metric: str) -> dict | None:
    """How often the teacher's answer is right by the test set's headline metric against the seed's own references on
    the prompts a loop chose after round 1 (its random draw): whether a strategy steers toward prompts its teacher
    answers worse. Rows the teacher wrote the input of have no reference and are left out; None where no chosen row
    has one."""
    import pyarrow.parquet as pq

    from distill.evaluate.metrics import compute
    from distill.loop.layout import LoopDir
    from distill.run_dir import RunDir, read_jsonl

    layout = LoopDir(RunDir(run))
    # the pool's seeds (every round holds the same file), by input: a row's id is not its seed's
    refs = {seed["input"]: seed["references"] for seed in read_jsonl(layout.round(1).seeds)}
    answers, references = [], []
    for k in rounds[1:]:
        for row in pq.read_table(layout.round(k["round"]).generated, columns=["input", "completion"]).to_pylist():
            if refs.get(row["input"]):
                answers.append(row["completion"] or "")
                references.append(refs[row["input"]])
    if not answers:
        return None
    scores = compute(metric, answers, references)["scores"]
    return {"share": sum(scores) / len(scores), "rows": len(scores)}


def bench_task(task: str, work: Path, per_round_share: float, budgets: list[float], strategies: list[str],
               dev: int, log: Path, max_seeds: int | None = None, explore: float = 0.5, seeds: int = 1) -> dict:
    from distill.evaluate.stats import paired_bootstrap
    from distill.recipe import load_recipe
    import pandas as pd

    folder = work / task
    folder.mkdir(parents=True, exist_ok=True)
    recipe = folder / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(task_recipe(task, dev, max_seeds), sort_keys=False))
    metric = load_recipe(recipe).evaluate.sets[0].metrics[0]  # the test set's headline, as the recipe resolves it

    def loop(name: str, settings: list[str], size: int, count: int) -> dict:
        return run_loop(recipe, folder, name, settings, size, count, log, metric)

    pool = pool_size(recipe)
    per_round = max(1, round(pool * per_round_share))
    points = sorted({max(1, round(b / per_round_share)) * per_round for b in budgets})
    rounds = max(points) // per_round
    started = time.time()
    seconds: dict[str, float] = {}
    runs: dict[str, dict] = {}
    t0 = time.time()
    runs["full"] = loop("full", LOOP_SETTINGS["random"], pool, 1)
    seconds["full"] = time.time() - t0
    for b in points:
        t0 = time.time()
        runs[f"random@{b}"] = loop(f"oneshot-{b}", LOOP_SETTINGS["random"], b, 1)
        seconds[f"random@{b}"] = time.time() - t0
        for d in range(1, seeds):  # the same one-shot with another recipe seed: another draw, order and initialisation
            t0 = time.time()
            runs[f"random@{b}#{d}"] = loop(f"oneshot-{b}-seed{d}", [*LOOP_SETTINGS["random"], f"seed={d}"], b, 1)
            seconds[f"random@{b}#{d}"] = time.time() - t0
    for s in strategies:
        t0 = time.time()
        runs[s] = loop(f"loop-{s.replace('+', '-')}", loop_settings(s, explore), per_round, rounds)
        seconds[s] = time.time() - t0

    # one comparison of every student on the test split
    targets = {"full": runs["full"]["adapters"][pool]}
    targets.update({f"oneshot@{b}": runs[f"random@{b}"]["adapters"][b] for b in points})
    targets.update({f"oneshot@{b}#{d}": runs[f"random@{b}#{d}"]["adapters"][b] for b in points for d in range(1, seeds)})
    for s in strategies:
        targets.update({f"{s}@{b}": runs[s]["adapters"][b] for b in runs[s]["adapters"]})
    out = folder / "compare"
    cli("compare", "base", *targets.values(), "teacher", "--recipe", recipe, "--run-dir", runs["full"]["run"],
        "--out", out, log=log)
    report = json.loads((out / "report.json").read_text())
    names = dict(zip(targets, compared_names(list(targets.values()), recipe)))
    pred = pd.read_parquet(out / "predictions.parquet")
    score = {m: g.set_index("item_id")["score"] for m, g in pred.groupby("model")}

    def paired(a: str, b: str) -> dict:
        x, y = score[names[a]], score[names[b]]
        ids = x.index.intersection(y.index)
        c = paired_bootstrap(x[ids].tolist(), y[ids].tolist(), n_boot=2000, seed=0)
        return {"diff": c["delta"], "low": c["low"], "high": c["high"]}

    full_score = float(score[names["full"]].mean())
    table = []
    for b in points:
        row = {"budget": b, "share": b / pool, "random_oneshot": float(score[names[f"oneshot@{b}"]].mean()),
               "random_steps": runs[f"random@{b}"]["steps"][b], "strategies": {},
               "oneshot_seeds": [float(score[names[f"oneshot@{b}" + (f"#{d}" if d else "")]].mean())
                                 for d in range(seeds)]}
        for s in strategies:
            if f"{s}@{b}" in names:
                row["strategies"][s] = {"score": float(score[names[f"{s}@{b}"]].mean()), "steps": runs[s]["steps"][b],
                                        "vs_random": paired(f"oneshot@{b}", f"{s}@{b}")}
                if s == "random" and "random+retrain" in strategies:  # the same rows, trained in rounds or at once
                    row["strategies"][s]["vs_retrained"] = paired(f"random+retrain@{b}", f"random@{b}")
                control = random_loop(s)
                if s != control and control in strategies:  # the choice alone: both trained the same way in rounds
                    row["strategies"][s]["vs_random_loop"] = paired(f"{control}@{b}", f"{s}@{b}")
        table.append(row)
    reach = {}
    oneshots = sorted((b, float(score[names[f"oneshot@{b}"]].mean())) for b in points)
    reach["random one-shot"] = {"reaches_full": next((b for b, v in oneshots if v >= full_score), None),
                                "within_noise_of_full": next((b for b in points
                                                              if paired("full", f"oneshot@{b}")["high"] >= 0), None),
                                "curve": oneshots}
    for s in strategies:
        curve = sorted((b, float(score[names[f"{s}@{b}"]].mean())) for b in runs[s]["adapters"])
        first = next((b for b, v in curve if v >= full_score), None)
        within = next((b for b in sorted(runs[s]["adapters"]) if paired("full", f"{s}@{b}")["high"] >= 0), None)
        reach[s] = {"reaches_full": first, "within_noise_of_full": within, "curve": curve,
                    "dev_curve": [(r["teacher_prompts"], r["dev"]["student"]) for r in runs[s]["rounds"]],
                    "teacher_right": runs[s]["teacher_right"]}
    teacher = report["sets"][next(iter(report["sets"]))]["models"]["teacher"]["score"]
    base = report["sets"][next(iter(report["sets"]))]["models"]["base"]["score"]
    from distill.loop.report import curve_chart

    oneshot = [(b, float(score[names[f"oneshot@{b}"]].mean())) for b in points]
    curve_chart({**{f"loop: {s}": reach[s]["curve"] for s in strategies}, "random one-shot": oneshot},
                folder / "curve.png", "test exact match",
                marks={"base": base, "teacher": teacher, "full-pool student": full_score},
                title=f"{task}: students on the test split by teacher prompts")
    return {"task": task, "metric": metric, "pool": pool, "per_round": per_round, "dev": dev, "full": {"score": full_score,
            "steps": runs["full"]["steps"][pool]}, "base": base, "teacher": teacher, "table": table, "reach": reach,
            "seconds": {k: round(v) for k, v in seconds.items()}, "total_seconds": round(time.time() - started)}


def random_loop(name: str) -> str:
    """The random loop trained as the loop `name` is: its control for the choice of prompts alone."""
    return "random+retrain" if "retrain" in name.split("+")[1:] else "random"


def _ci(d: dict) -> str:
    return f"{d['diff']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def print_task(r: dict, strategies: list[str]) -> None:
    print(f"\n## {r['task']}: pool {r['pool']} prompts, {r['per_round']} per round, dev {r['dev']}; base "
          f"{r['base']:.3f}, teacher {r['teacher']:.3f}, full-pool student {r['full']['score']:.3f} "
          f"({r['full']['steps']} steps)\n")
    print("| teacher prompts (share of pool) | random one-shot (steps) | "
          + " | ".join(f"loop {s}: score (steps); vs one-shot" + (f"; vs {random_loop(s)} loop"
                                                                       if s != random_loop(s) else "")
                       for s in strategies) + " |")
    print("|---|---|" + "---|" * len(strategies))
    for row in r["table"]:
        cells = []
        for s in strategies:
            v = row["strategies"].get(s)
            loop = f"; {_ci(v['vs_random_loop'])}" if v and "vs_random_loop" in v else ""
            cells.append(f"{v['score']:.3f} ({v['steps']}); {_ci(v['vs_random'])}{loop}" if v else "")
        print(f"| {row['budget']} ({row['share']:.0%}) | {row['random_oneshot']:.3f} ({row['random_steps']}) | "
              + " | ".join(cells) + " |")
    if all("vs_retrained" in row["strategies"].get("random", {}) for row in r["table"]):
        print("\nThe random loop's rows trained in rounds (each continuing the adapter on its new rows) against the same "
              "rows trained at once (random+retrain):")
        for row in r["table"]:
            print(f"- {row['budget']}: {_ci(row['strategies']['random']['vs_retrained'])}")
    if len(r["table"][0]["oneshot_seeds"]) > 1:
        print("\nOne-shot with recipe seeds " + ", ".join(map(str, range(len(r["table"][0]["oneshot_seeds"]))))
              + " (another draw of the same size, row order and initialisation; the intervals below cover the test "
              "items only, not this):")
        for row in r["table"]:
            v = row["oneshot_seeds"]
            print(f"- {row['budget']}: " + ", ".join(f"{x:.3f}" for x in v) + f" (spread {max(v) - min(v):.3f})")
    print("\nDifferences are paired on the same test items, with 95% bootstrap intervals. Teacher prompts each "
          "needed to reach the full-pool student's test score (the first budget at or above it; the first whose "
          "paired interval against it reaches 0):")
    for s in r["reach"]:
        x = r["reach"][s]
        print(f"- {s}: {x['reaches_full'] or 'not within the budgets run'}; "
              f"{x['within_noise_of_full'] or 'not within the budgets run'}")
    print(f"\nThe teacher's answer against the seed's references ({r['metric']}) on the prompts each loop chose after "
          "its random first round:")
    for s in strategies:
        right = r["reach"][s]["teacher_right"]
        print(f"- {s}: " + (f"{right['share']:.3f} of {right['rows']} rows" if right else "no chosen row has a reference"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="plural,intent,facts", help="any of " + ", ".join(TASKS))
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help="loops compared: a strategy, then any of " + "; ".join(f"+{v}: {h}" for v, h in VARIANTS.items()))
    p.add_argument("--explore", type=float, default=0.5, help="loop.explore of the +explore loops")
    p.add_argument("--seeds", type=int, default=1, help="one-shot students per budget, with recipe seeds 0..N-1: how "
                   "far two random draws of the same size land apart")
    p.add_argument("--per-round", type=float, default=0.1, help="a loop round's prompts, as a share of the pool")
    p.add_argument("--budgets", default="0.2,0.3,0.5", help="teacher budgets compared, as shares of the pool "
                   "(rounded to whole rounds)")
    p.add_argument("--dev", type=int, default=100, help="dev split size")
    p.add_argument("--max-seeds", type=int, default=None, help="cap the seed pool (a quick look; default: all)")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-loop"))
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "bench.log"
    strategies = a.strategies.split(",")
    tasks = a.tasks.split(",")
    if unknown := [t for t in tasks if t not in TASKS]:
        sys.exit(f"--tasks: {', '.join(unknown)}: expected any of {', '.join(TASKS)}")
    for s in strategies:  # a misspelt name stops here, not after the loops before it ran
        loop_settings(s, a.explore)
    budgets = [float(b) for b in a.budgets.split(",")]
    from distill.models.hardware import this_machine

    m = this_machine()
    print(f"# The loop against random one-shot, on {m.cpu} ({m.cpu_summary()}), {m.cores} cores, "
          f"{'GPU: ' + m.gpus[0].name if m.gpus else 'no GPU'}")
    results = []
    for task in tasks:
        r = bench_task(task, work, a.per_round, budgets, strategies, a.dev, log, a.max_seeds, a.explore, a.seeds)
        print_task(r, strategies)
        print(f"\n({r['total_seconds']} s: " + ", ".join(f"{k} {v} s" for k, v in r["seconds"].items()) + ")")
        results.append(r)
        if a.out:
            Path(a.out).write_text(json.dumps(results, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
