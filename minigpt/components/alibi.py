"""ALiBi, attention with linear biases (Press et al. 2022, "Train Short, Test Long", section 3).

No position embedding at all: each head subtracts slope · distance from the score of every key,
so a head looks less far the steeper its slope. For h heads, h a power of two, the slopes are the
geometric sequence 2^(-8/h), 2^(-16/h), ..., 2^(-8). For other head counts the paper (its code's
`get_slopes`, which BLOOM's `build_alibi_tensor` follows) takes the sequence of the largest power
of two p below h, then every other slope of 2p's sequence for the h - p heads left: for 3 heads
2^-4, 2^-8, then 2^-2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..attention import CausalSelfAttention, explicit_attention
from .mask_distance import distances


def geometric_slopes(p: int) -> Tensor:
    """(p): 2^(-8 (i + 1) / p), the sequence for p heads."""
    return 2.0 ** (-8.0 * torch.arange(1, p + 1, dtype=torch.float32) / p)


def alibi_slopes(n_head: int, device: torch.device | None = None) -> Tensor:
    """(h): head i's slope, the paper's (module docstring)."""
    p = 2 ** math.floor(math.log2(n_head))  # the largest power of two not above n_head
    extra = geometric_slopes(2 * p)[0::2][: n_head - p]  # every other of 2p's: the odd powers of 2^(-4/p)
    return torch.cat([geometric_slopes(p), extra]).to(device)


def alibi_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float,
                    at: CausalSelfAttention) -> Tensor:
    """explicit_attention with each head's scores lowered by its slope times the distance (an AttendFn)."""
    slopes = alibi_slopes(q.shape[1], q.device)[:, None, None]  # (h 1 1)
    bias = -slopes * distances(allowed)  # (b h t s): 0 at the query itself, growing linearly backwards
    return explicit_attention(q, k, v, allowed, dropout_p, at, bias=bias.to(q.dtype))
