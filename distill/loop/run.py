"""The loop's driver: round after round, select, then the registry's stages in the round's folder, then the stop
rules; at the end the loop's student is evaluated on the test split by the run's own evaluate and document stages.

Every decision is read back from the rounds' files, so a killed loop started again walks the finished rounds
(each stage up to date, skipped), resumes the round it was in at the stage it was in, and decides as it did.
"""

from __future__ import annotations

import json
import sys
import time

from distill.loop.assemble import answer_tokens, assemble
from distill.loop.layout import DEV_SET, ROUND_STAGES, SELECT, LoopDir
from distill.loop.report import write_loop_report
from distill.loop.select import selection_fingerprint
from distill.errors import UserError
from distill.pipeline import run_logged, run_stages, save_resolved_recipe
from distill.recipe import Recipe
from distill.run_dir import RunDir, write_json



def round_recipe(recipe: Recipe, layout: LoopDir, k: int) -> Recipe:
    """The recipe round k runs its stages with: the teacher answers only its selection, training continues the
    adapter of the round before (or, loop.train: retrain, trains a fresh one on every round's rows so far), and
    evaluation scores the dev split (and the guard sets, for the stop rule) but no test set. The base and the teacher
    are scored in round 1 (the curve's ends); later rounds score the student."""
    d = recipe.model_dump(mode="json")
    d["run_dir"] = str(layout.round(k).root)
    d["data"]["answer_only"] = str(layout.selection(k))
    if k > 1 and recipe.loop.train == "retrain":
        d["train"]["add_rows"] = [str(layout.round(r).filtered) for r in range(1, k)]
    elif k > 1:
        before = str(layout.round(k - 1).adapter)
        if recipe.train.objective == "on_policy":
            d["train"]["on_policy"]["start_from"] = before
        else:
            d["train"]["init_adapter"] = before
    e = d["evaluate"]
    test = next((s for s in e["sets"] if s["data"] == "heldout"), None)
    dev = {**({key: v for key, v in test.items() if key not in ("name", "data", "limit")} if test else {}),
           "name": DEV_SET, "data": "dev"}
    # the test sets stay, unmeasured, as held-out data that decontamination keeps out of training
    e["sets"] = [dev, *(s for s in e["sets"] if s["name"] != DEV_SET)]
    e["measure"] = [DEV_SET] + ([s["name"] for s in e["sets"][1:] if s["guard"]] if recipe.loop.stop_on_guard_degraded
                                else [])
    # later rounds: the student, and the base where a guard set's gate needs its baseline
    e["models"] = [m for m in e["models"] if k == 1 or m == "student" or (m == "base" and len(e["measure"]) > 1)]
    if e["baseline"] not in e["models"]:
        e["baseline"] = "base" if "base" in e["models"] else "student"
    e["checkpoints"], e["fidelity"] = False, False
    e["gate"]["models"] = ["student"]
    return Recipe.model_validate(d)


def round_record(recipe: Recipe, layout: LoopDir, k: int, spent_before: int, tokens_before: int) -> dict:
    """Round k's figures, from its files: what the teacher answered, what was kept and trained on, the dev scores."""
    run = layout.round(k)
    select = run.read_marker(SELECT)["summary"]
    tokens = answer_tokens(run.generated) + select.get("written_tokens", 0)  # LLM2LLM: the inputs it wrote too
    report = json.loads(run.eval_report.read_text())
    dev = report["sets"][DEV_SET]
    metric = dev["metrics"][0]
    scores = {m: v["score"] for m, v in dev["models"].items()}
    guard = sorted({d["set"] for d in report["degraded"] if d.get("guard")})
    return {"round": k, "strategy": select["strategy"], "prompts": select["selected"],
            "teacher_prompts": spent_before + select["selected"], "teacher_tokens": tokens_before + tokens,
            **({"written": select["written"]} if "written" in select else {}),
            **({"explored": select["explored"]} if "explored" in select else {}),
            "kept": run.read_marker("filter")["summary"]["kept"],
            "dev_metric": metric, "higher_is_better": dev["metric_info"][metric]["higher_is_better"],
            "dev": scores, "dev_slices": {m: {s: v["score"] for s, v in entry.get("slices", {}).items()}
                                          for m, entry in dev["models"].items()},
            "guard_degraded": guard}


def stop_reason(recipe: Recipe, records: list[dict], pool_left: int) -> str | None:
    """Why the loop stops after its last recorded round, or None to go on. A degraded guard set comes first (it
    decides which round's student is kept), then the budget, the pool, a plateau, the number of rounds."""
    loop, last = recipe.loop, records[-1]
    if last["guard_degraded"] and loop.stop_on_guard_degraded:
        return f"guard set degraded: {', '.join(last['guard_degraded'])}"
    if last["teacher_prompts"] >= loop.total_prompts:
        return f"budget: {last['teacher_prompts']} teacher prompts"
    if loop.budget.tokens is not None and last["teacher_tokens"] >= loop.budget.tokens:
        return f"budget: {last['teacher_tokens']} teacher tokens"
    if pool_left == 0:
        return "pool: every seed answered"
    if loop.plateau is not None and len(records) > loop.plateau.patience:
        sign = 1 if last["higher_is_better"] else -1
        recent = records[-loop.plateau.patience:]
        best_before = max(sign * r["dev"]["student"] for r in records[:-loop.plateau.patience])
        if all(sign * r["dev"]["student"] - best_before < loop.plateau.min_gain for r in recent):
            return (f"plateau: dev {last['dev_metric']} gained less than {loop.plateau.min_gain:g} over "
                    f"{loop.plateau.patience} round(s)")
    if last["round"] >= loop.rounds:
        return f"rounds: {loop.rounds}"
    return None


def final_round(recipe: Recipe, records: list[dict]) -> int:
    """The round whose student is the loop's: the last one, or with a guard set degraded the round before it."""
    last = records[-1]
    if last["guard_degraded"] and recipe.loop.stop_on_guard_degraded and len(records) > 1:
        return records[-2]["round"]
    return last["round"]


def select_round(recipe: Recipe, run: RunDir, k: int, verbose: bool = False, label: str = "") -> dict:
    """Round k's choice of prompts (made in a process of its own unless up to date); its select summary."""
    layout = LoopDir(run)
    if layout.round(k).is_complete(SELECT, selection_fingerprint(recipe, run, k)):
        print(f"{label}[select] up to date, skipped", flush=True)
    else:
        cmd = [sys.executable, "-m", "distill.cli", "select", str(run.recipe), "--run-dir", str(run.root),
               "--round", str(k)]
        run_logged(cmd, layout.round(k).logs / "select.log", SELECT, verbose)
    return layout.round(k).read_marker(SELECT)["summary"]


def nothing_selected(k: int) -> str:
    """Why the loop stops when round k found nothing to select."""
    return "budget: nothing left to select" if k > 1 else "pool: no seed to select"


def _record_round(recipe: Recipe, layout: LoopDir, records: list[dict], k: int) -> str | None:
    """Round k's record appended to `records` (the rounds before it); why the loop stops after it, or None."""
    before = records[-1] if records else {"teacher_prompts": 0, "teacher_tokens": 0}
    records.append(round_record(recipe, layout, k, before["teacher_prompts"], before["teacher_tokens"]))
    return stop_reason(recipe, records, layout.round(k).read_marker(SELECT)["summary"]["pool_left"])


def close_round(recipe: Recipe, layout: LoopDir, records: list[dict], k: int, label: str = "") -> str | None:
    """After round k's stages: its record appended to `records`, said, the stop rules applied and loop/loop.json
    written. Returns why the loop stops, or None."""
    reason = _record_round(recipe, layout, records, k)
    r = records[-1]
    print(f"{label}dev {r['dev_metric']}: " + ", ".join(f"{m} {v:.3f}" for m, v in r["dev"].items())
          + (f"; guard degraded: {', '.join(r['guard_degraded'])}" if r["guard_degraded"] else ""), flush=True)
    write_record(recipe, layout, records, reason, None)
    return reason


def progress(recipe: Recipe, layout: LoopDir) -> tuple[list[dict], str | None, int | None]:
    """Where the loop stands, read from its rounds' files alone: the finished rounds' records, why it stopped (None
    while it goes on) and the round under way (None once stopped). A round is finished when its evaluation is; its
    decisions are the ones `run_loop` took, so a chain of jobs and `distill run` agree on every round."""
    records: list[dict] = []
    for k in range(1, recipe.loop.rounds + 1):
        here = layout.round(k)
        chosen = here.read_marker(SELECT)
        if chosen is None:
            return records, None, k
        if not chosen["summary"]["selected"]:
            return records, nothing_selected(k), None
        if here.read_marker("evaluate") is None:
            return records, None, k
        reason = _record_round(recipe, layout, records, k)
        if reason:
            return records, reason, None
    return records, f"rounds: {recipe.loop.rounds}", None  # not reached: the last round's stop rule says it


def run_loop(recipe: Recipe, run: RunDir, force: tuple[str, ...] = (), verbose: bool = False) -> dict:
    """Every round until a stop rule holds, then the run's own evaluate (the test split) and document stages on the
    loop's student. Returns loop/loop.json's content."""
    layout = LoopDir(run)
    save_resolved_recipe(recipe, run)
    records: list[dict] = []
    reason = None
    started = time.time()
    for k in range(1, recipe.loop.rounds + 1):
        label = f"[round {k}] "
        chosen = select_round(recipe, run, k, verbose, label)
        if not chosen["selected"]:
            reason = nothing_selected(k)
            break
        print(f"{label}{chosen['strategy']}: {chosen['selected']} prompts for the teacher "
              f"({chosen['pool_left']} left in the pool)", flush=True)
        run_stages(round_recipe(recipe, layout, k), layout.round(k), ROUND_STAGES, force, verbose, label)
        reason = close_round(recipe, layout, records, k, label)
        if reason:
            break
    record = end_loop(recipe, run, records, reason, force, verbose)
    print(f"[loop] {layout.root / 'report.md'} ({time.time() - started:.0f}s)", flush=True)
    return record


def end_loop(recipe: Recipe, run: RunDir, records: list[dict], reason: str, force: tuple[str, ...] = (),
             verbose: bool = False) -> dict:
    """After the last round: the loop's student (the last round's, or the one before a degraded guard set) as the
    run's own outputs, scored once on the test split by the run's evaluate stage, its cards, the loop's report."""
    layout = LoopDir(run)
    if not records:
        raise UserError(f"loop: {reason}; nothing was trained")
    final = final_round(recipe, records)
    print(f"[loop] stopped after round {records[-1]['round']} ({reason}); the loop's student is round {final}'s",
          flush=True)
    record = write_record(recipe, layout, records, reason, final)
    assemble(recipe, run, layout, final)
    run_stages(recipe, run, ("evaluate", "document"), tuple(f for f in force if f in ("evaluate", "document")), verbose)
    write_loop_report(run, record)
    return record


def write_record(recipe: Recipe, layout: LoopDir, records: list[dict], reason: str | None, final: int | None) -> dict:
    record = {"strategy": recipe.loop.strategy, "train": recipe.loop.train, "budget": recipe.loop.budget.model_dump(),
              "total_prompts": recipe.loop.total_prompts, "dev_size": recipe.loop.dev.size, "rounds": records,
              "stopped": reason, "final_round": final}
    write_json(layout.record, record)
    return record
