"""Evaluation figures: per model, per metric, per slice, and each model's difference from the
baseline with a paired bootstrap interval; for the gate's models, a corrected degradation verdict.
Written as report.json (every figure) and report.md (tables)."""

from __future__ import annotations

import math
from collections import defaultdict

from distill.evaluate.metrics import METRICS
from distill.evaluate.stats import degradation_test, gate, paired_bootstrap
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
        # exp of the mean per-item NLL: the geometric mean of the items' perplexities, each item weighing alike as in
        # the score (the token-weighted perplexity of the metric itself is `token_perplexity`)
        out["item_perplexity"] = math.exp(out["score"]) if scores else None
    return out


def _clean_part(by_model: dict, leaked: set[str], metric: str) -> dict | None:
    """Headline score of each model on the items that are not in the rows the student was trained on."""
    items = next(iter(by_model.values()), {})
    hit = leaked & set(items)
    if not hit:
        return None
    return {"n": len(items) - len(hit), "reached_training": len(hit),
            "models": {m: _mean([p["scores"][metric] for i, p in rows.items() if i not in hit]) for m, rows in by_model.items()}}


GATE_KEYS = ("tolerance", "sd", "p", "p_adjusted", "gate_low", "gate_high", "gate_level", "mde", "verdict", "degraded")


def gated_models(models: list[str], steps: dict, baseline: str, chosen: list[str]) -> list[str]:
    """The evaluate stage's models that `evaluate.gate.models` names (checkpoints are named student@STEP there)."""
    checkpoints = [m for m in models if m.startswith("student@")]
    picked = {m for m in ("student", "teacher") if m in chosen}
    if "checkpoints" in chosen:
        picked |= set(checkpoints)
    if "last_checkpoint" in chosen and checkpoints:
        picked.add(max(checkpoints, key=lambda m: steps.get(m) or 0))
    return [m for m in models if m in picked and m != baseline]


def _compare(a: list[float], b: list[float], boot: dict, gated: bool, tolerance: float, higher_is_better: bool,
             share: bool, tests: list) -> dict:
    """The bootstrap interval of b - a; for a gated model also its degradation test, decided with the family later."""
    c = paired_bootstrap(a, b, **boot)
    if gated:
        c["gated"] = True
        tests.append((c, degradation_test(a, b, tolerance=tolerance, higher_is_better=higher_is_better, share=share)))
    else:
        c.update(gated=False, verdict="reported only", degraded=False)
    return c


def build_report(predictions: list[dict], settings: EvaluateSettings, baseline: str, models: list[str],
                 set_configs: dict, seed: int = 0, contaminated: dict[str, list[str]] | None = None,
                 gated: list[str] | None = None, repaired: list[str] | None = None) -> dict:
    """`predictions` are Scorer rows; `set_configs` maps each set name to its EvalSet; `contaminated` maps a
    set name to the ids of its items found in the rows the student was trained on; `gated` names the
    models whose differences the gate decides (default: those `settings.gate.models` names); `repaired` names the
    guard sets on-policy repair trained toward (distill.train.repair.repaired_guard_sets)."""
    grouped: dict = defaultdict(lambda: defaultdict(dict))  # set -> model -> item_id -> row
    steps: dict = {}
    for p in predictions:
        grouped[p["set"]][p["model"]][p["item_id"]] = p
        steps[p["model"]] = p.get("step")
    boot = dict(n_boot=settings.bootstrap_samples, seed=seed, level=settings.confidence)
    g = settings.gate
    gated = gated_models(models, steps, baseline, g.models) if gated is None else [m for m in gated if m != baseline]
    first = next(iter(set_configs.values()))
    report: dict = {
        "baseline": baseline, "models": models, "steps": {m: steps.get(m) for m in models},
        "metric": first.metrics[0], "confidence": settings.confidence, "bootstrap_samples": settings.bootstrap_samples,
        "min_items": g.min_items, "sets": {}, "degraded": [],
    }
    tests: list = []  # (comparison, its degradation test) of every gated row, corrected together below
    where_of: dict = {}  # id(comparison) -> (set, model, metric, where)
    for set_name, s in set_configs.items():
        by_model = grouped.get(set_name, {})
        tolerance = {m: (s.tolerance or {}).get(m, g.tolerance.get(m, METRICS[m].tolerance)) for m in s.metrics}
        entry: dict = {
            "guard": s.guard, "repaired": s.guard and set_name in (repaired or ()), "tolerance": tolerance,
            "metrics": list(s.metrics),
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
                opts = dict(boot=boot, gated=model in gated, tolerance=tolerance[m],
                            higher_is_better=METRICS[m].higher_is_better, share=METRICS[m].share, tests=tests)
                cmp = {"overall": _compare([base[i]["scores"][m] for i in ids], [items[i]["scores"][m] for i in ids], **opts),
                       "slices": {sl: _compare([base[i]["scores"][m] for i in v], [items[i]["scores"][m] for i in v], **opts)
                                  for sl, v in sorted(by_slice.items())}}
                per_metric[m] = cmp
                for where, c in [("all", cmp["overall"]), *cmp["slices"].items()]:
                    where_of[id(c)] = (set_name, model, m, where)
            entry["vs_base"][model] = {**per_metric[s.metrics[0]], "metrics": per_metric}
        clean = _clean_part(by_model, set((contaminated or {}).get(set_name, ())), s.metrics[0])
        if clean:
            entry["clean"] = clean
        report["sets"][set_name] = entry
    report["gate"] = {"models": gated, **gate([t for _, t in tests], correction=g.correction, alpha=g.alpha,
                                               min_items=g.min_items)}
    for c, t in tests:
        c.update({k: t[k] for k in GATE_KEYS})
        if c["degraded"]:
            set_name, model, m, where = where_of[id(c)]
            entry = report["sets"][set_name]
            report["degraded"].append({"set": set_name, "guard": entry["guard"], "repaired": entry["repaired"],
                                       "model": model, "metric": m, "where": where,
                                       "n": c["n"], "delta": c["delta"], "low": c["gate_low"], "high": c["gate_high"],
                                       "level": c["gate_level"], "p_adjusted": c["p_adjusted"], "tolerance": c["tolerance"]})
    report["any_degraded"] = bool(report["degraded"])
    return report


def _fmt(x, signed: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


_CORRECTION_TEXT = {
    "holm": "Holm-corrected: the chance of any false 'degraded' among them is at most {a}",
    "bh": "Benjamini-Hochberg: the expected share of false 'degraded' among the flagged rows is at most {a}",
    "none": "uncorrected: each row is tested at {a}",
}


def set_kind(entry: dict) -> str:
    """A guard set's kind in degraded lines (a set entry or a degraded row): whether repair trained toward it; a
    report.json written before repaired sets were marked has no `repaired`."""
    return ("repaired guard set" if entry.get("repaired") else "guard set") if entry.get("guard") else ""


def heading_kind(entry: dict) -> str:
    """The parenthesis after a set's name in its heading."""
    if not entry.get("guard"):
        return ""
    return " (guard set, repaired: on-policy repair trained the student on prompts like its items)" \
        if entry.get("repaired") else " (guard set)"


def _names(xs: list[str]) -> str:
    return ", ".join(f"`{x}`" for x in xs)


def general_ability_text(report: dict) -> str:
    """Which guard sets measure general ability, when repair trained toward some of them; else nothing."""
    guards = [name for name, e in report["sets"].items() if e.get("guard")]
    repaired = [name for name in guards if report["sets"][name].get("repaired")]
    if not repaired:
        return ""
    text = (f"Repaired guard set{'s' if len(repaired) > 1 else ''} {_names(repaired)}: on-policy repair trained the "
            "student toward an earlier model on prompts like "
            + ("their items, so they pass" if len(repaired) > 1 else "its items, so it passes")
            + " nearly by construction; ")
    rest = [name for name in guards if name not in repaired]
    if rest:
        return text + f"general ability rests on {_names(rest)}."
    return text + "no guard set measures general ability in this run."


def gate_description(report: dict) -> str:
    """What the gate tested, in one paragraph (report.md and report.html)."""
    g = report["gate"]
    names = ", ".join(f"`{m}`" for m in g["models"])
    guards = general_ability_text(report)
    if not g["models"]:
        return " ".join(filter(None, [f"Gate: no model is gated against `{report['baseline']}`; every difference is "
                                      "reported only.", guards]))
    alpha = f"{g['alpha']:.0%}" if round(g["alpha"] * 100, 6).is_integer() else f"{g['alpha']:g}"
    return (f"Gate: {names} against `{report['baseline']}` on every set, slice and guard set of at least {g['min_items']} items: "
            f"{g['tests']} tests, each a one-sided paired t test of a drop beyond the metric's tolerance, "
            + _CORRECTION_TEXT[g["correction"]].format(a=alpha) + ". "
            "The gate interval's ends are one-sided bounds at the level shown, the level the correction tested that row at; "
            "a row is degraded when its gate interval lies wholly beyond the tolerance on the worse side "
            "(improved: on the better side). "
            f"MDE: the smallest true drop (tolerance included, in the metric's unit) that a row detects with {g['power']:.0%} "
            f"power at {g['mde_level']:.2%} confidence (the family's strictest level), from the spread of its per-item "
            "differences (for scores in [0, 1], plus the most spread such a drop can add). "
            "Rows of other models are reported only, with no verdict." + (f" {guards}" if guards else ""))


def gate_cells(x: dict) -> list[str]:
    """tolerance, gate interval (level), adjusted p, MDE and verdict of one difference row."""
    if not x.get("gated"):
        return ["", "", "", "", x["verdict"]]
    verdict = x["verdict"]
    if x.get("gate_low") is None:
        return [f"{x['tolerance']:g}", "", "", "", verdict]
    return [f"{x['tolerance']:g}", f"[{_fmt(x['gate_low'])}, {_fmt(x['gate_high'])}] ({x['gate_level']:.2%})",
            f"{x['p_adjusted']:.2g}", "none up to 1" if x["mde"] is None else _fmt(x["mde"], signed=False), verdict]


def cache_lines(report: dict) -> list[str]:
    """Which models' results on which sets were reused from the evaluation cache, not scored by this run."""
    used = (report.get("cache") or {}).get("from_cache") or {}
    if not used:
        return []
    parts = "; ".join(f"`{m}` on {', '.join(f'`{s}`' for s in sets)}" for m, sets in used.items())
    return [f"From the evaluation cache (`{report['cache']['dir']}`; scored earlier with the same model, items, prompts "
            f"and settings): {parts}.", ""]


def serving_lines(report: dict) -> list[str]:
    """How trained adapters generated their answers (evaluate.serve_adapters)."""
    served = report.get("adapters_served")
    if served == "merged":
        return ["Trained adapters answered from their weights merged into the base model's (an engine without LoRA); "
                "their reference NLL is read from the adapter itself.", ""]
    return ["Trained adapters answered through LoRA on the base model's engine.", ""] if served == "lora" else []


def cost_lines(report: dict) -> list[str]:
    """What training the student cost the teacher (and the student's own sampling, on-policy)."""
    c = report.get("training_cost")
    if not c:
        return []
    text = (f"Training cost: the teacher answered {c['teacher_prompts_answered']} prompts with "
            f"{c['teacher_answer_tokens']} tokens in the generate stage ({c['generate_seconds']} s); training "
            f"(`{c['objective']}`) took {c['train_seconds']} s")
    if c.get("sft_phase_seconds") is not None:
        text += f" (its SFT phase {c['sft_phase_seconds']} s)"
    if "teacher_tokens_scored" in c:
        text += (f", the student sampled {c['student_tokens_sampled']} tokens, and the teacher read "
                 f"{c.get('teacher_prompts_scored', 0)} prompts of {c.get('teacher_prompt_tokens_read', 0)} tokens "
                 f"to score {c['teacher_tokens_scored']} answer tokens")
        if c["repair_tokens_scored"]:
            text += f" (the repair teacher scored {c['repair_tokens_scored']})"
        text += f", over {c['adapter_reloads']} adapter reloads"
        if "teacher_prompts" in c:
            text += f"; the teacher read {c['teacher_prompts']} prompts in all"
    return [text + ".", ""]


def render_markdown(report: dict, title: str = "Evaluation on held-out real data") -> str:
    base = report["baseline"]
    level = round(report["confidence"] * 100)
    lines = [f"# {title}", ""]
    if report["degraded"]:
        lines += ["**Degraded** (gated rows whose gate interval of the difference from "
                  f"`{base}` lies wholly beyond the metric's tolerance on the worse side):", ""]
        lines += [f"- `{d['model']}` on {(set_kind(d) + ' ') if d['guard'] else ''}`{d['set']}` ({d['where']}, n={d['n']}), "
                  f"{d['metric']}: {_fmt(d['delta'])} [{_fmt(d['low'])}, {_fmt(d['high'])}] at {d['level']:.2%}, "
                  f"tolerance {d['tolerance']:g}, adjusted p {d['p_adjusted']:.2g}" for d in report["degraded"]]
    elif report["gate"]["models"]:
        lines.append(f"Nothing gated degraded against `{base}`.")
    lines += ["", gate_description(report), ""]
    lines += cache_lines(report) + serving_lines(report) + cost_lines(report)
    for set_name, entry in report["sets"].items():
        models = list(entry["models"])
        metrics = entry["metrics"]
        labels = [entry["metric_info"][m]["label"] + ("" if entry["metric_info"][m]["higher_is_better"] else " (lower is better)")
                  for m in metrics]
        lines += [f"## {set_name}{heading_kind(entry)}", "", "| model | " + " | ".join(labels) + " | n |", "|---|" + "---:|" * (len(metrics) + 1)]
        for m in models:
            cells = [_fmt(entry["models"][m]["metrics"][k]["score"], signed=False) for k in metrics]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {entry['models'][m]['n']} |")
        from distill.evaluate.contamination import contamination_lines

        lines += contamination_lines(report, entry, labels[0], _fmt)
        slices = sorted({s for m in models for s in entry["models"][m]["slices"]})
        if slices:
            lines += ["", f"Per slice ({labels[0]}):", "", "| slice | n | " + " | ".join(models) + " |", "|---|---:|" + "---:|" * len(models)]
            for s in slices:
                n = max(entry["models"][m]["slices"].get(s, {}).get("n", 0) for m in models)
                cells = [_fmt(entry["models"][m]["slices"][s]["score"], signed=False) if s in entry["models"][m]["slices"] else ""
                         for m in models]
                lines.append(f"| {s} | {n} | " + " | ".join(cells) + " |")
        if entry["vs_base"]:
            lines += ["", f"Difference from `{base}` ({level}% paired bootstrap interval for every model; gate columns for "
                      "gated rows only, see Gate above):", "",
                      f"| model | metric | where | n | difference | {level}% interval | tolerance | gate interval (level) "
                      "| adjusted p | MDE | verdict |", "|---|---|---|---:|---:|---|---:|---|---:|---:|---|"]
            for m, cmp in entry["vs_base"].items():
                for k in metrics:
                    c = cmp["metrics"][k]
                    label = entry["metric_info"][k]["label"]
                    for where, x in [("all", c["overall"]), *c["slices"].items()]:
                        cells = gate_cells(x)
                        if x["degraded"]:
                            cells[-1] = f"**{cells[-1]}**"
                        lines.append(f"| {m} | {label} | {where} | {x['n']} | {_fmt(x['delta'])} | "
                                     f"[{_fmt(x['low'])}, {_fmt(x['high'])}] | " + " | ".join(cells) + " |")
        lines.append("")
    from distill.evaluate.fidelity import fidelity_lines

    lines += fidelity_lines(report)
    return "\n".join(lines)
