"""Charts of a report: each model's difference from the baseline with its interval on every metric that moved, and a
curve over checkpoints."""

from __future__ import annotations

from pathlib import Path

from distill.evaluate.report import set_kind
from distill.run_dir import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def _moved(entry: dict, metric: str) -> bool:
    """Whether any comparison on `metric` differs from the baseline at all (a nonzero difference or interval)."""
    return any(c["delta"] is not None and (c["delta"], c["low"], c["high"]) != (0, 0, 0)
               for cmp in entry["vs_base"].values() for c in [cmp["metrics"][metric]["overall"], *cmp["metrics"][metric]["slices"].values()])


def panels(report: dict) -> list[tuple[str, str]]:
    """(set, metric) for each panel: per set every metric that moved, or its headline metric when none did. A guard
    set's exact match that is 0 for every model says nothing; its NLL jump is the story."""
    out = []
    for set_name, entry in report["sets"].items():
        moved = [m for m in entry["metrics"] if _moved(entry, m)]
        out += [(set_name, m) for m in (moved or entry["metrics"][:1])]
    return out


def plot_differences(report: dict, out: Path) -> None:
    """One panel per set and metric that moved (`panels`): a row per model and slice, the bootstrap interval as a
    bar, red when the gate found it degraded, green when improved, grey otherwise (and for models reported only)."""
    plt = _plt()
    shown = panels(report)
    heights = [max(1, sum(1 + len(c["metrics"][m]["slices"]) for c in report["sets"][s]["vs_base"].values())) for s, m in shown]
    fig, axes = plt.subplots(len(shown), 1, figsize=(7, 1.2 + 0.35 * sum(heights) + 0.6 * len(shown)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (set_name, metric) in zip(axes[:, 0], shown):
        entry = report["sets"][set_name]
        info = entry["metric_info"][metric]
        rows = [(f"{m} · {where}" + ("" if c.get("gated") else " (reported only)"), c) for m, cmp in entry["vs_base"].items()
                for where, c in [("all", cmp["metrics"][metric]["overall"]), *cmp["metrics"][metric]["slices"].items()]]
        for y, (label, c) in enumerate(reversed(rows)):
            if c["delta"] is None:
                continue
            color = "tab:red" if c["degraded"] else ("tab:green" if c["verdict"] == "improved" else "tab:gray")
            ax.errorbar(c["delta"], y, xerr=[[c["delta"] - c["low"]], [c["high"] - c["delta"]]], fmt="o", color=color, capsize=3)
            ax.text(1.01, y, f"n={c['n']}", transform=ax.get_yaxis_transform(), va="center", fontsize=7)
        ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=8)
        ax.axvline(0, color="black", lw=0.8)
        tol = entry["tolerance"].get(metric) if isinstance(entry["tolerance"], dict) else entry["tolerance"]
        if tol:
            ax.axvline(-tol if info["higher_is_better"] else tol, color="tab:red", lw=0.8, ls="--")
        better = "higher is better" if info["higher_is_better"] else "lower is better"
        kind = f"{set_kind(entry)} " if entry["guard"] else ""
        ax.set_title(f"{kind}{set_name}: {info['label']} minus {report['baseline']} ({better})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        if not rows:
            ax.text(0.5, 0.5, "no comparison", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def plot_curve(report: dict, out: Path) -> bool:
    """Headline metric against training step for checkpoints (the baseline's score plus the interval of the difference)."""
    steps = {m: s for m, s in report["steps"].items() if s is not None}
    if len(steps) < 2:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for set_name, entry in report["sets"].items():
        metric = entry["metrics"][0]
        ordered = sorted((s, m) for m, s in steps.items() if m in entry["models"])
        xs = [s for s, _ in ordered]
        ys = [entry["models"][m]["metrics"][metric]["score"] for _, m in ordered]
        base = entry["models"].get(report["baseline"], {}).get("metrics", {}).get(metric, {}).get("score")
        line = ax.plot(xs, ys, marker="o", label=f"{set_name} ({entry['metric_info'][metric]['label']})")[0]
        if base is not None:
            lows = [base + entry["vs_base"][m]["metrics"][metric]["overall"]["low"] if m in entry["vs_base"] else y for (_, m), y in zip(ordered, ys)]
            highs = [base + entry["vs_base"][m]["metrics"][metric]["overall"]["high"] if m in entry["vs_base"] else y for (_, m), y in zip(ordered, ys)]
            ax.fill_between(xs, lows, highs, alpha=0.2, color=line.get_color())
            ax.axhline(base, color=line.get_color(), ls=":", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("score")
    ax.set_title(f"checkpoints (dotted: {report['baseline']})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return True
