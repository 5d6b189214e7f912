"""Progress bars, end-of-stage summaries and warnings: what a stage shows its user, the same for every stage.

Under `distill run` a stage's stdout and stderr (library logs, library progress bars) go to its log file only;
what this module writes goes to a pipe the parent passes in (`CONSOLE_FD_ENV`), which the parent shows on the
console and writes to the log too. A stage run alone writes to stdout / stderr, as any program does.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from tqdm.auto import tqdm

CONSOLE_FD_ENV = "DISTILL_CONSOLE_FD"
CONSOLE_COLUMNS_ENV = "DISTILL_CONSOLE_COLUMNS"

_console: TextIO | None = None
_columns: int | None = None


def attach_console() -> None:
    """Write console lines to the pipe the parent passed, if any.

    The variables are removed so that processes this one starts never write into an fd number that means
    something else to them.
    """
    global _console, _columns
    fd, columns = os.environ.pop(CONSOLE_FD_ENV, None), os.environ.pop(CONSOLE_COLUMNS_ENV, None)
    if fd is None:
        return
    try:
        _console = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8", errors="replace")
    except (OSError, ValueError):
        _console = None  # not a usable fd: fall back to stdout / stderr
    _columns = int(columns) if columns and columns.isdigit() else None


def progress(total: int, desc: str, unit: str = "it", initial: int = 0) -> tqdm:
    if _console is not None:  # a pipe has no width: the parent passes its terminal's
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, ncols=_columns, mininterval=1.0, file=_console)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


def console(message: str) -> None:
    """A line the user should see (a result, a warning): on the console even when the rest goes to the log only."""
    out = _console if _console is not None else sys.stdout
    tqdm.write(message, file=out)  # clears and redraws a bar drawn on the same line
    out.flush()


def print_summary(stage: str, summary: dict) -> None:
    parts = ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list)))
    console(f"[{stage}] done: {parts}")
