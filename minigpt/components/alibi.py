"""ALiBi, attention with linear biases (Press et al. 2022, "Train Short, Test Long", section 3).

No position embedding at all: each head subtracts slope · distance from the score of every key,
so a head looks less far the steeper its slope. The slopes are a geometric sequence, 2^(-8/h),
2^(-16/h), ... 2^(-8) for h heads: the paper's for a power of two. (For other head counts the
paper interleaves two such sequences; this one keeps the same range, a difference the paper
reports as small.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..attention import CausalSelfAttention, explicit_attention
from .mask_distance import distances


def alibi_slopes(n_head: int, device: torch.device | None = None) -> Tensor:
    """(h): head i's slope, 2^(-8 (i + 1) / h)."""
    return 2.0 ** (-8.0 * torch.arange(1, n_head + 1, device=device, dtype=torch.float32) / n_head)


def alibi_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float,
                    at: CausalSelfAttention) -> Tensor:
    """explicit_attention with each head's scores lowered by its slope times the distance (an AttendFn)."""
    slopes = alibi_slopes(q.shape[1], q.device)[:, None, None]  # (h 1 1)
    bias = -slopes * distances(allowed)  # (b h t s): 0 at the query itself, growing linearly backwards
    return explicit_attention(q, k, v, allowed, dropout_p, at, bias=bias.to(q.dtype))
