"""Rotary position embedding (Su et al. 2021, "RoFormer", section 3.4).

Instead of adding a position vector to the token's, each query and key is turned by an angle
proportional to its position: pair i of a head's dimensions (i, i + d/2, the GPT-NeoX and Llama
arrangement) turns by position · base^(-2i/d). A dot product of two turned vectors depends only
on the difference of their angles, so attention scores depend on how far apart two tokens are,
not on where they are. Keys are turned before they are cached: a cached key keeps its position.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .mask_distance import query_positions


class Rotary(nn.Module):
    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        self.head_dim, self.base = head_dim, base

    def forward(self, q: Tensor, k: Tensor, allowed: Tensor) -> tuple[Tensor, Tensor]:
        """q (b h t d) and k (b g t d), this call's new positions -> both turned by their positions,
        read from allowed (b 1 t s)."""
        # computed each call (d/2 numbers), not kept in a buffer: nothing to save, load or move
        frequencies = self.base ** (-torch.arange(0, self.head_dim, 2, device=q.device).float() / self.head_dim)
        angles = query_positions(allowed).float() * frequencies  # (b 1 t d/2), in float32 whatever the model's dtype
        cos, sin = angles.cos().repeat(1, 1, 1, 2), angles.sin().repeat(1, 1, 1, 2)  # (b 1 t d)
        return turn(q, cos, sin), turn(k, cos, sin)


def turn(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Each pair (x_i, x_{i+d/2}) turned: (x_i cos - x_{i+d/2} sin, x_{i+d/2} cos + x_i sin)."""
    first, second = x.chunk(2, dim=-1)
    return (x * cos + torch.cat([-second, first], dim=-1) * sin).to(x.dtype)
