"""Which eval items reached the rows a student was trained on: its true leaks.

The rows are the kept rows of the files the adapter's training_data.json names (checked by
their sha256), read as the student saw them (input and completion, see train/formats.py).
They are matched with the decontaminate filter's own detector (LeakDetector) and settings, embedding
check included, so "leak" means the same at both places. Items the filter caught were in rows it rejected:
those never reached training and are reported apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from distill import rows as C
from distill.data.contamination import CONTAMINATED_ITEMS_FILE, TRAINED_FIELDS, LeakDetector, eval_items, leak_rule, trained_on_text
from distill.recipe import DecontaminateFilter, Recipe
from distill.run_dir import RunDir, hash_file

BATCH = 4096
MAX_RECORDS = 1000  # row-item pairs kept in report.json; the item ids are always complete


def detector_settings(recipe: Recipe) -> DecontaminateFilter:
    """The recipe's decontaminate step, embedding check included; without one, its n-gram defaults (the embedding
    check, a sentence encoder over every training row, runs only where the recipe asks for the filter)."""
    step = next((s for s in recipe.filter.steps if s.type == "decontaminate"), None)
    return step or DecontaminateFilter(type="decontaminate", embedding_threshold=None)


def trained_rows(adapter: Path) -> tuple[list[Path] | None, list[dict] | None, str | None]:
    """(rows files, their kept rows, why not measured) for an adapter that records its training data: its run's own
    rows file first, then the files of other runs it was also trained on (train.add_rows)."""
    record = adapter / "training_data.json"
    if not record.is_file() and adapter.parent.name == "checkpoints":  # a checkpoint saw the rows of its run's adapter
        record = adapter.parent.parent / "adapter" / "training_data.json"
    if not record.is_file():
        return None, None, f"{adapter} records no training data (training_data.json)"
    data = json.loads(record.read_text())
    named = Path(data.get("rows_file") or "")
    beside = record.parent.parent.parent / "filter" / "rows.parquet"  # run/train/adapter: the run may have moved
    path = named if named.is_file() else beside if beside.is_file() else None
    if path is None:
        return None, None, f"the rows file {named} named by {record} is missing"
    if data.get("rows_sha256") and hash_file(path) != data["rows_sha256"]:
        return [path], None, f"{path} changed since {adapter} was trained on it (sha256 differs)"
    files, rows = [path], _kept_rows(path)
    for added in data.get("added_rows", []):  # train.add_rows: other runs' rows, trained on with these
        other = Path(added["rows_file"])
        if not other.is_file():
            return files, None, f"the rows file {other} named by {record} is missing"
        if hash_file(other) != added["rows_sha256"]:
            return files, None, f"{other} changed since {adapter} was trained on it (sha256 differs)"
        files.append(other)
        rows += _kept_rows(other)
    if data.get("row_ids") is not None:  # trained on a sample of the kept rows (train.max_rows, rows left out by kd)
        used = set(data["row_ids"])
        rows = [r for r in rows if r.get(C.ID) in used]
    return files, rows, None


def _kept_rows(path: Path) -> list[dict]:
    table = pq.read_table(path, columns=[c for c in (C.ID, *TRAINED_FIELDS, C.KEPT) if c in pq.read_schema(path).names])
    return [r for r in table.to_pylist() if r.get(C.KEPT, True)]


def leaks_in_rows(sets: dict[str, list[dict]], rows: list[dict], cfg: DecontaminateFilter) -> list[dict]:
    """One record per (row, eval item) that the row leaks, found in the fields the student saw."""
    items = [it for name, loaded in sets.items() for it in eval_items(name, loaded, cfg.check_references)]
    fields = [f for f in TRAINED_FIELDS if rows and f in rows[0]]
    if not items or not fields:
        return []
    from distill.models.embeddings import embed

    detector = LeakDetector(items, cfg, embed)
    records = []
    for start in range(0, len(rows), BATCH):
        part = rows[start:start + BATCH]
        found, _ = detector.leaks_in({f: [r.get(f) for r in part] for f in fields}, fields)
        for i, leaks in enumerate(found):
            for k, (field, method, strength) in sorted(leaks.items()):
                records.append({"row_id": part[i].get(C.ID, str(start + i)), "field": field, "set": items[k].set,
                                "item_id": items[k].id, "method": method, "strength": strength})
    return records


def lineage(adapter: Path) -> list[Path]:
    """The adapter and each adapter it continued (train.init_adapter, a loop's earlier rounds): the rows of each
    were trained into it."""
    chain = [adapter]
    while True:
        record = chain[-1] / "training_data.json"
        before = json.loads(record.read_text()).get("continued_from") if record.is_file() else None
        if not before or Path(before) in chain:
            return chain
        chain.append(Path(before))


def measure(recipe: Recipe, sets: dict[str, list[dict]], adapters: list[Path]) -> dict | None:
    """Eval items per set that appear in the rows any of `adapters` was trained on (with the adapters they
    continued); None when no adapter is evaluated."""
    if not adapters:
        return None
    adapters = list(dict.fromkeys(a for adapter in adapters for a in lineage(Path(adapter))))
    cfg = detector_settings(recipe)
    out: dict = {"fields": list(TRAINED_FIELDS), "ngram": cfg.ngram, "check_references": cfg.check_references,
                 "embedding_threshold": cfg.embedding_threshold, "trained_on": [], "not_measured": [], "sets": {},
                 "records": []}
    found: dict[str, set[str]] = {name: set() for name in sets}
    records = []
    seen: set[Path] = set()
    for adapter in adapters:
        files, rows, problem = trained_rows(adapter)
        if problem:
            out["not_measured"].append(problem)
            continue
        if files[0].resolve() in seen:  # a run and its checkpoints: the same rows
            continue
        seen.add(files[0].resolve())
        out["trained_on"].append({"adapter": str(adapter), "rows_file": str(files[0]), "rows": len(rows),
                                  **({"added_rows_files": [str(f) for f in files[1:]]} if files[1:] else {})})
        for r in leaks_in_rows(sets, rows, cfg):
            found[r["set"]].add(r["item_id"])
            records.append({"adapter": str(adapter), **r})
    out["sets"] = {name: sorted(ids) for name, ids in found.items()}
    out["records"], out["records_total"] = records[:MAX_RECORDS], len(records)
    return out


def caught_by_filter(run: RunDir) -> dict[str, list[str]] | None:
    """Item ids per set that the decontaminate filter found in generated rows (and rejected those rows)."""
    path = run.stage("filter") / CONTAMINATED_ITEMS_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def attach(report: dict, measured: dict | None, caught: dict[str, list[str]] | None) -> dict:
    """Add the measurement to report.json: report["contamination"] and, per set, the counts the markdown shows."""
    if measured is None and caught is None:
        return report
    report["contamination"] = {**(measured or {"trained_on": [], "sets": {}}), "caught_by_filter": caught}
    for name, entry in report["sets"].items():
        reached = set((measured or {}).get("sets", {}).get(name, ()))
        removed = set((caught or {}).get(name, ()))
        entry["contamination"] = {"measured": measured is not None and bool(measured["trained_on"]),
                                  "reached_training": len(reached), "caught_by_filter": len(removed),
                                  "caught_but_reached": len(removed & reached)}
    return report


def contamination_lines(report: dict, entry: dict, label: str, fmt) -> list[str]:
    """The markdown lines of one set: true leaks with the clean score, then what the filter removed."""
    lines = []
    measured = report.get("contamination") or {}
    counts = entry.get("contamination") or {}
    if entry.get("clean"):
        c = entry["clean"]
        lines += ["", f"{c['reached_training']} item(s) appear in {trained_on_text(measured)} "
                  f"({leak_rule(measured)}; listed in report.json under contamination); "
                  f"{label} on the {c['n']} other items: " + ", ".join(f"{m} {fmt(v, signed=False)}" for m, v in c["models"].items())
                  + ". The scores, intervals and gate above include those items."]
    if counts.get("caught_by_filter"):
        also = counts.get("caught_but_reached", 0)
        lines += ["", f"The decontaminate filter found {counts['caught_by_filter']} item(s) in generated rows and rejected those rows, "
                  "which were not trained on (filter/contamination.jsonl)"
                  + (f"; {also} of these item(s) appear in other rows the student was trained on." if also else ".")]
    for why in measured.get("not_measured") or []:
        lines += ["", f"Not measured which items appear in the rows the student was trained on: {why}."]
    return lines
