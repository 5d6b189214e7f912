"""Evaluation figures: per model, per metric, per slice, and each model's difference from the
baseline with a paired bootstrap interval and a degradation verdict. Written as report.json
(every figure) and report.md (tables)."""

from __future__ import annotations

import math
from collections import defaultdict

from distill.evaluate.metrics import METRICS
from distill.evaluate.stats import compare_scores
from distill.recipe import EvaluateSettings


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _summary(items: dict, metric: str) -> dict:
    scores = [p["scores"][metric] for p in items.values()]
    out = {"score": _mean(scores), "n": len(scores), "slices": {}}
    slices: dict = defaultdict(list)
    for p in items.values():
        if p["slice"] is not None:
            slices[p["slice"]].append(p["scores"][metric])
    out["slices"] = {s: {"score": _mean(v), "n": len(v)} for s, v in sorted(slices.items())}
    if metric == "nll":
        out["perplexity"] = math.exp(out["score"]) if scores else None  # geometric mean over items
    return out


def _clean_part(by_model: dict, leaked: set[str], metric: str) -> dict | None:
    """Headline score of each model on the items that no training row leaked."""
    items = next(iter(by_model.values()), {})
    hit = leaked & set(items)
    if not hit:
        return None
    return {"n": len(items) - len(hit), "contaminated": len(hit),
            "models": {m: _mean([p["scores"][metric] for i, p in rows.items() if i not in hit]) for m, rows in by_model.items()}}


def build_report(predictions: list[dict], settings: EvaluateSettings, baseline: str, models: list[str],
                 set_configs: dict, seed: int = 0, contaminated: dict[str, list[str]] | None = None) -> dict:
    """`predictions` are Scorer rows; `set_configs` maps each set name to its EvalSet; `contaminated` maps a
    set name to the ids of its items that decontamination found in the training data."""
    grouped: dict = defaultdict(lambda: defaultdict(dict))  # set -> model -> item_id -> row
    steps: dict = {}
    for p in predictions:
        grouped[p["set"]][p["model"]][p["item_id"]] = p
        steps[p["model"]] = p.get("step")
    boot = dict(n_boot=settings.bootstrap_samples, seed=seed, level=settings.confidence, min_items=settings.min_items)
    first = next(iter(set_configs.values()))
    report: dict = {
        "baseline": baseline, "models": models, "steps": {m: steps.get(m) for m in models},
        "metric": first.metrics[0], "confidence": settings.confidence, "bootstrap_samples": settings.bootstrap_samples,
        "min_items": settings.min_items, "sets": {}, "degraded": [],
    }
    for set_name, s in set_configs.items():
        by_model = grouped.get(set_name, {})
        tolerance = s.tolerance if s.tolerance is not None else settings.tolerance
        entry: dict = {
            "guard": s.guard, "tolerance": tolerance, "metrics": list(s.metrics),
            "metric_info": {m: {"label": METRICS[m].label, "higher_is_better": METRICS[m].higher_is_better} for m in s.metrics},
            "models": {}, "vs_base": {},
        }
        for model in models:
            if model not in by_model:
                continue
            per_metric = {m: _summary(by_model[model], m) for m in s.metrics}
            entry["models"][model] = {**per_metric[s.metrics[0]], "metrics": per_metric}
        base = by_model.get(baseline)
        for model in models:
            if base is None or model == baseline or model not in by_model:
                continue
            items = by_model[model]
            ids = [i for i in base if i in items]
            by_slice: dict = defaultdict(list)
            for i in ids:
                if base[i]["slice"] is not None:
                    by_slice[base[i]["slice"]].append(i)
            per_metric = {}
            for m in s.metrics:
                opts = dict(tolerance=tolerance, higher_is_better=METRICS[m].higher_is_better, **boot)
                cmp = {"overall": compare_scores([base[i]["scores"][m] for i in ids], [items[i]["scores"][m] for i in ids], **opts),
                       "slices": {sl: compare_scores([base[i]["scores"][m] for i in v], [items[i]["scores"][m] for i in v], **opts)
                                  for sl, v in sorted(by_slice.items())}}
                per_metric[m] = cmp
                for where, c in [("all", cmp["overall"]), *cmp["slices"].items()]:
                    if c["degraded"]:
                        report["degraded"].append({"set": set_name, "guard": s.guard, "model": model, "metric": m, "where": where,
                                                   "n": c["n"], "delta": c["delta"], "low": c["low"], "high": c["high"]})
            entry["vs_base"][model] = {**per_metric[s.metrics[0]], "metrics": per_metric}
        clean = _clean_part(by_model, set((contaminated or {}).get(set_name, ())), s.metrics[0])
        if clean:
            entry["clean"] = clean
        report["sets"][set_name] = entry
    report["any_degraded"] = bool(report["degraded"])
    return report


def _fmt(x, signed: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _width_note(c: dict, min_items: int) -> str:
    return f" (only {c['n']} items: wide)" if c["n"] < 4 * min_items else ""


def render_markdown(report: dict, title: str = "Evaluation on held-out real data") -> str:
    base = report["baseline"]
    level = round(report["confidence"] * 100)
    lines = [f"# {title}", ""]
    if report["degraded"]:
        lines += ["**Degraded** (the whole interval of the difference from "
                  f"`{base}` lies beyond the tolerance):", ""]
        lines += [f"- `{d['model']}` on {'guard set ' if d['guard'] else ''}`{d['set']}` ({d['where']}, n={d['n']}), "
                  f"{d['metric']}: {_fmt(d['delta'])} [{_fmt(d['low'])}, {_fmt(d['high'])}]" for d in report["degraded"]]
    else:
        lines.append(f"Nothing degraded against `{base}`.")
    lines.append("")
    for set_name, entry in report["sets"].items():
        models = list(entry["models"])
        metrics = entry["metrics"]
        labels = [entry["metric_info"][m]["label"] + ("" if entry["metric_info"][m]["higher_is_better"] else " (lower is better)")
                  for m in metrics]
        kind = " (guard set)" if entry["guard"] else ""
        lines += [f"## {set_name}{kind}", "", "| model | " + " | ".join(labels) + " | n |", "|---|" + "---:|" * (len(metrics) + 1)]
        for m in models:
            cells = [_fmt(entry["models"][m]["metrics"][k]["score"], signed=False) for k in metrics]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {entry['models'][m]['n']} |")
        if entry.get("clean"):
            c = entry["clean"]
            lines += ["", f"{c['contaminated']} item(s) leaked into the training data (see filter/contamination.jsonl); "
                      f"{labels[0]} on the {c['n']} clean items: "
                      + ", ".join(f"{m} {_fmt(v, signed=False)}" for m, v in c["models"].items()) + "."]
        slices = sorted({s for m in models for s in entry["models"][m]["slices"]})
        if slices:
            lines += ["", f"Per slice ({labels[0]}):", "", "| slice | n | " + " | ".join(models) + " |", "|---|---:|" + "---:|" * len(models)]
            for s in slices:
                n = max(entry["models"][m]["slices"].get(s, {}).get("n", 0) for m in models)
                cells = [_fmt(entry["models"][m]["slices"][s]["score"], signed=False) if s in entry["models"][m]["slices"] else ""
                         for m in models]
                lines.append(f"| {s} | {n} | " + " | ".join(cells) + " |")
        if entry["vs_base"]:
            lines += ["", f"Difference from `{base}` (paired bootstrap, {level}% interval, tolerance {entry['tolerance']:g}):", "",
                      "| model | metric | where | n | difference | interval | verdict |", "|---|---|---|---:|---:|---|---|"]
            for m, cmp in entry["vs_base"].items():
                for k in metrics:
                    c = cmp["metrics"][k]
                    label = entry["metric_info"][k]["label"]
                    for where, x in [("all", c["overall"]), *c["slices"].items()]:
                        verdict = f"**{x['verdict']}**" if x["degraded"] else x["verdict"]
                        lines.append(f"| {m} | {label} | {where} | {x['n']} | {_fmt(x['delta'])} | "
                                     f"[{_fmt(x['low'])}, {_fmt(x['high'])}]{_width_note(x, report['min_items'])} | {verdict} |")
        lines.append("")
    return "\n".join(lines)
