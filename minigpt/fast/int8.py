"""int8 weights: each weight matrix stored as int8, with scales.

A decoding step reads every weight once per token, so at batch 1 its time is the time to stream
the weights from memory: a quarter of float32's bytes is up to 4x the tokens per second.

Two layouts of the same matrix, for kernels that are fast at different numbers of rows (which
kernel takes how many is measured on the machine: kernels.py):
- one or two rows (a step at batch 1): blocks of 32 weights along a row, one scale each,

      W ≈ q · s,   q = round(W / s) in [-127, 127],   s = max |W[block]| / 127,

  multiplied in rows.cpp by the activations rounded to 16-bit integers, one scale per row
  (llama.cpp's q8_0 and gpt-fast's groupwise layout; q8_0 rounds the activations to 8 bits per
  block, which changed greedy tokens far more often: rows.py). A weight is off by at most s/2,
  1/254 of its block's largest.
- more rows (a batch, beams, a prompt), where the product is no longer bound by memory: one scale
  per output row, in fbgemm's `quantized::linear_dynamic`, the fastest int8 matrix product this
  PyTorch offers on an x86 CPU. It quantizes the activations to uint8 on the fly (one scale per
  call, from x's range) and multiplies 8-bit by 8-bit into int32 with AVX-512 VNNI, as
  CTranslate2's int8 does: y = (x_q Qᵀ) · s_x · s + b, float32 out. PyTorch's weight-only
  `aten._weight_int8pack_mm` reads the same per-row layout (on 2 EPYC cores it was 25x slower:
  it dequantizes inside a scalar loop there; it is timed like the others, and drops out).
On CUDA the per-row layout runs weight-only, W dequantized inside the compiled product (gpt-fast's recipe).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..embedding import TokenEmbedding
from ..model import GPT
from . import kernels
from .kernels import Routes
from .rows import fits, quantize_blocks, rows_product
from .swap import swap_weights


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(out in) float -> Q (out in) int8 and s (out) float32, W ≈ Q · s[:, None]."""
    q, scale = quantize_blocks(weight, block=weight.shape[1], scales=torch.float32)  # one block: the whole row
    return q, scale[:, 0]


def _fbgemm_weight(q: Tensor, scale: Tensor, bias: Tensor | None):
    """Q and s in fbgemm's prepacked form (an opaque object the kernel reads directly)."""
    with warnings.catch_warnings():
        # PyTorch marks its quantized tensor type deprecated; fbgemm's prepack still takes it, and
        # nothing else in PyTorch runs this product as fast (see the module docstring)
        warnings.simplefilter("ignore", UserWarning)
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(qweight, bias)


def quantize_int8(model: GPT, *, verbose: bool = False) -> GPT:
    """Swap every nn.Linear for an Int8Linear and the head for an int8 one, in place; the model is
    put in eval mode with its parameters frozen. Which kernel takes how many rows is timed on
    first use on this machine (kernels.py; `verbose` says so). Returns the model."""
    if not isinstance(model, GPT):
        raise ValueError(f"quantize_int8 takes a minigpt GPT, got {type(model).__name__}")
    if model.dtype != torch.float32:
        raise ValueError(f"quantize_int8 needs a float32 model (its activations stay float32), got {model.dtype}")
    if model.device.type == "cpu" and "fbgemm" not in torch.backends.quantized.supported_engines:  # an ARM build
        raise ValueError("int8 weights on the CPU need fbgemm (x86), and this PyTorch build has none")
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


def int8_routes(weight: Tensor, q: Tensor, scale: Tensor, bias: Tensor | None) -> tuple[Routes, tuple | None, object]:
    """The kernels that multiply rows by the int8 weight, its blocks of 32 (for rows.cpp, where it
    fits) and fbgemm's prepacked weight (None off the CPU; the fused step calls fbgemm with it).
    On the CPU: rows.cpp (blocks; the activations rounded to 16 bits), fbgemm (per row; the
    activations quantized to 8 bits on the fly, VNNI), PyTorch's weight-only `_weight_int8pack_mm`
    (per row; float32 activations). Elsewhere weight-only, W = Q · s dequantized inside the product
    (gpt-fast's recipe; compiled, the conversion fuses into the product's read of Q)."""
    if q.device.type != "cpu":
        def dequantized(x: Tensor) -> Tensor:
            out = F.linear(x, q.to(x.dtype)) * scale.to(x.dtype)  # (... out): x Qᵀ, each column times its row's s
            return out if bias is None else out + bias.to(x.dtype)
        return Routes(f"int8 {q.shape[1]}x{q.shape[0]}", {"dequantized": dequantized}, default="dequantized"), None, None
    packed = _fbgemm_weight(q, scale, bias)

    def fbgemm(x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1])  # the kernel takes 2-D inputs
        return torch.ops.quantized.linear_dynamic(rows, packed).view(*x.shape[:-1], q.shape[0])

    def int8pack(x: Tensor) -> Tensor:
        out = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), q, scale).view(*x.shape[:-1], q.shape[0])
        return out if bias is None else out + bias

    kernels = {"fbgemm": fbgemm, "int8pack": int8pack}
    blocks = quantize_blocks(weight) if fits(weight) else None
    if blocks is not None:
        kernels["rows.cpp"] = lambda x: rows_product(x, *blocks, bias)
    return Routes(f"int8 {q.shape[1]}x{q.shape[0]}", kernels, default="fbgemm"), blocks, packed


class Int8Linear(nn.Module):
    """x Wᵀ + b with W stored as int8 rows and their scales (see the module docstring)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())
        # the kernels with their own layouts (the blocks, fbgemm's); plain attributes: .to() cannot move them
        self.routes, self.blocks, self.fbgemm = int8_routes(linear.weight, q, scale, self.bias)

    def forward(self, x: Tensor) -> Tensor:  # (... in) -> (... out)
        check_input(x, self.q)
        return self.routes(x)

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
        self.routes, self.blocks, _ = int8_routes(self.weight, q, scale, None)

    def unembed(self, x: Tensor) -> Tensor:  # (... e) -> (... v)
        check_input(x, self.q)
        return self.routes(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", head in int8"
