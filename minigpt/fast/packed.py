"""The same model with its weights packed for fast CPU inference: `pack_for_cpu(model)`.

A decoding step multiplies a handful of rows (one per sequence or beam) by every weight matrix.
PyTorch's default CPU path (MKL's sgemm) handles those thin products poorly: on 2 AMD EPYC cores
its time for 8 rows is 2.5x its time for 1 row, though both read the same weights. oneDNN, given
each weight reordered once into its blocked layout, runs the same products 1.4-2.7x faster at 1
to 16 rows and no slower up to 512 (measured over the 124M shape's 48 block matrices and its
head). `torch.compile(..., freezing=True)` does the same behind the scenes; here it is a visible
module swap, so the readable model and the fast one are the same code and a test holds them equal.
One or two rows (a step at batch 1) go to rows.cpp instead, which streams the weights as they
are stored faster still (rows.py); so each module keeps the weights both ways.

bfloat16 weights (`weights=torch.bfloat16`) halve the bytes: oneDNN multiplies them with
AVX-512-BF16 instructions (accumulating in float32) at about half float32's time, and rows.cpp
widens them to float32 as it reads them. In a float32 model everything else stays float32.

Inference only: packing freezes the weights (no gradients flow through a packed product), and
they stay on the CPU. Pack after loading; save the unpacked model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..embedding import TokenEmbedding
from ..model import GPT
from .rows import fits, rows_product, takes
from .swap import swap_weights

PACKABLE = (torch.float32, torch.bfloat16)


def pack_for_cpu(model: GPT, weights: torch.dtype | None = None) -> GPT:
    """Swap every nn.Linear for a PackedLinear and the token embedding for a PackedTokenEmbedding,
    in place; the model is put in eval mode with its parameters frozen. Returns the model.
    weights: the weights' dtype, float32 or bfloat16, the model's own by default. bfloat16 weights
    in a float32 model keep every activation float32 (the products' inputs are rounded to bfloat16
    only where oneDNN multiplies them: more than FEW_ROWS rows)."""
    if not isinstance(model, GPT):
        raise ValueError(f"pack_for_cpu packs a minigpt GPT, got {type(model).__name__}")
    if not torch.backends.mkldnn.is_available():
        raise ValueError("pack_for_cpu needs oneDNN, and this PyTorch build has none; use the model unpacked")
    if model.device.type != "cpu" or model.dtype not in PACKABLE:
        raise ValueError(f"pack_for_cpu needs a CPU float32 or bfloat16 model, got {model.device} {model.dtype}")
    weights = model.dtype if weights is None else weights
    if weights not in PACKABLE:
        raise ValueError(f"pack_for_cpu packs weights as float32 or bfloat16, got weights={weights}")
    return swap_weights(model, lambda linear: PackedLinear(linear, weights),
                        lambda embedding: PackedTokenEmbedding(embedding, weights))


def _pack(weight: Tensor) -> Tensor:
    """(out in) -> the same matrix in oneDNN's blocked layout. Not tuned to one row count
    (batch_size=None): measured fastest over 1 to 512 rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, None)


def _product(x: Tensor, weight: Tensor | None, packed: Tensor, bias: Tensor | None = None,
             packed_bias: Tensor | None = None) -> Tensor:
    """x (... in) -> x Wᵀ + bias (... out), in x's dtype: a step's few rows by rows.cpp, more by
    oneDNN (which adds the bias in the weights' dtype: `packed_bias`)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, packed.dtype):
        allowed = " or ".join(sorted({str(torch.float32), str(packed.dtype)}))
        raise ValueError(f"these packed weights take CPU {allowed} inputs, got {x.device} {x.dtype}; "
                         "pack after moving the model")
    if x.requires_grad:  # neither kernel has a backward: gradients would silently stop here
        raise ValueError("packed weights are for inference: no gradient flows through them; use the unpacked model")
    if weight is not None and takes(x):
        return rows_product(x, weight, None, bias)
    # bfloat16 weights, float32 activations: x rounded to bfloat16 for oneDNN, its result widened back
    return torch.ops.mkldnn._linear_pointwise(x.to(packed.dtype), packed, packed_bias, "none", [], "").to(x.dtype)


class PackedLinear(nn.Module):
    """x Wᵀ + b, like the nn.Linear it replaces, with W frozen in the given dtype: as it is (for
    rows.cpp) and in oneDNN's layout."""

    def __init__(self, linear: nn.Linear, weights: torch.dtype | None = None):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Plain attributes, not buffers: .to() must not try to convert a oneDNN tensor.
        weight = linear.weight.detach().to(weights or linear.weight.dtype)
        self.packed = _pack(weight)
        self.weight = weight if fits(weight) else None  # as stored, for rows.cpp
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.packed_bias = None if self.bias is None else self.bias.to(weight.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return _product(x, self.weight, self.packed, self.bias, self.packed_bias)  # (... in) -> (... out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.packed.dtype} packed for oneDNN"


class PackedTokenEmbedding(TokenEmbedding):
    """The lookup reads the (v e) table as before; the tied head multiplies by a copy of it in the
    given dtype, as it is and packed."""

    def __init__(self, embedding: TokenEmbedding, weights: torch.dtype | None = None):
        super().__init__(embedding.num_embeddings, embedding.embedding_dim, _weight=embedding.weight.detach(), _freeze=True)
        head = self.weight.detach().to(weights or self.weight.dtype)  # the table itself where the dtypes agree
        self.packed = _pack(head)
        self.head = head if fits(head) else None  # as stored, for rows.cpp

    def unembed(self, x: Tensor) -> Tensor:
        return _product(x, self.head, self.packed)  # (b t e) -> (b t v)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", head in {self.packed.dtype} packed for oneDNN"
