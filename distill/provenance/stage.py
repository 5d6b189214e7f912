"""document: the run's manifest, dataset card and model card, written after evaluation.

Writes document/{manifest.json, coverage.json, synthetic_vs_real.json, dataset_card.md,
model_card.md, card_context.json, data/train.parquet, data/rejected.parquet}, copies the
manifest and both cards to the run root, and the manifest into the student's adapter folder,
so the adapter carries the record of the data it was trained on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq

from distill import rows as C
from distill.data.sources import describe, identity, read_source
from distill.progress import console
from distill.prompts.template import template_hash
from distill.provenance.cards import DATA_SPLITS, dataset_card, model_card
from distill.provenance.coverage import audit_coverage, cell_column, link_eval_slices, real_slice_counts
from distill.provenance.lineage import chaining_findings, lineage
from distill.provenance.manifest import build_manifest, model_identities
from distill.provenance.two_sample import check_synthetic_vs_real, gap_text
from distill.recipe import Recipe
from distill.run_dir import DATA_MANIFEST, RunDir, atomic_path, finite, hash_json, read_jsonl, write_json, write_text

ROOT_COPIES = ("manifest.json", "dataset_card.md", "model_card.md")
CARD_CONTEXT = "card_context.json"



def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def decontamination(run: RunDir, eval_report: dict | None = None) -> dict | None:
    """What the decontamination filter found and rejected, when one ran (filter/contaminat*.json[l]), and which
    eval items evaluation found in the rows the student was trained on (report.json's contamination)."""
    from distill.data.contamination import leak_rule, trained_on_text

    items = _read_json(run.stage("filter") / "contaminated_items.json")
    leaks = run.stage("filter") / "contamination.jsonl"
    filter_ran = items is not None or leaks.is_file()
    measured = (eval_report or {}).get("contamination") or {}
    training = None
    if measured.get("trained_on"):
        sets = (eval_report or {}).get("sets", {})
        training = {"trained_on": trained_on_text(measured), "rule": leak_rule(measured),
                    "sets": [{"name": name, "reached": len(ids), "clean": (sets.get(name) or {}).get("clean"),
                              "metric": ((sets.get(name) or {}).get("metrics") or [""])[0]}
                             for name, ids in measured.get("sets", {}).items()]}
    if not filter_ran and training is None:
        return None
    return {"filter_ran": filter_ran, "leaked_items": {s: len(ids) for s, ids in (items or {}).items()},
            "leak_records": len(read_jsonl(leaks)) if leaks.is_file() else 0, "training": training}


def _sha256_of(src) -> str:
    """One hash naming the source's content: its file's, or of its identity (a glob's files, a Hub dataset)."""
    ident = identity(src)
    return ident.get("sha256") or hash_json(ident)


def coverage_audit(recipe: Recipe, rows: list[dict], eval_report: dict | None, seeds: list[dict] | None = None) -> dict:
    """The audit against the seed pool the teacher was given, with the whole real data beside it, when the cells are
    the data's slices."""
    real_counts = seed_counts = None
    if cell_column(rows, recipe.coverage.column) == C.SLICE and recipe.data.slice_field:
        real = read_source(recipe.data)
        real_counts = real_slice_counts(real, recipe.data.slice_field)
        seed_counts = real_slice_counts(seeds, C.SLICE) if seeds else None
    return link_eval_slices(audit_coverage(rows, recipe.coverage, real_counts, seed_counts), eval_report)


def synthetic_vs_real_check(recipe: Recipe, rows: list[dict], heldout: list[dict], seeds: list[dict] | None = None) -> dict:
    """What the teacher wrote against the real data at the same place (see distill.provenance.two_sample): the seed
    pool the teacher was given, whose slices are mixed as the kept rows' are (the held-out split over-represents rare
    slices); the held-out split where no seed pool was recorded."""
    settings = recipe.coverage.synthetic_vs_real
    if not settings.enabled:
        return {"skipped": "turned off (coverage.synthetic_vs_real.enabled: false)", "flagged": False}
    mode = getattr(recipe.generate, "mode", "complete")
    label = recipe.generate.label if mode == "label" else None
    choices = [c.strip() for c in label.choice] if label and label.choice else None  # as the rows keep them
    real, where = (seeds, "the seed pool the teacher was given") if seeds else (heldout, "the held-out real split")
    return check_synthetic_vs_real(mode, choices, rows, real, settings, recipe.seed, where=where)


def eval_tables(recipe: Recipe, report: dict | None) -> list[dict]:
    """Per set: each model's score with its difference from the baseline, then the same per slice."""
    if not report:
        return []
    from distill.train.repair import repaired_guard_sets

    guards = {s.name for s in recipe.evaluate.sets if getattr(s, "guard", False)}
    repaired = set(repaired_guard_sets(recipe))
    tables = []
    order = [s.name for s in recipe.evaluate.sets]  # report.json has its keys sorted: show sets as the recipe lists them
    sets = sorted(report.get("sets", {}).items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
    model_order = report.get("models") or []
    for name, entry in sets:
        models = dict(sorted(entry.get("models", {}).items(),
                             key=lambda kv: model_order.index(kv[0]) if kv[0] in model_order else len(model_order)))
        diffs = entry.get("vs_base", {})
        slices = sorted({s for m in models.values() for s in m.get("slices", {})})
        metrics = entry.get("metrics") or [report.get("metric", "exact_match")]
        tables.append({
            "name": name, "guard": bool(entry.get("guard")) or name in guards,
            "repaired": bool(entry.get("repaired")) or name in repaired, "metric": metrics[0],
            "baseline": report.get("baseline", "base"), "level": round(100 * report.get("confidence", 0.95)),
            "models": [{"model": m, "score": r.get("score"), "n": r.get("n"), "diff": (diffs.get(m) or {}).get("overall")}
                       for m, r in models.items()],
            "slices": [{"slice": s, "n": max(r["slices"][s]["n"] for r in models.values() if s in r.get("slices", {})),
                        "scores": {m: r["slices"][s]["score"] for m, r in models.items() if s in r.get("slices", {})},
                        "diff": (diffs.get("student") or {}).get("slices", {}).get(s)} for s in slices],
            "clean": entry.get("clean"),  # score on the items not in the rows the student was trained on
        })
    return tables


def held_out_note(recipe: Recipe, decontam: dict | None, tables: list[dict]) -> str:
    """How far the evaluated items are from the training data, per kind of set: the held-out split is split off
    before generation; a set read from a file is only as far as the decontaminate filter made it."""
    shown = {t["name"] for t in tables}
    split = [s.name for s in recipe.evaluate.sets if s.data == "heldout" and s.name in shown]
    files = [s.name for s in recipe.evaluate.sets if s.path and s.name in shown]
    names = lambda xs: ", ".join(f"`{x}`" for x in xs)
    out = []
    if split:
        out.append(f"{names(split)}: real items split off before generation, never seeds or few-shot examples.")
    if files and decontam and decontam["filter_ran"]:
        out.append(f"{names(files)}: read from files, not split from the seed data; the decontaminate filter rejected "
                   "generated rows holding their items (seed inputs included), but few-shot examples drawn from the "
                   "data were not checked against them.")
    elif files:
        out.append(f"{names(files)}: read from files, not split from the seed data, and not checked against the seeds "
                   "or few-shot examples (no decontaminate filter).")
    return " ".join(out)


def limitations(recipe: Recipe, coverage: dict, two_sample: dict, decontam: dict | None, tables: list[dict]) -> list[str]:
    out = []
    if not any(step.type in ("verifier", "reference_match", "majority_vote", "judge") for step in recipe.filter.steps):
        out.append("No filter checks that the teacher's answers are correct: its mistakes are in the data "
                   "unless evaluation shows otherwise.")
    if decontam is None or not decontam["filter_ran"]:
        out.append("Not checked for overlap with the evaluation items before training (no decontamination filter).")
    reached = [f"{s['reached']} of {s['name']}" for s in ((decontam or {}).get("training") or {}).get("sets", []) if s["reached"]]
    if reached:
        out.append("Evaluation items appear in the rows the student was trained on (" + ", ".join(reached)
                   + "): its scores on them are not held-out; the cards also give the score on the other items.")
    small = [f"{t['name']}/{s['slice']} (n={s['n']})" for t in tables for s in t["slices"] if s["n"] < 30]
    if small:
        out.append("Small evaluation slices have wide intervals: " + ", ".join(small) + ".")
    if coverage["flagged"]:
        out.append("Under-represented cells after filtering: " + ", ".join(coverage["flagged"]) + ".")
    if two_sample.get("flagged"):
        out.append(f"The {two_sample['synthetic_texts']} differ clearly from the {two_sample['real_texts']} "
                   "(see Synthetic vs real).")
    out.append("The data inherits the teacher's biases and the licence terms of the real data and of the teacher model.")
    return out


def warnings_of(chaining: list[dict], coverage: dict, two_sample: dict) -> list[str]:
    out = [f["message"] for f in chaining]
    for c in coverage["cells"]:
        if c["status"] == "ok":
            continue
        made = (f"{c['kept']} of {c['generated']} generated rows kept (drop rate {100 * c['drop_rate']:.0f}%)" if c["generated"]
                else "no rows were generated for it")
        out.append(f"coverage: cell {c['cell']!r} is {c['status']} after filtering: {made}; kept share "
                   f"{100 * (c['kept_share'] or 0):.1f}% against a target of {100 * (c['target_share'] or 0):.1f}%")
    if two_sample.get("flagged"):
        out.append(gap_text(two_sample))
    return out


def write_split_files(run: RunDir) -> tuple[str, ...]:
    """The dataset card's splits as files (cards.DATA_SPLITS): the kept rows as `train`, the rejected rows (with
    `rejected_by` and `reason`) as `rejected` when there are any. filter/rows.parquet holds both, so a card pointing
    at it would hand the rejected rows out as training data."""
    import pyarrow.compute as pc

    table = pq.read_table(run.filtered)
    kept = pc.fill_null(table.column(C.KEPT), False)
    parts = {"train": table.filter(kept), "rejected": table.filter(pc.invert(kept))}
    written = []
    for split, path in DATA_SPLITS.items():
        target = run.root / path
        if split == "train" or parts[split].num_rows:
            with atomic_path(target) as tmp:
                pq.write_table(parts[split], tmp)
            written.append(split)
        elif target.exists():
            target.unlink()  # left by an earlier run that had rejected rows
    return tuple(written)


def run_document(recipe: Recipe, run: RunDir) -> dict:
    started = time.time()
    out = run.stage("document")
    wanted = (C.INPUT, C.COMPLETION, C.SLICE, C.CELL, C.KEPT)  # not the prompts and provenance of every row
    rows = pq.read_table(run.filtered, columns=[c for c in wanted if c in pq.read_schema(run.filtered).names]).to_pylist()
    eval_report = _read_json(run.eval_report)
    chaining = chaining_findings(recipe)
    seeds = read_jsonl(run.seeds) if run.seeds.is_file() else None
    coverage = coverage_audit(recipe, rows, eval_report, seeds)
    two_sample = synthetic_vs_real_check(recipe, rows, read_jsonl(run.heldout), seeds)
    decontam = decontamination(run, eval_report)
    warnings = warnings_of(chaining, coverage, two_sample)

    checks = {"coverage_flagged": coverage["flagged"], "synthetic_vs_real": two_sample, "warnings": warnings}
    manifest = build_manifest(recipe, run, checks)
    write_json(out / "manifest.json", manifest)
    write_json(out / "coverage.json", coverage)
    write_json(out / "synthetic_vs_real.json", two_sample)

    ctx = card_context(recipe, run, manifest, chaining, coverage, two_sample, decontam, eval_report)
    splits = write_split_files(run)
    write_text(out / "dataset_card.md", dataset_card(ctx, splits))
    write_text(out / "model_card.md", model_card(ctx))
    # What the model card shows, so that `distill export` can write the same card for the exported model.
    write_text(out / CARD_CONTEXT, json.dumps(finite(ctx), indent=1, default=str) + "\n")
    for name in ROOT_COPIES:
        write_text(run.root / name, (out / name).read_text())
    if run.adapter.is_dir():
        write_text(run.adapter / DATA_MANIFEST, (out / "manifest.json").read_text())

    for w in warnings:
        console(f"[document] warning: {w}")
    return {"manifest_sha256": manifest["content_sha256"][:12], "chaining_warnings": len(chaining),
            "flagged_cells": len(coverage["flagged"]),
            "synthetic_vs_real_auc": round(two_sample["auc"], 3) if "auc" in two_sample else None,
            "synthetic_vs_real_tv": round(two_sample["tv_distance"], 3) if "tv_distance" in two_sample else None,
            "synthetic_vs_real_flagged": two_sample["flagged"], "seconds": round(time.time() - started, 1)}


def card_context(recipe: Recipe, run: RunDir, manifest: dict, chaining: list[dict], coverage: dict, two_sample: dict,
                 decontam: dict | None, eval_report: dict | None) -> dict:
    """Everything the two card templates show."""
    tables = eval_tables(recipe, eval_report)
    filter_marker = run.read_marker("filter")
    train_marker = run.read_marker("train")
    mode = getattr(recipe.generate, "mode", "complete")
    generated = (run.read_marker("generate") or {}).get("summary") or {}
    return {
        "name": recipe.name, "created_at": manifest["created_at"], "manifest_sha": manifest["content_sha256"],
        # what the teacher did, as the generate stage's mode says it in its summary
        "mode": mode, "mode_text": generated.get("teacher_did") or f"ran in {mode} mode",
        "generate": recipe.generate.model_dump(mode="json"), "template_sha": template_hash(recipe.generate.template),
        "data": {"path": describe(recipe.data), "hub": recipe.data.hub, "sha256": _sha256_of(recipe.data),
                 "heldout": recipe.data.heldout.size},
        "models": model_identities(recipe), "lineage": lineage(recipe), "chaining": chaining,
        "allow_chaining": recipe.allow_chaining, "warnings": manifest["checks"]["warnings"],
        "funnel": filter_marker["summary"] if filter_marker else None, "decontamination": decontam,
        "coverage": coverage, "eval_set": next((c["eval"]["set"] for c in coverage["cells"] if "eval" in c), None),
        "eval_baseline": (eval_report or {}).get("baseline", "base"),
        "two_sample": two_sample, "train": recipe.train.model_dump(mode="json"),
        "train_summary": train_marker["summary"] if train_marker else None,
        "training_data": _read_json(run.adapter / "training_data.json"),
        "eval_tables": tables, "held_out_note": held_out_note(recipe, decontam, tables),
        "degraded": (eval_report or {}).get("degraded", []), "adapter_path": str(run.adapter.resolve()),
        "limitations": limitations(recipe, coverage, two_sample, decontam, tables),
        # a loop's rounds: each one's strategy, teacher prompts and dev score
        "rounds": _read_json(run.loop_record) if recipe.loop is not None else None,
    }
