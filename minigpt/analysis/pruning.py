"""Head pruning: remove attention heads for good (Michel, Levy & Neubig 2019, section 4).

`prune_by_importance` is the paper's iterative loop (section 4.2): measure importance, remove the
least important tenth of the heads, measure the loss, repeat.

Plain module surgery: a pruned head's rows of c_attn (its q, k and v) and columns of c_proj (what
reads its output) are cut out into new, smaller nn.Linear layers, and the attention's n_head goes
down, so the model is smaller and faster, and computes exactly what the unpruned model computes
with those heads' gates set to 0 in head_mask. Heads keep their original numbers: the attention's
`kept_heads` (set here) lists them, head_mask is still (n_layer, n_head) and a pruned head's entry
is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from ..attention import CausalSelfAttention
from ..checks import check_finite_tensor, check_float, check_int
from ..head_mask import kept_heads
from ..model import GPT
from .importance import head_importance
from .loss import token_losses


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
        if attn.n_kv_head != attn.n_head or config.position == "alibi":
            raise ValueError(f"block {layer}'s heads cannot be cut apart: its keys and values are shared by groups of "
                             "heads (n_kv_head), or its ALiBi slopes follow the head count")
        gone = sorted(set(drop) - set(kept_heads(model, layer)))
        if gone:
            raise ValueError(f"head {gone[0]} of layer {layer} is already pruned")
        if set(kept_heads(model, layer)) <= set(drop):
            raise ValueError(f"pruning {sorted(set(drop))} would leave layer {layer} with no head; keep at least one "
                             "(analysis.mask_least_important never masks a layer's last head)")
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
    attn.n_head = attn.n_kv_head = len(keep)  # prune_heads refuses grouped key/value heads
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


@dataclass
class PruningCurve:
    """What `prune_by_importance` did: (heads pruned so far, loss) after each round, the unpruned
    model first; which heads each round removed; and why it stopped."""

    points: list[tuple[int, float]]
    removed: list[dict[int, list[int]]] = field(default_factory=list)
    stopped: str = ""


def prune_by_importance(model: GPT, batches: Iterable[tuple[Tensor, Tensor | None]], *, fraction: float = 0.1,
                        rounds: int = 9, max_loss_increase: float | None = None,
                        on_round: Callable[[int, int], None] | None = None) -> PruningCurve:
    """Michel et al. section 4.2, in place: each round, head importance (per example) on `batches`,
    then the least important `fraction` of all heads removed (never a layer's last), then the loss
    over `batches`. Stops after `rounds`, when every layer is down to one head, or once the loss has
    risen more than `max_loss_increase` nats above the unpruned model's (that round is kept).
    on_round(done, rounds): called after each round (a progress bar)."""
    batches = list(batches)
    check_float("fraction", fraction, 0.0, 1.0, open_low=True)
    check_int("rounds", rounds, 1)
    if max_loss_increase is not None:
        check_float("max_loss_increase", max_loss_increase, 0.0)
    config = model.config
    per_round = max(1, round(fraction * config.n_layer * config.n_head))
    curve = PruningCurve(points=[(0, loss_over(model, batches))], stopped=f"{rounds} rounds done")
    for done in range(rounds):
        heads = least_important(model, head_importance(model, batches), per_round)
        if not heads:
            curve.stopped = f"after round {done}: every layer is down to its last head, which pruning keeps"
            break
        prune_heads(model, heads)
        curve.removed.append(heads)
        curve.points.append((sum(len(h) for h in pruned_heads(model).values()), loss_over(model, batches)))
        if on_round is not None:
            on_round(done + 1, rounds)
        if max_loss_increase is not None and curve.points[-1][1] - curve.points[0][1] > max_loss_increase:
            curve.stopped = f"after round {done + 1}: the loss rose more than {max_loss_increase:g} nats"
            break
    return curve


def mask_least_important(model: GPT, batches: Iterable[tuple[Tensor, Tensor | None]], head_mask: Tensor | None = None,
                         count: int = 1) -> Tensor:
    """One round of mask and recompute: head importance measured with `head_mask` (n_layer, n_head)
    applied (None: every head open), then the `count` least important heads still open closed too;
    returns the new mask. A layer's last open head is never closed, as `prune_heads` never removes
    it, so `prune_heads(model, masked_heads(mask))` always takes what the loop found; once every
    layer is down to one open head it raises, saying so."""
    shape = (model.config.n_layer, model.config.n_head)
    mask = torch.ones(shape, device=model.device) if head_mask is None else \
        check_finite_tensor("head_mask", head_mask, shape).detach().clone()
    check_int("count", count, 1)
    chosen = least_important(model, head_importance(model, batches, head_mask=mask), count, closed=mask == 0)
    if not chosen:
        raise ValueError("every layer is down to one open head, which pruning keeps: nothing left to mask")
    for layer, heads in chosen.items():
        mask[layer, heads] = 0
    return mask


def masked_heads(head_mask: Tensor) -> dict[int, list[int]]:
    """layer -> the heads a (n_layer, n_head) head_mask closes (gate 0): `prune_heads`' argument."""
    if not isinstance(head_mask, Tensor) or head_mask.dim() != 2:
        raise ValueError(f"head_mask must be an (n_layer, n_head) tensor, got {type(head_mask).__name__}")
    return {layer: heads for layer, row in enumerate(head_mask.tolist()) if (heads := [h for h, g in enumerate(row) if g == 0])}


def least_important(model: GPT, importance: Tensor, count: int, closed: Tensor | None = None) -> dict[int, list[int]]:
    """Up to `count` unpruned heads of least importance, never a layer's last head; heads where
    `closed` (n_layer, n_head) is True count as gone already."""
    remaining = {layer: [h for h in kept_heads(model, layer) if closed is None or not closed[layer, h]]
                 for layer in range(model.config.n_layer)}
    order = sorted((importance[layer, head].item(), layer, head) for layer, heads in remaining.items() for head in heads)
    chosen: dict[int, list[int]] = {}
    for _, layer, head in order:
        if len(chosen.get(layer, [])) < len(remaining[layer]) - 1:
            chosen.setdefault(layer, []).append(head)
            if sum(len(h) for h in chosen.values()) == count:
                break
    return chosen


@torch.no_grad()
def loss_over(model: GPT, batches: list[tuple[Tensor, Tensor | None]]) -> float:
    """The mean next-token loss over every predicted token of all batches."""
    total, count = 0.0, 0
    for ids, mask in batches:
        losses, counted = token_losses(model, ids, mask)
        total, count = total + float(losses.sum()), count + int(counted.sum())
    return total / count
