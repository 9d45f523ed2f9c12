"""head_mask as hooks: each head's output z scaled by its gate, at the hook points `blocks.{i}.attn.z`.

A gate of 1 keeps a head, 0 removes it, anything between weakens it; gradients flow to the gates,
which is how head importance is measured (Michel, Levy & Neubig 2019). Heads keep their original
numbers after pruning: a pruned layer's `attn.kept_heads` (set by `analysis.prune_heads`) says
which original head each remaining one is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from einops import rearrange
from torch import Tensor

if TYPE_CHECKING:
    from .model import GPT


def kept_heads(model: GPT, layer: int) -> list[int]:
    """The original indices of the heads layer `layer` still has (all, for a layer never pruned)."""
    attn = getattr(model.blocks[layer], "attn", None)
    return list(getattr(attn, "kept_heads", range(model.config.n_head)))


def head_gates(model: GPT, head_mask: Tensor | None) -> dict[str, Callable[[Tensor], Tensor]]:
    """The hooks that apply head_mask, (l h) or one per row (b l h): {"blocks.{i}.attn.z": z (b t h d) -> z · gate}."""
    if head_mask is None:
        return {}
    per_row = head_mask if head_mask.dim() == 3 else head_mask[None]  # (b l h), b = 1 for one mask for all rows
    gates = {}
    for layer in range(model.config.n_layer):
        gate = rearrange(per_row[:, layer, kept_heads(model, layer)], "b h -> b 1 h 1")  # pruned heads' entries dropped
        gates[f"blocks.{layer}.attn.z"] = lambda z, gate=gate: z * gate.to(z)  # to z's device and dtype
    return gates
