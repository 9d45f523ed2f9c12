"""The same model with its weights packed for fast CPU inference: `pack_for_cpu(model)`.

A decoding step multiplies a handful of rows (one per sequence or beam) by every weight matrix.
PyTorch's default CPU path (MKL's sgemm) handles those thin products poorly: on 2 AMD EPYC cores
its time for 8 rows is 2.5x its time for 1 row, though both read the same weights. oneDNN, given
each weight reordered once into its blocked layout, runs the same products 1.4-2.7x faster at 1
to 16 rows and no slower up to 512 (measured over the 124M shape's 48 block matrices and its
head). `torch.compile(..., freezing=True)` does the same behind the scenes; here it is a visible
module swap, so the readable model and the fast one are the same code and a test holds them equal.

The same holds for a bfloat16 model: oneDNN multiplies bfloat16 weights with AVX-512-BF16
instructions (accumulating in float32) at about half float32's time, since half the bytes.

Inference only: packing freezes the weights (no gradients flow through a packed product), and
they stay on the CPU in their dtype. Pack after loading; save the unpacked model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..embedding import TokenEmbedding
from ..model import GPT
from .swap import swap_weights

PACKABLE = (torch.float32, torch.bfloat16)


def pack_for_cpu(model: GPT) -> GPT:
    """Swap every nn.Linear for a PackedLinear and the token embedding for a PackedTokenEmbedding,
    in place; the model is put in eval mode with its parameters frozen. Returns the model."""
    if not isinstance(model, GPT):
        raise ValueError(f"pack_for_cpu packs a minigpt GPT, got {type(model).__name__}")
    if not torch.backends.mkldnn.is_available():
        raise ValueError("pack_for_cpu needs oneDNN, and this PyTorch build has none; use the model unpacked")
    if model.device.type != "cpu" or model.dtype not in PACKABLE:
        raise ValueError(f"pack_for_cpu needs a CPU float32 or bfloat16 model, got {model.device} {model.dtype}")
    return swap_weights(model, PackedLinear, PackedTokenEmbedding)


def _pack(weight: Tensor) -> Tensor:
    """(out in) -> the same matrix in oneDNN's blocked layout. Not tuned to one row count
    (batch_size=None): measured fastest over 1 to 512 rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)


def _packed_product(x: Tensor, packed: Tensor, bias: Tensor | None) -> Tensor:
    """x (... in) -> x Wᵀ + bias (... out), by oneDNN."""
    if x.device.type != "cpu" or x.dtype != packed.dtype:
        raise ValueError(f"these packed weights take CPU {packed.dtype} inputs, got {x.device} {x.dtype}; "
                         "pack after moving the model")
    if x.requires_grad:  # the op has no backward: gradients would silently stop here
        raise ValueError("packed weights are for inference: no gradient flows through them; use the unpacked model")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(nn.Module):
    """x Wᵀ + b, like the nn.Linear it replaces, with W frozen in oneDNN's layout."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # Plain attributes, not buffers: .to() must not try to convert a oneDNN tensor.
        self.packed = _pack(linear.weight)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: Tensor) -> Tensor:
        return _packed_product(x, self.packed, self.bias)  # (... in) -> (... out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


class PackedTokenEmbedding(TokenEmbedding):
    """The lookup reads the (v e) table as before; the tied head multiplies by a packed copy of it."""

    def __init__(self, embedding: TokenEmbedding):
        super().__init__(embedding.num_embeddings, embedding.embedding_dim, _weight=embedding.weight.detach(), _freeze=True)
        self.packed = _pack(self.weight)

    def unembed(self, x: Tensor) -> Tensor:
        return _packed_product(x, self.packed, None)  # (b t e) -> (b t v)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", head packed for oneDNN"
