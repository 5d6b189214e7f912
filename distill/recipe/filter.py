"""filter: the steps that keep or reject generated rows, each with its settings, and the calibration against human
verdicts.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from distill.recipe.base import Section, resolve_existing


class LengthFilter(Section):
    type: Literal["length"] = Field(description="Drop completions outside length bounds.")
    field: str = Field("completion", description="Column to measure.")
    min_chars: int = Field(1, ge=0, description="Shortest allowed length in characters (after stripping).")
    max_chars: int | None = Field(None, gt=0, description="Longest allowed length in characters.")


class ExactDedupFilter(Section):
    type: Literal["exact_dedup"] = Field(description="Keep the first row of each group of identical rows.")
    fields: list[str] = Field(["input", "completion"], min_length=1, description="Columns that form the key.")
    normalize: bool = Field(True, description="Compare case- and whitespace-folded text.")


class RegexFilter(Section):
    type: Literal["regex"] = Field(description="Require or forbid a pattern.")
    field: str = Field("completion", description="Column to test.")
    must_match: str | None = Field(None, description="Rows must match this pattern (re.search).")
    must_not_match: str | None = Field(None, description="Rows must not match this pattern.")

    @model_validator(mode="after")
    def _one_pattern(self) -> "RegexFilter":
        import re

        if self.must_match is None and self.must_not_match is None:
            raise ValueError("give must_match or must_not_match")
        for pattern in (self.must_match, self.must_not_match):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"bad regular expression {pattern!r}: {e}") from None
        return self


class VerifierFilter(Section):
    type: Literal["verifier"] = Field(description="A task verifier: a Python function judges each row.")
    function: str = Field(
        description="'file.py:name' (relative to the recipe) or 'module:name'; called with the row dict, "
        "returns True/False or (bool, reason)."
    )

    @field_validator("function")
    @classmethod
    def _resolve(cls, v: str, info: ValidationInfo) -> str:
        target, sep, name = v.rpartition(":")
        if not sep or not target or not name:
            raise ValueError("expected 'file.py:function' or 'module:function'")
        if target.endswith(".py"):
            return f"{resolve_existing(target, info, folder=False)}:{name}"
        return v


class NearDedupFilter(Section):
    type: Literal["near_dedup"] = Field(description="MinHash LSH near-duplicates: keep the first row of each cluster.")
    fields: list[str] = Field(["completion"], min_length=1, description="Columns whose words form the shingles.")
    shingle: int = Field(5, gt=0, description="Words per shingle.")
    threshold: float = Field(0.8, gt=0, lt=1, description="Estimated Jaccard similarity at which rows are duplicates.")
    num_perm: int = Field(128, ge=16, description="MinHash permutations (more: slower, more precise).")
    seed: int = Field(1, ge=0, description="Seed of the MinHash permutations.")
    backend: Literal["rensa", "datasketch"] = Field(
        "rensa", description="MinHash implementation: rensa (R-MinHash signatures in Rust; the faster) or datasketch "
                             "(numpy signatures and datasketch's MinHashLSH, the earlier path, kept as a fallback). The two "
                             "give different signatures, so a pair near the threshold can fall on either side of it."
    )


class SemanticDedupFilter(Section):
    type: Literal["semantic_dedup"] = Field(description="Sentence-embedding near-duplicates: keep the first of each group.")
    field: str = Field("completion", description="Column to embed.")
    threshold: float = Field(0.9, gt=0, le=1, description="Cosine similarity at which rows are duplicates.")
    embedder: str = Field("all-minilm-l6-v2", description="Sentence-transformers model folder, or the offline default.")


class DecontaminateFilter(Section):
    type: Literal["decontaminate"] = Field(
        description="Drop rows that leak items of any evaluation set of the recipe (held-out split and evaluate.sets)."
    )
    fields: list[str] = Field(["input", "completion"], min_length=1, description="Row columns checked for leaks.")
    ngram: int = Field(
        13, gt=0, description="An eval text of at least this many words leaks when a row shares one of its word n-grams; "
                              "a shorter eval input leaks when a row contains it whole, at word boundaries."
    )
    check_references: bool = Field(
        True, description="Also match each eval input and reference read as one text, and a reference alone when it has "
                          "at least `ngram` words (shorter answers, such as labels and numbers, repeat across items by nature)."
    )
    embedding_threshold: float | None = Field(
        0.9, gt=0, le=1, description="Cosine similarity to an eval input that counts as a paraphrased leak; null turns it off."
    )
    embedding_min_words: int = Field(
        5, ge=1, description="Texts shorter than this (row or eval input) skip the embedding check: short texts are alike by chance."
    )
    embedder: str = Field("all-minilm-l6-v2", description="Sentence-transformers model folder, or the offline default.")


class RepetitionFilter(Section):
    type: Literal["repetition"] = Field(description="Drop degenerate text that repeats the same word n-grams.")
    field: str = Field("completion", description="Column to test.")
    ngram: int = Field(3, gt=0, description="Word n-gram size.")
    max_ratio: float = Field(0.3, ge=0, le=1, description="Largest allowed share of n-grams that repeat an earlier one.")


class JsonSchemaFilter(Section):
    type: Literal["json_schema"] = Field(description="Require the column to be JSON valid against a schema.")
    field: str = Field("completion", description="Column to parse.")
    json_schema: dict[str, Any] = Field(default_factory=dict, description="JSON schema the parsed value must satisfy.")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, v: dict) -> dict:
        import jsonschema

        try:
            jsonschema.validators.validator_for(v).check_schema(v)
        except jsonschema.SchemaError as e:
            raise ValueError(f"not a valid JSON schema: {e.message}") from None
        return v


class RefusalFilter(Section):
    type: Literal["refusal"] = Field(description="Drop answers that refuse (case-insensitive phrase match).")
    field: str = Field("completion", description="Column to test.")
    phrases: list[str] = Field(
        ["i'm sorry", "i am sorry", "i cannot", "i can't", "as an ai", "i'm unable", "i am unable", "i won't"],
        min_length=1, description="Phrases that mark a refusal.",
    )


class ReferenceMatchFilter(Section):
    type: Literal["reference_match"] = Field(description="Compare the answer with the row's reference, when it has one.")
    field: str = Field("completion", description="Column holding the answer.")
    reference_field: str = Field("reference", description="Column holding the reference; rows without one are kept.")
    mode: Literal["normalized", "numeric"] = Field(
        "normalized", description="'normalized': case, space and punctuation folded; 'numeric': the first number, within tolerance."
    )
    tolerance: float = Field(1e-6, ge=0, description="Relative tolerance of numeric comparison.")


class MajorityVoteFilter(Section):
    type: Literal["majority_vote"] = Field(
        description="Agreement across the n completions of a prompt: keep those that give the majority answer."
    )
    field: str = Field("completion", description="Column holding the answer (normalised before voting).")
    group_field: str = Field(
        "prompt", description="Column that identifies the prompt the candidates answer (the n samples of one prompt share it)."
    )
    min_margin: float = Field(0.0, ge=0, le=1, description="Reject the whole group if the top answer's vote share minus the runner-up's is lower.")


class JudgeFilter(Section):
    type: Literal["judge"] = Field(description="An LLM judge scores each row against a rubric (structured JSON output).")
    model: Literal["judge", "teacher"] = Field("judge", description="Which model of the recipe judges; models.judge by default.")
    rubric: str = Field(
        description="What a good sample is, told to the judge. Jinja; variables: input, completion, row (row.x names a "
        "field). They render as names ('the Input', 'the Response', 'the field \"x\"'), never as values: the values "
        "reach the judge only inside the fenced sample, so conditions on them do not work here."
    )
    min_score: int = Field(3, description="Rows scored below this are rejected.")
    scale: tuple[int, int] = Field((1, 5), description="Lowest and highest score the judge may give.")
    chat: bool = Field(True, description="Send the prompt through the judge's chat template.")
    max_tokens: int = Field(96, gt=0, description="Most tokens of the judge's JSON answer.")
    on_failure: Literal["keep", "drop", "flag"] = Field(
        "flag", description="When the answer cannot be read: keep the row, drop it, or keep it flagged for review."
    )
    seed: int = Field(0, description="Sampling seed (the judge samples greedily).")

    @model_validator(mode="after")
    def _scale(self) -> "JudgeFilter":
        lo, hi = self.scale
        if not lo < hi or hi - lo > 100:
            raise ValueError(f"scale must be (low, high) with low < high and at most 100 apart (got {self.scale})")
        return self


class CalibrationSettings(Section):
    gold: str | None = Field(
        None, description="Human verdicts (CSV or JSONL with columns id, verdict = keep|reject) to measure filters against."
    )
    min_kappa: float = Field(0.4, ge=-1, le=1, description="Warn when a filter's Cohen's kappa with the humans is lower.")

    @field_validator("gold")
    @classmethod
    def _gold_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        return resolve_existing(v, info, folder=False)


FilterStep = Annotated[
    Union[LengthFilter, ExactDedupFilter, RegexFilter, VerifierFilter, NearDedupFilter, SemanticDedupFilter,
          DecontaminateFilter, RepetitionFilter, JsonSchemaFilter, RefusalFilter, ReferenceMatchFilter,
          MajorityVoteFilter, JudgeFilter],
    Field(discriminator="type"),
]


class FilterSettings(Section):
    steps: list[FilterStep] = Field(default_factory=list, description="Filters applied in order; rows are flagged, not deleted.")
    min_kept: int = Field(1, ge=0, description="Fail the stage if fewer rows survive.")
    keep_truncated: bool = Field(
        False, description="Keep rows whose answer the teacher did not finish (cut at generate.sampling.max_tokens, "
        "finish_reason 'length'). By default they are rejected as 'truncated' before any other step: trained with EOS "
        "appended, they would teach the student to stop mid-answer. Label mode checks and retries its own answers instead.",
    )
    num_proc: int = Field(1, ge=1, description="Processes for the per-row checks (length, regex, ...); dedup and judge run in one.")
    calibration: CalibrationSettings = Field(
        default_factory=CalibrationSettings, description="Agreement of the filters with human verdicts."
    )
