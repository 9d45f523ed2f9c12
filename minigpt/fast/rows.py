"""A decoding step's matrix products, for the one or two rows it has: `rows_product`.

A step at batch 1 multiplies one row by every weight matrix, so its time is the time to stream
the weights from memory, and what matters is how close a kernel comes to the bandwidth.
`rows.cpp` does only that: each thread takes a share of W's rows, reads each row once and
multiplies it, while it sits in the L1 cache, by the one or two rows of x. It reads the weights
as stored, so it can read formats the libraries cannot:

- float32;
- bfloat16: half the bytes; the activations are not rounded to bfloat16, as oneDNN's bfloat16
  product rounds them;
- int8 in blocks of 32 along a row, a float16 scale each (llama.cpp's q8_0 and gpt-fast's
  groupwise layout: 8.5 bits a weight). The activations are rounded once a call to 16-bit
  integers with one scale per row (off by at most 1/65534 of the row's largest: greedy tokens
  of the model in the box stayed exactly as with float32 activations), so that a block's 32
  products are one integer instruction (AVX-512 VNNI's vpdpwssd) and the block costs one convert
  and one multiply-add by its scale. Widening every weight to float32 instead took eight
  instructions a block and left the step compute-bound: on 2 EPYC cores the 124M shape's int8
  step went from 74% to 92% of the time to read its bytes. fbgemm's int8 product rounds the
  activations to 8 bits with one scale per call, q8_0 to 8 bits per block of 32 (emulated on the
  model in the box: 24 of 40 prompts' greedy tokens all equal to float32's, against 35 with
  16 bits).

Measured on 2 EPYC cores over the 124M shape's 49 matrices taken in a step's order (together
many times the caches, as in a real step), milliseconds for one row (one run, taking turns):

    float32: oneDNN 14.75, rows.cpp 12.96    (reading the same bytes by a plain sum: 11.65)
    bfloat16: oneDNN 7.37, rows.cpp 6.15     int8: fbgemm (per row) 4.07, rows.cpp (per block, float32 scales) 3.68

No PyTorch kernel reads int8 blocks at that speed: its weight-only
`_weight_int8pack_mm` took 878 µs for one 768 x 3072 matrix (fbgemm 33 µs), Inductor's
weight-only template compiled the whole step to 12.6 ms. At 4 rows rows.cpp was already slower
there (float32 11.67 against oneDNN's 10.68; int8 6.01 against fbgemm's 4.15) and at 8 rows twice
as slow: the libraries' blocked kernels reuse each loaded weight across rows better. Where the
crossing lies depends on the CPU, so the fast modules (packed.py, int8.py) time rows.cpp against
the libraries on the machine and give each row count to the faster (kernels.py).

rows.cpp also holds `decode_step`: a GPT-2's whole decoding step for the same few rows, in one
call (fused.py).

The kernel is compiled on first use, for this machine (-march=native; about 20 s, then cached
by PyTorch in ~/.cache/torch_extensions); where it cannot be built, every product goes to the
libraries.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor

BLOCK = 32  # weights per int8 scale, and what a row's width must be a multiple of


@functools.cache
def built() -> bool:
    """Whether rows.cpp is compiled and loaded (the first call builds it); where it cannot be
    built (no compiler), False, said once as a warning."""
    import ninja
    from torch.utils import cpp_extension

    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path])  # cpp_extension runs `ninja`; a venv's bin is on
    try:                                                         # PATH only when the venv is activated
        cpp_extension.load("minigpt_rows", [str(Path(__file__).with_name("rows.cpp"))], is_python_module=False,
                           extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"])
    except Exception as err:  # the build's failure has many shapes (no compiler, no ninja, a linker error)
        warnings.warn(f"minigpt's decoding kernel could not be built ({str(err).strip().splitlines()[-1]}); "
                      "decoding steps use the libraries' products instead", stacklevel=2)
        return False
    finally:
        os.environ["PATH"] = path

    @torch.library.register_fake("minigpt::rows_product")
    def _(x: Tensor, weight: Tensor, scales: Tensor, bias: Tensor) -> Tensor:  # the shape rule torch.compile traces with
        return x.new_empty(x.shape[0], weight.shape[0])

    @torch.library.register_fake("minigpt::decode_step")
    def _(tokens: Tensor, wte: Tensor, *rest) -> Tensor:
        return wte.new_empty(tokens.shape[0], wte.shape[1])

    return True


def fits(weight: Tensor) -> bool:
    """Whether `rows_product` can multiply by this (out in) weight: on the CPU, a row's width a
    multiple of the kernel's blocks, and a kernel that built. A module checks once, when made."""
    return weight.device.type == "cpu" and weight.shape[1] % BLOCK == 0 and built()


def rows_product(x: Tensor, weight: Tensor, scales: Tensor | None, bias: Tensor | None) -> Tensor:
    """x (... in) float32 -> x Wᵀ + b (... out) float32. weight (out in): float32, bfloat16, or
    int8 with float16 scales (out in/32), W = weight · scale of its block. Check `fits` first."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()  # (rows in)
    empty = rows.new_empty(0)
    out = torch.ops.minigpt.rows_product(rows, weight, empty if scales is None else scales, empty if bias is None else bias)
    return out.view(*x.shape[:-1], weight.shape[0])


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
