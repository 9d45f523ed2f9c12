"""One transformer block: two pre-LayerNorm residual lines, attention then MLP (GPT-2 paper, 2.3)."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from .attention import AttendFn, Attention, CausalSelfAttention, KVWrite, explicit_attention
from .config import GPTConfig
from .mlp import MLP


class Block(Protocol):
    """The contract of what `make_block(config)` returns, called by the model once per layer.
    Any nn.Module with this call works with the model, `trace`, the KV cache and every decoder
    (tests/test_protocols.py holds a minimal one to it)."""

    def __call__(self, x: Tensor, *, allowed: Tensor, kv: KVWrite | None, head_scale: Tensor | None
                 ) -> tuple[Tensor, Tensor | None]:
        """x (b t e) -> (b t e) and the attention pattern (b h t s), or None if the block never
        forms one (then `trace` refuses it). allowed, kv, head_scale: as in the Attention protocol."""


class TransformerBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)). Every part is passed in, so one can be swapped."""

    def __init__(self, ln_1: nn.Module, attn: Attention, ln_2: nn.Module, mlp: nn.Module):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp

    def forward(self, x: Tensor, *, allowed: Tensor, kv: KVWrite | None = None, head_scale: Tensor | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """The Block protocol: x (b t e) -> (b t e), and the attention pattern (b h t s) or None."""
        attended, pattern = self.attn(self.ln_1(x), allowed=allowed, kv=kv, head_scale=head_scale)
        x = x + attended
        x = x + self.mlp(self.ln_2(x))
        return x, pattern


def gpt2_block(config: GPTConfig, attend: AttendFn = explicit_attention) -> TransformerBlock:
    """The block GPT-2 uses. Pass `functools.partial(gpt2_block, attend=fused_attention)` to swap kernels."""
    return TransformerBlock(
        ln_1=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        attn=CausalSelfAttention(config.n_embd, config.n_head, config.dropout, attend),
        ln_2=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        mlp=MLP(config.n_embd, config.mlp_width, config.dropout),
    )
