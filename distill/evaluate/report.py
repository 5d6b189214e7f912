"""Evaluation figures: per model, per slice, and each model's difference from the base student."""

from __future__ import annotations

from collections import defaultdict

from distill.evaluate.stats import paired_bootstrap
from distill.recipe import Recipe
from distill.run_dir import RunDir, write_json, write_text


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def build_report(recipe: Recipe, predictions: list[dict]) -> dict:
    grouped: dict = defaultdict(lambda: defaultdict(dict))  # set -> model -> item_id -> row
    for p in predictions:
        grouped[p["set"]][p["model"]][p["item_id"]] = p
    report: dict = {"metric": "exact_match", "sets": {}}
    for set_name, models in grouped.items():
        entry: dict = {"models": {}, "vs_base": {}}
        for model, items in models.items():
            slices: dict = defaultdict(list)
            for p in items.values():
                if p["slice"] is not None:
                    slices[p["slice"]].append(p["score"])
            entry["models"][model] = {
                "score": _mean([p["score"] for p in items.values()]), "n": len(items),
                "slices": {s: {"score": _mean(v), "n": len(v)} for s, v in sorted(slices.items())},
            }
        if "base" in models:
            base = models["base"]
            for model, items in models.items():
                if model == "base":
                    continue
                ids = [i for i in base if i in items]
                cmp = {"overall": paired_bootstrap([base[i]["score"] for i in ids], [items[i]["score"] for i in ids], seed=recipe.seed)}
                by_slice: dict = defaultdict(list)
                for i in ids:
                    if base[i]["slice"] is not None:
                        by_slice[base[i]["slice"]].append(i)
                cmp["slices"] = {
                    s: paired_bootstrap([base[i]["score"] for i in v], [items[i]["score"] for i in v], seed=recipe.seed)
                    for s, v in sorted(by_slice.items())
                }
                entry["vs_base"][model] = cmp
        report["sets"][set_name] = entry
    return report


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def render_markdown(report: dict) -> str:
    lines = ["# Evaluation on held-out real data", ""]
    for set_name, entry in report["sets"].items():
        models = list(entry["models"])
        lines += [f"## {set_name}", "", "| model | exact match | n |", "|---|---:|---:|"]
        lines += [f"| {m} | {entry['models'][m]['score']:.3f} | {entry['models'][m]['n']} |" for m in models]
        slices = sorted({s for m in models for s in entry["models"][m]["slices"]})
        if slices:
            lines += ["", "Per slice:", "", "| slice | n | " + " | ".join(models) + " |", "|---|---:|" + "---:|" * len(models)]
            for s in slices:
                n = max(entry["models"][m]["slices"].get(s, {}).get("n", 0) for m in models)
                cells = [f"{entry['models'][m]['slices'][s]['score']:.3f}" if s in entry["models"][m]["slices"] else "" for m in models]
                lines.append(f"| {s} | {n} | " + " | ".join(cells) + " |")
        if entry["vs_base"]:
            lines += ["", "Difference from the base student (paired bootstrap, 95% interval):", "",
                      "| model | where | n | difference | interval |", "|---|---|---:|---:|---|"]
            for m, cmp in entry["vs_base"].items():
                o = cmp["overall"]
                lines.append(f"| {m} | all | {o['n']} | {_fmt(o['delta'])} | [{_fmt(o['low'])}, {_fmt(o['high'])}] |")
                for s, c in cmp["slices"].items():
                    lines.append(f"| {m} | {s} | {c['n']} | {_fmt(c['delta'])} | [{_fmt(c['low'])}, {_fmt(c['high'])}] |")
        lines.append("")
    return "\n".join(lines)


def write_reports(run: RunDir, report: dict) -> None:
    write_json(run.eval_report, report)
    write_text(run.stage("evaluate") / "report.md", render_markdown(report))
