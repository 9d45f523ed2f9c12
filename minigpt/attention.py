"""Multi-head causal self-attention: GPT-2's `attn` sublayer.

Mirrors `GPT2Attention` in transformers' `modeling_gpt2.py` and "Attention Is All You Need" (3.2).
The projections live in `CausalSelfAttention`; the attention itself, softmax(q kᵀ / √d) v, is a
function passed in. `explicit_attention` spells out every step and is the default;
`fused_attention` calls PyTorch's fused kernel and is the swap-in a test proves equal.

Axes: b batch, t query positions, s key positions (cached + new), h heads, d head width,
e model width (h d before any pruning). q, k, v name the query, key and value tensors, as in the paper.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# attend(q, k, v, allowed, dropout_p) -> (out, pattern)
#   q (b h t d), k and v (b h s d), allowed (b 1 t s) bool: may query t look at key s? Every
#   query row has at least one allowed key (a padding query is allowed itself), so a softmax
#   over the allowed keys is never 0/0.
#   out (b h t d); pattern (b h t s), or None for a kernel that never forms it.
AttendFn = Callable[[Tensor, Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor | None]]


class KVWrite(Protocol):
    """What an attention layer is handed when a KV cache is in use (`KVCache.writer`)."""

    def __call__(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """This call's keys and values (b h t d) -> stored; returns every cached slot's (b h s d),
        these included. Slots not yet written are zeros and not allowed to any query."""


class Attention(Protocol):
    """The contract of a block's `attn` sublayer: what `TransformerBlock` calls, by keyword."""

    def __call__(self, x: Tensor, *, allowed: Tensor, kv: KVWrite | None, head_scale: Tensor | None
                 ) -> tuple[Tensor, Tensor | None]:
        """x (b t e) -> (b t e), and the attention pattern (b h t s) or None.
        allowed (b 1 t s) as for AttendFn (s = t without a cache, the cache's slots with one);
        kv: store the new keys and values and attend over what it returns; head_scale (n_head,)
        multiplies each head's output, indexed by original head number, or None."""


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
        self.head_dim = n_embd // n_head
        self.heads = list(range(n_head))  # the original index of each head kept (all, until `prune`)
        self.attend = attend
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)  # x -> q, k, v for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd)  # heads, concatenated -> back to the residual stream
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, *, allowed: Tensor, kv: KVWrite | None = None, head_scale: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """The Attention protocol: x (b t e) -> (b t e), and the attention pattern (b h t s)
        when the kernel forms one.

        kv: stores this call's keys and values in a cache and returns all of them (b h s d).
        head_scale: (h,) multiplies each head's output, so a head can be zeroed or weakened; it has
        one entry per original head, so after pruning it still reads by the original numbering.
        """
        q, k, v = rearrange(self.c_attn(x), "b t (three h d) -> three b h t d", three=3, h=self.n_head)
        if kv is not None:
            k, v = kv(k, v)
        out, pattern = self.attend(q, k, v, allowed, self.dropout if self.training else 0.0)
        if head_scale is not None:
            kept = head_scale.to(out)[self.heads]  # to the output's device and dtype; pruned heads dropped
            out = out * rearrange(kept, "h -> 1 h 1 1")
        out = rearrange(out, "b h t d -> b t (h d)")
        return self.resid_dropout(self.c_proj(out)), pattern

    def prune(self, drop: list[int]) -> None:
        """Remove heads for good (Michel et al. 2019): the rows of c_attn that compute their q, k
        and v, and the columns of c_proj that read their output. Heads are named by their original
        index. The result equals zeroing those heads in head_mask, with fewer parameters."""
        keep = [i for i, head in enumerate(self.heads) if head not in drop]
        d = self.head_dim
        # c_attn's output is (three h d): q of every head, then k, then v; keep each kept head's d rows of all three
        rows = [part * len(self.heads) * d + i * d + j for part in range(3) for i in keep for j in range(d)]
        columns = [i * d + j for i in keep for j in range(d)]  # c_proj's input is (h d)
        self.c_attn = _linear_part(self.c_attn, rows=rows)
        self.c_proj = _linear_part(self.c_proj, columns=columns)
        self.heads = [self.heads[i] for i in keep]
        self.n_head = len(keep)


def _linear_part(linear: nn.Linear, rows: list[int] | None = None, columns: list[int] | None = None) -> nn.Linear:
    """A new nn.Linear holding the given output rows and input columns of `linear`'s weight."""
    weight = linear.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, columns] if columns is not None else weight
    part = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                     device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        part.weight.copy_(weight)
        if linear.bias is not None:
            part.bias.copy_(linear.bias[rows] if rows is not None else linear.bias)
    part.requires_grad_(linear.weight.requires_grad)
    return part
