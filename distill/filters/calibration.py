"""Agreement of the filters (and the judge) with human verdicts on a gold set.

The whole funnel is measured on every gold row. A single filter is measured on the rows it
rejected plus the rows that survived every filter: a row that another filter rejected says
nothing about this one (the human's 'reject' may be for that other reason). Humans'
'reject' is the positive class: precision and recall are those of rejections. Cohen's kappa corrects agreement for chance; a filter whose
kappa falls below the threshold gets a warning.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from distill import rows as C
from distill.errors import DataError
from distill.progress import console
from distill.run_dir import write_json, write_text

KEEP_WORDS = {"keep", "kept", "accept", "accepted", "good", "pass", "ok", "yes", "1", "true"}
REJECT_WORDS = {"reject", "rejected", "drop", "dropped", "bad", "fail", "no", "0", "false"}
PIPELINE = "all filters"


def parse_verdict(value, where: str) -> bool | None:
    """True for reject, False for keep, None for blank (not reviewed)."""
    text = "" if value is None else str(value).strip().lower()
    if text == "":
        return None
    if text in KEEP_WORDS:
        return False
    if text in REJECT_WORDS:
        return True
    raise DataError(f"{where}: verdict {value!r} is neither keep nor reject (use keep/reject, good/bad, 1/0)")


def read_verdicts(path: str | Path) -> dict[str, bool]:
    """{row id: True if the human rejects it} from a CSV or JSONL file with columns id and verdict."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: verdict file not found")
    records: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        records.append((n, json.loads(line)))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not valid JSON: {e.msg}") from None
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            records = [(n, row) for n, row in enumerate(reader, 2)]
    else:
        raise DataError(f"{path}: expected a .csv or .jsonl file of verdicts")
    verdicts: dict[str, bool] = {}
    for n, row in records:
        if not isinstance(row, dict) or not row.get("id"):
            raise DataError(f"{path}:{n}: row has no 'id' (expected columns id, verdict)")
        if "verdict" not in row:
            raise DataError(f"{path}:{n}: row has no 'verdict' (expected columns id, verdict)")
        verdict = parse_verdict(row["verdict"], f"{path}:{n}")
        if verdict is not None:
            verdicts[str(row["id"])] = verdict
    return verdicts


def agreement(human: list[bool], predicted: list[bool]) -> dict:
    """Accuracy, precision / recall of rejections and Cohen's kappa (None where undefined)."""
    from sklearn.metrics import cohen_kappa_score

    n = len(human)
    if n == 0:
        return {"n": 0, "accuracy": None, "precision": None, "recall": None, "kappa": None}
    tp = sum(h and p for h, p in zip(human, predicted))
    fp = sum(p and not h for h, p in zip(human, predicted))
    fn = sum(h and not p for h, p in zip(human, predicted))
    accuracy = sum(h == p for h, p in zip(human, predicted)) / n
    kappa = float(cohen_kappa_score(human, predicted, labels=[False, True])) if len(set(human) | set(predicted)) > 1 else None
    if kappa is not None and math.isnan(kappa):
        kappa = None
    return {"n": n, "accuracy": round(accuracy, 4), "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None, "kappa": None if kappa is None else round(kappa, 4),
            "human_rejects": tp + fn, "filter_rejects": tp + fp}


def calibrate(rows: list[dict], labels: list[str], verdicts: dict[str, bool], min_kappa: float) -> dict:
    """Agreement with the humans of the whole funnel and of each filter on the rows it saw."""
    by_id = {r[C.ID]: r for r in rows}
    gold = [(by_id[i], v) for i, v in verdicts.items() if i in by_id]
    unknown = sorted(i for i in verdicts if i not in by_id)
    results = {PIPELINE: agreement([v for _, v in gold], [not r[C.KEPT] for r, _ in gold])}
    for label in labels:
        judged = [(r, v) for r, v in gold if r[C.REJECTED_BY] in (None, label)]
        results[label] = agreement([v for _, v in judged], [r[C.REJECTED_BY] == label for r, _ in judged])
    warnings = []
    for name, m in results.items():
        if m["kappa"] is not None and m["kappa"] < min_kappa:
            warnings.append(f"{name} agrees with the human verdicts at Cohen's kappa {m['kappa']:.2f}, "
                            f"below {min_kappa} (n={m['n']}): check its settings before trusting it")
    if unknown:
        warnings.append(f"{len(unknown)} gold ids are not rows of this run (e.g. {unknown[0]})")
    return {"gold_rows": len(gold), "unknown_ids": len(unknown), "min_kappa": min_kappa, "agreement": results, "warnings": warnings}


def calibration_markdown(result: dict) -> str:
    def fmt(x):
        return "" if x is None else f"{x:.3f}"

    lines = ["# Agreement with human verdicts", "",
             f"{result['gold_rows']} rows with a human verdict; 'reject' is the positive class.", "",
             "| filter | n | accuracy | precision (reject) | recall (reject) | Cohen's kappa |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in result["agreement"].items():
        lines.append(f"| {name} | {m['n']} | {fmt(m['accuracy'])} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['kappa'])} |")
    if result["warnings"]:
        lines += ["", *[f"- warning: {w}" for w in result["warnings"]]]
    return "\n".join(lines) + "\n"


def write_calibration(result: dict, folder: Path) -> None:
    write_json(folder / "calibration.json", result)
    write_text(folder / "calibration.md", calibration_markdown(result))


def calibrate_run(recipe, run, gold: str | Path, folder: Path) -> dict:
    """Calibrate a run's filtered rows against a gold file; write calibration.json / .md; print warnings."""
    import pyarrow.parquet as pq

    from distill.filters.base import filter_labels

    if not run.filtered.is_file():
        raise DataError(f"{run.filtered}: no filtered rows; run `distill filter` first")
    columns = [C.ID, C.KEPT, C.REJECTED_BY]
    rows = pq.read_table(run.filtered, columns=columns).to_pylist()
    labels = filter_labels(recipe) if recipe is not None else list(dict.fromkeys(r[C.REJECTED_BY] for r in rows if r[C.REJECTED_BY]))
    result = calibrate(rows, labels, read_verdicts(gold), recipe.filter.calibration.min_kappa if recipe else 0.4)
    write_calibration(result, folder)
    for w in result["warnings"]:
        console(f"[calibration] warning: {w}")
    return result
