"""Fast paths: swaps applied to a loaded model, for speed and not for reading.

The readable model in `minigpt/` stays plain PyTorch. `optimize(model, weights=...)` swaps its
weight matrices for fast modules and returns a `FastGPT`: the model wrapped with the decoding step
that is fastest here, which every decoder takes; tests hold it equal to the readable model
(within measured bounds for bfloat16 and int8). The parts are importable alone:

- `capabilities`: what this CPU can run (cpu.py); no kernel it lacks is ever built, timed or chosen.
- `rows_product`: a decoding step's few rows times the weights as stored (rows.cpp, compiled on
  first use for this CPU's instruction set).
- `pack_for_cpu`: float32 or bfloat16 weights, reordered once into oneDNN's blocked layout where it runs.
- `Int8Linear`, `Int8TokenEmbedding`, `quantize_int8`: int8 weights in blocks of 32.
- `RowsLastHead`: the tied head as (W xᵀ)ᵀ, faster with CPU BLAS for a few rows.
- `report`, `describe`, `cache_path`, `clear_cache`: which kernel each matrix took, timed on this machine (kernels.py).
- `FusedStep`: a GPT-2's whole decoding step in one C++ call (fused.py).
- `compile_step`: the one-token decoding step compiled as one graph (a CUDA graph on a GPU).
docs/fast.md has the measurements behind each of them.
"""

from __future__ import annotations

import torch

from ..checks import check_choice
from ..embedding import TokenEmbedding
from ..model import GPT
from .cpu import Capabilities, capabilities
from .fast_gpt import FastGPT
from .fused import FusedStep, not_fusable
from .gelu import fuse_gelu, tanh_gelu
from .head import RowsLastHead
from .int8 import Int8Linear, Int8TokenEmbedding, quantize_int8
from .kernels import cache_path, clear_cache, report
from .packed import PackedLinear, PackedTokenEmbedding, pack_for_cpu
from .rows import rows_product
from .step import CompiledStep, compile_step

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")


def optimize(model: GPT, *, weights: str = "float32", verbose: bool = False) -> FastGPT:
    """The model made as fast as this machine allows for decoding, weights in the given format:
    its matrices swapped in place (eval mode, frozen), wrapped with its fastest step. Every
    decoder takes the result.

    On the CPU only the weights change format; activations, the residual stream and the KV cache
    stay float32. Every weight matrix can be multiplied by several kernels that compute the same
    numbers (rows.cpp, which streams the weights as stored; oneDNN with the weights packed;
    PyTorch's own), and which one takes how many rows is timed on this machine the first time a
    model of this shape is optimized, then kept in a cache (kernels.py: `describe(model)` says
    what was chosen, `clear_cache()` forgets it). The step itself runs fused in one C++ call at
    the batch sizes where that measures faster (fused.py), else module by module. `verbose`
    prints what is timed and what was chosen. The step runs eagerly; `compile_step(model)`
    compiles the module step for batch 1 where it is not fused (step.py), a separate call so that
    nothing waits. On CUDA: the whole model in the format (int8 as blocks widened inside the
    compiled product) and the step compiled and captured as a CUDA graph."""
    inner = model.model if isinstance(model, FastGPT) else model
    if not isinstance(inner, GPT):
        raise ValueError(f"optimize takes a minigpt GPT, got {type(model).__name__}")
    check_choice("weights", weights, WEIGHT_FORMATS)
    if not isinstance(verbose, bool):
        raise ValueError(f"verbose must be True or False, got {verbose!r}")
    swapped = sorted({type(m).__name__ for m in inner.modules() if isinstance(m, (PackedLinear, Int8Linear))} |
                     ({type(inner.wte).__name__} if type(inner.wte) is not TokenEmbedding else set()))
    if swapped or inner is not model:  # a second swap would keep the first one's layers under the new dtype
        raise ValueError(f"the model is already optimized ({', '.join(swapped) or 'its step compiled'}); "
                         "optimize a freshly loaded model (load_gpt2 again) for another weight format")
    model.eval().requires_grad_(False)
    if model.device.type == "cuda":
        model.to(torch.bfloat16 if weights == "bfloat16" else torch.float32)
        if weights == "int8":
            quantize_int8(model)
        return compile_step(model, mode="reduce-overhead")
    model.float()  # on the CPU the activations stay float32 in every format: only the weights shrink
    fuse_gelu(model)
    if weights == "int8":
        quantize_int8(model, verbose=verbose)
    else:
        pack_for_cpu(model, weights=getattr(torch, weights), verbose=verbose)
    fast = FastGPT(model, FusedStep(model, verbose=verbose) if not_fusable(model) is None else None)
    if verbose:
        print("\n".join(fast.describe()), flush=True)
    return fast


def describe(model: FastGPT | GPT) -> list[str]:
    """What an optimized model runs: each kind of matrix's kernel per row count, and how its step
    runs (fused at which batch sizes, compiled, or module by module)."""
    return model.describe() if isinstance(model, FastGPT) else report(model)


__all__ = ["optimize", "FastGPT", "WEIGHT_FORMATS", "capabilities", "Capabilities", "pack_for_cpu", "PackedLinear",
           "PackedTokenEmbedding", "Int8Linear", "Int8TokenEmbedding", "quantize_int8", "RowsLastHead", "compile_step",
           "CompiledStep", "rows_product", "FusedStep", "fuse_gelu", "tanh_gelu", "describe", "report", "cache_path",
           "clear_cache"]
