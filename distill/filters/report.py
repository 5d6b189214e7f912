"""The filter funnel: rows in and out of each filter with its top reasons, as Markdown, JSON and a PNG chart."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pyarrow as pa

from distill import rows as C
from distill.run_dir import atomic_path, write_json, write_text

_DIGITS = re.compile(r"\b[0-9a-f]{16}\b|\d+(\.\d+)?")


def reason_kind(reason: str) -> str:
    """A reason with its numbers and row ids blanked, so that alike reasons count together."""
    return _DIGITS.sub("#", reason)


def funnel(table: pa.Table, labels: list[str], top: int = 3) -> list[dict]:
    rejected_by = table.column(C.REJECTED_BY).to_pylist()
    reasons = table.column(C.REASON).to_pylist()
    by_filter: dict[str, list[str]] = {label: [] for label in labels}
    for who, why in zip(rejected_by, reasons):
        if who is not None:
            by_filter.setdefault(who, []).append(why or "")
    steps, remaining = [], table.num_rows
    for label in labels:
        rejected = by_filter[label]
        common = Counter(reason_kind(r) for r in rejected).most_common(top)
        steps.append({"filter": label, "in": remaining, "rejected": len(rejected), "out": remaining - len(rejected),
                      "top_reasons": [{"reason": r, "count": n} for r, n in common]})
        remaining -= len(rejected)
    return steps


def funnel_markdown(steps: list[dict], rows: int, kept: int) -> str:
    lines = [f"# Filter funnel\n\n{rows} rows in, {kept} kept ({kept / rows:.1%}).\n" if rows else "# Filter funnel\n\nNo rows.\n",
             "| filter | in | rejected | out | top reasons |", "|---|---:|---:|---:|---|"]
    for s in steps:
        top = "; ".join(f"{r['reason']} ({r['count']})" for r in s["top_reasons"]).replace("|", "\\|")
        lines.append(f"| {s['filter']} | {s['in']} | {s['rejected']} | {s['out']} | {top} |")
    return "\n".join(lines) + "\n"


def funnel_chart(steps: list[dict], rows: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["generated"] + [s["filter"] for s in steps]
    kept = [rows] + [s["out"] for s in steps]
    dropped = [0] + [s["rejected"] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(labels) + 1.2))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, kept, color="#4c72b0", label="kept")
    ax.barh(y, dropped, left=kept, color="#dd8452", label="rejected here")
    for yi, k, d in zip(y, kept, dropped):
        ax.text(k + d, yi, f" {k}" + (f" (-{d})" if d else ""), va="center", fontsize=8)
    ax.set_yticks(y, labels)
    ax.set_xlabel("rows")
    ax.set_title("Filter funnel")
    ax.set_xlim(0, max(rows, 1) * 1.2)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_funnel(folder: Path, steps: list[dict], rows: int, kept: int) -> None:
    write_text(folder / "funnel.md", funnel_markdown(steps, rows, kept))
    write_json(folder / "funnel.json", {"rows": rows, "kept": kept, "steps": steps})
    funnel_chart(steps, rows, folder / "funnel.png")
