"""A LoRA adapter folded into a copy of its base model's weights (`merge_and_unload`): a plain model folder that
transformers and vLLM load alone, with the base's tokenizer and chat template.

`distill export --merge` writes one for users. Evaluation on a CPU scores a trained adapter from one too: vLLM's
CPU build generates through a LoRA adapter at about a third of the speed of the same model without LoRA
(`evaluate.serve_adapters`).
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator, Literal

ServeAdapters = Literal["auto", "lora", "merged"]


def adapter_rank(adapter: Path) -> int:
    return int(json.loads((Path(adapter) / "adapter_config.json").read_text()).get("r", 8))


def adapter_serving(setting: ServeAdapters) -> Literal["lora", "merged"]:
    """How vLLM serves a trained adapter on this machine: `auto` is merged weights on a CPU and LoRA per request on
    a GPU, whose LoRA kernels cost little and whose one engine then serves every checkpoint."""
    if setting != "auto":
        return setting
    from distill.models.hardware import this_machine

    return "lora" if this_machine().gpus else "merged"


def merge_adapter(base_dir: Path, adapter: Path, dtype: str, out: Path, trust_remote_code: bool = False) -> Path:
    """Write base + adapter, merged, to `out` in `dtype` (a torch dtype name), with the base's tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Merge in float32 (the sum W + BA keeps its low bits), then store in the dtype asked for.
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.to(getattr(torch, dtype)).save_pretrained(out)
    # The base's tokenizer and chat template: what the student was trained and evaluated with.
    AutoTokenizer.from_pretrained(base_dir, trust_remote_code=trust_remote_code).save_pretrained(out)
    return out


@contextmanager
def adapter_engine(folder: Path, spec, role: str, dtype: str, seed: int, *, merged: Path | None = None,
                   adapters: tuple[Path, ...] = (), max_logprobs: int | None = None,
                   work_dir: Path | None = None) -> Iterator[tuple[object, Path | None]]:
    """A vLLM engine on `folder` serving trained adapters as evaluation does (adapter_serving): `merged`, one adapter
    folded into a temporary copy of the weights (under `work_dir`, default the system's temporary folder; removed on
    exit), or `adapters` per request, LoRA up to the largest of their ranks. Yields (the engine, the merged copy's
    folder or None); the engine is closed on exit."""
    from distill.models.vllm_engine import VLLMEngine

    scratch_dir = tempfile.TemporaryDirectory(prefix="merged-", dir=_made(work_dir)) if merged is not None else nullcontext()
    with scratch_dir as scratch:  # a copy of weights that exist elsewhere (base + adapter), rebuilt in seconds
        path = merge_adapter(folder, Path(merged), dtype, Path(scratch), spec.trust_remote_code) if scratch else None
        ranks = [adapter_rank(a) for a in adapters]
        engine = VLLMEngine(path or folder, spec, seed=seed, max_lora_rank=max(ranks) if ranks else None,
                            max_logprobs=max_logprobs, role=role)
        try:
            yield engine, path
        finally:
            engine.close()


def _made(folder: Path | None) -> Path | None:
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    return folder
