"""generate: how the teacher is asked (mode, template, few-shot examples, sampling, the grid, the label constraint, the
server).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from distill import catalog
from distill.recipe.base import Section, template_variables


class SamplingSettings(Section):
    n: int = Field(1, ge=1, description="Completions per prompt.")
    temperature: float = Field(0.0, ge=0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(64, gt=0, description="Most new tokens per completion.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a completion (not included).")
    seed: int = Field(0, description="Sampling seed; each request gets seed + its index for reproducibility.")


class GridSettings(Section):
    """synthesize mode: one prompt per cell of the attribute grid, `per_cell` times, so rare cells are never left to chance."""

    attributes: dict[str, list[str]] = Field(
        min_length=1,
        description="Attribute name -> its values, e.g. {topic: [...], difficulty: [easy, hard]}; "
        "every combination is a cell, passed to the template as `cell` (and each attribute by name).",
    )
    per_cell: int = Field(1, gt=0, description="Prompts per cell (the quota); each gets its own index and seed.")
    input_key: str = Field(
        "input", min_length=1,
        description="The teacher answers with a JSON object (vLLM structured outputs); this key holds the input it "
        "wrote, which becomes the row's `input` (what the student is prompted with).",
    )
    output_key: str = Field(
        "output", min_length=1,
        description="The key holding the answer to that input, the row's `completion`. Not asked for when "
        "generate.answer_template answers each input in a second pass.",
    )
    max_chars: int | None = Field(
        None, gt=0, description="Longest string allowed for the input and the output (JSON maxLength), so that the "
        "object fits sampling.max_tokens.",
    )
    retries: int = Field(2, ge=0, description="Requests again for prompts whose JSON does not parse, up to this many times.")
    retry_temperature: float = Field(
        0.7, gt=0, description="Temperature of the retries when sampling is greedy (a greedy retry would repeat itself)."
    )

    @field_validator("attributes")
    @classmethod
    def _values_given(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, values in v.items():
            if not values:
                raise ValueError(f"attribute {name!r} has no values")
            if len(set(values)) != len(values):
                raise ValueError(f"attribute {name!r} repeats a value")
        return v

    @model_validator(mode="after")
    def _distinct_keys(self) -> "GridSettings":
        if self.input_key == self.output_key:
            raise ValueError(f"input_key and output_key are both {self.input_key!r}: the input and its answer need keys of their own")
        return self


class LabelSettings(Section):
    """label mode: the teacher's answer is constrained (vLLM structured outputs) and checked; failures are kept with a reason."""

    choice: list[str] | None = Field(
        None, min_length=2, description="The label set: the answer is exactly one of these. Decoding produces the "
        "string as written: after a prompt ending in 'Label:' write each with its leading space (' music'), as the "
        "tokenizer would; the row keeps it without."
    )
    json_schema: dict[str, Any] | None = Field(None, description="The answer is a JSON document valid under this schema.")
    regex: str | None = Field(None, description="The answer matches this regular expression in full.")
    retries: int = Field(2, ge=0, description="Requests again for rows whose answer does not parse, up to this many times.")
    retry_temperature: float = Field(
        0.7, gt=0, description="Temperature of the retries when sampling is greedy (a greedy retry would repeat itself)."
    )

    @model_validator(mode="after")
    def _one_constraint(self) -> "LabelSettings":
        given = [k for k in ("choice", "json_schema", "regex") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice, json_schema, regex (got {', '.join(given) or 'none'})")
        if self.regex is not None:
            import re

            try:
                re.compile(self.regex)
            except re.error as e:
                raise ValueError(f"bad regular expression {self.regex!r}: {e}") from None
        if self.json_schema is not None:
            from jsonschema import Draft202012Validator, SchemaError

            try:
                Draft202012Validator.check_schema(self.json_schema)
            except SchemaError as e:
                raise ValueError(f"json_schema is not a valid JSON schema: {e.message}") from None
        return self


class EndpointSettings(Section):
    """An OpenAI-compatible server (e.g. `vllm serve` on other nodes) that serves the teacher."""

    url: str = Field(description="Base URL of the API, e.g. http://node17:8000/v1.")
    model: str | None = Field(None, description="Served model name; default: the only model the server lists.")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (never the key itself).")
    concurrency: int = Field(16, gt=0, description="Requests in flight at once, across all chunks in flight.")
    chunks_in_flight: int = Field(
        4, gt=0, description="Chunks requested at once: the next chunks' requests fill the slots that a chunk's slowest "
        "requests leave idle. Chunks are still written whole and in order; bounds the rows held in memory.")
    timeout_s: float = Field(600, gt=0, description="Seconds to wait for one response.")
    max_retries: int = Field(6, ge=0, description="Retries of a request that failed on the network or with status 408, "
                             "429 or 5xx; any other 4xx stops the run at once.")
    backoff_s: float = Field(1.0, gt=0, description="Wait before the first retry; doubles per retry, jittered, and never "
                             "shorter than the server's Retry-After header.")
    max_backoff_s: float = Field(60, gt=0, description="Longest wait between retries (a longer Retry-After is honoured).")
    ready_timeout_s: float = Field(600, ge=0, description="Seconds to wait for the server to list its models before the "
                                   "first request (a teacher still starting); then the run stops with an error.")


class FewShotSettings(Section):
    k: int = Field(0, ge=0, description="Examples per prompt, drawn from the seeds (never from held-out rows).")
    seed: int = Field(0, description="Seed of the reproducible draw.")
    per_row: bool = Field(False, description="Draw new examples for every row instead of one fixed set.")


SCORED_COMPLETION = " {{ target }}"


class GenerateSettings(Section):
    template: str = Field(
        description="Jinja template of the teacher prompt, rendered in a sandbox. Variables: input, examples, row; "
        "in synthesize mode cell, index and each attribute instead of input."
    )
    chat: bool = Field(False, description="Send the rendered template as a user message through the chat template.")
    system_prompt: str | None = Field(None, description="System message when chat is true, for rows whose "
                                      "conversation has none of its own.")
    few_shot: FewShotSettings = Field(default_factory=FewShotSettings, description="Few-shot examples.")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings, description="Sampling parameters.")
    chunk_size: int = Field(256, gt=0, description="Prompts per atomically written chunk; a killed run resumes by chunk, "
                            "in the size it started with. Not part of the stage's fingerprint: rows are made per prompt.")
    mode: Literal[tuple(catalog.MODES)] = Field(  # type: ignore[valid-type]
        "complete",
        description="complete: the teacher answers each real seed input. synthesize: one prompt per cell of `grid` "
        "(quota per cell), no seed input: the teacher writes an input and its answer as one JSON object. label: the teacher labels each seed input under the `label` constraint. "
        "score: the teacher writes nothing; each seed's real target (data.target_field, as completion_template renders "
        "it) is the completion, and the teacher's top-K (logprobs) at each of its tokens is measured teacher-forced, "
        "so real labels are distilled with soft targets. "
        "In every other mode sampling.n > 1 keeps n candidates per prompt side by side (sample_index).",
    )
    completion_template: str = Field(
        SCORED_COMPLETION, description="score mode: the completion scored after the teacher's prompt. Jinja, variables: "
        "target (the seed's reference), row. The default puts a space after a prompt ending in 'A:'."
    )
    grid: GridSettings | None = Field(None, description="The attribute grid of synthesize mode.")
    label: LabelSettings | None = Field(None, description="The label constraint of label mode.")
    answer_template: str | None = Field(
        None,
        description="synthesize mode, optional: a second pass. The teacher writes only the input (grid.input_key), then "
        "answers it prompted with this Jinja template (variables: input, cell, index and each attribute); sampling.n "
        "applies to this pass, so its candidates share one prompt.",
    )
    reasoning: Literal["strip", "keep"] = Field(
        "strip", description="A reasoning teacher's thinking (the text up to `reasoning_end`, e.g. Qwen3's "
        "<think>...</think>): strip, the answer after it is the completion, filtered and trained on (and with logprobs, "
        "only its tokens are captured); an answer cut before its thinking ended is a failure with that reason. keep: "
        "the whole text, thinking included, is the completion. The teacher's answers in evaluation follow the same "
        "choice. Answers without the marker are kept whole either way. label mode's constraint covers the whole "
        "answer: ask such a teacher for no thinking there (chat_template_kwargs).")
    reasoning_end: str = Field("</think>", min_length=1, description="The text that ends a reasoning teacher's "
                               "thinking; `reasoning: strip` keeps what follows it.")
    backend: Literal["vllm", "openai"] = Field(
        "vllm", description="vllm: an in-process engine on this machine. openai: the server named in `endpoint`."
    )
    endpoint: EndpointSettings | None = Field(None, description="The OpenAI-compatible server when backend is openai.")
    logprobs: int | None = Field(
        None, ge=1, le=100,
        description="Capture the teacher's top-K log-probabilities (this K, e.g. 20) of every generated token, by token "
        "id, in the same pass, for train.objective kd or sft+kd. Stored in generate/teacher_logprobs.parquet keyed by "
        "row id; the model's raw distribution, before temperature and top-p (in label mode under the grammar's mask: "
        "the tokens it forbids are -inf, recorded as distribution `constrained`). synthesize mode needs answer_template "
        "(the answer pass is captured).",
    )

    @model_validator(mode="after")
    def _mode_settings(self) -> "GenerateSettings":
        for m in catalog.MODES.values():
            if m.needs and (self.mode == m.name) != (getattr(self, m.needs) is not None):
                raise ValueError(f"{m.needs} is needed by, and only by, mode: {m.name}")
        if self.answer_template is not None and not self.writes_inputs:
            raise ValueError("answer_template is used by, and only by, mode: synthesize")
        if self.writes_inputs:
            # The teacher writes the input: a template that reads one would render it as None.
            if "input" in template_variables(self.template, "template"):
                raise ValueError("template uses `input`, but in synthesize mode there is none: the teacher writes it "
                                 "(under grid.input_key); use cell, index, examples or the attributes")
            if self.answer_template is not None and "input" not in template_variables(self.answer_template, "answer_template"):
                raise ValueError("answer_template never uses `input`: the teacher would answer without seeing the input it wrote")
        if (self.backend == "openai") != (self.endpoint is not None):
            raise ValueError("endpoint is needed by, and only by, backend: openai")
        # compared with the default, not "was it set": a resolved recipe (run/recipe.yaml) writes every field
        if self.completion_template != SCORED_COMPLETION and not self.scores_targets:
            raise ValueError("completion_template is used by, and only by, mode: score")
        if self.scores_targets:
            if not self.logprobs:
                raise ValueError("mode: score measures the teacher's top-K at each token of the real targets: set "
                                 "logprobs (e.g. 20)")
            if self.backend != "vllm":
                raise ValueError("mode: score runs on the in-process vLLM engine (prompt log-probabilities); "
                                 "backend: openai is not supported for it")
            if self.sampling.n != 1:
                raise ValueError("mode: score scores each real target once: sampling.n must be 1")
        if self.logprobs and self.writes_inputs and self.answer_template is None:
            raise ValueError("logprobs in synthesize mode needs answer_template: without it the teacher's tokens are a "
                             "JSON object, not the answer the student is trained on")
        return self

    @property
    def scores_targets(self) -> bool:
        """score mode: the teacher writes nothing; the seeds' real targets are its completions, scored teacher-forced."""
        return catalog.mode(self.mode).scores_targets

    @property
    def retries_cut_answers(self) -> bool:
        """label mode retries an answer cut at max_tokens itself, so the filter stage need not reject it."""
        return catalog.mode(self.mode).retries_cut_answers

    @property
    def writes_inputs(self) -> bool:
        """synthesize mode: the teacher writes the inputs too; there is no real input to read."""
        return catalog.mode(self.mode).writes_inputs

    def answering_template(self) -> str | None:
        """The template under which the teacher answers a real input, as evaluation prompts it: `template`, or in
        synthesize mode the second pass's `answer_template` when it reads nothing a real item lacks (a grid cell)."""
        if not self.writes_inputs:
            return self.template
        if self.answer_template is not None and template_variables(self.answer_template, "answer_template") <= {
                "input", "examples", "row"}:
            return self.answer_template
        return None
