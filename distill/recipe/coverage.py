"""coverage: the audit of attribute cells and the synthetic-against-real check."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from distill.recipe.base import Section


class SyntheticVsRealSettings(Section):
    """Does what the teacher wrote differ from what the real data holds at the same place? Complete and label
    modes: the teacher's answers against the held-out references; synthesize mode: the teacher's inputs against
    the held-out inputs. Categories get a total-variation test, free text MiniLM embeddings (MMD and a classifier)."""

    enabled: bool = Field(True, description="Run the check in the document stage (free text needs the offline MiniLM embedder).")
    max_rows: int = Field(500, ge=10, description="Compare at most this many texts from each side (a reproducible sample).")
    permutations: int = Field(200, ge=20, description="Permutations behind the p-value (MMD, or total variation for categories).")
    alpha: float = Field(0.01, gt=0, lt=1, description="Significance level of the permutation test.")
    warn_auc: float = Field(
        0.75, gt=0.5, le=1, description="Free text: warn when the difference is significant and the classifier AUC is at least this."
    )
    warn_tv: float = Field(
        0.2, gt=0, le=1, description="Categories: warn when the difference is significant and the total variation distance "
        "between the two value distributions (the share of one side that would have to change value) is at least this."
    )
    categorical_max_values: int = Field(
        20, ge=2, description="Complete mode: answers are compared as categories when the held-out references take at "
        "most this many distinct values, each seen twice on average or more (label mode with `choice` always is)."
    )

    @model_validator(mode="after")
    def _enough_permutations(self) -> "SyntheticVsRealSettings":
        if 1 / (self.permutations + 1) >= self.alpha:  # the smallest p-value a permutation test can give
            raise ValueError(f"{self.permutations} permutations cannot reach p < alpha = {self.alpha}; use at least "
                             f"{int(1 / self.alpha)}")
        return self


class CoverageSettings(Section):
    """Attribute cells: kept rows per cell against target shares and the real data, after filtering."""

    column: Literal["auto", "cell", "slice"] = Field(
        "auto", description="What a cell is: 'cell' (the generation grid's attribute values), 'slice' (the real data's "
        "slice column), or 'auto' (cell when the rows have one, else slice)."
    )
    targets: dict[str, float] = Field(
        default_factory=dict, description="Target share of kept rows per cell, e.g. {irregular: 0.2}; a grid cell is named "
        "'attr=value, attr=value' in the grid's attribute order. Default: the real data's share for slices, the "
        "generated share for grid cells."
    )
    tolerance: float = Field(
        0.5, ge=0, lt=1, description="A cell is under-represented when its kept share is below target share x (1 - tolerance)."
    )
    synthetic_vs_real: SyntheticVsRealSettings = Field(
        default_factory=SyntheticVsRealSettings, description="Two-sample check of what the teacher wrote against the real held-out data."
    )

    @field_validator("targets")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        if any(not 0 <= share <= 1 for share in v.values()):
            raise ValueError("every target share must be between 0 and 1")
        if sum(v.values()) > 1 + 1e-6:
            raise ValueError(f"target shares add up to {sum(v.values()):.3f}, more than 1")
        return v
