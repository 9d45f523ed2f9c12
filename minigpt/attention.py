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

import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from .hooks import HookPoint

# attend(q, k, v, allowed, dropout_p, at) -> out
#   q (b h t d), k and v (b h s d), allowed (b 1 t s) bool: may query t look at key s? Every
#   query row has at least one allowed key (a padding query is allowed itself), so a softmax
#   over the allowed keys is never 0/0. at: anything with the two hook points `at.hook_scores` and
#   `at.hook_pattern` (the attention layer passes itself), through which a kernel that forms scores
#   and a pattern passes them; a kernel needs nothing else of the layer.
#   out (b h t d).
AttendFn = Callable[[Tensor, Tensor, Tensor, Tensor, float, "CausalSelfAttention"], Tensor]


class KVWrite(Protocol):
    """What an attention layer is handed when a KV cache is in use (`KVCache.writer`)."""

    def __call__(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """This call's keys and values (b h t d) -> stored; returns every cached slot's (b h s d),
        these included. Slots not yet written are zeros and not allowed to any query."""


class Attention(Protocol):
    """The contract of a block's `attn` sublayer: x (b t e) -> (b t e), with only what the
    computation needs: `allowed` (b 1 t s) as for AttendFn (s = t without a cache, the cache's slots
    with one), and `kv`: store the new keys and values and attend over what it returns."""

    def __call__(self, x: Tensor, allowed: Tensor, kv: KVWrite | None = None) -> Tensor: ...


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float,
                       at: CausalSelfAttention, bias: Tensor | None = None) -> Tensor:
    """Scores, mask, softmax, weighted sum: the four steps, one line each. bias (b h t s), if
    given, is added to the scores first (ALiBi's distance penalty, components/alibi.py)."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (b h t s)
    scores = scores if bias is None else scores + bias
    scores = at.hook_scores(scores.masked_fill(~allowed, float("-inf")))
    # softmax in float32: in float16 the exponentials of large scores overflow
    pattern = at.hook_pattern(scores.float().softmax(dim=-1).to(v.dtype))  # (b h t s), each row sums to 1
    return F.dropout(pattern, dropout_p) @ v if dropout_p else pattern @ v  # (b h t d)


def fused_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float,
                    at: CausalSelfAttention) -> Tensor:
    """The same computation in one fused kernel (flash / memory-efficient where available); it never
    forms the scores or the pattern, so their hook points are not reached."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout_p)


def no_norm(width: int) -> nn.Module:
    """The per-head norm of queries and keys when there is none: QK-norm passes a real one."""
    return nn.Identity()


class Unturned(nn.Module):
    """Queries and keys as they are: the default where rotary positions (components/rope.py) turn
    them by their positions. GPT-2's positions are added to the embeddings instead (model.py)."""

    def forward(self, q: Tensor, k: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
        return q, k


class CausalSelfAttention(nn.Module):
    """GPT-2's attention, and the swaps that live inside it (components/): n_kv_head < n_head
    key/value heads, each shared by n_head / n_kv_head query heads (grouped-query attention,
    Ainslie et al. 2023; one: multi-query), so the KV cache holds n_kv_head heads; `qk_norm`, a
    norm made for the head width and applied to each head's queries and keys (Dehghani et al. 2023),
    and `rotary`, which turns them by their positions (components/rope.py), both before the keys
    are cached."""

    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.0, attend: AttendFn = explicit_attention, *,
                 n_kv_head: int | None = None, qk_norm: Callable[[int], nn.Module] = no_norm,
                 rotary: nn.Module | None = None):
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head or n_head
        self.attend = attend
        self.dropout = dropout
        self.head_dim = d = n_embd // n_head
        self.c_attn = nn.Linear(n_embd, (n_head + 2 * self.n_kv_head) * d)  # x -> q, k, v for all heads at once
        self.c_proj = nn.Linear(n_embd, n_embd)  # heads, concatenated -> back to the residual stream
        self.resid_dropout = nn.Dropout(dropout)
        self.q_norm, self.k_norm = qk_norm(d), qk_norm(d)  # one for the queries, one for the keys
        self.rotary = rotary if rotary is not None else Unturned()
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_scores, self.hook_pattern, self.hook_z = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor, allowed: Tensor, kv: KVWrite | None = None) -> Tensor:
        """x (b t e) -> (b t e). kv, with a cache: stores this call's keys and values, returns all (b g s d)."""
        h, g = self.n_head, self.n_kv_head  # query heads, key/value heads (g = h but for grouped-query attention)
        q, k, v = self.c_attn(x).split([h * self.head_dim, g * self.head_dim, g * self.head_dim], dim=-1)
        q = rearrange(q, "b t (h d) -> b h t d", h=h)
        k, v = (rearrange(part, "b t (g d) -> b g t d", g=g) for part in (k, v))
        q, k = self.q_norm(q), self.k_norm(k)  # identities unless QK-norm is swapped in
        q, k = self.rotary(q, k, allowed)  # unturned unless rotary positions are swapped in
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)  # (b h t d), (b g t d): this call's positions
        if kv is not None:
            k, v = kv(k, v)  # (b g s d): every position so far
        if g < h:  # each key/value head serves h / g query heads, in order
            k, v = (repeat(part, "b g s d -> b (g r) s d", r=h // g) for part in (k, v))
        out = self.attend(q, k, v, allowed, self.dropout if self.training else 0.0, self)  # (b h t d)
        z = self.hook_z(rearrange(out, "b h t d -> b t h d"))  # each head's output
        return self.resid_dropout(self.c_proj(rearrange(z, "b t h d -> b t (h d)")))
