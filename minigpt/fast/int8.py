"""int8 weights: each weight matrix stored as int8, with scales.

A decoding step reads every weight once per token, so at batch 1 its time is the time to stream
the weights from memory: a quarter of float32's bytes is up to 4x the tokens per second.

The format is one computation, whichever kernel runs it (rows.format_product):

    W ≈ q · s,   q = round(W / s) in [-127, 127],   s = max |W[block]| / 127 (float16),

in blocks of 32 weights along a row (llama.cpp's q8_0 and gpt-fast's groupwise layout: a weight
is off by at most s/2, 1/254 of its block's largest; a row whose width is not a multiple of 32 is
one block), multiplied by the activations rounded to 16-bit integers with one scale per row (off
by at most 1/65534 of the row's largest). Three kernels compute it: rows.cpp on the blocks as
stored, each output a vector of its own (the few rows of a decoding step); rows.cpp on the same
blocks in tiles of 16 outputs side by side (rows.int8_tiles: a vector's lanes are outputs, so a
block's convert and scale serve 16 of them; ahead at a batch's rows and a prompt's, docs/fast.md);
and PyTorch's float32 product on the blocks widened at each call. Which takes how many rows is
measured on the machine (kernels.py), rows.cpp's with and without a software prefetch. All give the
same numbers (each block's products summed exactly in integers, or in float32), summed in other
orders, so the tokens do not depend on which won the timing; fbgemm's int8 product, which rounds the activations
to 8 bits over a whole batch at once (so one row's result depends on the others), is not one of
them (docs/fast.md). On CUDA the widened product runs compiled (gpt-fast's recipe: the
conversion fuses into the product's read of q).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..embedding import TokenEmbedding
from ..model import GPT
from . import kernels
from .kernels import Routes
from .rows import BLOCK, PREFETCH, fits, format_product, int8_tiles, quantize_blocks, rows_product, tile_kernels
from .swap import swap_weights


def quantize_int8(model: GPT, *, verbose: bool = False) -> GPT:
    """Swap every nn.Linear for an Int8Linear and the head for an int8 one, in place; the model is
    put in eval mode with its parameters frozen. Which kernel takes how many rows is timed on
    first use on this machine (kernels.py; `verbose` says so). Returns the model."""
    if not isinstance(model, GPT):
        raise ValueError(f"quantize_int8 takes a minigpt GPT, got {type(model).__name__}")
    if model.dtype != torch.float32:
        raise ValueError(f"quantize_int8 needs a float32 model (its activations stay float32), got {model.dtype}")
    swap_weights(model, Int8Linear, Int8TokenEmbedding)
    kernels.choose(model, verbose=verbose)
    return model


def check_input(x: Tensor, q: Tensor) -> None:
    if x.requires_grad:
        raise ValueError("int8 weights are for inference: no gradient flows through them; use the float model")
    if x.device != q.device:
        raise ValueError(f"these int8 weights are on {q.device}, the input on {x.device}; quantize after moving the model")
    if q.device.type == "cpu" and x.dtype != torch.float32:
        raise ValueError(f"int8 weights on the CPU take float32 inputs, got {x.dtype}")


def int8_blocks(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(out in) float -> q (out in) int8 and its float16 scales (out blocks): blocks of BLOCK
    weights, or one block a row where the width is not a multiple of BLOCK."""
    return quantize_blocks(weight, block=BLOCK if weight.shape[1] % BLOCK == 0 else weight.shape[1])


def int8_routes(q: Tensor, scales: Tensor, bias: Tensor | None) -> Routes:
    """The kernels that multiply float32 rows by the int8 blocks: rows.cpp where it fits, and
    PyTorch's product on the blocks widened to float32 (module docstring)."""
    kernels, fused_tiles = {"widened": lambda x: format_product(x, q, scales, bias)}, None
    if fits(q) and q.shape[1] // scales.shape[1] == BLOCK:  # with and without a software prefetch, as for floats
        kernels["rows.cpp"] = lambda x: rows_product(x, q, scales, bias)
        kernels["rows.cpp+prefetch"] = lambda x: rows_product(x, q, scales, bias, ahead=PREFETCH)
        tiled, fused_tiles = tile_kernels(*int8_tiles(q, scales), bias, q.shape[0])  # a second copy of the weights, in tiles
        kernels |= tiled
    return Routes(f"int8 {q.shape[1]}x{q.shape[0]}", kernels, default="widened", tiles=fused_tiles)


class Int8Linear(nn.Module):
    """x Wᵀ + b with W stored as int8 blocks and their scales (see the module docstring)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scales = int8_blocks(linear.weight)
        self.register_buffer("q", q)            # (out in) int8
        self.register_buffer("scales", scales)  # (out blocks) float16
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        self.routes = int8_routes(self.q, self.scales, self.bias)

    def forward(self, x: Tensor) -> Tensor:  # (... in) -> (... out)
        check_input(x, self.q)
        return self.routes(x)

    def extra_repr(self) -> str:
        block = self.q.shape[1] // self.scales.shape[1]
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 in blocks of {block}"


class Int8TokenEmbedding(TokenEmbedding):
    """The lookup reads the float table as before (a handful of rows per step, so its bytes do not
    matter); the tied head, which reads all of it every step, multiplies by an int8 copy."""

    def __init__(self, embedding: TokenEmbedding):
        super().__init__(embedding.num_embeddings, embedding.embedding_dim, _weight=embedding.weight.detach(), _freeze=True)
        q, scales = int8_blocks(self.weight)
        self.register_buffer("q", q)
        self.register_buffer("scales", scales)
        self.routes = int8_routes(self.q, self.scales, None)

    def unembed(self, x: Tensor) -> Tensor:  # (... e) -> (... v)
        check_input(x, self.q)
        return self.routes(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", head in int8"
