"""Head pruning: remove attention heads for good (Michel, Levy & Neubig 2019, section 4).

A pruned head's rows of c_attn (its q, k and v) and columns of c_proj (what reads its output) are
cut out, so the model is smaller and faster, and computes exactly what the unpruned model computes
with those heads' gates set to 0 in head_mask. Heads keep their original numbers: head_mask is
still (n_layer, n_head) and a pruned head's entry is ignored.
"""

from __future__ import annotations

from torch import nn

from ..attention import CausalSelfAttention
from ..checks import check_int
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
        gone = sorted(set(drop) - set(attn.heads))
        if gone:
            raise ValueError(f"head {gone[0]} of layer {layer} is already pruned")
        if set(attn.heads) <= set(drop):
            raise ValueError(f"pruning {sorted(set(drop))} would leave layer {layer} with no head; keep at least one")
    for layer, drop in heads.items():
        model.blocks[layer].attn.prune(sorted(set(drop)))
    return model


def kept_heads(model: GPT, layer: int) -> list[int]:
    """The original indices of the heads layer `layer` still has (all, for a block never pruned)."""
    attn = getattr(model.blocks[layer], "attn", None)
    return list(getattr(attn, "heads", range(model.config.n_head)))


def pruned_heads(model: GPT) -> dict[int, list[int]]:
    """layer -> the heads removed from it, for every layer that lost any."""
    config = model.config
    removed = {layer: sorted(set(range(config.n_head)) - set(kept_heads(model, layer))) for layer in range(config.n_layer)}
    return {layer: heads for layer, heads in removed.items() if heads}
