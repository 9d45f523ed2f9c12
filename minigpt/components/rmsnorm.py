"""RMSNorm (Zhang & Sennrich 2019): LayerNorm without the centring. Each vector is divided by its
root mean square and scaled by a learned gain; no mean is subtracted and there is no bias, so on
a vector whose mean is 0 it equals LayerNorm (tests/test_components.py)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, width: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        """x (... width) -> x / rms(x) · weight."""
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps) * self.weight
