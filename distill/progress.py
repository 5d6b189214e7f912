"""Progress bars and end-of-stage summaries, the same for every stage."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(total: int, desc: str, unit: str = "it", initial: int = 0) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


def print_summary(stage: str, summary: dict) -> None:
    parts = ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))
    print(f"[{stage}] done: {parts}", flush=True)
