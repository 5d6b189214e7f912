"""The items where the evaluated models disagree, side by side, for the report's reader.

A figure says how often a model was right; these rows say on what. Per set: the items whose headline score or
answer text differs between models, with the input, the reference, each model's prompt and answer, and the slice.
"""

from __future__ import annotations

from collections import defaultdict

MAX_ROWS = 300  # per set in the HTML page; every answer is in predictions.parquet


def disagreements(predictions: list[dict], report: dict, max_rows: int = MAX_ROWS) -> dict[str, dict]:
    """set -> {"models", "rows", "total", "n_items", "slices", "worse"} for every set whose models wrote answers.

    A row: {"item_id", "input", "reference", "slice", "answers": [{"model", "prompt", "text", "score", "right"}],
    "worse": the student scored below the teacher}. "worse" is None when the set lacks either model."""
    by_item: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for row in predictions:
        if row.get("prediction") is not None:
            by_item[row["set"]][row["item_id"]][row["model"]] = row
    out = {}
    for set_name, items in by_item.items():
        entry = report["sets"].get(set_name)
        if entry is None:
            continue
        models = [m for m in entry["models"] if any(m in answers for answers in items.values())]
        higher = entry["metric_info"][entry["metrics"][0]]["higher_is_better"]
        pair = "student" in models and "teacher" in models
        rows = []
        for item_id, answers in items.items():
            present = [answers[m] for m in models if m in answers]
            if len({a["score"] for a in present}) == 1 and len({a["prediction"].strip() for a in present}) == 1:
                continue  # every model scored and answered the same
            first = present[0]
            worse = None
            if pair and "student" in answers and "teacher" in answers:
                s, t = answers["student"]["score"], answers["teacher"]["score"]
                worse = (s < t) if higher else (s > t)
            rows.append({
                "item_id": item_id, "input": first["input"], "reference": first["reference"], "slice": first["slice"],
                "worse": worse,
                "answers": [{"model": m, "prompt": answers[m]["prompt"], "text": answers[m]["prediction"],
                             "score": answers[m]["score"], "right": _right(answers[m]["score"], higher)}
                            if m in answers else None for m in models],
            })
        out[set_name] = {"models": models, "rows": rows[:max_rows], "total": len(rows), "n_items": len(items),
                         "slices": sorted({r["slice"] for r in rows if r["slice"] is not None}),
                         "worse": sum(1 for r in rows if r["worse"]) if pair else None}
    return out


def _right(score: float | None, higher_is_better: bool) -> bool | None:
    """Right or wrong where the headline score is a 0/1 share; None for graded scores."""
    if score in (0, 1) and higher_is_better:
        return score == 1
    return None
