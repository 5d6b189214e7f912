"""evaluate: score base student, trained student (and its checkpoints) and teacher on the same
held-out real items and guard sets, then measure each against the baseline with intervals.

Never synthetic data: items come from the recipe's held-out split or separate real files.
"""

from __future__ import annotations

import json
import time

from distill.data.eval_sets import load_items, seed_pool
from distill.evaluate.cache import cache_record, open_cache
from distill.evaluate.candidates import Candidate, checkpoint_step, is_trained_model, training_checkpoints
from distill.evaluate.contamination import attach, caught_by_filter, measure
from distill.evaluate.fidelity import measure_fidelity
from distill.evaluate.outputs import write_outputs
from distill.evaluate.report import build_report
from distill.evaluate.scoring import score_candidates
from distill.evaluate.targets import fidelity_k
from distill.models.context import resolved_model
from distill.models.merge import adapter_serving
from distill.prompts.student import check_eval_agreement
from distill.recipe import Recipe
from distill.run_dir import RunDir
from distill.tracking import log_report
from distill.train.repair import repaired_guard_sets


def stage_candidates(recipe: Recipe, run: RunDir) -> list[Candidate]:
    """The recipe's models in order; checkpoints (if asked for) just before the final student."""
    e = recipe.evaluate
    student_dir, _ = resolved_model(recipe, "student")
    out = []
    for who in e.models:
        if who == "base":
            out.append(Candidate("base", student_dir, recipe.models.student))
        elif who == "student":
            if e.checkpoints:
                for ckpt in training_checkpoints(run.stage("train")):
                    out.append(_trained(f"student@{checkpoint_step(ckpt)}", ckpt, student_dir, recipe,
                                        checkpoint_step(ckpt)))
            steps = (json.loads(run.marker("train").read_text())["summary"].get("steps")
                     if e.checkpoints and run.marker("train").is_file() else None)
            out.append(_trained("student", run.adapter, student_dir, recipe, steps))
        else:
            teacher_dir, _ = resolved_model(recipe, "teacher")
            out.append(Candidate("teacher", teacher_dir, recipe.models.teacher, role="teacher"))
    return out


def _trained(name: str, folder, student_dir, recipe: Recipe, step: int | None) -> Candidate:
    """A trained student: an adapter served on the base, or (train.method full) the whole model it saved."""
    if is_trained_model(folder):
        return Candidate(name, folder, recipe.models.student, step=step)
    return Candidate(name, student_dir, recipe.models.student, adapter=folder, step=step)


def training_cost(recipe: Recipe, run: RunDir) -> dict | None:
    """What the evaluated student cost, from the generate and train stages' records: the teacher's prompts and answer
    tokens, and for on-policy training the tokens sampled and scored; so points gained can be set beside their cost."""
    generate, train = run.read_marker("generate"), run.read_marker("train")
    if not generate or not train:
        return None
    g, t = generate["summary"], train["summary"]
    cost = {"teacher_prompts_answered": g.get("prompts"), "teacher_answer_tokens": g.get("new_tokens"),
            "generate_seconds": g.get("seconds"), "objective": recipe.train.objective, "train_seconds": t.get("seconds")}
    if "sft_phase" in t:
        cost["sft_phase_seconds"] = t["sft_phase"].get("seconds")
    if "cost" in t:
        c = t["cost"]
        cost.update({k: c.get(k, 0) for k in ("student_tokens_sampled", "teacher_tokens_scored", "teacher_prompts_scored",
                                              "teacher_prompt_tokens_read", "repair_tokens_scored", "adapter_reloads")})
        # every prompt the teacher read for this student: generation's, then training's
        cost["teacher_prompts"] = (g.get("prompts") or 0) + cost["teacher_prompts_scored"]
    return cost


def run_evaluate(recipe: Recipe, run: RunDir) -> dict:
    started = time.time()
    e = recipe.evaluate
    check_eval_agreement(recipe)
    sets = {s.name: (s, load_items(s, run.heldout)) for s in e.sets if e.measure is None or s.name in e.measure}
    candidates = stage_candidates(recipe, run)
    # true leaks: items in the rows the evaluated student was trained on (its checkpoints saw the same rows)
    student_trained = any(c.adapter is not None or c.model_dir == run.adapter for c in candidates)
    trained = [run.adapter] if student_trained else []
    measured = measure(recipe, {n: items for n, (_, items) in sets.items()}, trained)
    cache = open_cache(recipe)
    if fidelity_k(recipe):  # before any scoring: the teacher's token ids must mean the same to the student
        from distill.models.vocabulary import check_shared_vocabulary

        check_shared_vocabulary(recipe, "evaluate.fidelity", "Set evaluate.fidelity: false")
    targets: dict = {}
    pool = seed_pool(run)
    predictions = score_candidates(recipe, candidates, sets, pool, cache, targets, work_dir=run.stage("evaluate"))
    report = build_report(predictions, e, e.baseline, [c.name for c in candidates], {n: s for n, (s, _) in sets.items()},
                          seed=recipe.seed, contaminated=measured["sets"] if measured else None,
                          repaired=repaired_guard_sets(recipe))
    attach(report, measured, caught_by_filter(run))
    fidelity = measure_fidelity(recipe, candidates, sets, targets, pool, cache)
    if fidelity:
        report["fidelity"] = fidelity
    report["cache"] = cache_record(cache, predictions)
    if any(c.adapter is not None for c in candidates):
        report["adapters_served"] = adapter_serving(e.serve_adapters)
    if student_trained:
        report["training_cost"] = training_cost(recipe, run)
    write_outputs(run.stage("evaluate"), report, predictions, f"{recipe.name}: evaluation on held-out real data")
    log_report(recipe, run, report, "eval")
    headline = {name: {m: round(v["score"], 4) for m, v in entry["models"].items()} for name, entry in report["sets"].items()}
    summary = {"models": len(candidates), "sets": len(sets), "degraded": len(report["degraded"]), "scores": headline,
               "results_from_cache": sum(len(v) for v in report["cache"]["from_cache"].values())}
    if fidelity:
        summary["fidelity_top1_agreement"] = {n: {m: round(v["top1_agreement"], 4) for m, v in entry["models"].items()}
                                              for n, entry in fidelity["sets"].items()}
    if "adapters_served" in report:
        summary["adapters_served"] = report["adapters_served"]
    if measured:
        summary["items_in_training_rows"] = {n: len(ids) for n, ids in measured["sets"].items()}
    return {**summary, "seconds": round(time.time() - started, 1)}
