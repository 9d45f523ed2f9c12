"""The position-wise feed-forward sublayer (`mlp`) and GPT-2's activation, `gelu_new`."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn


def gelu_new(x: Tensor) -> Tensor:
    """GELU, tanh approximation, exactly as GPT-2 was trained with (Hendrycks & Gimpel 2016, eq. 2)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class MLP(nn.Module):
    def __init__(self, n_embd: int, width: int, dropout: float = 0.0, activation: Callable[[Tensor], Tensor] = gelu_new):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, width)
        self.activation = activation
        self.c_proj = nn.Linear(width, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))  # (b t e) -> (b t m) -> (b t e), m = mlp_width (4e unless n_inner is set)
