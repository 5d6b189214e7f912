"""Read every input file's format and first rows before any work starts.

`distill validate` and the start of `distill run` / `distill generate` call `preflight`, so that a data or evaluation
file distill cannot read stops the run with one line naming the file (and line) instead of after generation.
Text files are also decoded whole as UTF-8 (in blocks, constant memory): a bad byte anywhere is named by its line.
"""

from __future__ import annotations

from pathlib import Path

from distill.data.loaders import check_utf8, detect_format, read_rows
from distill.errors import DataError
from distill.recipe import Recipe

PEEK_ROWS = 100


def _check_text(path: Path, fmt: str) -> str:
    fmt = detect_format(path, fmt)
    if fmt != "parquet" and path.is_file():
        check_utf8(path)
    return fmt


def preflight(recipe: Recipe, rows: int = PEEK_ROWS) -> list[str]:
    """Check the recipe's data file and each evaluation set file: format, UTF-8, and the first `rows` rows with the
    fields the run reads. Raises DataError on the first problem; returns one line per file checked."""
    from distill.data.eval_sets import peek_items

    d = recipe.data
    path = Path(d.path)
    fmt = _check_text(path, d.format)
    # the fields the generate stage requires of every row (target only for few-shot examples)
    need = (d.input_field,) + ((d.target_field,) if recipe.generate.few_shot.k and d.target_field else ())
    first = read_rows(path, d.format, required=need, limit=rows)
    if not first:
        raise DataError(f"{path}: no rows")
    heldout_scored = any(s.data == "heldout" for s in recipe.evaluate.sets)
    if heldout_scored and d.target_field and not any(r.get(d.target_field) not in (None, "") for r in first):
        raise DataError(f"{path}: none of the first {len(first)} rows has a {d.target_field!r} value (has: "
                        f"{', '.join(k for k in first[0] if k != '_line')}), and the held-out split is scored against "
                        f"data.target_field: name the column holding the reference answers")
    checked = [f"data {path}: {fmt}, first {len(first)} rows read"]
    for i, s in enumerate(recipe.evaluate.sets):
        if not s.path:
            continue
        set_path = Path(s.path)
        try:
            set_fmt = "datasets" if set_path.is_dir() and s.format in ("auto", "datasets") else _check_text(set_path, s.format)
            items = peek_items(s, rows)
        except DataError as e:
            raise DataError(f"evaluate.sets.{i} ({s.name!r}): {e}") from None
        checked.append(f"evaluate set {s.name!r} {set_path}: {set_fmt}, first {len(items)} rows read")
    return checked
