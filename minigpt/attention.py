"""Multi-head causal self-attention: GPT-2's `attn` sublayer.

Mirrors `GPT2Attention` in transformers' `modeling_gpt2.py` and "Attention Is All You Need" (3.2).
The projections live in `CausalSelfAttention`; the attention itself, softmax(q kᵀ / √d) v, is a
function passed in. `explicit_attention` spells out every step and is the default;
`fused_attention` calls PyTorch's fused kernel and is the swap-in a test proves equal.

Axes: b batch, t query positions, s key positions (cached + new), h heads, d head dimension.
"""

from __future__ import annotations

import math
from typing import Callable

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# attend(q, k, v, allowed, dropout_p) -> (out, pattern)
#   q (b h t d), k and v (b h s d), allowed (b 1 t s) bool: may query t look at key s?
#   out (b h t d); pattern (b h t s), or None for a kernel that never forms it.
AttendFn = Callable[[Tensor, Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor | None]]


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float) -> tuple[Tensor, Tensor]:
    """Scores, mask, softmax, weighted sum: the four steps, one line each."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (b h t s)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # softmax in float32: in float16 the exponentials of large scores overflow
    pattern = scores.float().softmax(dim=-1).to(v.dtype)  # (b h t s), each row sums to 1
    out = F.dropout(pattern, dropout_p) @ v if dropout_p else pattern @ v  # (b h t d)
    return out, pattern


def fused_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float) -> tuple[Tensor, None]:
    """The same computation in one fused kernel (flash / memory-efficient where available)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p), None


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, attend: AttendFn = explicit_attention):
        super().__init__()
        self.n_head = n_head
        self.attend = attend
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # x -> q, k, v for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd)  # heads, concatenated -> back to the residual stream
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        allowed: Tensor,
        kv: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        head_scale: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """x (b t (h d)) -> (b t (h d)), and the attention pattern (b h t s) when the kernel forms one.

        kv: stores this call's keys and values in a cache and returns all of them (b h s d).
        head_scale: (h,) multiplies each head's output, so a head can be zeroed or weakened.
        """
        q, k, v = rearrange(self.c_attn(x), "b t (three h d) -> three b h t d", three=3, h=self.n_head)
        if kv is not None:
            k, v = kv(k, v)
        out, pattern = self.attend(q, k, v, allowed, self.dropout if self.training else 0.0)
        if head_scale is not None:
            out = out * rearrange(head_scale.to(out), "h -> 1 h 1 1")  # to the output's device and dtype
        out = rearrange(out, "b h t d -> b t (h d)")
        return self.resid_dropout(self.c_proj(out)), pattern
