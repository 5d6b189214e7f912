"""The loop's curve: the dev score of each round's student against the teacher prompts spent so far, the base and
the teacher beside it, and the loop's student on the test split once, at the end. loop/report.md and loop/curve.png;
`curve_chart` draws several loops (one line per strategy) for a comparison."""

from __future__ import annotations

import json
from pathlib import Path

from distill.loop.layout import LoopDir
from distill.run_dir import RunDir, write_text


def test_scores(run: RunDir) -> dict | None:
    """The run's evaluation (the test split and guard sets) of base, the loop's student and teacher: the headline per
    set and model."""
    if not run.eval_report.is_file():
        return None
    report = json.loads(run.eval_report.read_text())
    return {name: {"metric": entry["metrics"][0], "guard": entry.get("guard", False),
                   "models": {m: v["score"] for m, v in entry["models"].items()}}
            for name, entry in report["sets"].items()}


def loop_markdown(record: dict, test: dict | None) -> str:
    rounds = record["rounds"]
    metric = rounds[0]["dev_metric"] if rounds else "score"
    first = rounds[0]["dev"] if rounds else {}
    lines = [f"# The loop: {record['strategy']}", "",
             f"Teacher budget: {record['total_prompts']} prompts, {record['budget']['per_round']} per round; dev split: "
             f"{record['dev_size']} seed rows, never answered by the teacher nor trained on. Round 1 draws at random "
             f"for every strategy (no student has been measured yet). "
             + ("Each round trained a fresh adapter on the rows of every round so far (loop.train: retrain). "
                if record.get("train") == "retrain" else
                "Each round continued the adapter of the round before on its new rows. ")
             + "The strategies that read dev (errors, slices) steer toward it, so its scores flatter their students: the "
             "test split, evaluated once, is the measure.", "",
             f"Stopped after round {rounds[-1]['round'] if rounds else 0}: {record['stopped']}. The loop's student is "
             f"round {record['final_round']}'s.", "",
             f"| round | strategy | teacher prompts (total) | teacher tokens (total) | rows kept | dev {metric}: student |",
             "|---:|---|---:|---:|---:|---:|"]
    for r in rounds:
        final = " (the loop's student)" if r["round"] == record["final_round"] else ""
        guard = f"; guard degraded: {', '.join(r['guard_degraded'])}" if r["guard_degraded"] else ""
        lines.append(f"| {r['round']} | {r['strategy']} | {r['prompts']} ({r['teacher_prompts']}) | "
                     f"{r['teacher_tokens']} | {r['kept']} | {r['dev']['student']:.3f}{final}{guard} |")
    written = [r for r in rounds if r.get("written") is not None]
    if written:
        lines += ["", "The teacher wrote inputs modelled on the student's dev errors (loop.errors.synthesize), then "
                  "answered them: " + ", ".join(f"round {r['round']}: {r['written']} of its {r['prompts']} prompts"
                                                for r in written)
                  + ". Teacher tokens count the inputs it wrote with its answers. Dev is trained toward: its scores "
                  "are no held-out measure."]
    explored = [r for r in rounds if r.get("explored")]
    if explored:
        lines += ["", "Part of each round was drawn at random beside the strategy's choice (loop.explore): "
                  + ", ".join(f"round {r['round']}: {r['explored']} of its {r['prompts']} prompts" for r in explored)
                  + "."]
    beside = ", ".join(f"{m} {first[m]:.3f}" for m in ("base", "teacher") if m in first)
    if beside:
        lines += ["", f"On the same dev items, round 1 measured: {beside}."]
    if test:
        lines += ["", "## The loop's student on the held-out test split (evaluated once, after the last round)", "",
                  "| set | metric | " + " | ".join(sorted({m for t in test.values() for m in t["models"]})) + " |"]
        models = sorted({m for t in test.values() for m in t["models"]})
        lines.append("|---|---|" + "---:|" * len(models))
        for name, t in test.items():
            kind = " (guard)" if t["guard"] else ""
            lines.append(f"| {name}{kind} | {t['metric']} | "
                         + " | ".join(f"{t['models'][m]:.3f}" if m in t["models"] else "" for m in models) + " |")
        lines += ["", "Full report with intervals and slices: ../evaluate/report.md."]
    return "\n".join(lines) + "\n"


def curve_chart(lines: dict[str, list[tuple[int, float]]], path: Path, metric: str,
                marks: dict[str, float] | None = None, points: dict[str, tuple[int, float]] | None = None,
                title: str = "") -> None:
    """Score against teacher prompts, one line per label; `marks`: horizontal lines (base, teacher); `points`: single
    points (a final test score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, xy in lines.items():
        ax.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=label)
    for label, y in (marks or {}).items():
        ax.axhline(y, linestyle="--", linewidth=1, color="grey")
        ax.annotate(label, (0, y), textcoords="offset points", xytext=(2, 3), fontsize=8, color="grey")
    for label, (x, y) in (points or {}).items():
        ax.plot([x], [y], marker="*", markersize=12, linestyle="none", label=label)
    ax.set_xlabel("teacher prompts")
    ax.set_ylabel(metric)
    ax.set_xlim(left=0)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_loop_report(run: RunDir, record: dict) -> Path:
    layout = LoopDir(run)
    test = test_scores(run)
    write_text(layout.root / "report.md", loop_markdown(record, test))
    rounds = record["rounds"]
    if rounds:
        metric = rounds[0]["dev_metric"]
        points = None
        final = next((r for r in rounds if r["round"] == record["final_round"]), None)
        first_test = next((t for t in (test or {}).values() if not t["guard"]), None)
        if final and first_test and "student" in first_test["models"]:
            points = {"the loop's student on test": (final["teacher_prompts"], first_test["models"]["student"])}
        curve_chart({f"dev ({record['strategy']})": [(r["teacher_prompts"], r["dev"]["student"]) for r in rounds]},
                    layout.root / "curve.png", metric,
                    marks={f"{m} (dev)": rounds[0]["dev"][m] for m in ("base", "teacher") if m in rounds[0]["dev"]},
                    points=points)
    return layout.root / "report.md"
