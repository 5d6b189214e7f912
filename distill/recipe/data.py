"""data: where the real rows come from (a file, a glob, a `datasets` folder, a Hub dataset), which columns are read, the
held-out split.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from distill.recipe.base import Section


class HeldoutSplit(Section):
    size: int = Field(gt=0, description="Rows held out for evaluation; never used as seeds or few-shot examples.")
    min_per_slice: int = Field(
        0, ge=0, description="Hold out at least this many rows of every slice, so rare slices can be measured. The "
        "split stays `size` rows: if the slices need more, generate stops with the numbers. A slice with no more rows "
        "than this is held out whole (a console warning says so) and leaves no seeds."
    )
    seed: int = Field(0, description="Seed of the deterministic split.")


DataFormat = Literal["auto", "jsonl", "csv", "parquet", "json", "bigbench", "arrow", "datasets"]
_GLOB = re.compile(r"[*?\[]")


def _resolve_source_path(value: str | None, info: ValidationInfo) -> str | None:
    """A data file, a folder (written by `datasets`' save_to_disk) or a glob of files, relative to the recipe."""
    if value is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    path = base / Path(value).expanduser()
    if _GLOB.search(value):
        import glob

        pattern = str(path.absolute())
        if not any(Path(p).is_file() for p in glob.glob(pattern)):
            raise ValueError(f"no file matches {pattern}")
        return pattern
    path = path.resolve()
    if not path.exists():
        raise ValueError(f"no such file or folder: {path}")
    return str(path)


class DataSource(Section):
    """Where rows are read from: a file, files matching a glob, a folder saved by `datasets`, or a Hugging Face Hub
    dataset. Exactly one of `path` and `hub`."""

    path: str | None = Field(
        None, description="A local file, relative to the recipe: JSONL, CSV, Parquet, JSON (a list of objects, as "
        "alpaca_data.json), a BIG-bench task.json or an .arrow file; a glob of such files (data/*.jsonl, read in name "
        "order); or a folder written by `datasets`' save_to_disk.")
    hub: str | None = Field(None, description="A Hugging Face Hub dataset id (tatsu-lab/alpaca), read through "
                            "`datasets`; from the local cache when offline (HF_HUB_OFFLINE=1).")
    config: str | None = Field(None, description="The Hub dataset's configuration (subset), e.g. gsm8k's 'main'.")
    split: str | None = Field(None, description="The split of a Hub dataset or a saved folder holding several "
                              "(default: train for the data, test then validation for an evaluation set, else the "
                              "only one).")
    revision: str | None = Field(None, description="The Hub dataset's revision (branch, tag or commit).")
    format: DataFormat = Field("auto", description="The format of `path`; auto: from the suffix (.jsonl, .csv, "
                               ".parquet, .json, .arrow; a folder is a `datasets` folder).")
    input_field: str | list[str] = Field(
        "input", description="The column holding the input; a list of columns is joined with a blank line, skipping "
        "empty ones (Alpaca: [instruction, input]). A column of chat messages (a list of {role, content}, or "
        "ShareGPT's {from, value}) is a conversation: its last user turn is the input, the turns before it (a system "
        "message among them) its history; it needs generate.chat and train.chat.")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _resolve_source_path(v, info)

    @field_validator("input_field")
    @classmethod
    def _some_field(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("a list of input columns needs at least one column, each once")
        return v

    @model_validator(mode="after")
    def _one_place(self):
        given = [k for k in ("path", "hub") if getattr(self, k) is not None]
        if len(given) > 1 or (not given and not self._may_have_no_source()):
            raise ValueError(f"give exactly one of path, hub (got {', '.join(given) or 'none'})")
        if self.hub is None and (self.config is not None or self.revision is not None):
            raise ValueError("config and revision are settings of a hub dataset: set hub, or leave them out")
        return self

    def _may_have_no_source(self) -> bool:
        return False


class DataSettings(DataSource):
    target_field: str | None = Field("target", description="Column holding the reference answer, if any; a column of "
                                     "chat messages gives its last assistant turn.")
    target_names: dict[str, str] = Field(
        {}, description="Rename reference values as the data is read, {value in the file: value used}, e.g. label codes "
        "to words a small teacher knows (`add_to_playlist: playlist`); the renamed values are what few-shot examples "
        "show and what the held-out split is scored against. Values not listed stay as they are."
    )
    slice_field: str | None = Field(None, description="Column naming each row's slice for per-slice results.")
    heldout: HeldoutSplit = Field(description="The held-out evaluation split of this data.")
    max_seeds: int | None = Field(None, gt=0, description="Use at most this many non-held-out rows as seeds (a reproducible sample, in file order).")
    answer_only: str | None = Field(
        None, description="A JSONL file of seed ids ({\"id\": ...} per line, as a loop round's select/selected.jsonl "
        "writes them): the teacher answers only these seeds; every seed is still drawn as a few-shot example. A "
        "line's `why` is kept in its rows' provenance.")

    @field_validator("answer_only")
    @classmethod
    def _selection_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        from distill.recipe.base import resolve_existing

        return resolve_existing(v, info, folder=False)
