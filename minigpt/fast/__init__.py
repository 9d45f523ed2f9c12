"""Fast paths: swaps applied to a loaded model, for speed and not for reading.

The readable model in `minigpt/` stays plain PyTorch; everything here replaces parts of a loaded
GPT in place, and tests hold the result equal to the readable one (within measured bounds for
bfloat16 and int8). `optimize(model, weights=...)` applies the fastest combination found for this
machine; the parts are importable alone:

- `rows_product`: a decoding step's few rows times the weights as stored (rows.cpp, compiled on first use).
- `pack_for_cpu`: float32 or bfloat16 weights reordered once into oneDNN's blocked layout.
- `Int8Linear`, `Int8TokenEmbedding`, `quantize_int8`: int8 weights, in blocks of 32 and per output row.
- `RowsLastHead`: the tied head as (W xᵀ)ᵀ, faster with CPU BLAS for a few rows.
- `compile_step`: the one-token decoding step compiled as one graph (a CUDA graph on a GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_choice
from ..embedding import TokenEmbedding
from ..mlp import MLP, gelu_new
from ..model import GPT
from .head import RowsLastHead
from .int8 import Int8Linear, Int8TokenEmbedding, quantize_int8
from .packed import PackedLinear, PackedTokenEmbedding, pack_for_cpu
from .rows import rows_product
from .step import compile_step

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")


def optimize(model: GPT, *, weights: str = "float32") -> GPT:
    """The model made as fast as this machine allows for decoding, weights in the given format;
    in place, in eval mode, frozen. Every decoder takes the result.

    On the CPU (measured on 2 EPYC cores, `scripts/bench.py`): only the weights change format;
    activations, the residual stream and the KV cache stay float32. A step's one or two rows are
    multiplied by rows.cpp (float32, bfloat16, or int8 in blocks of 32, each streamed as stored);
    more rows by oneDNN (float32 and bfloat16 weights packed) or fbgemm (int8, one scale per row).
    The step runs eagerly; `compile_step(model)` compiles the batch-1 step (about 20 s once, then
    about a quarter faster at batch 1: step.py), a separate call so that nothing waits. On CUDA: the
    whole model in the format (int8 as weight-only rows, dequantized inside the compiled product)
    and the step compiled and captured as a CUDA graph."""
    if not isinstance(model, GPT):
        raise ValueError(f"optimize takes a minigpt GPT, got {type(model).__name__}")
    check_choice("weights", weights, WEIGHT_FORMATS)
    swapped = sorted({type(m).__name__ for m in model.modules() if isinstance(m, (PackedLinear, Int8Linear))} |
                     ({type(model.wte).__name__} if type(model.wte) is not TokenEmbedding else set()))
    if swapped or "next_logits" in vars(model):  # a second swap would keep the first one's layers under the new dtype
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
        return quantize_int8(model)
    if torch.backends.mkldnn.is_available():
        return pack_for_cpu(model, weights=getattr(torch, weights))
    if weights == "bfloat16":
        raise ValueError("bfloat16 weights on the CPU need oneDNN, and this PyTorch build has none")
    model.wte = RowsLastHead(model.wte)
    return model


def fuse_gelu(model: GPT) -> GPT:
    """Each MLP's `gelu_new`, written out as GPT-2's formula (six element-wise operations), swapped
    for PyTorch's one-kernel `F.gelu(approximate="tanh")`: the same function, equal to float32
    rounding, in one pass over the activations instead of six. Returns the model."""
    for block in model.blocks:
        mlp = getattr(block, "mlp", None)
        if isinstance(mlp, MLP) and mlp.activation is gelu_new:
            mlp.activation = tanh_gelu
    return model


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


__all__ = ["optimize", "WEIGHT_FORMATS", "pack_for_cpu", "PackedLinear", "PackedTokenEmbedding", "Int8Linear",
           "Int8TokenEmbedding", "quantize_int8", "RowsLastHead", "compile_step", "rows_product"]
