"""The suite for a learner's head importance (Michel et al. 2019; minigpt/analysis/importance.py):

    importance(model, input_ids (b t)) -> (l h): |∂L/∂ξ| at ξ = 1

ξ (l h) is every head's gate, passed as `model(input_ids, head_mask=ξ)`; L is the batch's mean
next-token loss (the logits at position i predict token i + 1). This is `head_importance(model,
ids, per_example=False, normalize=False)`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import Tensor

from ..config import GPTConfig
from ..model import GPT
from .modules import TOLERANCE, diagnose, differs, lively
from .properties import holds, once
from .report import Finding

IMPORTANCE_CONFIG = GPTConfig(n_layer=2, n_head=4, n_embd=16, vocab_size=40, n_positions=32)


def gate_gradient(model: GPT, ids: Tensor, *, shifted: bool = True, absolute: bool = True,
                  loss: str = "mean") -> Tensor:
    """|∂L/∂ξ| at ξ = 1, with the ideas a learner may change: the targets not shifted, the sign kept,
    the loss summed or the logits summed instead of the loss."""
    gate = torch.ones(model.config.n_layer, model.config.n_head, requires_grad=True)
    with torch.enable_grad():
        logits = model(ids, head_mask=gate)  # (b t v)
        logits, targets = (logits[:, :-1], ids[:, 1:]) if shifted else (logits, ids)
        value = logits.sum() if loss == "logits" else F.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                                                     reduction=loss)
        (gradient,) = torch.autograd.grad(value, gate)
    return gradient.abs() if absolute else gradient


IMPORTANCE_PROBES: dict[str, list[Callable]] = {
    "importance-signed": [lambda model, ids: gate_gradient(model, ids, absolute=False)],
    "importance-not-shifted": [lambda model, ids: gate_gradient(model, ids, shifted=False)],
    "importance-loss-sum": [lambda model, ids: gate_gradient(model, ids, loss="sum")],
    "importance-of-logits": [lambda model, ids: gate_gradient(model, ids, loss="logits")],
}


def importance_suite(fn: Callable) -> tuple[list[Finding], str | None]:
    torch.manual_seed(0)
    model = lively(GPT(IMPORTANCE_CONFIG), seed=3)

    def tokens(rows: int, length: int, seed: int) -> Tensor:
        return torch.randint(0, 40, (rows, length), generator=torch.Generator().manual_seed(seed))

    def shape(example) -> str | None:
        rows, length, seed = example
        out = fn(model, tokens(rows, length, seed))
        want = (IMPORTANCE_CONFIG.n_layer, IMPORTANCE_CONFIG.n_head)
        if not isinstance(out, Tensor) or out.shape != want:
            return f"returned {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}, not (l h) = {want}"
        return None if bool((out >= 0).all()) else "an importance is negative: it is the size of a gradient, |∂L/∂ξ|"

    def equals(example) -> str | None:
        rows, length, seed = example
        ids = tokens(rows, length, seed)
        gap = differs(fn(model, ids).detach(), gate_gradient(model, ids))
        return None if gap <= TOLERANCE else f"differs from |∂L/∂ξ| by {gap:.2g} ({rows} rows of {length} tokens)"

    def silent_head() -> str | None:
        silenced = lively(GPT(IMPORTANCE_CONFIG), seed=3)
        with torch.no_grad():  # head 1 of layer 0 writes nothing: its columns of c_proj are zero
            d = IMPORTANCE_CONFIG.head_dim
            silenced.blocks[0].attn.c_proj.weight[:, d:2 * d] = 0.0
        out = fn(silenced, tokens(2, 8, seed=4))
        return None if float(out[0, 1]) == 0.0 else f"a head whose output projection is zero got importance {float(out[0, 1]):.3g}, not 0"

    sizes = st.tuples(st.integers(1, 3), st.integers(2, 10), st.integers(0, 999))
    findings = [holds("returns one importance per head (l h), none negative", "importance-signed", sizes, shape,
                      examples=8),
                once("a head that writes nothing has importance 0", "unknown", silent_head),
                holds("equals |∂L/∂ξ| of the mean next-token loss", "unknown", sizes, equals, examples=8)]

    def outputs(f: Callable) -> Tensor:
        return f(model, tokens(3, 9, seed=5)).detach().float()
    return findings, diagnose(fn, gate_gradient, IMPORTANCE_PROBES, outputs)
