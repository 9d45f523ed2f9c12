"""Components to swap into GPT-2, each in its own file, each against an existing contract:

- positions: `Rotary` (rope.py), turning queries and keys inside attention; `alibi_attention`
  (alibi.py), an AttendFn that lowers scores with distance; both read positions off the mask
  (mask_distance.py), so neither needs the learned position embedding;
- norms: `RMSNorm` (rmsnorm.py) in place of LayerNorm, also the per-head norm of QK-norm;
- MLPs: `SwiGLU` (swiglu.py) in place of GELU's;
- attention: grouped-query and multi-query attention and QK-norm are arguments of
  CausalSelfAttention (attention.py); `windowed` (window.py) wraps any AttendFn in a sliding window.

A GPTConfig names the components by its fields (config.py); `gpt2_block` (block.py) builds a
block from them with the functions below, and a saved model's config.json names them again.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from ..attention import AttendFn, CausalSelfAttention, explicit_attention, no_norm
from ..config import GPTConfig
from ..mlp import MLP
from ..positions import LearnedPositions, NoPositions
from .alibi import alibi_attention, alibi_slopes
from .mask_distance import distances, query_positions
from .rmsnorm import RMSNorm
from .rope import Rotary
from .swiglu import SwiGLU
from .window import windowed


def make_norm(config: GPTConfig, width: int | None = None) -> nn.Module:
    """The config's norm over `width` (default the model's): LayerNorm or RMSNorm."""
    width = width or config.n_embd
    kind = nn.LayerNorm if config.norm == "layernorm" else RMSNorm
    return kind(width, eps=config.layer_norm_epsilon)


def make_positions(config: GPTConfig) -> nn.Module:
    """What the model adds to the token embeddings: GPT-2's learned table, or nothing where the
    positions act inside attention (rotary, ALiBi)."""
    return LearnedPositions(config.n_positions, config.n_embd) if config.position == "learned" else NoPositions()


def make_mlp(config: GPTConfig) -> nn.Module:
    kind = MLP if config.mlp == "gelu" else SwiGLU
    return kind(config.n_embd, config.mlp_width, config.dropout)


def make_attention(config: GPTConfig, attend: AttendFn | None = None) -> CausalSelfAttention:
    """The config's attention. attend: the kernel (default: explicit_attention, or ALiBi's when the
    config says so), wrapped in the config's sliding window if it has one."""
    if attend is not None and config.position == "alibi":
        raise ValueError("position='alibi' brings its own attend function; leave attend out (or use learned or "
                         "rotary positions with another kernel)")
    attend = attend or (alibi_attention if config.position == "alibi" else explicit_attention)
    if config.window is not None:
        attend = windowed(config.window, attend)
    return CausalSelfAttention(config.n_embd, config.n_head, config.dropout, attend, n_kv_head=config.n_kv_head,
                               qk_norm=partial(make_norm, config) if config.qk_norm else no_norm,
                               rotary=Rotary(config.head_dim) if config.position == "rope" else None)


__all__ = ["RMSNorm", "Rotary", "SwiGLU", "alibi_attention", "alibi_slopes", "distances", "make_attention",
           "make_mlp", "make_norm", "make_positions", "query_positions", "windowed"]
