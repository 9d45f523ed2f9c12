"""SwiGLU (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6): the MLP's hidden units are a
gate times a value, both projections of the input: (silu(x W) ⊙ x V) W2. Llama and most recent
models use it in place of GELU. W and V are stacked in one c_fc, as GPT-2 stacks q, k and v in
c_attn; the biases are kept, as GPT-2's linear layers have them."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..hooks import HookPoint


class SwiGLU(nn.Module):
    def __init__(self, n_embd: int, width: int, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 2 * width)  # x -> gate and value, (b t (two m))
        self.c_proj = nn.Linear(width, n_embd)
        self.dropout = nn.Dropout(dropout)
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        """x (b t e) -> (b t e), through m gated hidden units."""
        pre = self.hook_pre(self.c_fc(x))  # (b t 2m): the gate, then the value
        gate, value = pre.chunk(2, dim=-1)
        post = self.hook_post(F.silu(gate) * value)  # (b t m)
        return self.dropout(self.c_proj(post))
