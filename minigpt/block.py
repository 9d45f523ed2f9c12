"""One transformer block: two pre-LayerNorm residual lines, attention then MLP (GPT-2 paper, 2.3)."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from .attention import AttendFn, Attention, KVWrite
from .boundary import check_output
from .components import make_attention, make_mlp, make_norm
from .config import GPTConfig
from .hooks import HookPoint


class Block(Protocol):
    """The contract of what `make_block(config)` returns, called by the model once per layer: the
    residual stream x (b t e) -> (b t e), with only what the computation needs: `allowed` (b 1 t s),
    which keys each query may see, and `kv`, the layer's place in the KV cache or None (see the
    Attention protocol). nanoGPT's block, its names adapted, is one (tests/test_protocols.py)."""

    def __call__(self, x: Tensor, allowed: Tensor, kv: KVWrite | None = None) -> Tensor: ...


class TransformerBlock(nn.Module):
    """x + attn(ln_1(x)), then x + mlp(ln_2(x)). Every part is passed in, so one can be swapped."""

    def __init__(self, ln_1: nn.Module, attn: Attention, ln_2: nn.Module, mlp: nn.Module):
        super().__init__()
        self.ln_1, self.attn, self.ln_2, self.mlp = ln_1, attn, ln_2, mlp
        self.hook_attn_out, self.hook_resid_mid, self.hook_mlp_out = HookPoint(), HookPoint(), HookPoint()

    def forward(self, x: Tensor, allowed: Tensor, kv: KVWrite | None = None) -> Tensor:
        attended = self.hook_attn_out(check_output("attn", x, self.attn(self.ln_1(x), allowed, kv)))  # (b t e)
        x = self.hook_resid_mid(x + attended)
        return x + self.hook_mlp_out(check_output("mlp", x, self.mlp(self.ln_2(x))))


def gpt2_block(config: GPTConfig, attend: AttendFn | None = None) -> TransformerBlock:
    """The block GPT-2 uses, with the components the config swaps in (components/). Pass
    `functools.partial(gpt2_block, attend=fused_attention)` to swap the attention kernel."""
    return TransformerBlock(ln_1=make_norm(config), attn=make_attention(config, attend), ln_2=make_norm(config),
                            mlp=make_mlp(config))
