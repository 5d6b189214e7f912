"""The loss curve as a PNG, for people who would rather look than read."""

from __future__ import annotations

from pathlib import Path

from distill.run_dir import atomic_path


def plot_loss(steps: list[int], losses: list[float], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, marker="o" if len(steps) < 40 else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_loss_terms(steps: list[int], terms: dict[str, list[float]], out: Path, title: str) -> None:
    """One panel per loss term: cross-entropy and the KD divergence differ in scale by orders of magnitude, and a
    shared axis would flatten the smaller one."""
    plot_series({name: (steps, values) for name, values in terms.items()}, out, title)


def plot_series(series: dict[str, tuple[list[int], list[float]]], out: Path, title: str) -> None:
    """One panel per named curve, each over its own steps (on-policy and off-policy steps interleave)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 3.3), squeeze=False)
    for ax, (name, (steps, values)) in zip(axes[0], series.items()):
        ax.plot(steps, values, marker="o" if len(steps) < 40 else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
