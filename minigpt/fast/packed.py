"""The same model with its weights packed for fast CPU inference: `pack_for_cpu(model)`.

A decoding step multiplies a handful of rows (one per sequence or beam) by every weight matrix.
PyTorch's default CPU path (MKL's sgemm) handles those thin products poorly: on 2 AMD EPYC cores
its time for 8 rows is 2.5x its time for 1 row, though both read the same weights. oneDNN, given
each weight reordered once into its blocked layout, runs the same products 1.4-2.7x faster at 1
to 16 rows and no slower up to 512 (measured over the 124M shape's 48 block matrices and its
head). `torch.compile(..., freezing=True)` does the same behind the scenes; here it is a visible
module swap, so the readable model and the fast one are the same code and a test holds them equal.
A step's one or two rows are often faster still in rows.cpp, which streams the weights as they
are stored (rows.py); so each module keeps the weights both ways, and which kernel takes how
many rows is measured on the machine (kernels.py).

bfloat16 weights (`weights=torch.bfloat16`) halve the bytes, and only the weights are rounded: the
products take float32 activations and sum in float32 (rows.format_product). rows.cpp computes
that on any CPU, widening the weights to float32 in registers, from the weights as stored and from
a second copy in tiles of 16 outputs (rows.pair_tiles: a prompt's rows at twice the speed), and
PyTorch's float32 product on the weights widened in memory serves many rows. oneDNN's bfloat16
product is not one of them: it rounds the activations and its result to bfloat16 too (and raises
on a CPU without AVX-512).

Inference only: packing freezes the weights (no gradients flow through a packed product), and
they stay on the CPU. Pack after loading; save the unpacked model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..embedding import TokenEmbedding
from ..model import GPT
from . import kernels
from . import cpu
from .kernels import Routes
from .rows import PREFETCH, fits, format_product, pair_tiles, rows_product, tile_kernels
from .swap import swap_weights

PACKABLE = (torch.float32, torch.bfloat16)


def pack_for_cpu(model: GPT, weights: torch.dtype | None = None, *, verbose: bool = False) -> GPT:
    """Swap every nn.Linear for a PackedLinear and the token embedding for a PackedTokenEmbedding,
    in place; the model is put in eval mode with its parameters frozen. Returns the model.
    weights: the weights' dtype, float32 or bfloat16, the model's own by default. bfloat16 weights
    in a float32 model keep every activation float32. Which kernel takes how many rows is timed
    on first use on this machine (kernels.py; `verbose` says so). float32 weights are packed into
    oneDNN's layout where PyTorch has oneDNN; bfloat16 weights stay as stored, for rows.cpp and
    PyTorch's product."""
    if not isinstance(model, GPT):
        raise ValueError(f"pack_for_cpu packs a minigpt GPT, got {type(model).__name__}")
    if model.device.type != "cpu" or model.dtype not in PACKABLE:
        raise ValueError(f"pack_for_cpu needs a CPU float32 or bfloat16 model, got {model.device} {model.dtype}")
    weights = model.dtype if weights is None else weights
    if weights not in PACKABLE:
        raise ValueError(f"pack_for_cpu packs weights as float32 or bfloat16, got weights={weights}")
    swap_weights(model, lambda linear: PackedLinear(linear, weights), lambda embedding: PackedTokenEmbedding(embedding, weights))
    kernels.choose(model, verbose=verbose)
    return model


def _pack(weight: Tensor) -> Tensor:
    """(out in) -> the same matrix in oneDNN's blocked layout. Not tuned to one row count
    (batch_size=None): measured fastest over 1 to 512 rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def check_input(x: Tensor, weights: torch.dtype) -> None:
    allowed = sorted({str(torch.float32), str(weights)})
    if x.device.type != "cpu" or str(x.dtype) not in allowed:
        raise ValueError(f"these packed weights take CPU {' or '.join(allowed)} inputs, got {x.device} {x.dtype}; "
                         "pack after moving the model")
    if x.requires_grad:  # no kernel here has a backward: gradients would silently stop here
        raise ValueError("packed weights are for inference: no gradient flows through them; use the unpacked model")


def packed_routes(weight: Tensor, bias: Tensor | None) -> tuple[Routes, Tensor | None]:
    """The kernels this CPU runs that multiply float32 rows by this (out in) weight, each
    computing the format's numbers (rows.format_product), with float32 weights' oneDNN layout (the
    fused step calls oneDNN with it and the bias; None for bfloat16 or without oneDNN): oneDNN on
    the blocked layout, rows.cpp on the weight as stored where it fits,
    and PyTorch's F.linear (MKL or oneDNN, as PyTorch dispatches) on float32 weights, or on the
    bfloat16 weights widened to float32 at each call."""
    kernels = {}
    packed = None
    if cpu.capabilities().onednn and weight.dtype == torch.float32:
        packed = _pack(weight)

        def onednn(x: Tensor) -> Tensor:  # (... in) -> (... out)
            return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

        kernels["oneDNN"] = onednn
    fused_tiles = None
    if fits(weight):  # with and without a software prefetch: which streams faster depends on the CPU (rows.cpp)
        kernels["rows.cpp"] = lambda x: rows_product(x, weight, None, bias)
        kernels["rows.cpp+prefetch"] = lambda x: rows_product(x, weight, None, bias, ahead=PREFETCH)
        if weight.dtype == torch.bfloat16:  # a second copy in tiles: a prompt's rows at the FMA's speed (rows.cpp)
            tiled, fused_tiles = tile_kernels(pair_tiles(weight), None, bias, weight.shape[0])
            kernels |= tiled
    if weight.dtype == torch.float32:
        kernels["ATen"] = lambda x: F.linear(x, weight, bias)
    else:
        kernels["widened"] = lambda x: format_product(x, weight, None, bias)
    name = str(weight.dtype).removeprefix("torch.")
    default = "oneDNN" if "oneDNN" in kernels else "ATen" if "ATen" in kernels else "widened"
    return Routes(f"{name} {weight.shape[1]}x{weight.shape[0]}", kernels, default=default, tiles=fused_tiles), packed


def routed(routes: Routes, x: Tensor, weights: torch.dtype) -> Tensor:
    """x through the chosen kernel, which takes float32: a bfloat16 model's x is widened, and its result rounded back."""
    check_input(x, weights)
    return routes(x) if x.dtype == torch.float32 else routes(x.float()).to(x.dtype)


class PackedLinear(nn.Module):
    """x Wᵀ + b, like the nn.Linear it replaces, with W frozen in the given dtype: as it is and in
    oneDNN's layout, multiplied by the kernel measured fastest for the rows (kernels.py)."""

    def __init__(self, linear: nn.Linear, weights: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Plain attributes, not buffers: .to() must not try to convert a oneDNN tensor.
        self.weight = linear.weight.detach().to(weights or linear.weight.dtype)  # (out in), as stored
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.routes, self.packed = packed_routes(self.weight, self.bias)

    def forward(self, x: Tensor) -> Tensor:  # (... in) -> (... out)
        return routed(self.routes, x, self.weight.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {describe_weights(self.routes, self.weight)}"


class PackedTokenEmbedding(TokenEmbedding):
    """The lookup reads the (v e) table as before; the tied head multiplies by a copy of it in the
    given dtype, as it is and packed."""

    def __init__(self, embedding: TokenEmbedding, weights: torch.dtype | None = None):
        super().__init__(embedding.num_embeddings, embedding.embedding_dim, _weight=embedding.weight.detach(), _freeze=True)
        self.head = self.weight.detach().to(weights or self.weight.dtype)  # the table itself where the dtypes agree
        self.routes, self.packed = packed_routes(self.head, None)

    def unembed(self, x: Tensor) -> Tensor:  # (b t e) -> (b t v)
        return routed(self.routes, x, self.head.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", head {describe_weights(self.routes, self.head)}"


def describe_weights(routes: Routes, weight: Tensor) -> str:
    return f"{str(weight.dtype).removeprefix('torch.')}{' packed for oneDNN' if 'oneDNN' in routes.kernels else ''}"
