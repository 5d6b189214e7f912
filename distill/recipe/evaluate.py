"""evaluate: the evaluation sets, their metrics, the gate that says degraded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from distill.metrics import DEFAULT_TOLERANCES, METRICS
from distill.recipe.base import Section, recipe_relative
from distill.recipe.data import DataSource


MetricName = Literal[tuple(METRICS)]  # type: ignore[valid-type]  (the names of distill.metrics.METRICS)


class EvalSet(DataSource):
    name: str = Field(description="Name used in reports.")
    data: Literal["heldout", "dev"] | None = Field(
        None, description="'heldout': the held-out split of the recipe's data; 'dev': the loop's dev split of it "
        "(loop.dev); or give a source of its own (path or hub).")
    target_field: str = Field("target", description="Reference column of the set's source (a string, a list of "
                              "acceptable answers, or chat messages: their last assistant turn).")
    slice_field: str | None = Field(None, description="Slice column (defaults to the data's slice_field for heldout).")
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N items (deterministic).")
    prompt_template: str | None = Field(None, description="Student prompt; defaults to train.prompt_template.")
    teacher_template: str | None = Field(
        None, description="Teacher prompt for this set; defaults to evaluate.teacher_template, or for a `path` set to prompt_template."
    )
    metrics: list[MetricName] = Field(
        ["exact_match"], min_length=1,
        description="Per-item metrics; the first is the headline. exact_match (whitespace-folded), exact_match_normalized "
        "(also case, punctuation, articles), accuracy (the answer is the first reference, case-folded), multi_ref_match "
        "(any reference appears in the answer), token_f1, nll (mean negative log-likelihood per token of the reference; "
        "lower is better; the report adds item_perplexity, exp of the mean item NLL).",
    )
    guard: bool = Field(
        False, description="A guard set: general ability beside the target task, evaluated so that forgetting shows up."
    )
    tolerance: dict[MetricName, Annotated[float, Field(ge=0)]] | None = Field(
        None, description="Degradation tolerance per metric for this set, in the metric's unit, e.g. {nll: 0.2} "
        "(default evaluate.gate.tolerance)."
    )
    max_tokens: int | None = Field(None, gt=0, description="Most new tokens per answer on this set (default evaluate.max_tokens).")
    stop: list[str] | None = Field(None, description="Strings that end an answer on this set (default evaluate.stop).")

    def _may_have_no_source(self) -> bool:
        return self.data is not None

    @model_validator(mode="after")
    def _one_source(self) -> "EvalSet":
        if (self.data is None) == (self.path is None and self.hub is None):
            raise ValueError("give exactly one of data (heldout or dev), path or hub")
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError(f"metrics: each metric once (got {self.metrics})")
        return self


def _default_tolerances() -> str:
    return ", ".join(f"{name} {value:g}" for name, value in DEFAULT_TOLERANCES.items())


class GateSettings(Section):
    """Which comparisons decide "degraded" (and exit code 3 with --fail-on-degradation), and how strictly."""

    models: list[Literal["student", "last_checkpoint", "checkpoints", "teacher"]] = Field(
        ["student"], description="Models whose differences from the baseline are gated, on every set, slice and guard set: "
        "'student' (the trained student), 'last_checkpoint' (the last checkpoint saved in training), 'checkpoints' (every "
        "checkpoint), 'teacher'. Every other model is reported with intervals but gets no verdict. `distill compare` gates "
        "every compared model other than the baseline."
    )
    correction: Literal["holm", "bh", "none"] = Field(
        "holm", description="Correction across the gated tests: 'holm' holds the chance of any false 'degraded' at alpha "
        "(family-wise), 'bh' (Benjamini-Hochberg) holds the expected share of false ones among the flagged at alpha, "
        "'none' tests each row at alpha."
    )
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Family-wise error rate (holm) or false discovery rate (bh) of the gate; "
                         "with correction none, each row's level.")
    min_items: int = Field(
        30, ge=2, description="Sets and slices with fewer items get an interval but no verdict and do not count in the family."
    )
    tolerance: dict[MetricName, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict, validate_default=True,
        description="Per metric, in the metric's unit: a row is degraded only when the drop is "
        "shown to exceed this. Defaults: " + _default_tolerances() + " (shares of items; nll in nats per token, "
        "0.1 = perplexity x1.105)."
    )

    @field_validator("tolerance")
    @classmethod
    def _over_defaults(cls, v: dict) -> dict:
        return {**DEFAULT_TOLERANCES, **v}  # resolved: `distill validate` shows every metric's tolerance


class EvaluateSettings(Section):
    models: list[Literal["base", "student", "teacher"]] = Field(
        ["base", "student", "teacher"], min_length=1, description="Who is evaluated, on the same items."
    )
    sets: list[EvalSet] = Field(min_length=1, description="Held-out real evaluation sets and guard sets (never synthetic).")
    teacher_template: str | None = Field(
        None, description="Prompt for the teacher; defaults to the generate template with its few-shot examples (in "
        "synthesize mode, to generate.answer_template when it reads only input and examples)."
    )
    measure: list[str] | None = Field(
        None, description="Score only these sets, by name (default: every set). The others are still held-out data "
        "that decontamination keeps out of training. A loop round measures only its dev split and the guard sets.")
    max_tokens: int = Field(32, gt=0, description="Most new tokens per answer.")
    stop: list[str] = Field(default_factory=lambda: ["\n"], description="Strings that end an answer.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of answers; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass of answers.")
    seed: int | None = Field(None, description="Sampling seed (item i gets seed + i); defaults to the recipe's seed.")
    baseline: Literal["base", "student", "teacher"] = Field(
        "base", description="Every other model's difference is measured from this one (it must be among `models`)."
    )
    checkpoints: bool = Field(
        False, description="Also evaluate every checkpoint saved during training (train.save_steps): a curve over steps."
    )
    serve_adapters: Literal["auto", "lora", "merged"] = Field(
        "auto", description="How vLLM serves a trained adapter (and its checkpoints) to generate answers: `lora` per "
        "request on the base model's engine; `merged` folded into a copy of the base weights (`merge_and_unload`, in "
        "the student's dtype) on an engine without LoRA, written under evaluate/ (a temporary folder for `distill compare`) and removed after scoring; "
        "`auto`: merged on a CPU, where vLLM's LoRA path generates at about a third of the speed, lora on a GPU. "
        "Answers can differ from the other way's in rare near-ties; reference log-probabilities always come from the "
        "adapter itself."
    )
    fidelity: bool | None = Field(
        None, description="Fidelity to the teacher: on the teacher's own answers to each set's items, every "
        "student-prompted model's top-1 agreement with the teacher and forward KL from the teacher's top K "
        "(generate.logprobs, else 20) per token, teacher-forced. Needs teacher among models and a shared vocabulary. "
        "Default: on when train.objective is kd, sft+kd or on_policy."
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Level of the paired bootstrap intervals reported for every model.")
    bootstrap_samples: int = Field(2000, ge=100, description="Paired bootstrap resamples per interval.")
    gate: GateSettings = Field(default_factory=GateSettings, description="The degradation gate: gated models, correction, "
                               "minimum items, tolerances per metric.")
    cache: bool | str | None = Field(
        None, description="Evaluation cache: a model's answers and scores on a set, reused while the model, items, "
        "prompts, decoding and metrics are unchanged. A folder (relative to the recipe; e.g. on a shared filesystem), "
        "null or true for ~/.cache/distill/eval (under $DISTILL_CACHE when set), false to score everything afresh "
        "(as --no-cache does)."
    )

    @field_validator("cache")
    @classmethod
    def _cache_folder(cls, v: bool | str | None, info: ValidationInfo) -> bool | str | None:
        if not isinstance(v, str):
            return v
        if not v.strip():
            raise ValueError("empty folder name; use null for the default cache or false for none")
        return str(recipe_relative(v, info))

    @model_validator(mode="before")
    @classmethod
    def _moved_to_gate(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "tolerance" in data:
                raise ValueError("tolerance moved to evaluate.gate.tolerance, one value per metric in its unit, "
                                 "e.g. {exact_match: 0.02, nll: 0.1}")
            if "min_items" in data:
                raise ValueError("min_items moved to evaluate.gate.min_items")
        return data

    @model_validator(mode="after")
    def _baseline_evaluated(self) -> "EvaluateSettings":
        if self.baseline not in self.models:
            raise ValueError(f"baseline {self.baseline!r} is not among models {self.models}")
        if self.fidelity and "teacher" not in self.models:
            raise ValueError("fidelity is measured on the teacher's answers, but teacher is not among models")
        if "teacher" in self.gate.models and "teacher" not in self.models:
            raise ValueError("gate.models names 'teacher', which is not among models")
        if {"checkpoints", "last_checkpoint"} & set(self.gate.models) and not self.checkpoints:
            raise ValueError("gate.models names checkpoints, which are evaluated only with checkpoints: true")
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names):
            raise ValueError(f"set names must be unique (got {names})")
        unknown = [n for n in self.measure or () if n not in names]
        if unknown or self.measure == []:
            raise ValueError(f"measure names {unknown or 'no set'}; the sets are {names}")
        return self
