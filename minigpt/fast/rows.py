"""A decoding step's matrix products, for the one or two rows it has: `rows_product`.

A step at batch 1 multiplies one row by every weight matrix, so its time is the time to stream
the weights from memory, and what matters is how close a kernel comes to the bandwidth.
`rows.cpp` does only that: each thread takes a share of W's rows, reads each row once and
multiplies it, while it sits in the L1 cache, by the one or two rows of x. It reads the weights
as stored: float32, bfloat16 (half the bytes), and int8 in blocks of 32 along a row with a
float16 scale each (llama.cpp's q8_0 layout: 8.5 bits a weight), multiplied by the activations
rounded to 16-bit integers, one scale per row. docs/fast.md has the measurements behind each choice.

rows.cpp is compiled on first use for this CPU's instruction-set level (cpu.py: AVX-512 with or
without VNNI, AVX2 + FMA, or the generic x86-64-v2 code; about 30 s, then cached by PyTorch in
~/.cache/torch_extensions), each level a build of its own with operators of its own
(`torch.ops.minigpt_avx2.rows_product`), so that the tests can run every level this CPU has
side by side. Where it cannot be built, every product goes to the libraries.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from . import cpu
from .cpu import LEVELS

BLOCK = 32  # weights per int8 scale, and what a row's width must be a multiple of
TILE = 16  # outputs a tile of int8 weights holds side by side (tiles_product)
# How far ahead of its use the prefetching kernel asks for a weight, in bytes, whatever the format:
# about what one core must have in flight to stream at 10-20 GB/s against the 100-200 ns a VM's
# memory takes. Products alone at one row, as a share of a plain read (docs/fast.md): on a Xeon
# with AMX, int8 57% without, 63% at 1 KB, 76% at 2 KB, 85% at 4 KB; bfloat16 66, 83, 96, 97%;
# on an AVX-512 EPYC float32 at 2, 4 and 8 KB within a few points of each other.
PREFETCH = 4096
MARCH = {"generic": ["-march=x86-64-v2"], "avx2": ["-march=x86-64-v3"], "avx512": ["-march=x86-64-v4"],
         "avx512_vnni": ["-march=x86-64-v4", "-mavx512vnni"]}  # gcc's names for each level (x86 only)


def built(level: str | None = None) -> bool:
    """Whether rows.cpp is compiled and loaded for `level` (cpu.LEVELS, up to this CPU's, which is
    the default; the first call builds it); where it cannot be built (no compiler), False, said
    once as a warning."""
    runs = LEVELS[:LEVELS.index(cpu.capabilities().level) + 1]
    if level is not None and level not in runs:
        raise ValueError(f"rows.cpp level must be one this CPU runs, one of {', '.join(runs)}; got {level!r}")
    return build(level or cpu.capabilities().level)


@functools.cache
def build(level: str) -> bool:
    import ninja
    from torch.utils import cpp_extension

    flags = MARCH[level] if cpu.X86 else []
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path])  # cpp_extension runs `ninja`; a venv's bin is on
    try:                                                         # PATH only when the venv is activated
        cpp_extension.load(f"minigpt_rows_{level}", [str(Path(__file__).with_name("rows.cpp"))], is_python_module=False,
                           extra_cflags=["-O3", *flags, f"-DMINIGPT_OPS=minigpt_{level}", "-fopenmp"],
                           extra_ldflags=["-fopenmp"])
    except Exception as err:  # the build's failure has many shapes (no compiler, no ninja, a linker error)
        warnings.warn(f"minigpt's decoding kernel could not be built ({str(err).strip().splitlines()[-1]}); "
                      "decoding steps use the libraries' products instead", stacklevel=2)
        return False
    finally:
        os.environ["PATH"] = path

    @torch.library.register_fake(f"minigpt_{level}::rows_product")
    def _(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor, ahead: int) -> Tensor:  # the shape rule for torch.compile
        return x.new_empty(x.shape[0], weight.shape[0])

    @torch.library.register_fake(f"minigpt_{level}::tiles_product")
    def _(x: Tensor, tiles: Tensor, scales: Tensor, bias: Tensor, out: int, ahead: int) -> Tensor:
        return x.new_empty(x.shape[0], out)

    @torch.library.register_fake(f"minigpt_{level}::decode_step")
    def _(tokens: Tensor, wte: Tensor, *rest) -> Tensor:
        return wte.new_empty(tokens.shape[0], wte.shape[1])

    return True


def ops(level: str | None = None):
    """The operators of rows.cpp's build for `level` (this CPU's by default), built if need be."""
    return level_ops(level or cpu.capabilities().level)


@functools.cache
def level_ops(level: str):
    """ops for one level, looked up once: every product and every fused step asks."""
    if not built(level):
        raise RuntimeError(f"rows.cpp could not be built for {level}")
    return getattr(torch.ops, f"minigpt_{level}")


def fits(weight: Tensor) -> bool:
    """Whether `rows_product` can multiply by this (out in) weight: on the CPU, a row's width a
    multiple of the kernel's blocks, and a kernel that built. A module checks once, when made."""
    return weight.device.type == "cpu" and weight.shape[1] % BLOCK == 0 and built()


def rows_product(x: Tensor, weight: Tensor, scales: Tensor | None, bias: Tensor | None, *, level: str | None = None,
                 ahead: int = 0) -> Tensor:
    """x (... in) float32 -> x Wᵀ + b (... out) float32, as `format_product` computes it. weight
    (out in): float32, bfloat16, or int8 with float16 scales (out in/32), W = weight · scale of its
    block (x then rounded to 16-bit integers, one scale per row). `level`: the build to run
    (cpu.LEVELS, up to this CPU's, which is the default). `ahead`: weights asked for that many
    bytes before their use (a software prefetch: rows.cpp says when it helps), 0 for none. Check
    `fits` first."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()  # (rows in)
    empty = rows.new_empty(0)
    out = ops(level).rows_product(rows, weight, empty if scales is None else scales, empty if bias is None else bias, ahead)
    return out.view(*x.shape[:-1], weight.shape[0])


def tiles_product(x: Tensor, tiles: Tensor, scales: Tensor | None, bias: Tensor | None, out: int, *,
                  level: str | None = None, ahead: int = 0) -> Tensor:
    """x (... in) float32 -> x Wᵀ + b (... out), W in tiles (`pair_tiles`): bfloat16 (scales None),
    or int8 with its blocks' scales in tiles too (`int8_tiles`). The format's numbers, as
    `rows_product` computes them from W as stored. `level` and `ahead` as there."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()  # (rows in)
    empty = rows.new_empty(0)
    y = ops(level).tiles_product(rows, tiles, empty if scales is None else scales, empty if bias is None else bias, out, ahead)
    return y.view(*x.shape[:-1], out)


def pair_tiles(weight: Tensor) -> Tensor:
    """(out in) -> the tiles rows.cpp's tile kernels read: the outputs in groups of TILE, each pair
    of weights along a row beside the same pair of the group's other outputs, (out/TILE in/2 TILE
    2); the last group padded with zero weights (rows.cpp says why this layout)."""
    weight = torch.cat([weight, weight.new_zeros(-weight.shape[0] % TILE, weight.shape[1])])
    return weight.view(-1, TILE, weight.shape[1] // 2, 2).transpose(1, 2).contiguous()


def tile_kernels(tiles: Tensor, scales: Tensor | None, bias: Tensor | None, out: int) -> tuple[dict, dict[int, list]]:
    """The tile kernel as two candidates for a matrix's routes (kernels.py), without and with the
    prefetch, and what the fused step passes rows.cpp for each (fused.step_kernels): {prefetch
    distance: [tiles, scales (empty for bfloat16), the distance as a one-element tensor]}."""
    kernels = {"rows.cpp tiles": lambda x: tiles_product(x, tiles, scales, bias, out),
               "rows.cpp tiles+prefetch": lambda x: tiles_product(x, tiles, scales, bias, out, ahead=PREFETCH)}
    stored = tiles.new_empty(0, dtype=torch.float16) if scales is None else scales
    return kernels, {ahead: [tiles, stored, torch.tensor(ahead)] for ahead in (0, PREFETCH)}


def int8_tiles(q: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """int8 blocks as stored, q (out in) and their scales (out in/32), as tiles_product reads them:
    q in `pair_tiles`, and the scales beside their outputs, (out/TILE in/32 TILE), zero for padding."""
    scales = torch.cat([scales, scales.new_zeros(-scales.shape[0] % TILE, scales.shape[1])])
    return pair_tiles(q), scales.view(-1, TILE, scales.shape[1]).transpose(1, 2).contiguous()


def quantize_blocks(weight: Tensor, block: int = BLOCK, scales: torch.dtype = torch.float16,
                    bits: int = 8) -> tuple[Tensor, Tensor]:
    """(out in) float -> q (out in) int8 and s (out in/block), W ≈ q · s per block of `block`
    weights along a row: s = max |W[block]| / 127 in `scales`' dtype (float16 for rows.cpp: 2
    bytes a block, as q8_0's; 6% of the bytes a step reads, against 11% in float32), and q
    quantized against that s, so a weight is off by at most s/2, 1/254 of its block's largest
    (float16 keeps 11 bits of s: the largest weight lands within 0.06 s of 127 s). block = in:
    one scale per row. bits=16: q int16 against max / 32767, as rows.cpp quantizes the
    activations it multiplies int8 weights by (with scales=torch.float32)."""
    top, dtype = {8: (127, torch.int8), 16: (32767, torch.int16)}[bits]
    w = weight.detach().float()
    blocks = w.view(w.shape[0], -1, block)  # (out in/block block)
    tiny = torch.finfo(scales).tiny * torch.finfo(scales).eps  # the smallest positive value: an all-zero block's s, not 0
    scale = (blocks.abs().amax(dim=-1) / top).to(scales).clamp(min=tiny)
    q = (blocks / scale.float()[..., None]).round().clamp(-top, top).to(dtype)
    return q.view(w.shape), scale


def widened(weight: Tensor, scales: Tensor | None) -> Tensor:
    """The (out in) weight as the float32 numbers it stands for: int8 blocks times their scales."""
    if scales is None:
        return weight.float()
    block = weight.shape[1] // scales.shape[1]
    return (weight.float().view(weight.shape[0], -1, block) * scales.float()[..., None]).view(weight.shape)


def format_product(x: Tensor, weight: Tensor, scales: Tensor | None, bias: Tensor | None) -> Tensor:
    """x (... in) float32 -> x Wᵀ + b (... out) float32 as the weight's format defines it, which
    every kernel of the format computes (summing in its own order), by PyTorch in float32:
    - float32 and bfloat16: x as it is, times W (exact in float32), summed in float32. oneDNN's
      bfloat16 product rounds x and the result to bfloat16 as well, which cost the model in the box
      4 to 10 of 40 prompts' greedy tokens (docs/fast.md): it is not a kernel of this format;
    - int8 (blocks with their scales): x rounded to 16-bit integers with one scale per row, as
      rows.cpp rounds it, times the blocks widened, plus b."""
    if weight.dtype == torch.int8:
        q, s = quantize_blocks(x.reshape(-1, x.shape[-1]), block=x.shape[-1], scales=torch.float32, bits=16)
        x = (q.float() * s).view(x.shape)
    return F.linear(x, widened(weight, scales), bias)
