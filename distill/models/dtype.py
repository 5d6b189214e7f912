"""Which dtype each model runs in on this machine.

`dtype: auto` (the default) takes bf16 where the hardware computes it natively: a GPU of compute capability 8.0 or
later, or a CPU with AMX or AVX512-BF16. Elsewhere bf16 is emulated and runs many times slower than float32 (on an
AVX2-only CPU a bf16 teacher did not finish 256 short prompts in 10 minutes), so other CPUs get float32, and GPUs
without bf16 get float16 unless the weights are stored in bf16 (whose range float16 cannot hold).

The student is different on a CPU: distill trains it in float32 there (no mixed precision on CPU), and it is
evaluated, with its base, in the dtype it was trained in, so that the scores are those of the model trained.

A pinned dtype is kept as written; when it is slow on this machine, `slow_dtype_warning` says so, naming the key.
Each process resolves for the machine it runs on (a Slurm job on a GPU node, not the login node that submitted it),
and the resolved dtype is part of the model's fingerprint: a stage resolved differently on another machine reruns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from distill.models.hardware import Machine, this_machine
from distill.recipe import ModelSpec, Recipe

TRAINED_ROLES = ("student",)  # the model distill trains: its base and its adapters run in the training dtype


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # float32, bfloat16 or float16
    requested: str  # as the recipe says: auto or a dtype
    why: str


def stored_dtype(folder: str | Path) -> str | None:
    """The dtype a model folder's weights are stored in (config.json), if it says."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return str(value).replace("torch.", "") if value else None


def torch_dtype(name: str):
    """The torch dtype of a resolved dtype name."""
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def choose_dtype(requested: str, machine: Machine, *, trained: bool = False, stored: str | None = None) -> DtypeChoice:
    """The dtype a model runs in on `machine`. `trained`: the model distill trains (the student); `stored`: the dtype
    of its weights on disk, when known."""
    if requested != "auto":
        return DtypeChoice(requested, requested, "pinned in the recipe")
    if machine.gpus:
        gpu = machine.gpus[0]
        if gpu.bf16:
            return DtypeChoice("bfloat16", requested, f"{gpu.name} computes bf16 natively")
        if trained:
            return DtypeChoice("float32", requested, f"{gpu.name} has no bf16; trained in float32")
        if stored == "bfloat16":
            return DtypeChoice("float32", requested, f"{gpu.name} has no bf16 and bf16 weights can overflow float16")
        return DtypeChoice("float16", requested, f"{gpu.name} has no bf16; float16 is its fast path")
    if trained:
        return DtypeChoice("float32", requested, "trained on this CPU in float32, and evaluated as trained")
    if machine.cpu_bf16:
        units = " and ".join(u.upper().replace("_", "-") for u in ("amx_bf16", "avx512_bf16") if u in machine.features)
        return DtypeChoice("bfloat16", requested, f"this CPU computes bf16 natively ({units})")
    return DtypeChoice("float32", requested, "this CPU has no AMX or AVX512-BF16: bf16 would be emulated, many "
                                             "times slower")


def model_dtype(spec: ModelSpec, role: str, folder: str | Path | None = None,
                machine: Machine | None = None) -> DtypeChoice:
    """The dtype the model playing `role` runs in on this machine (`folder`: its weights, when resolved)."""
    return choose_dtype(spec.dtype, machine or this_machine(), trained=role in TRAINED_ROLES,
                        stored=stored_dtype(folder) if folder is not None and spec.dtype == "auto" else None)


def slow_dtype_warning(key: str, spec: ModelSpec, role: str, machine: Machine | None = None) -> str | None:
    """One line when `spec` pins a dtype that this machine computes slowly, naming the key and the faster choice."""
    machine = machine or this_machine()
    pinned = spec.dtype
    if pinned == "auto":
        return None
    faster = choose_dtype("auto", machine, trained=role in TRAINED_ROLES).dtype
    if machine.gpus:
        gpu = machine.gpus[0]
        if pinned == "bfloat16" and not gpu.bf16:
            why = f"{gpu.name} has no native bf16"
        elif pinned == "float32" and gpu.bf16 and role not in TRAINED_ROLES:
            why = f"float32 runs at a fraction of bf16's speed on {gpu.name}"
        else:
            return None
    elif pinned in ("bfloat16", "float16") and not (machine.cpu_bf16 if pinned == "bfloat16" else machine.cpu_fp16):
        why = f"{pinned} is emulated on this CPU ({machine.cpu_summary()}), many times slower than float32"
    else:
        return None
    return f"{key}: {why}; `dtype: auto` chooses {faster} here"


def dtype_lines(recipe: Recipe, machine: Machine | None = None) -> tuple[str, list[str]]:
    """(one line with the dtype of every model, e.g. 'teacher bfloat16 (auto: ...), student float32 (...)', the slow-
    dtype warnings)."""
    machine = machine or this_machine()
    parts, warnings = [], []
    for role in recipe.models.roles:
        spec = getattr(recipe.models, role)
        choice = model_dtype(spec, role, machine=machine)
        parts.append(f"{role} {choice.dtype} ({'auto: ' if choice.requested == 'auto' else ''}{choice.why})")
        warning = slow_dtype_warning(f"models.{role}.dtype", spec, role, machine)
        if warning:
            warnings.append(warning)
    return "; ".join(parts), warnings


def machine_line(recipe: Recipe, machine: Machine | None = None) -> str:
    """What computes here and in which dtype each model runs, for the console: 'on this CPU (AMX, AVX-512 (bf16),
    AVX2): teacher bfloat16 (auto: ...); student float32 (...)'."""
    machine = machine or this_machine()
    where = (f"on {machine.gpus[0].name}" + (f" x{len(machine.gpus)}" if len(machine.gpus) > 1 else "")
             if machine.gpus else f"on this CPU ({machine.cpu_summary()})")
    return f"{where}: {dtype_lines(recipe, machine)[0]}"
