"""The models of a recipe, resolved to folders with their identities (computed once per process)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from distill.models.dtype import model_dtype
from distill.models.identity import CONTENT_KEYS, model_identity
from distill.models.resolve import ModelUnavailable, resolve_model, source_key
from distill.recipe import ModelSpec, Recipe


def spec_name(spec: ModelSpec) -> str:
    return spec.path or spec.hub or f"packaged:{spec.packaged}"


@lru_cache(maxsize=None)
def _resolve(spec_json: str) -> tuple[Path, dict]:
    spec = ModelSpec.model_validate_json(spec_json)
    folder = resolve_model(spec)
    return folder, model_identity(folder, spec_name(spec), spec.revision)


def resolved_model(recipe: Recipe, role: str) -> tuple[Path, dict]:
    """(folder, identity) of the model playing `role` (teacher, student, judge)."""
    spec = getattr(recipe.models, role)
    if spec is None:
        raise KeyError(role)
    # keyed by where the model lives (a spec holding a dict, chat_template_kwargs, cannot be a key itself)
    try:
        folder, identity = _resolve(spec.model_dump_json(include={"path", "hub", "packaged", "revision", "trust_remote_code"}))
    except ModelUnavailable as e:  # resolve_model knows the folder, not the role: the recipe key comes from here
        raise ModelUnavailable(f"models.{role}.{source_key(spec)}: {e}") from None
    return folder, {"role": role, **identity}


# Engine settings that set capacity and scheduling, not what the model computes: KV-cache memory, how many
# sequences share a batch, CUDA graphs, how many GPUs one engine is split over. They can move floating-point
# results in the last bits (vLLM promises no batch invariance), as re-running on another machine can, so they
# never redo a stage. max_model_len (a longer prompt is refused or cut) and quantization (other weights) count.
SCHEDULING_ENGINE_SETTINGS = frozenset({"gpu_memory_utilization", "kv_cache_gb", "max_num_seqs", "enforce_eager",
                                        "tensor_parallel_size", "prefix_caching", "block_size"})
MODEL_LOCATION = frozenset({"path", "hub", "packaged"})  # where a model is found; its files are hashed instead


def model_fingerprint(recipe: Recipe, role: str, engine: bool = True) -> dict:
    """What the model playing `role` computes: its files by content (weights, config.json, generation_config.json,
    tokenizer and chat template, shipped code) and the settings it runs with (dtype, revision, trust_remote_code,
    and, where it runs in vLLM (`engine`), the engine settings that change outputs). Not where it lives: the same
    files in another folder are the same model."""
    folder, identity = resolved_model(recipe, role)
    return spec_fingerprint(getattr(recipe.models, role), identity, role, folder, engine)


def spec_fingerprint(spec: ModelSpec, identity: dict, role: str, folder: Path, engine: bool = True) -> dict:
    """model_fingerprint for any model folder (its `model_identity`) run with `spec`'s settings as `role`. The dtype
    counts as resolved on this machine (`dtype: auto` is bf16 on one machine, float32 on another)."""
    settings = spec.model_dump(mode="json", exclude=set(MODEL_LOCATION | {"engine"}))
    settings["dtype"] = model_dtype(spec, role, folder).dtype
    if engine:
        settings["engine"] = spec.engine.model_dump(mode="json", exclude=set(SCHEDULING_ENGINE_SETTINGS))
    return {**settings, **{key: identity.get(key) for key in CONTENT_KEYS}}
