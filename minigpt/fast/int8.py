"""int8 weights: each weight matrix stored as int8, with scales.

A decoding step reads every weight once per token, so at batch 1 its time is the time to stream
the weights from memory: a quarter of float32's bytes is up to 4x the tokens per second.

Two layouts of the same matrix, each for the kernel that is fastest at its number of rows:
- one or two rows (a step at batch 1): blocks of 32 weights along a row, one scale each,

      W ≈ q · s,   q = round(W / s) in [-127, 127],   s = max |W[block]| / 127,

  multiplied by float32 activations in rows.cpp, which widens the weights as it streams them
  (llama.cpp's q8_0 and gpt-fast's groupwise layout; unlike q8_0 the activations are not
  quantized). A weight is off by at most s/2, 1/254 of its block's largest.
- more rows (a batch, beams, a prompt), where the product is no longer bound by memory: one scale
  per output row, in fbgemm's `quantized::linear_dynamic`, the fastest int8 matrix product this
  PyTorch offers on an x86 CPU. It quantizes the activations to uint8 on the fly (one scale per
  call, from x's range) and multiplies 8-bit by 8-bit into int32 with AVX-512 VNNI, as
  CTranslate2's int8 does: y = (x_q Qᵀ) · s_x · s + b, float32 out. PyTorch's weight-only
  `aten._weight_int8pack_mm` was 25x slower here (it dequantizes inside a scalar loop on this CPU).
On CUDA the per-row layout runs weight-only, W dequantized inside the compiled product (gpt-fast's recipe).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..embedding import TokenEmbedding
from ..model import GPT
from .rows import fits, quantize_blocks, rows_product, takes
from .swap import swap_weights


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(out in) float -> Q (out in) int8 and s (out) float32, W ≈ Q · s[:, None]."""
    q, scale = quantize_blocks(weight, block=weight.shape[1], scales=torch.float32)  # one block: the whole row
    return q, scale[:, 0]


def _blocks(weight: Tensor) -> tuple[Tensor, Tensor] | None:
    """The weight in blocks of 32 for rows.cpp, where it can multiply them."""
    return quantize_blocks(weight) if fits(weight) else None


def _fbgemm_weight(q: Tensor, scale: Tensor, bias: Tensor | None):
    """Q and s in fbgemm's prepacked form (an opaque object the kernel reads directly)."""
    with warnings.catch_warnings():
        # PyTorch marks its quantized tensor type deprecated; fbgemm's prepack still takes it, and
        # nothing else in PyTorch runs this product as fast (see the module docstring)
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(qweight, bias)


def quantize_int8(model: GPT) -> GPT:
    """Swap every nn.Linear for an Int8Linear and the head for an int8 one, in place; the model is
    put in eval mode with its parameters frozen. Returns the model."""
    if not isinstance(model, GPT):
        raise ValueError(f"quantize_int8 takes a minigpt GPT, got {type(model).__name__}")
    if model.dtype != torch.float32:
        raise ValueError(f"quantize_int8 needs a float32 model (its activations stay float32), got {model.dtype}")
    if model.device.type == "cpu" and "fbgemm" not in torch.backends.quantized.supported_engines:  # an ARM build
        raise ValueError("int8 weights on the CPU need fbgemm (x86), and this PyTorch build has none")
    return swap_weights(model, Int8Linear, Int8TokenEmbedding)


def _int8_product(x: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None, packed, blocks) -> Tensor:
    """x (... in) -> x Wᵀ + b (... out): a step's few rows by rows.cpp from `blocks` (q, s per 32);
    more by fbgemm on the CPU (`packed`, W = Q · s per row); elsewhere weight-only, W = Q · s
    dequantized inside the product (gpt-fast's recipe; compiled, the conversion fuses into the
    matrix product's read of Q)."""
    if x.requires_grad:
        raise ValueError("int8 weights are for inference: no gradient flows through them; use the float model")
    if x.device != q.device:
        raise ValueError(f"these int8 weights are on {q.device}, the input on {x.device}; quantize after moving the model")
    if blocks is not None and takes(x):
        return rows_product(x, *blocks, bias)
    if packed is None:
        out = F.linear(x, q.to(x.dtype)) * scale.to(x.dtype)  # (... out): x Qᵀ, each column times its row's s
        return out if bias is None else out + bias.to(x.dtype)
    if x.dtype != torch.float32:
        raise ValueError(f"int8 weights on the CPU take float32 inputs, got {x.dtype}")
    rows = x.reshape(-1, x.shape[-1])  # the kernel takes 2-D inputs
    return torch.ops.quantized.linear_dynamic(rows, packed).view(*x.shape[:-1], q.shape[0])


class Int8Linear(nn.Module):
    """x Wᵀ + b with W stored as int8 rows and their scales (see the module docstring)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        # fbgemm's copy of Q, s and b in its own layout, and the blocks; plain attributes: .to() cannot move them
        self.packed = _fbgemm_weight(q, scale, self.bias) if q.device.type == "cpu" else None
        self.blocks = _blocks(linear.weight)

    def forward(self, x: Tensor) -> Tensor:
        return _int8_product(x, self.q, self.scale, self.bias, self.packed, self.blocks)  # (... in) -> (... out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per output row"


class Int8TokenEmbedding(TokenEmbedding):
    """The lookup reads the float table as before (a handful of rows per step, so its bytes do not
    matter); the tied head, which reads all of it every step, multiplies by an int8 copy."""

    def __init__(self, embedding: TokenEmbedding):
        super().__init__(embedding.num_embeddings, embedding.embedding_dim, _weight=embedding.weight.detach(), _freeze=True)
        q, scale = quantize_rows(self.weight)  # one scale per token: per output channel of the head
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.packed = _fbgemm_weight(q, scale, None) if q.device.type == "cpu" else None
        self.blocks = _blocks(self.weight)

    def unembed(self, x: Tensor) -> Tensor:
        return _int8_product(x, self.q, self.scale, None, self.packed, self.blocks)  # (... e) -> (... v)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", head in int8"
