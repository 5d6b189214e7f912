"""Write a report's files into one folder: predictions.parquet, report.json, report.md,
report.png (intervals), curve.png (checkpoints, when there are any) and report.html."""

from __future__ import annotations

from pathlib import Path

from distill.evaluate.chart import plot_curve, plot_differences
from distill.evaluate.html import render_html
from distill.evaluate.report import render_markdown
from distill.run_dir import write_json, write_parquet, write_text


def flat_predictions(rows: list[dict]) -> list[dict]:
    """One column per metric (empty where a set does not use it), so the table loads in any tool."""
    metrics = sorted({m for r in rows for m in r["scores"]})
    return [{**{k: v for k, v in r.items() if k != "scores"}, **{f"score_{m}": r["scores"].get(m) for m in metrics}} for r in rows]


def write_outputs(folder: Path, report: dict, predictions: list[dict], title: str) -> dict[str, Path]:
    folder = Path(folder)
    paths = {name: folder / name for name in ("predictions.parquet", "report.json", "report.md", "report.png", "report.html")}
    write_parquet(paths["predictions.parquet"], flat_predictions(predictions))
    write_json(paths["report.json"], report)
    write_text(paths["report.md"], render_markdown(report, title))
    plot_differences(report, paths["report.png"])
    images = [paths["report.png"]]
    if plot_curve(report, folder / "curve.png"):
        paths["curve.png"] = folder / "curve.png"
        images.append(paths["curve.png"])
    write_text(paths["report.html"], render_html(report, images, title, predictions))
    return paths
