"""Head pruning: remove attention heads for good (Michel, Levy & Neubig 2019, section 4).

Plain module surgery: a pruned head's rows of c_attn (its q, k and v) and columns of c_proj (what
reads its output) are cut out into new, smaller nn.Linear layers, and the attention's n_head goes
down, so the model is smaller and faster, and computes exactly what the unpruned model computes
with those heads' gates set to 0 in head_mask. Heads keep their original numbers: the attention's
`kept_heads` (set here) lists them, head_mask is still (n_layer, n_head) and a pruned head's entry
is ignored.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attention import CausalSelfAttention
from ..checks import check_int
from ..head_mask import kept_heads
from ..model import GPT


def prune_heads(model: GPT, heads: dict[int, list[int]]) -> GPT:
    """Remove heads[layer] from each listed layer, in place; returns the model. Every layer keeps
    at least one head. Prune before `minigpt.fast.optimize`: packed or int8 weights cannot be cut."""
    if not isinstance(model, GPT):
        raise ValueError(f"prune_heads prunes a minigpt GPT, got {type(model).__name__}")
    if not isinstance(heads, dict):
        raise ValueError(f"heads must be a dict of layer -> list of heads, got {type(heads).__name__}")
    config = model.config
    for layer, drop in heads.items():
        check_int("layer", layer, 0, config.n_layer - 1)
        if not isinstance(drop, (list, tuple, set)):
            raise ValueError(f"heads[{layer}] must be a list of head indices, got {type(drop).__name__}")
        for head in drop:
            check_int(f"heads[{layer}] entry", head, 0, config.n_head - 1)
        attn = getattr(model.blocks[layer], "attn", None)
        if not isinstance(attn, CausalSelfAttention):
            raise ValueError(f"block {layer} has no CausalSelfAttention (`attn`) whose heads could be removed")
        if type(attn.c_attn) is not nn.Linear or type(attn.c_proj) is not nn.Linear:
            raise ValueError(f"block {layer}'s projections are not nn.Linear (packed?): prune before packing")
        gone = sorted(set(drop) - set(kept_heads(model, layer)))
        if gone:
            raise ValueError(f"head {gone[0]} of layer {layer} is already pruned")
        if set(kept_heads(model, layer)) <= set(drop):
            raise ValueError(f"pruning {sorted(set(drop))} would leave layer {layer} with no head; keep at least one")
    for layer, drop in heads.items():
        _cut_heads(model.blocks[layer].attn, kept_heads(model, layer), set(drop), model.config.head_dim)
    return model


def _cut_heads(attn: CausalSelfAttention, heads: list[int], drop: set[int], d: int) -> None:
    """Replace attn's projections by the parts that serve the heads kept. heads: the original index
    of each head attn has now; d: head width."""
    keep = [i for i, head in enumerate(heads) if head not in drop]  # positions among attn's current heads
    # c_attn's output is (three h d): q of every head, then k, then v; keep each kept head's d rows of all three
    rows = [part * len(heads) * d + i * d + j for part in range(3) for i in keep for j in range(d)]
    columns = [i * d + j for i in keep for j in range(d)]  # c_proj's input is (h d)
    attn.c_attn = _linear_part(attn.c_attn, rows=rows)
    attn.c_proj = _linear_part(attn.c_proj, columns=columns)
    attn.n_head = len(keep)
    attn.kept_heads = [heads[i] for i in keep]  # read by head_mask.kept_heads


def _linear_part(linear: nn.Linear, rows: list[int] | None = None, columns: list[int] | None = None) -> nn.Linear:
    """A new nn.Linear holding the given output rows and input columns of `linear`'s weight."""
    weight = linear.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, columns] if columns is not None else weight
    part = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                     device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        part.weight.copy_(weight)
        if linear.bias is not None:
            part.bias.copy_(linear.bias[rows] if rows is not None else linear.bias)
    part.requires_grad_(linear.weight.requires_grad)
    return part


def pruned_heads(model: GPT) -> dict[int, list[int]]:
    """layer -> the heads removed from it, for every layer that lost any."""
    config = model.config
    removed = {layer: sorted(set(range(config.n_head)) - set(kept_heads(model, layer))) for layer in range(config.n_layer)}
    return {layer: heads for layer, heads in removed.items() if heads}
