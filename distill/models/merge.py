"""A LoRA adapter folded into a copy of its base model's weights (`merge_and_unload`): a plain model folder that
transformers and vLLM load alone, with the base's tokenizer and chat template.

`distill export --merge` writes one for users. Evaluation on a CPU scores a trained adapter from one too: vLLM's
CPU build generates through a LoRA adapter at about a third of the speed of the same model without LoRA
(`evaluate.serve_adapters`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

ServeAdapters = Literal["auto", "lora", "merged"]


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
