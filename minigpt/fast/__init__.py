"""Fast paths: swaps applied to a loaded model, for speed and not for reading.

The readable model in `minigpt/` stays plain PyTorch; everything here replaces parts of a loaded
GPT in place, and tests hold the result equal to the readable one (within measured bounds for
bfloat16 and int8). `optimize(model, weights=...)` applies the fastest combination found for this
machine; the parts are importable alone:

- `pack_for_cpu`: float32 or bfloat16 weights reordered once into oneDNN's blocked layout.
- `Int8Linear`, `Int8TokenEmbedding`, `quantize_int8`: int8 weights, one scale per output row.
- `RowsLastHead`: the tied head as (W xᵀ)ᵀ, faster with CPU BLAS for a few rows.
- `compile_step`: the one-token decoding step compiled as one graph (a CUDA graph on a GPU).
"""

from __future__ import annotations

import torch

from ..checks import check_choice
from ..embedding import TokenEmbedding
from ..model import GPT
from .head import RowsLastHead
from .int8 import Int8Linear, Int8TokenEmbedding, quantize_int8
from .packed import PackedLinear, PackedTokenEmbedding, pack_for_cpu
from .step import compile_step

WEIGHT_FORMATS = ("float32", "bfloat16", "int8")


def optimize(model: GPT, *, weights: str = "float32") -> GPT:
    """The model made as fast as this machine allows for decoding, weights in the given format;
    in place, in eval mode, frozen. Every decoder takes the result.

    On the CPU (measured on 2 EPYC cores, `scripts/bench.py`): float32 and bfloat16 weights packed
    for oneDNN, int8 weights in fbgemm's layout; the step runs eagerly, because compiling it was
    not faster there (see the README's table). On CUDA: the weights in the format (int8 as
    weight-only rows, dequantized inside the compiled product) and the step compiled and captured
    as a CUDA graph."""
    if not isinstance(model, GPT):
        raise ValueError(f"optimize takes a minigpt GPT, got {type(model).__name__}")
    check_choice("weights", weights, WEIGHT_FORMATS)
    swapped = sorted({type(m).__name__ for m in model.modules() if isinstance(m, (PackedLinear, Int8Linear))} |
                     ({type(model.wte).__name__} if type(model.wte) is not TokenEmbedding else set()))
    if swapped or "next_logits" in vars(model):  # a second swap would keep the first one's layers under the new dtype
        raise ValueError(f"the model is already optimized ({', '.join(swapped) or 'its step compiled'}); "
                         "optimize a freshly loaded model (load_gpt2 again) for another weight format")
    model.eval().requires_grad_(False)
    if weights == "bfloat16":
        model.to(torch.bfloat16)
    elif model.dtype != torch.float32:
        model.float()  # float32 and int8 (whose activations are float32) start from float32
    if model.device.type == "cuda":
        if weights == "int8":
            quantize_int8(model)
        return compile_step(model, mode="reduce-overhead")
    if weights == "int8":
        return quantize_int8(model)
    if torch.backends.mkldnn.is_available():
        return pack_for_cpu(model)
    model.wte = RowsLastHead(model.wte)
    return model


__all__ = ["optimize", "WEIGHT_FORMATS", "pack_for_cpu", "PackedLinear", "PackedTokenEmbedding", "Int8Linear",
           "Int8TokenEmbedding", "quantize_int8", "RowsLastHead", "compile_step"]
