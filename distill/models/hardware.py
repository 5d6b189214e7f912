"""What this machine computes fast: the CPU's vector and matrix units, the GPUs, memory.

Read once per process. A CPU's features are its `lscpu` flags, less those that a cap set in the environment hides
from the libraries that do the arithmetic: `ATEN_CPU_CAPABILITY` (torch's kernels), `ONEDNN_MAX_CPU_ISA` (oneDNN's,
under torch and vLLM's CPU backend) and `MKL_ENABLE_INSTRUCTIONS` (MKL's BLAS). Setting all three emulates an
older CPU, for example an AVX2-only laptop on a machine with AMX, and distill then chooses as it would there. The
emulation is partial: vLLM's own CPU kernels still use what the CPU has, so an emulated run is faster than a real
one.
"""

from __future__ import annotations

import glob
import os
import platform
import sys
from dataclasses import dataclass, field
from functools import lru_cache

# The flags that decide dtypes and speed, in the order they are shown.
SHOWN_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
BF16_UNITS = ("amx_bf16", "avx512_bf16")  # bf16 matrix products in hardware
FP16_UNITS = ("amx_fp16", "avx512_fp16")
_AVX512_AND_UP = ("avx512", "amx")  # flag prefixes an AVX2 cap hides

# ONEDNN_MAX_CPU_ISA: the highest ISA oneDNN may use -> the flag prefixes it hides.
_ONEDNN_CAPS = {
    "sse41": _AVX512_AND_UP + ("avx",), "avx": _AVX512_AND_UP + ("avx2",), "avx2": _AVX512_AND_UP,
    "avx2_vnni": _AVX512_AND_UP, "avx2_vnni_2": _AVX512_AND_UP,
    "avx512_core": ("avx512_bf16", "avx512_fp16", "amx"), "avx512_core_vnni": ("avx512_bf16", "avx512_fp16", "amx"),
    "avx512_core_bf16": ("avx512_fp16", "amx"), "avx512_core_fp16": ("amx",), "avx512_core_amx": ("amx_fp16",),
}
# ATEN_CPU_CAPABILITY: the vector width torch's own kernels may use.
_ATEN_CAPS = {"default": _AVX512_AND_UP + ("avx2",), "avx2": _AVX512_AND_UP}
# MKL_ENABLE_INSTRUCTIONS: the ISA MKL's BLAS (torch's float32 matrix products on x86) may use.
_MKL_CAPS = {"sse4_2": _AVX512_AND_UP + ("avx",), "avx": _AVX512_AND_UP + ("avx2",), "avx2": _AVX512_AND_UP,
             "avx512": ("avx512_bf16", "avx512_fp16", "amx"), "avx512_e1": ("avx512_bf16", "avx512_fp16", "amx")}


@dataclass(frozen=True)
class Gpu:
    name: str
    capability: tuple[int, int]  # CUDA compute capability
    memory_gib: float

    @property
    def bf16(self) -> bool:
        """Ampere (8.0) and later compute bf16 natively."""
        return self.capability >= (8, 0)


@dataclass(frozen=True)
class Machine:
    cpu: str = "unknown CPU"
    cores: int = 1
    memory_gib: float = 0.0
    cpu_flags: frozenset[str] = frozenset()  # as the CPU reports them
    caps: tuple[str, ...] = ()  # environment caps in force, e.g. ("ONEDNN_MAX_CPU_ISA=AVX2",)
    hidden: frozenset[str] = field(default=frozenset())  # flags those caps hide
    gpus: tuple[Gpu, ...] = ()

    @property
    def features(self) -> frozenset[str]:
        """The CPU flags the arithmetic libraries may use here."""
        return self.cpu_flags - self.hidden

    @property
    def cpu_bf16(self) -> bool:
        return any(f in self.features for f in BF16_UNITS)

    @property
    def cpu_fp16(self) -> bool:
        return any(f in self.features for f in FP16_UNITS)

    def cpu_summary(self) -> str:
        """The features that decide speed, e.g. 'AMX, AVX-512 (bf16), AVX2' or 'AVX2 only (no AVX-512, no AMX)'."""
        f = self.features
        parts = []
        if any(x.startswith("amx") for x in f):
            parts.append("AMX")
        if "avx512f" in f:
            parts.append("AVX-512" + (" (bf16)" if "avx512_bf16" in f else ""))
        if "avx2" in f:
            parts.append("AVX2")
        if parts == ["AVX2"]:
            text = "AVX2 only (no AVX-512, no AMX)"
        else:
            text = ", ".join(parts) or "no AVX2"
        return text + (f"; emulated with {' '.join(self.caps)}" if self.caps else "")

    def describe(self) -> dict:
        """For provenance, benchmarks and `distill doctor`."""
        return {"cpu": self.cpu, "cores": self.cores, "memory_gib": round(self.memory_gib, 1),
                "cpu_features": self.cpu_summary(), "flags": [f for f in SHOWN_FEATURES if f in self.features],
                "caps": list(self.caps),
                "gpus": [{"name": g.name, "capability": ".".join(map(str, g.capability)), "memory_gib": round(g.memory_gib, 1)}
                         for g in self.gpus]}


def hidden_by_caps(flags: frozenset[str], env: dict[str, str]) -> tuple[tuple[str, ...], frozenset[str]]:
    """(the caps in force, the flags they hide) for environment `env`."""
    caps, prefixes = [], set()
    for var, table in (("ONEDNN_MAX_CPU_ISA", _ONEDNN_CAPS), ("ATEN_CPU_CAPABILITY", _ATEN_CAPS),
                       ("MKL_ENABLE_INSTRUCTIONS", _MKL_CAPS)):
        value = env.get(var, "").strip()
        if value.lower() in table:
            caps.append(f"{var}={value}")
            prefixes.update(table[value.lower()])
    return tuple(caps), frozenset(f for f in flags if f.startswith(tuple(prefixes)))


def _cpu_info() -> tuple[str, frozenset[str]]:
    name, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = frozenset(value.split())
                    break
    except OSError:
        pass  # not Linux: no flags, so every CPU choice falls back to float32
    return name, flags


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return 0.0


def _no_gpu_devices() -> bool:
    """Linux without an NVIDIA or AMD GPU device file: no GPU torch could use, known without importing torch (seconds
    in every stage process that needs it for nothing else)."""
    if not sys.platform.startswith("linux"):
        return False
    return not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/kfd")


def _gpus() -> tuple[Gpu, ...]:
    if _no_gpu_devices():
        return ()
    import torch

    if not torch.cuda.is_available():
        return ()
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(Gpu(p.name, (p.major, p.minor), p.total_memory / 1024**3))
    return tuple(out)


@lru_cache(maxsize=1)
def this_machine() -> Machine:
    name, flags = _cpu_info()
    caps, hidden = hidden_by_caps(flags, dict(os.environ))
    return Machine(cpu=name, cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                   memory_gib=_memory_gib(), cpu_flags=flags, caps=caps, hidden=hidden, gpus=_gpus())


def request_amx_permission() -> None:
    """Ask Linux for the AMX tile registers for this process (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA). oneDNN asks
    for itself, vLLM's CPU attention kernel does not: a worker process it forks before anything asked dies with
    SIGILL on its first bf16 AMX instruction. Forked children inherit the permission; exec clears it. A no-op where
    there is no AMX."""
    if platform.machine() != "x86_64" or not any(f.startswith("amx") for f in this_machine().features):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18)  # SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XTILEDATA
    except (OSError, AttributeError):
        pass  # an old kernel without dynamic xstate gives the permission to every process
