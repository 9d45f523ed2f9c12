"""What this CPU can run, asked once, before any kernel is built, timed or chosen.

A kernel the CPU lacks must never be a candidate: rows.cpp built for AVX-512 would stop on an
illegal instruction on an AVX2 CPU (and oneDNN's bfloat16 product raises from inside PyTorch there:
minigpt never calls it, docs/fast.md says why). `capabilities()` answers from two sources, the
second lowering the first, so that one setting restricts both:

- the CPU's own flags (/proc/cpuinfo on Linux);
- PyTorch's kernel level, `torch.backends.cpu.get_cpu_capability()`, which ATEN_CPU_CAPABILITY
  lowers (`ATEN_CPU_CAPABILITY=avx2` on an AVX-512 machine: PyTorch, and so minigpt, run as on an
  AVX2 CPU; .ci/run runs the fast paths' tests so a second time, with oneDNN lowered to AVX2 too
  by ONEDNN_MAX_CPU_ISA).

`level` names the build of rows.cpp that runs (rows.py): "avx512_vnni", "avx512", "avx2", or
"generic" (x86-64-v2, and any CPU that is not x86).
"""

from __future__ import annotations

import functools
import hashlib
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

LEVELS = ("generic", "avx2", "avx512", "avx512_vnni")  # rows.cpp's builds, each needing what the one before has
NEEDS = {  # the CPU flags each level's build uses (gcc's -march=x86-64-v3 and -v4, and VNNI)
    "avx2": {"avx2", "fma", "f16c", "bmi2", "movbe"},
    "avx512": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"},
    "avx512_vnni": {"avx512_vnni"},
}
TORCH_LEVELS = {"DEFAULT": "generic", "AVX2": "avx2", "AVX512": "avx512_vnni"}  # the highest of ours each allows
X86 = platform.machine().lower() in ("x86_64", "amd64")  # gcc's -march levels name x86-64 CPUs only


@dataclass(frozen=True)
class Capabilities:
    """What the kernels may use here."""
    level: str    # the rows.cpp build that runs (LEVELS)
    onednn: bool  # oneDNN is in this PyTorch build: float32 products on packed weights

    def __str__(self) -> str:
        return f"rows.cpp level {self.level}, oneDNN {'yes' if self.onednn else 'no'}"


@functools.cache
def capabilities() -> Capabilities:
    """This CPU's, as the module docstring says (asked once a process)."""
    flags = set(cpu_flags())
    level = "generic"
    for candidate in LEVELS[1:]:
        if not (X86 and NEEDS[candidate] <= flags):
            break
        level = candidate
    allowed = TORCH_LEVELS.get(torch.backends.cpu.get_cpu_capability(), "generic")
    return Capabilities(level=min(level, allowed, key=LEVELS.index), onednn=torch.backends.mkldnn.is_available())


def cpu_info() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def cpu_name() -> str:
    return cpu_info().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    return cpu_info().get("flags", "").split()


def cpu_flags_digest() -> str:
    return hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12]


def vector_flags() -> list[str]:
    """The CPU's flags the kernels can use: AVX2, FMA, F16C, the AVX-512 family, VNNI, BF16, AMX."""
    wanted = ("avx2", "fma", "f16c", "avx512", "vnni", "bf16", "amx", "avx_ne_convert")
    return [f for f in cpu_flags() if f.startswith(wanted) or any(w in f for w in wanted[4:])]
