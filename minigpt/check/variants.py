"""The probes: the reference pieces, each with one known wrong idea in it (causes.py names them).

A learner's piece that computes what a probe computes, on the same weights and inputs, has that
idea wrong. Each probe is a piece of the same kind as the learner's (an attention kernel, a
factory of modules from a GPTConfig, a function over logits), so the suites run it exactly as
they run the learner's.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from decoders.processors import keep_top_k, keep_top_p

from ..attention import CausalSelfAttention
from ..block import TransformerBlock
from ..components import make_attention, make_mlp, make_norm
from ..config import GPTConfig
from ..mlp import MLP

# ---- attention kernels: attend(q, k, v, allowed, dropout_p, at) -> (b h t d) -------------------


def attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, dropout_p: float = 0.0, at=None, *,
           scale: Callable[[int], float] = math.sqrt, mask: str = "allowed", fill: float = float("-inf"),
           softmax_dim: int = -1, mask_after: bool = False) -> Tensor:
    """softmax(q kᵀ / scale(d), masked) v with one idea changeable: the scale, which mask
    ("allowed"; "none"; "causal": a triangle ignoring padding; "next": a triangle one key too wide),
    the masked value, the softmax's axis, or masking after the softmax."""
    scores = q @ k.transpose(-2, -1) / scale(q.shape[-1])  # (b h t s)
    t, s = scores.shape[-2:]
    triangle = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t)  # queries are the last t keys
    seen = {"allowed": allowed, "none": torch.ones_like(allowed), "causal": triangle,
            "next": torch.ones(t, s, dtype=torch.bool, device=q.device).tril(diagonal=s - t + 1)}[mask]
    if mask_after:
        return (scores.softmax(dim=softmax_dim) * seen) @ v
    return scores.masked_fill(~seen, fill).softmax(dim=softmax_dim) @ v


ATTEND: dict[str, list[Callable]] = {
    "no-scale": [partial(attend, scale=lambda d: 1.0)],
    "scale-by-d": [partial(attend, scale=float)],
    "no-mask": [partial(attend, mask="none")],
    "mask-off-by-one": [partial(attend, mask="next")],
    "own-causal-mask": [partial(attend, mask="causal")],
    "masked-to-zero": [partial(attend, fill=0.0)],
    "mask-after-softmax": [partial(attend, mask_after=True)],
    "softmax-over-queries": [partial(attend, softmax_dim=-2)],
}


# ---- modules built from a GPTConfig ------------------------------------------------------------

class HeadsSplitOrder(CausalSelfAttention):
    """GPT-2's attention with the heads read out of the width as (d h) instead of (h d)."""

    def forward(self, x: Tensor, allowed: Tensor, kv=None) -> Tensor:
        q, k, v = (rearrange(part, "b t (d h) -> b h t d", h=self.n_head) for part in self.c_attn(x).chunk(3, dim=-1))
        if kv is not None:
            k, v = kv(k, v)
        out = self.attend(q, k, v, allowed, 0.0, self)
        return self.c_proj(rearrange(out, "b h t d -> b t (d h)"))


class ProbeBlock(TransformerBlock):
    """GPT-2's block with its wiring changed: `order` is "post-ln", "no-attn-residual",
    "no-mlp-residual" or "norms-swapped"."""

    def __init__(self, config: GPTConfig, order: str):
        super().__init__(make_norm(config), make_attention(config), make_norm(config), make_mlp(config))
        self.order = order

    def forward(self, x: Tensor, allowed: Tensor, kv=None) -> Tensor:
        ln_1, ln_2 = (self.ln_2, self.ln_1) if self.order == "norms-swapped" else (self.ln_1, self.ln_2)
        if self.order == "post-ln":
            x = self.ln_1(x + self.attn(x, allowed, kv))
            return self.ln_2(x + self.mlp(x))
        attended = self.attn(ln_1(x), allowed, kv)
        x = attended if self.order == "no-attn-residual" else x + attended
        out = self.mlp(ln_2(x))
        return out if self.order == "no-mlp-residual" else x + out


def gelu_with(constant: float, root: float) -> Callable[[Tensor], Tensor]:
    """GELU's tanh approximation with the cube's constant and the root's argument as given."""
    return lambda x: 0.5 * x * (1.0 + torch.tanh(math.sqrt(root) * (x + constant * x**3)))


ACTIVATIONS: dict[str, list[Callable[[Tensor], Tensor]]] = {
    "gelu-exact": [F.gelu],
    "gelu-constant": [gelu_with(0.44715, 2 / math.pi), gelu_with(0.0044715, 2 / math.pi),
                      gelu_with(0.044715, 2 * math.pi), gelu_with(0.044715, math.pi / 2)],
    "relu": [F.relu],
    "no-activation": [lambda x: x],
}


class ProbeNorm(nn.Module):
    """LayerNorm's parameters (weight, bias) with one idea changed: `idea` is "norm-unbiased",
    "norm-eps-outside", "norm-wrong-axis" or "norm-no-affine"."""

    def __init__(self, width: int, eps: float, idea: str):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(width)), nn.Parameter(torch.zeros(width))
        self.eps, self.idea = eps, idea

    def forward(self, x: Tensor) -> Tensor:
        axis = -2 if self.idea == "norm-wrong-axis" else -1
        centred = x - x.mean(dim=axis, keepdim=True)
        variance = x.var(dim=axis, keepdim=True, correction=1 if self.idea == "norm-unbiased" else 0)
        if self.idea == "norm-eps-outside":
            normed = centred / (variance.sqrt() + self.eps)
        else:
            normed = centred / (variance + self.eps).sqrt()
        return normed if self.idea == "norm-no-affine" else normed * self.weight + self.bias


def _attention_probes(config: GPTConfig) -> dict[str, list[Callable[[GPTConfig], nn.Module]]]:
    probes = {key: [lambda c, f=f: make_attention(c, f) for f in fs] for key, fs in ATTEND.items()}
    if config.n_head > 1:  # with one head both orders are the same
        probes["heads-split-order"] = [lambda c: HeadsSplitOrder(c.n_embd, c.n_head)]
    return probes


def _mlp_probes() -> dict[str, list[Callable[[GPTConfig], nn.Module]]]:
    return {key: [lambda c, f=f: MLP(c.n_embd, c.mlp_width, activation=f) for f in fs]
            for key, fs in ACTIVATIONS.items()}


def _norm_probes() -> dict[str, list[Callable[[GPTConfig], nn.Module]]]:
    ideas = ["norm-unbiased", "norm-eps-outside", "norm-wrong-axis", "norm-no-affine"]
    return {idea: [lambda c, idea=idea: ProbeNorm(c.n_embd, c.layer_norm_epsilon, idea)] for idea in ideas}


def module_probes(kind: str, config: GPTConfig) -> dict[str, list[Callable[[GPTConfig], nn.Module]]]:
    """Wrong versions of the piece of this kind, each a factory config -> module like the learner's."""
    if kind == "attention":
        return _attention_probes(config)
    if kind == "mlp":
        return _mlp_probes()
    if kind == "norm":
        return _norm_probes()
    # a block: its own wiring, and every wrong idea of the pieces inside it
    inside = {key: [lambda c, f=f: TransformerBlock(make_norm(c), f(c), make_norm(c), make_mlp(c)) for f in fs]
              for key, fs in _attention_probes(config).items()}
    inside |= {key: [lambda c, f=f: TransformerBlock(make_norm(c), make_attention(c), make_norm(c), f(c)) for f in fs]
               for key, fs in _mlp_probes().items()}
    inside |= {key: [lambda c, f=f: TransformerBlock(f(c), make_attention(c), f(c), make_mlp(c)) for f in fs]
               for key, fs in _norm_probes().items()}
    orders = ["post-ln", "no-attn-residual", "no-mlp-residual", "norms-swapped"]
    return {order: [lambda c, order=order: ProbeBlock(c, order)] for order in orders} | inside


# ---- decoding -----------------------------------------------------------------------------------


def top_p_drops_crossing(logits: Tensor, top_p: float) -> Tensor:
    """Keeps the tokens before the mass is reached, but not the one that reaches it."""
    ordered, order = torch.sort(logits, descending=True)
    before = ordered.softmax(dim=-1).cumsum(dim=-1) < top_p
    before[:, 0] = True
    return logits.masked_fill(~before.scatter(1, order, before), float("-inf"))


def top_p_on_logits(logits: Tensor, top_p: float) -> Tensor:
    """The nucleus measured on the logits shifted to be non-negative, not on probabilities."""
    ordered, order = torch.sort(logits, descending=True)
    weights = ordered - ordered[:, -1:]
    crossed = (weights.cumsum(dim=-1) / weights.sum(dim=-1, keepdim=True)) >= top_p
    keep = torch.ones_like(crossed)
    keep[:, 1:] = ~crossed[:, :-1]  # every token up to the one that crosses
    return logits.masked_fill(~keep.scatter(1, order, keep), float("-inf"))


def from_the_unlikely_end(keep: Callable[[Tensor, float], Tensor]) -> Callable[[Tensor, float], Tensor]:
    """A filter run on the negated logits: it keeps the least likely tokens instead."""
    def reversed_keep(logits: Tensor, amount: float) -> Tensor:
        return logits.masked_fill(keep(-logits, amount) == float("-inf"), float("-inf"))
    return reversed_keep


TOP_P = {"top-p-drops-crossing": [top_p_drops_crossing], "top-p-on-logits": [top_p_on_logits],
         "top-p-keeps-tail": [from_the_unlikely_end(keep_top_p)]}
TOP_K = {"top-k-off-by-one": [lambda logits, k: keep_top_k(logits, k + 1), lambda logits, k: keep_top_k(logits, max(k - 1, 1))],
         "top-k-keeps-least": [from_the_unlikely_end(keep_top_k)]}
