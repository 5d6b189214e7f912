"""The student as training loads it: its tokenizer, its weights in the dtype it trains in, its LoRA settings. Shared
by the TRL objectives and the on-policy loop, so that both train the same model."""

from __future__ import annotations

from pathlib import Path

from distill.models.dtype import model_dtype, torch_dtype
from distill.recipe import Recipe


def lora_config(recipe: Recipe):
    from peft import LoraConfig

    lora = recipe.train.lora
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def load_student(recipe: Recipe, student_dir: Path):
    """(the base model in the student's training dtype, its tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = recipe.models.student
    tokenizer = AutoTokenizer.from_pretrained(student_dir, trust_remote_code=spec.trust_remote_code)
    dtype = torch_dtype(model_dtype(spec, "student", student_dir).dtype)
    model = AutoModelForCausalLM.from_pretrained(student_dir, dtype=dtype, trust_remote_code=spec.trust_remote_code)
    return model, tokenizer
