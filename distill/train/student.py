"""The student as training loads it: its tokenizer, its weights in the dtype it trains in (4-bit for qlora), its LoRA
settings. Shared by the TRL objectives and the on-policy loop, so that both train the same model."""

from __future__ import annotations

from pathlib import Path

from distill.errors import UserError
from distill.models.dtype import model_dtype, torch_dtype
from distill.prompts.template import with_chat_template
from distill.recipe import Recipe


def lora_config(recipe: Recipe):
    """The adapter of method lora and qlora; None for full fine-tuning (every weight trains, TRL wraps nothing)."""
    from peft import LoraConfig

    if not recipe.train.trains_adapter:
        return None
    lora = recipe.train.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.peft_target_modules, task_type="CAUSAL_LM")


def quantization_config(recipe: Recipe, student_dir: Path | None = None):
    """method qlora: the 4-bit base as QLoRA has it (NF4, double quantization), computing in the student's training
    dtype; None for the other methods. Built without bitsandbytes: only loading the model needs it."""
    if recipe.train.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    compute = torch_dtype(model_dtype(recipe.models.student, "student", student_dir).dtype)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def check_method(recipe: Recipe) -> None:
    """Refuse before any work a method this machine cannot run: qlora's 4-bit kernels are bitsandbytes' CUDA ones."""
    if recipe.train.method != "qlora":
        return
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise UserError("train.method: qlora loads the student in 4 bits with bitsandbytes, which needs a CUDA GPU; "
                        "this machine has none: use method lora (or train where there is a GPU)")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("train.method: qlora needs the bitsandbytes package: pip install bitsandbytes")


def load_student(recipe: Recipe, student_dir: Path):
    """(the base model in the student's training dtype, or 4-bit for qlora; its tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_method(recipe)
    spec = recipe.models.student
    # the recipe's chat template for the student, if any: the one TRL trains with, as sampling and evaluation use it
    tokenizer = with_chat_template(AutoTokenizer.from_pretrained(student_dir, trust_remote_code=spec.trust_remote_code), spec)
    dtype = torch_dtype(model_dtype(spec, "student", student_dir).dtype)
    quantized = quantization_config(recipe, student_dir)
    extra = {"quantization_config": quantized, "device_map": {"": _cuda_index()}} if quantized is not None else {}
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=dtype, trust_remote_code=spec.trust_remote_code,
                                                 **extra)
    return model, tokenizer


def _cuda_index() -> int:
    """The GPU of this process (its LOCAL_RANK under `accelerate launch`): a 4-bit model is placed as it loads."""
    import os

    return int(os.environ.get("LOCAL_RANK", 0))
