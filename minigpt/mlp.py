"""The position-wise feed-forward sublayer (`mlp`) and GPT-2's activation, `gelu_new`."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from .hooks import HookPoint


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
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        """x (b t e) -> (b t e), through m = mlp_width (4e unless n_inner is set) hidden units."""
        pre = self.hook_pre(self.c_fc(x))  # (b t m)
        post = self.hook_post(self.activation(pre))  # (b t m)
        return self.dropout(self.c_proj(post))  # (b t e)
