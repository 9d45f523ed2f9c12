"""Fast paths: swaps applied to a loaded model, for speed and not for reading.

The readable model in `minigpt/` stays plain PyTorch; everything here replaces parts of a loaded
GPT in place, and tests hold the result equal to the readable one (within measured bounds for
bfloat16 and int8). `optimize(model, weights=...)` applies the fastest combination, timed on this
machine; the parts are importable alone:

- `rows_product`: a decoding step's few rows times the weights as stored (rows.cpp, compiled on first use).
- `pack_for_cpu`: float32 or bfloat16 weights reordered once into oneDNN's blocked layout.
- `Int8Linear`, `Int8TokenEmbedding`, `quantize_int8`: int8 weights, in blocks of 32 and per output row.
- `RowsLastHead`: the tied head as (W xᵀ)ᵀ, faster with CPU BLAS for a few rows.
- `report`, `describe`, `cache_path`, `clear_cache`: which kernel each matrix took, timed on this machine (kernels.py).
- `fuse_step`: a GPT-2's whole decoding step in one C++ call (fused.py).
- `compile_step`: the one-token decoding step compiled as one graph (a CUDA graph on a GPU).
"""

from __future__ import annotations

import torch

from ..checks import check_choice
from ..embedding import TokenEmbedding
from ..model import GPT
from .fused import FusedStep, fuse_step, not_fusable
from .gelu import fuse_gelu, tanh_gelu
from .head import RowsLastHead
from .int8 import Int8Linear, Int8TokenEmbedding, quantize_int8
from .kernels import cache_path, clear_cache, report
from .packed import PackedLinear, PackedTokenEmbedding, pack_for_cpu
from .rows import rows_product
from .step import compile_step

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")


def optimize(model: GPT, *, weights: str = "float32", verbose: bool = False) -> GPT:
    """The model made as fast as this machine allows for decoding, weights in the given format;
    in place, in eval mode, frozen. Every decoder takes the result.

    On the CPU only the weights change format; activations, the residual stream and the KV cache
    stay float32. Every weight matrix can be multiplied by several kernels (rows.cpp, which
    streams the weights as stored; oneDNN with the weights packed; fbgemm for int8; PyTorch's
    own), and which one takes how many rows is timed on this machine the first time a model of
    this shape is optimized, then kept in a cache (kernels.py: `report(model)` says what was
    chosen, `clear_cache()` forgets it). The step itself runs fused in one C++ call at the batch
    sizes where that measures faster (fused.py), else module by module. `verbose` prints what is
    timed and what was chosen. The step runs eagerly; `compile_step(model)` compiles the module
    step for batch 1 where it is not fused (step.py), a separate call so that nothing waits. On
    CUDA: the whole model in the format (int8 as weight-only rows, dequantized inside the
    compiled product) and the step compiled and captured as a CUDA graph."""
    if not isinstance(model, GPT):
        raise ValueError(f"optimize takes a minigpt GPT, got {type(model).__name__}")
    check_choice("weights", weights, WEIGHT_FORMATS)
    swapped = sorted({type(m).__name__ for m in model.modules() if isinstance(m, (PackedLinear, Int8Linear))} |
                     ({type(model.wte).__name__} if type(model.wte) is not TokenEmbedding else set()))
    if swapped or "next_logits" in vars(model):  # a second swap would keep the first one's layers under the new dtype
        raise ValueError(f"the model is already optimized ({', '.join(swapped) or 'its step replaced'}); "
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
    elif torch.backends.mkldnn.is_available():
        pack_for_cpu(model, weights=getattr(torch, weights), verbose=verbose)
    elif weights == "bfloat16":
        raise ValueError("bfloat16 weights on the CPU need oneDNN, and this PyTorch build has none")
    else:
        model.wte = RowsLastHead(model.wte)
    if not_fusable(model) is None:
        fuse_step(model, verbose=verbose)
    if verbose:
        print("\n".join(describe(model)), flush=True)
    return model


def describe(model: GPT) -> list[str]:
    """What an optimized model runs: each kind of matrix's kernel per row count, and the batch
    sizes its step runs fused."""
    lines = report(model)
    step = vars(model).get("next_logits")
    step = getattr(step, "eager", step)  # under compile_step, the eager step it falls back to
    if isinstance(step, FusedStep):
        fused = [rows for rows, name in step.rows.items() if name == "fused"]
        lines.append(f"step: fused at batch {', '.join(map(str, fused)) or 'none'}, else module by module")
    return lines


__all__ = ["optimize", "WEIGHT_FORMATS", "pack_for_cpu", "PackedLinear", "PackedTokenEmbedding", "Int8Linear",
           "Int8TokenEmbedding", "quantize_int8", "RowsLastHead", "compile_step", "rows_product",
           "fuse_step", "FusedStep", "fuse_gelu", "tanh_gelu", "describe", "report", "cache_path", "clear_cache"]
